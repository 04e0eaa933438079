"""Reaching the registry and the files of a model: the tracking URI, version lookup, a local cache.

Where models are looked up is decided the way MLflow decides it: `MLFLOW_TRACKING_URI` (or a URI set with
`mlflow.set_tracking_uri`), else the project's documented default `sqlite:///mlflow.db` in the current
folder. A SQLite store that does not exist is an error at once, naming the file; it is never created as a
side effect of a lookup.

A model version's files never change, so a version fetched once is kept in a cache and later loads read it
from there: `$XDG_CACHE_HOME/revelio/models/<key>/<name>/<version>` (default `~/.cache/...`), where the key is
a digest of where the store really is (the absolute path of a SQLite file, not the URI as written: two
projects that both use `sqlite:///mlflow.db` are two stores) and of the version's run id; the run id recorded
in a cached copy is checked again before the copy is used, so a store rebuilt in the same place never gets
another store's files. When the store is SQLite and the version's files are in a local folder (the default
setup), the first load copies that folder itself instead of downloading through an MLflow client. An alias can
move, so every load still asks the store which version it names; for a SQLite store that question is one
read-only query with the standard library (`_sqlite_version`), because building an MLflow client imports
its whole SQL layer (about 2 s on a small machine) and a cached load should cost a fraction of that.
For the same reason MLflow itself (about 4 s to import there) is imported only by what needs a client or a
download: a cached load with MLFLOW_TRACKING_URI set never imports it.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import sqlite3
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse
from urllib.request import pathname2url

import yaml

from ..identity import digest
from ..inference.classifier import META as CLS_META
from ..sqlite_uri import sqlite_file
from .errors import AliasNotFoundError, MissingArtifactsError, ModelNotFoundError
from .refs import ModelRef, parse_uri
from .trust import verify_code

if TYPE_CHECKING:
    import mlflow
    from mlflow.exceptions import MlflowException

SOURCE_FILE = "revelio-source.json"  # written by pull() and the cache: where a local copy came from
COMPLETE = ".complete"  # marks a cache entry whose download finished


def target_uri() -> str:
    """The tracking URI lookups use, resolved by MLflow itself: one set in this process, else
    MLFLOW_TRACKING_URI, else MLflow's default (the same `sqlite:///mlflow.db` the project documents).
    MLflow returns the variable unchanged when nothing was set in this process (and nothing can have been
    set when MLflow is not imported yet), so that case is answered without importing it."""
    if sys.modules.get("mlflow") is None:
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        default = _default_tracking_uri()
        if default is not None:
            return default
    import mlflow

    return mlflow.get_tracking_uri()


def _default_tracking_uri() -> str | None:
    """MLflow's default when nothing is set, as MLflow spells it (`sqlite:///<absolute path>/mlflow.db`), or
    None when ./mlruns holds experiments of the old file store (MLflow then defaults to it: ask MLflow)."""
    try:
        with os.scandir("mlruns") as entries:
            if any(e.is_dir() and e.name.isdigit() and os.path.lexists(os.path.join(e.path, "meta.yaml"))
                   for e in entries):
                return None
    except OSError:
        pass
    if os.name == "nt":
        return None
    return "sqlite:///" + posixpath.abspath(pathname2url(os.path.abspath("mlflow.db")))


def registry_client() -> mlflow.MlflowClient:
    """A client of the registry at `target_uri()`, after checking that the store is there (fast, no side effect)."""
    uri = target_uri()
    db = sqlite_file(uri)
    if db is not None and not db.resolve().is_file():
        raise ModelNotFoundError(
            f"no MLflow tracking store at {db.resolve()} (tracking URI {uri}, "
            f"{'from MLFLOW_TRACKING_URI' if os.environ.get('MLFLOW_TRACKING_URI') else 'the default: mlflow.db in the current folder'}). "
            "Point MLFLOW_TRACKING_URI at the store that holds the models, e.g. "
            "MLFLOW_TRACKING_URI=sqlite:////path/to/project/mlflow.db or http://host:5000, or run from the folder "
            "where `revelio run` (make run) was run.")
    import mlflow  # after the check above: a missing store is reported without importing MLflow

    from ..tracking import check_server

    check_server(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _is_missing(e: MlflowException) -> bool:
    return e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def registered_names(client=None) -> list[str]:
    client = client or registry_client()
    return sorted(m.name for m in client.search_registered_models(max_results=1000))


def resolve_version(ref: ModelRef | str, client=None):
    """The ModelVersion a registry reference points at, or an error listing what exists."""
    from mlflow.exceptions import MlflowException

    ref = parse_uri(ref) if isinstance(ref, str) else ref
    if ref.kind != "registry":
        raise ValueError(f"{ref.uri} is not a registered-model reference (NAME@alias or NAME/version)")
    client = client or registry_client()
    try:
        rm = client.get_registered_model(ref.name)
    except MlflowException as e:
        if not _is_missing(e):
            raise
        names = registered_names(client)
        raise ModelNotFoundError(
            f"no registered model named {ref.name!r} in {target_uri()}; registered models: "
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
    except MlflowException as e:
        if not _is_missing(e):
            raise
        raise ModelNotFoundError(
            f"registered model {ref.name!r} has no version {ref.version}; versions: "
            f"{', '.join(_version_numbers(client, ref.name)) or 'none'}; aliases: "
            f"{', '.join(f'{a} → {v}' for a, v in sorted(aliases.items())) or 'none'}") from e


def _version_numbers(client, name: str) -> list[str]:
    vs = client.search_model_versions(f"name='{name}'")
    return sorted((str(v.version) for v in vs), key=int)


# --------------------------------------------------------------------------- files
@contextmanager
def _quiet_downloads():
    """MLflow's per-file download bar is for people at a terminal; in logs it is one line per file."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ or sys.stderr.isatty():
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _download(artifact_uri: str, dst: Path, what: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with _quiet_downloads():
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst)))
    except (MlflowException, OSError) as e:
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
    client = registry_client()
    if ref.kind == "registry":
        mv = resolve_version(ref, client)
        d = _download(f"models:/{mv.name}/{mv.version}", dst, f"{mv.name} version {mv.version}")
        return d, _version_info(ref, mv)
    d = _download(ref.models_uri if ref.kind == "logged" else ref.uri, dst, ref.uri)
    return d, {"uri": ref.uri, "tracking_uri": target_uri()}


