"""Find, fetch, load, register and promote revelio models in the MLflow Model Registry.

A model reference (`uri`) may be any of:

    revelio-sae@champion           NAME@alias
    revelio-sae/3                  NAME/version
    models:/revelio-sae@champion   models:/NAME@alias, models:/NAME/version, models:/m-<logged model id>
    runs:/<run id>/<path>          a model (or a raw saved SAE/probe/classifier directory) logged to a run
    s3://..., file://...           any artifact URI MLflow can download
    /some/dir                      a local directory: one written by `pull`, or a raw saved model directory

Registered models are MLflow pyfunc models (see revelio_svc.registry.models): `MLmodel` plus the weights
under `artifacts/<kind>/` as safetensors + JSON. The loaders here read those weights directly; they never
unpickle and need MLflow only to download.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..tracking import TrackingUnavailableError

MODEL_NAMES = {"sae": "revelio-sae", "probe": "revelio-probe", "classifier": "revelio-classifier",
               "backbone": "revelio-backbone"}
KINDS = {v: k for k, v in MODEL_NAMES.items()}
CHAMPION = "champion"
CHALLENGER = "challenger"
SOURCE_FILE = "revelio-source.json"  # written by pull(): where a pulled directory came from
METRIC_TAG = "metric."  # version tags holding the metrics a version was compared on


class RegistryError(RuntimeError):
    """Base class of every registry failure; the message says what was tried and what to do."""


class ModelNotFoundError(RegistryError, LookupError):
    """No registered model, version or alias of that name; the message lists what exists."""


class AliasNotFoundError(ModelNotFoundError):
    pass


class MissingArtifactsError(RegistryError, FileNotFoundError):
    """The registry knows the model but its files are gone or incomplete."""


class ModelMismatchError(RegistryError, ValueError):
    """A model's recorded configuration disagrees with its weights (or with the other parts it bundles)."""


class RegistrationError(RegistryError):
    """Registering a new version failed; no version was left behind."""


