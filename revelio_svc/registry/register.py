"""Registering models and moving the `champion` alias: a decision with evidence, for a consistent set.

`register_set` registers the SAE, the probe and the classifier of one pipeline run together. Each new
version becomes `challenger`. `champion` moves only when the new classifier beats the champion classifier
on the same held-out images by more than chance: an exact McNemar test on the images one gets right and the
other wrong (`promotion_decision`), at the configured `registry.promotion_alpha`. When it moves, it moves for
all three, so `revelio-classifier@champion` always wraps `revelio-sae@champion` and `revelio-probe@champion`.
The evidence (compared version, accuracy delta, p-value, paired images) is written as tags on the versions.

`register_model` registers one model alone (a tuning trial's SAE, a few-shot classifier from the demo):
it becomes `challenger`, and `champion` only when that model has none yet. A version registered alone never
replaces a champion that belongs to a set (`promote` refuses): that would leave `revelio-classifier@champion`
wrapping an SAE or probe that are not the champions. The demo registers few-shot classifiers under names of
their own for that reason.

Order makes a half-done registration harmless: artifacts are logged and checked first, versions are created
last, and if anything after their creation fails they are deleted again.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from scipy.stats import binomtest

from ..contracts import EVALUATION_FILE, Evaluation
from .access import (
    _is_missing,
    local_copy,
    payload_dir,
    registry_client,
    resolve_version,
)
from .card import sae_card
from .decisions import record_decision
from .errors import MissingArtifactsError, RegistrationError, RegistryError, UntrustedModelError
from .models import log_pyfunc
from .refs import CHALLENGER, CHAMPION, MODEL_NAMES, parse_uri

METRIC_TAG = "metric."  # version tags holding the headline metrics of a version


# --------------------------------------------------------------------------- the decision
@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    compared_version: str | None = None
    delta: float | None = None  # challenger accuracy − champion accuracy on the paired images
    p_value: float | None = None
    n_paired: int = 0

    def tags(self) -> dict[str, str]:
        t = {"champion_decision": self.reason[:500], "promoted": str(self.promote).lower()}
        if self.compared_version is not None:
            t["compared_version"] = self.compared_version
        if self.delta is not None:
            t["delta_accuracy"] = f"{self.delta:.6g}"
        if self.p_value is not None:
            t["p_value"] = f"{self.p_value:.6g}"
        t["paired_images"] = str(self.n_paired)
        return t


def promotion_decision(new: Evaluation | None, champion: Evaluation | None, alpha: float,
                       champion_version: str | None = None) -> Decision:
    """Promote `new` over `champion` only if it is better on the same images at significance `alpha`.

    Exact McNemar test: among the paired images where exactly one model is right, the challenger's wins
    are Binomial(n, ½) under "no difference"; the two-sided p-value must be below `alpha` and the
    challenger must win more often.
    """
    if champion_version is None:
        return Decision(True, "no champion yet")
    if new is None or champion is None:
        return Decision(False, f"champion version {champion_version} or the new version has no per-image "
                               "evaluation to compare; promote by hand (`revelio registry promote`)", champion_version)
    theirs = dict(zip(((champion.dataset, i) for i in champion.index), champion.correct))
    pairs = [(c, theirs[(new.dataset, i)]) for i, c in zip(new.index, new.correct) if (new.dataset, i) in theirs]
    if not pairs:
        return Decision(False, f"champion version {champion_version} was evaluated on other images; the two "
                               "cannot be compared (promote by hand if that is intended)", champion_version)
    wins = sum(1 for a, b in pairs if a and not b)
    losses = sum(1 for a, b in pairs if b and not a)
    delta = (wins - losses) / len(pairs)
    p = binomtest(min(wins, losses), wins + losses, 0.5).pvalue if wins + losses else 1.0
    verdict = wins > losses and p < alpha
    why = (f"{'beats' if verdict else 'does not clearly beat'} champion version {champion_version} on "
           f"{len(pairs)} paired held-out images: accuracy {delta:+.4f} ({wins} images won, {losses} lost), "
           f"McNemar p={p:.3g} {'<' if p < alpha else '≥'} alpha {alpha:g}")
    return Decision(verdict, why, champion_version, delta, float(p), len(pairs))


# --------------------------------------------------------------------------- versions
@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    champion: bool  # whether `champion` now points at this version
    previous_champion: str | None
    reason: str  # why champion moved or not
    model_uri: str  # models:/NAME/version
    logged_model_uri: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "version", "champion", "previous_champion", "reason",
                                              "model_uri", "logged_model_uri")} | {"metrics": dict(self.metrics)}


def verify_logged_files(info, local_dir: Path, kind: str) -> None:
    """Every file of the payload and the MLmodel must be in the artifact store before a version points at it."""
    try:
        base = mlflow.get_logged_model(info.model_id).artifact_location.rstrip("/")
    except MlflowException as e:
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
    except (MlflowException, OSError) as e:
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


def _ensure_registered_model(client, name: str, kind: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if not _is_missing(e):
            raise
        try:
            client.create_registered_model(name, description=_MODEL_DESCRIPTIONS.get(kind, ""))
        except MlflowException:
            client.get_registered_model(name)  # created by a concurrent worker meanwhile


def _version_tags(kind: str, metrics: Mapping[str, float], tags: Mapping[str, str] | None,
                  metric_name: str) -> dict[str, str]:
    # the headline metrics only (stages report dozens of per-concept ones; the runs keep them all)
    shown = {k: v for k, v in metrics.items() if "." not in k or k == metric_name}
    return {"kind": kind, **{k: str(v) for k, v in (tags or {}).items()},
            **{METRIC_TAG + k: repr(float(v)) for k, v in shown.items()}, "compared_on": metric_name}


@dataclass
class _Pending:
    """A logged, checked model and the version created for it (None until created)."""

    kind: str
    name: str
    info: Any
    metrics: dict[str, float]
    version: str | None = None


def _log_checked(kind: str, local_dir: Path, example: Any) -> Any:
    if kind not in ("sae", "probe", "classifier"):
        raise ValueError(f"kind must be sae, probe or classifier, got {kind!r}")
    if not local_dir.is_dir():
        raise MissingArtifactsError(f"nothing to register: {local_dir} is not a directory")
    info = log_pyfunc(kind, local_dir, example=example)
    verify_logged_files(info, local_dir, kind)
    return info


def _create_versions(client, pending: list[_Pending], tags: Mapping[str, str] | None, metric_names: Mapping[str, str],
                     description: str = "") -> None:
    run = mlflow.active_run()
    for p in pending:
        _ensure_registered_model(client, p.name, p.kind)
        run_id = run.info.run_id if run is not None else getattr(p.info, "run_id", None)
        mv = client.create_model_version(p.name, source=p.info.model_uri, run_id=run_id,
                                         tags=_version_tags(p.kind, p.metrics, tags, metric_names[p.kind]),
                                         description=description or None, model_id=p.info.model_id)
        p.version = str(mv.version)  # create_model_version waits until the version is READY


def _undo(client, pending: list[_Pending], e: BaseException) -> RegistrationError:
    """Delete the versions created so far, so nothing points at a half-registered set."""
    created = [p for p in pending if p.version is not None]
    failed = []
    for p in created:
        try:
            client.delete_model_version(p.name, p.version)
        except MlflowException as de:  # report both: the registry may be unreachable altogether
            failed.append(f"{p.name} version {p.version} ({type(de).__name__}: {de})")
    what = ", ".join(f"{p.name} version {p.version}" for p in created) or "no version"
    cleanup = (f"deleting them failed too: {'; '.join(failed)}; delete them by hand" if failed else
               "the versions were deleted so nothing points at a half-registered model")
    return RegistrationError(f"registering {what} failed ({type(e).__name__}: {e}); {cleanup}")


def _current_champion(client, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if not _is_missing(e):
            raise
        return None


def _describe_sae(client, p: _Pending, sae_dir: Path, tags: Mapping[str, str] | None) -> None:
    """The SAE version's description is its model card (registry/card.py); a card that cannot be written
    is no reason to lose the registration."""
    try:
        card = sae_card(sae_dir, p.metrics, tags)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"note: no model card for {p.name} version {p.version} ({type(e).__name__}: {e})")
        return
    client.update_model_version(p.name, p.version, description=card[:5000])


def champion_evaluation(client, name: str) -> tuple[str | None, Evaluation | None]:
    """(champion version, its per-image evaluation) of a registered classifier; (None, None) without champion."""
    cur = _current_champion(client, name)
    if cur is None:
        return None, None
    try:
        d, _ = local_copy(f"{name}/{cur.version}")
        return str(cur.version), Evaluation.read(payload_dir(d, "classifier") / EVALUATION_FILE)
    except (MissingArtifactsError, UntrustedModelError, MlflowException, OSError):
        return str(cur.version), None  # nothing to compare with: champion moves only by hand


def register_set(dirs: Mapping[str, str | Path], metrics: Mapping[str, Mapping[str, float]],
                 tags: Mapping[str, str] | None = None, *, alpha: float = 0.05,
                 examples: Mapping[str, Any] | None = None) -> dict[str, Registration]:
    """Register sae, probe and classifier (`dirs[kind]`) as one set; champion moves for all or none."""
    client = registry_client()
    kinds = ("sae", "probe", "classifier")
    metric_names = {"sae": "fvu", "probe": "accuracy", "classifier": "accuracy"}
    pending = [_Pending(k, MODEL_NAMES[k], _log_checked(k, Path(dirs[k]), (examples or {}).get(k)),
                        {m: float(v) for m, v in metrics.get(k, {}).items()}) for k in kinds]
    new_eval = Evaluation.read(Path(dirs["classifier"]) / EVALUATION_FILE)
    try:
        champ_version, champ_eval = champion_evaluation(client, MODEL_NAMES["classifier"])
        decision = promotion_decision(new_eval, champ_eval, alpha, champ_version)
        previous = {p.kind: _current_champion(client, p.name) for p in pending}
        _create_versions(client, pending, tags, metric_names)
        _describe_sae(client, pending[0], Path(dirs["sae"]), tags)
        members = ",".join(f"{p.name}/{p.version}" for p in pending)
        for p in pending:
            client.set_registered_model_alias(p.name, CHALLENGER, p.version)
            for k, v in {**decision.tags(), "set": members}.items():
                client.set_model_version_tag(p.name, p.version, k, v)
        if decision.promote:
            for p in pending:
                client.set_registered_model_alias(p.name, CHAMPION, p.version)
        for p in pending:  # the history of decisions (decisions.py), besides the latest one in the tags above
            record_decision(client, p.name, p.version, f"{'champion' if decision.promote else 'challenger'}: "
                            f"{decision.reason}", latest=False)
            prev = previous[p.kind]
            if decision.promote and prev is not None and str(prev.version) != str(p.version):
                record_decision(client, p.name, prev.version, f"replaced as champion by version {p.version}",
                                latest=False)
    except BaseException as e:
        raise _undo(client, pending, e) from e
    return {p.kind: Registration(p.name, p.version, decision.promote,
                                 str(previous[p.kind].version) if previous[p.kind] is not None else None,
                                 decision.reason, f"models:/{p.name}/{p.version}", p.info.model_uri, p.metrics)
            for p in pending}


def register_model(kind: str, local_dir: str | Path, metrics: Mapping[str, float],
                   tags: Mapping[str, str] | None = None, metric_name: str | None = None, *,
                   name: str | None = None, example: Any = None, description: str = "") -> Registration:
    """Register one model alone: a new `challenger`; `champion` only if the model has none yet (a champion
    that is part of a set is replaced only by `register_set` or by hand). Logs into the active MLflow run."""
    client = registry_client()
    metric_name = metric_name or {"sae": "fvu", "probe": "accuracy", "classifier": "accuracy"}[kind]
    p = _Pending(kind, name or MODEL_NAMES[kind], _log_checked(kind, Path(local_dir), example),
                 {k: float(v) for k, v in (metrics or {}).items() if v is not None})
    try:
        cur = _current_champion(client, p.name)
        _create_versions(client, [p], tags, {kind: metric_name}, description)
        client.set_registered_model_alias(p.name, CHALLENGER, p.version)
        if cur is None:
            client.set_registered_model_alias(p.name, CHAMPION, p.version)
            reason = "no champion yet"
        elif _set_of(cur):
            reason = (f"registered alone: champion stays version {cur.version}, which belongs to the set "
                      f"{_set_of(cur)}; a model registered alone cannot replace one member of a set")
        else:
            reason = (f"registered alone: champion stays version {cur.version} (promote with "
                      f"`revelio registry promote {p.name}/{p.version}`)")
        record_decision(client, p.name, p.version, reason)
    except BaseException as e:
        raise _undo(client, [p], e) from e
    return Registration(p.name, p.version, cur is None, str(cur.version) if cur is not None else None, reason,
                        f"models:/{p.name}/{p.version}", p.info.model_uri, p.metrics)


def promote(uri: str, alias: str = CHAMPION) -> str:
    """Point `alias` of a registered model at the version `uri` names (NAME/version or NAME@other-alias).

    `champion` of a version registered in a set moves for every member of the set.
    """
    ref = parse_uri(uri)
    if ref.kind != "registry":
        raise RegistryError(f"promote needs a registered version (NAME/version or NAME@alias), got {uri!r}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", alias):
        raise RegistryError(f"alias {alias!r} must start with a letter and hold only letters, digits, _ and -")
    client = registry_client()
    mv = resolve_version(ref, client)
    members = [m.split("/") for m in _set_of(mv).split(",") if "/" in m]
    if alias == CHAMPION and not members:
        cur = _current_champion(client, mv.name)
        if cur is not None and str(cur.version) != str(mv.version) and _set_of(cur):
            raise RegistryError(
                f"{mv.name}/{mv.version} was registered alone, but champion {mv.name}/{cur.version} belongs to the "
                f"set {_set_of(cur)}: making it champion would split the champion set (revelio-classifier@champion "
                "would no longer wrap revelio-sae@champion and revelio-probe@champion). Promote a version "
                "registered with its set (`revelio run` registers sets), or register such a model under a name "
                "of its own")
    if alias != CHAMPION or not members:
        members = [[mv.name, str(mv.version)]]
    # a champion that belongs to a set moves with its set: the SAE, probe and classifier stay consistent
    for name, version in members:
        prev = _current_champion(client, name) if alias == CHAMPION else None
        client.set_registered_model_alias(name, alias, version)
        if alias == CHAMPION:
            record_decision(client, name, version, "promoted by hand")
            if prev is not None and str(prev.version) != str(version):
                record_decision(client, name, prev.version, f"replaced as champion by version {version} (by hand)",
                                latest=False)
    return str(mv.version)


def _set_of(mv) -> str:
    """The set a version was registered with ("revelio-sae/2,revelio-probe/2,revelio-classifier/2"), or ""."""
    return (getattr(mv, "tags", None) or {}).get("set", "")


def list_models(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every registered model (or those in `names`) with its aliases and versions (newest first)."""
    client = registry_client()
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




_MODEL_DESCRIPTIONS = {
    "sae": "k-sparse autoencoder on diffusion-backbone activations: feature vectors (n, d_in) → latent codes "
           "(n, n_latents). See registry/README.md.",
    "probe": "linear probe: backbone features or SAE latents (n, n_features) → class probabilities (n, n_classes).",
    "classifier": "images → class probabilities plus the top SAE-latent attributions (backbone + SAE + probe in one "
                  "model). See registry/README.md.",
}