def _version_info(ref: ModelRef, mv) -> dict[str, Any]:
    return {"uri": ref.uri, "name": mv.name, "version": str(mv.version), "alias": ref.alias, "run_id": mv.run_id,
            "source": mv.source, "tags": dict(mv.tags or {}), "tracking_uri": target_uri()}


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "revelio" / "models"


def store_location(uri: str | None = None) -> str:
    """Where the tracking store `uri` (default: `target_uri()`) really is: the absolute path of a SQLite
    database or file store, else the server URL. A relative URI means a different store in every folder."""
    uri = uri or target_uri()
    db = sqlite_file(uri)
    if db is not None:
        return f"sqlite:{db.expanduser().resolve()}"
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return f"file:{Path(unquote(parsed.path) if parsed.scheme else uri).expanduser().resolve()}"
    return uri.rstrip("/")


def cache_entry(mv) -> Path:
    """The cache directory of model version `mv` of the store at `target_uri()` (see the module docstring)."""
    key = digest({"store": store_location(), "run_id": mv.run_id})
    return cache_root() / key / mv.name / str(mv.version)


def _cached(entry: Path, mv) -> bool:
    """Whether `entry` holds a complete download of exactly `mv` (its recorded run id and source agree)."""
    try:
        done = json.loads((entry / COMPLETE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(done, dict) and done.get("run_id") == mv.run_id and done.get("source") == mv.source


def _sqlite_version(ref: ModelRef) -> SimpleNamespace | None:
    """The READY version `ref` names in a SQLite store, read with the standard library (read-only: it can
    neither create nor change the file); None whenever anything is unusual (another store, a missing name
    or alias, a schema this does not know), and the MLflow client then answers, with its proper errors."""
    db = sqlite_file(target_uri())
    if db is None or not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        version = ref.version
        if ref.alias:
            row = con.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                              (ref.name, ref.alias)).fetchone()
            if row is None:
                return None
            version = row[0]
        row = con.execute("SELECT run_id, source, status FROM model_versions WHERE name = ? AND version = ?",
                          (ref.name, int(version))).fetchone()
        if row is None or row[2] != "READY":
            return None
        tags = dict(con.execute("SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
                                (ref.name, int(version))).fetchall())
        try:
            (location,) = con.execute("SELECT storage_location FROM model_versions WHERE name = ? AND version = ?",
                                      (ref.name, int(version))).fetchone()
        except (sqlite3.Error, TypeError):  # an older schema: the first load goes through MLflow
            location = None
    except (sqlite3.Error, ValueError, TypeError):
        return None
    finally:
        con.close()
    return SimpleNamespace(name=ref.name, version=str(version), run_id=row[0], source=row[1], tags=tags,
                           storage=_local_storage(location))


def local_copy(uri: str) -> tuple[Path, dict[str, Any]]:
    """A local directory holding the model `uri` names: the directory itself, or the cached copy of a
    registered version (downloaded on first use), or a fresh download of anything else."""
    ref = parse_uri(uri)
    if ref.kind == "local":
        return fetch(uri, ".")
    if ref.kind != "registry":
        return fetch(uri, tempfile.mkdtemp(prefix="revelio-model-"))
    mv = _sqlite_version(ref)
    if mv is not None:
        entry = cache_entry(mv)
        if not _cached(entry, mv) and mv.storage is not None:
            # the store keeps the files in a local folder: copy them without building a client
            _fill_cache(entry, mv, lambda tmp: _copy_version(mv, tmp))
        if _cached(entry, mv):
            return entry, _version_info(ref, mv)
    client = registry_client()
    mv = resolve_version(ref, client)
    entry = cache_entry(mv)
    info = _version_info(ref, mv)
    if not _cached(entry, mv):
        _fill_cache(entry, mv, lambda tmp: _download(f"models:/{mv.name}/{mv.version}", tmp,
                                                     f"{mv.name} version {mv.version}"))
    return entry, info


def _copy_version(mv, dst: Path) -> None:
    """What downloading `models:/NAME/VERSION` writes, from the version's local folder: its files plus the
    `registered_model_meta` file MLflow adds (name and version of the registered model)."""
    shutil.copytree(mv.storage, dst, dirs_exist_ok=True)
    meta = {"model_name": mv.name, "model_version": str(mv.version)}
    (dst / "registered_model_meta").write_text(yaml.safe_dump(meta, default_flow_style=False))


def _fill_cache(entry: Path, mv, fill) -> None:
    """Write a cache entry through a temporary folder renamed into place once complete (a killed process
    leaves no half-written entry behind)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=entry.parent))
    try:
        fill(tmp)
        (tmp / COMPLETE).write_text(json.dumps({"run_id": mv.run_id, "source": mv.source}))
        shutil.rmtree(entry, ignore_errors=True)  # a half-written entry of a killed process
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _local_storage(location: str | None) -> Path | None:
    """The folder a model version's files live in when the artifact store is this file system (it holds
    the MLmodel file: what a download of `models:/NAME/VERSION` copies); None otherwise."""
    if not location:
        return None
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else location)
    return path if (path / "MLmodel").is_file() else None


def _local_source(d: Path) -> dict[str, Any]:
    p = d / SOURCE_FILE
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            pass
    return {"uri": str(d)}


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
        verify_code(model_dir, ml)  # never run here, but a tampered model is not used (trust.py)
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