# --------------------------------------------------------------------------- references
@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. `kind` is "registry", "logged" (models:/m-...), "artifact" (runs:/, s3://, ...) or "local"."""

    uri: str
    kind: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def models_uri(self) -> str:
        if self.kind == "logged":
            return f"models:/{self.name}"
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"


def parse_uri(uri: str | os.PathLike) -> ModelRef:
    """Classify a reference without contacting anything (local paths that exist win over NAME/version)."""
    s = str(uri).strip()
    if not s:
        raise ValueError("empty model reference; pass NAME@alias, NAME/version, models:/..., runs:/... or a directory")
    if Path(os.path.expanduser(s)).exists():
        return ModelRef(s, "local")
    if s.startswith("models:/"):
        body = s[len("models:/"):].strip("/")
        if re.fullmatch(r"m-[0-9a-f]{8,}", body):
            return ModelRef(s, "logged", name=body)
        m = re.fullmatch(rf"({_NAME})@([A-Za-z0-9_\-]+)", body)
        if m:
            return ModelRef(s, "registry", name=m.group(1), alias=m.group(2))
        m = re.fullmatch(rf"({_NAME})/(\d+)", body)
        if m:
            return ModelRef(s, "registry", name=m.group(1), version=m.group(2))
        m = re.fullmatch(rf"({_NAME})", body)
        if m:
            return ModelRef(s, "registry", name=m.group(1), alias=CHAMPION)
        raise ValueError(f"cannot read the model URI {s!r}: expected models:/NAME@alias, models:/NAME/version "
                         "or models:/m-<id>")
    if re.match(r"^[a-z][a-z0-9+.\-]*:/", s):  # runs:/, s3://, file://, mlflow-artifacts:/, http(s)://
        return ModelRef(s, "artifact")
    m = re.fullmatch(rf"({_NAME})@([A-Za-z0-9_\-]+)", s)
    if m:
        return ModelRef(s, "registry", name=m.group(1), alias=m.group(2))
    m = re.fullmatch(rf"({_NAME})/(\d+)", s)
    if m:
        return ModelRef(s, "registry", name=m.group(1), version=m.group(2))
    if s in KINDS:  # a bare registered-model name means its champion
        return ModelRef(s, "registry", name=s, alias=CHAMPION)
    raise ValueError(f"{s!r} is neither an existing directory nor a model reference; use NAME@alias "
                     f"(e.g. revelio-sae@champion), NAME/version, models:/..., runs:/<run id>/<path> or a "
                     "directory written by `revelio registry pull`")


# --------------------------------------------------------------------------- tracking access
def current_tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def check_server(uri: str | None = None, timeout: float = 3.0) -> str:
    """Fail fast (seconds, not minutes of retries) when an HTTP tracking server does not answer."""
    uri = uri or current_tracking_uri()
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
        except Exception as e:
            raise TrackingUnavailableError(
                f"the MLflow tracking server at {uri} did not answer ({type(e).__name__}: {str(e)[:160]}). "
                "Start it or point MLFLOW_TRACKING_URI at a running one; to use a model without a server, "
                "`revelio registry pull` it where the server is reachable and load the pulled directory.") from e
    return uri


def _client():
    import mlflow

    check_server()
    return mlflow.MlflowClient()


def _is_missing(e: Exception) -> bool:
    code = getattr(e, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") or "not found" in str(e)


def registered_names(client=None) -> list[str]:
    client = client or _client()
    return sorted(m.name for m in client.search_registered_models(max_results=1000))


def resolve_version(ref: ModelRef | str, client=None):
    """The ModelVersion a registry reference points at, or an error listing what exists."""
    ref = parse_uri(ref) if isinstance(ref, str) else ref
    if ref.kind != "registry":
        raise ValueError(f"{ref.uri} is not a registered-model reference (NAME@alias or NAME/version)")
    client = client or _client()
    try:
        rm = client.get_registered_model(ref.name)
    except Exception as e:
        if not _is_missing(e):
            raise
        names = registered_names(client)
        raise ModelNotFoundError(
            f"no registered model named {ref.name!r} in {current_tracking_uri()}; registered models: "
            f"{', '.join(names) or 'none (run `revelio run` to train and register them)'}") from e
    aliases = dict(getattr(rm, "aliases", {}) or {})
    if ref.alias:
        if ref.alias not in aliases:
            known = ", ".join(f"{a} → version {v}" for a, v in sorted(aliases.items())) or "none"
            raise AliasNotFoundError(
                f"registered model {ref.name!r} has no alias {ref.alias!r}; its aliases: {known}; versions: "
                f"{', '.join(_version_numbers(client, ref.name)) or 'none'}")
        return client.get_model_version(ref.name, str(aliases[ref.alias]))
    try:
        return client.get_model_version(ref.name, ref.version)
    except Exception as e:
        if not _is_missing(e):
            raise
        raise ModelNotFoundError(
            f"registered model {ref.name!r} has no version {ref.version}; versions: "
            f"{', '.join(_version_numbers(client, ref.name)) or 'none'}; aliases: "
            f"{', '.join(f'{a} → {v}' for a, v in sorted(aliases.items())) or 'none'}") from e


def _version_numbers(client, name: str) -> list[str]:
    vs = client.search_model_versions(f"name='{name}'")
    return sorted((str(v.version) for v in vs), key=int)


# --------------------------------------------------------------------------- fetching
def _download(artifact_uri: str, dst: Path, what: str) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst)))
    except TrackingUnavailableError:
        raise
    except Exception as e:
        raise MissingArtifactsError(
            f"could not download the files of {what} from {artifact_uri} ({type(e).__name__}: {str(e)[:200]}). "
            "The artifact store may have lost them (deleted run, moved bucket); re-register the model "
            "(`revelio run --set force=true`) or load a pulled copy.") from e


def fetch(uri: str, dst: str | Path) -> tuple[Path, dict[str, Any]]:
    """Download the model `uri` names into `dst`; returns (local model directory, provenance)."""
    ref = parse_uri(uri)
    if ref.kind == "local":
        return Path(os.path.expanduser(ref.uri)), _local_source(Path(os.path.expanduser(ref.uri)))
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if ref.kind == "registry":
        client = _client()
        mv = resolve_version(ref, client)
        d = _download(f"models:/{mv.name}/{mv.version}", dst, f"{mv.name} version {mv.version}")
        info = {"uri": ref.uri, "name": mv.name, "version": str(mv.version), "alias": ref.alias,
                "run_id": mv.run_id, "source": mv.source, "tags": dict(mv.tags or {}),
                "tracking_uri": current_tracking_uri()}
        return d, info
    check_server()
    d = _download(ref.models_uri if ref.kind == "logged" else ref.uri, dst, ref.uri)
    return d, {"uri": ref.uri, "tracking_uri": current_tracking_uri()}


def _local_source(d: Path) -> dict[str, Any]:
    p = d / SOURCE_FILE
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            pass
    return {"uri": str(d)}


@contextmanager
def fetched(uri: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """fetch() into a temporary directory that is removed afterwards (loaders keep everything in memory)."""
    ref = parse_uri(uri)
    if ref.kind == "local":
        yield fetch(uri, ".")
        return
    tmp = tempfile.mkdtemp(prefix="revelio-model-")
    try:
        yield fetch(uri, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_mlmodel(model_dir: Path) -> dict[str, Any] | None:
    p = Path(model_dir) / "MLmodel"
    if not p.is_file():
        return None
    return yaml.safe_load(p.read_text()) or {}


def model_kind(model_dir: Path) -> str | None:
    """"sae", "probe" or "classifier" for a revelio MLflow model or raw saved directory; None if unknown."""
    ml = read_mlmodel(model_dir)
    if ml is not None:
        arts = ((ml.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
        kinds = [k for k in ("sae", "probe", "classifier") if k in arts]
        return kinds[0] if len(kinds) == 1 else None
    d = Path(model_dir)
    from ..classifier import META as CLS_META
    if (d / CLS_META).is_file():
        return "classifier"
    if (d / "probe.json").is_file():
        return "probe"
    if (d / "sae.safetensors").is_file() or ((d / "config.json").is_file() and _json_format(d / "config.json") == "revelio-sae"):
        return "sae"
    return None


def payload_dir(model_dir: Path, want: str) -> Path:
    """The directory holding the weights of `want` inside a fetched model (MLflow model or raw directory).

    A classifier bundles its SAE and probe, so `load_sae("revelio-classifier@champion")` works too.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingArtifactsError(f"{model_dir} is not a directory")
    kind = model_kind(model_dir)
    ml = read_mlmodel(model_dir)
    base = model_dir
    if ml is not None:
        pf = (ml.get("flavors") or {}).get("python_function") or {}
        arts = pf.get("artifacts") or {}
        if kind not in arts:
            raise MissingArtifactsError(f"the MLflow model at {model_dir} has no '{kind}' artifact "
                                        f"(it has: {', '.join(arts) or 'none'}); it is not a revelio model")
        base = model_dir / arts[kind]["path"]
        if not base.is_dir():
            raise MissingArtifactsError(f"the MLflow model at {model_dir} lists artifact {arts[kind]['path']} "
                                        "but it is missing")
    if kind == want:
        return base
    if kind == "classifier" and want in ("sae", "probe"):
        return base / want
    raise ModelNotFoundError(f"{model_dir} holds a {kind or 'non-revelio'} model, not a {want}; "
                             f"use load_{kind}() for it" if kind else
                             f"{model_dir} is not a revelio {want}: no MLmodel, no {want} files")


def _json_format(p: Path) -> str | None:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data.get("format") if isinstance(data, dict) else None


# --------------------------------------------------------------------------- loaders
def _wrap_load_error(e: Exception, what: str, where: Path) -> Exception:
    """Map the loaders' own errors onto the registry's: files gone vs. config disagreeing with weights."""
    msg = str(e)
    if isinstance(e, RegistryError):
        return e
    bare = msg.replace(str(where), "")  # the words of the message, not of the path
    required = {"the SAE": ("sae.safetensors", "config.json"), "the probe": ("probe.json",),
                "the classifier": ("classifier.json", "sae", "probe", "top_images.safetensors")}.get(what, ())
    gone = [f for f in required if not (Path(where) / f).exists()]
    if gone:
        return MissingArtifactsError(f"{what} at {where} is incomplete: {', '.join(gone)} missing ({msg})")
    if any(w in bare for w in ("do not belong together", "does not match", "shape", "disagree")):
        return ModelMismatchError(f"{what} at {where}: {msg}")
    if isinstance(e, FileNotFoundError) or "missing" in bare or "does not exist" in bare:
        return MissingArtifactsError(f"{what} at {where} is incomplete: {msg}")
    return e


def load_sae(uri: str):
    """The SAE (`encode`, `decode`, `config`) that `uri` names."""
    from ..sae import load_sae as _load

    with fetched(uri) as (d, _):
        p = payload_dir(d, "sae")
        try:
            return _load(p)
        except (OSError, RuntimeError, ValueError) as e:
            raise _wrap_load_error(e, "the SAE", p) from e


def load_probe(uri: str):
    """The probe (`predict_proba`, `classes`, `meta`) that `uri` names."""
    from ..probe import load_probe as _load

    with fetched(uri) as (d, _):
        p = payload_dir(d, "probe")
        try:
            return _load(p)
        except (OSError, RuntimeError, ValueError) as e:
            raise _wrap_load_error(e, "the probe", p) from e


def load_classifier(uri: str, device: str | None = None):
    """The Classifier (`predict(images)`, `explain(image)`) that `uri` names."""
    from ..classifier import Classifier

    with fetched(uri) as (d, info):
        p = payload_dir(d, "classifier")
        try:
            clf = Classifier.load(p, device=device)
            _ = clf.adapter  # a bundled backbone is read now, while the fetched files still exist
        except (OSError, RuntimeError, ValueError) as e:
            raise _wrap_load_error(e, "the classifier", p) from e
        clf.source = info
        return clf


def pull(uri: str, dest: str | Path) -> Path:
    """Copy a model out of the registry into `dest`; the directory then loads with no tracking server."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; pull into a new directory")
    d, info = fetch(uri, dest)
    if d.resolve() != dest.resolve():  # a local source: copy it
        shutil.copytree(d, dest, dirs_exist_ok=True)
    kind = model_kind(dest)
    if kind is None:
        raise MissingArtifactsError(f"{uri} was fetched into {dest} but holds no revelio model")
    payload_dir(dest, kind)  # raises when the weights are not there
    info = {**info, "kind": kind, "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (dest / SOURCE_FILE).write_text(json.dumps(info, indent=2, default=str))
    return dest


def promote(uri: str, alias: str = CHAMPION) -> str:
    """Point `alias` of a registered model at the version `uri` names (NAME/version or NAME@other-alias)."""
    ref = parse_uri(uri)
    if ref.kind != "registry":
        raise ValueError(f"promote needs a registered version (NAME/version or NAME@alias), got {uri!r}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", alias):
        raise ValueError(f"alias {alias!r} must start with a letter and hold only letters, digits, _ and -")
    client = _client()
    mv = resolve_version(ref, client)
    client.set_registered_model_alias(mv.name, alias, str(mv.version))
    return str(mv.version)


def list_models(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every registered model (or those in `names`) with its aliases and versions (newest first)."""
    client = _client()
    out = []
    for rm in sorted(client.search_registered_models(max_results=1000), key=lambda m: m.name):
        if names and rm.name not in names:
            continue
        aliases = {a: str(v) for a, v in (getattr(rm, "aliases", {}) or {}).items()}
        by_version: dict[str, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(v, []).append(a)
        versions = []
        for mv in sorted(client.search_model_versions(f"name='{rm.name}'"), key=lambda v: -int(v.version)):
            tags = dict(mv.tags or {})
            versions.append({"version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
                             "status": mv.status, "run_id": mv.run_id, "created": mv.creation_timestamp,
                             "metrics": {k[len(METRIC_TAG):]: v for k, v in tags.items() if k.startswith(METRIC_TAG)},
                             "tags": {k: v for k, v in tags.items() if not k.startswith(METRIC_TAG)}})
        out.append({"name": rm.name, "aliases": aliases, "versions": versions,
                    "description": rm.description or ""})
    return out


# --------------------------------------------------------------------------- registration
@dataclass
class Registration:
    name: str
    version: str
    champion: bool  # whether `champion` now points at this version
    previous_champion: str | None
    reason: str  # why champion moved or not
    model_uri: str  # models:/NAME/version
    logged_model_uri: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "version", "champion", "previous_champion", "reason",
                                              "model_uri", "logged_model_uri", "metrics")}


def _better(new: float, old: float, higher_is_better: bool) -> bool:
    return new > old if higher_is_better else new < old


def champion_decision(client, name: str, metric_name: str, value: float | None,
                      higher_is_better: bool) -> tuple[bool, str | None, str]:
    """(move champion?, current champion version, reason)."""
    try:
        cur = client.get_model_version_by_alias(name, CHAMPION)
    except Exception as e:
        if not _is_missing(e):
            raise
        return True, None, "no champion yet"
    old_raw = (cur.tags or {}).get(METRIC_TAG + metric_name)
    if value is None or not math.isfinite(value):
        return False, str(cur.version), f"the new version has no finite {metric_name}"
    try:
        old = float(old_raw) if old_raw is not None else None
    except ValueError:
        old = None
    if old is None or not math.isfinite(old):
        return True, str(cur.version), f"champion version {cur.version} has no {metric_name} to compare"
    if _better(value, old, higher_is_better):
        return True, str(cur.version), (f"{metric_name} {value:.6g} beats champion version {cur.version} "
                                        f"({old:.6g}, {'higher' if higher_is_better else 'lower'} is better)")
    return False, str(cur.version), (f"{metric_name} {value:.6g} does not beat champion version {cur.version} "
                                     f"({old:.6g}, {'higher' if higher_is_better else 'lower'} is better)")


def verify_logged_files(info, local_dir: Path, kind: str) -> None:
    """Every file of the payload and the MLmodel must be in the artifact store before a version points at it."""
    import mlflow

    try:
        base = mlflow.get_logged_model(info.model_id).artifact_location.rstrip("/")
    except Exception as e:
        raise MissingArtifactsError(f"the logged model {info.model_uri} cannot be found: {e}") from e

    def walk(rel: str = "") -> dict[str, int | None]:
        files: dict[str, int | None] = {}
        for fi in mlflow.artifacts.list_artifacts(artifact_uri=f"{base}/{rel}" if rel else base):
            name = f"{rel}/{fi.path.rsplit('/', 1)[-1]}" if rel else fi.path.rsplit("/", 1)[-1]
            if fi.is_dir:
                files.update(walk(name))
            else:
                files[name] = fi.file_size
        return files

    try:
        remote = walk()
    except Exception as e:
        raise MissingArtifactsError(f"cannot list the logged files of {info.model_uri} at {base}: {e}") from e
    want: dict[str, int | None] = {"MLmodel": None}
    for p in Path(local_dir).rglob("*"):
        if p.is_file():
            want[f"artifacts/{kind}/{p.relative_to(local_dir).as_posix()}"] = p.stat().st_size
    missing = [k for k in want if k not in remote]
    wrong = [k for k, size in want.items() if k in remote and size is not None and remote[k] not in (None, size)]
    if missing or wrong:
        raise MissingArtifactsError(
            f"the artifact store lacks files of {info.model_uri} ({base}): missing {missing[:5]}, "
            f"wrong size {wrong[:5]}; no version was registered")


def register_model(kind: str, local_dir: str | Path, metrics: dict[str, float], tags: dict[str, str] | None = None,
                   metric_name: str | None = None, higher_is_better: bool = True, *, name: str | None = None,
                   example: Any = None, description: str = "") -> Registration:
    """Log `local_dir` as a pyfunc model, register a new version, alias it `challenger`, and move `champion`
    to it only when it beats the current champion on `metric_name` (or there is none).

    Order makes a half-done registration harmless: artifacts are logged and checked first, the version is
    created last, and if anything after its creation fails the version is deleted again.
    Logs into the active MLflow run (starting one if none is active).
    """
    import mlflow

    from .models import log_pyfunc

    if kind not in ("sae", "probe", "classifier"):
        raise ValueError(f"kind must be sae, probe or classifier, got {kind!r}")
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise MissingArtifactsError(f"nothing to register: {local_dir} is not a directory")
    name = name or MODEL_NAMES[kind]
    metric_name = metric_name or {"sae": "fvu", "probe": "accuracy", "classifier": "accuracy"}[kind]
    metrics = {k: float(v) for k, v in (metrics or {}).items() if v is not None}
    value = metrics.get(metric_name)
    client = _client()

    info = log_pyfunc(kind, local_dir, example=example)
    verify_logged_files(info, local_dir, kind)

    run = mlflow.active_run()
    run_id = run.info.run_id if run is not None else getattr(info, "run_id", None)
    try:
        client.get_registered_model(name)
    except Exception as e:
        if not _is_missing(e):
            raise
        try:
            client.create_registered_model(name, description=_MODEL_DESCRIPTIONS.get(kind, ""))
        except Exception:
            client.get_registered_model(name)  # created by a concurrent worker meanwhile
    # the headline metrics only (stages report dozens of per-concept ones; the runs keep them all)
    shown = {k: v for k, v in metrics.items() if "." not in k or k == metric_name}
    vtags = {"kind": kind, **{k: str(v) for k, v in (tags or {}).items()},
             **{METRIC_TAG + k: repr(v) for k, v in shown.items()},
             "compared_on": metric_name, "higher_is_better": str(bool(higher_is_better)).lower()}
    mv = client.create_model_version(name, source=info.model_uri, run_id=run_id, tags=vtags,
                                     description=description or None, model_id=info.model_id)
    version = str(mv.version)
    try:
        _wait_ready(client, name, version)
        move, prev, reason = champion_decision(client, name, metric_name, value, higher_is_better)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if move:
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "champion_decision", reason[:500])
    except BaseException as e:
        try:
            client.delete_model_version(name, version)
            cleanup = "the version was deleted so nothing points at a half-registered model"
        except Exception as de:  # report both: the registry may be unreachable altogether
            cleanup = (f"deleting the version failed too ({type(de).__name__}: {de}); delete {name} version "
                       f"{version} by hand")
        raise RegistrationError(f"registering {name} version {version} failed ({type(e).__name__}: {e}); "
                                f"{cleanup}") from e
    return Registration(name, version, move, prev, reason, f"models:/{name}/{version}", info.model_uri, metrics)


def _wait_ready(client, name: str, version: str, timeout_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION":
            raise RegistrationError(f"{name} version {version} failed registration: {mv.status_message}")
        if time.monotonic() - t0 > timeout_s:
            raise RegistrationError(f"{name} version {version} was not READY after {timeout_s:.0f} s")
        time.sleep(0.5)


_MODEL_DESCRIPTIONS = {
    "sae": "k-sparse autoencoder on diffusion-backbone activations: feature vectors (n, d_in) → latent codes "
           "(n, n_latents). See registry/README.md.",
    "probe": "linear probe: backbone features or SAE latents (n, n_features) → class probabilities (n, n_classes).",
    "classifier": "images → class probabilities plus the top SAE-latent attributions (backbone + SAE + probe in one "
                  "model). See registry/README.md.",
}
