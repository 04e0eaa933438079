"""Model references: what a `uri` given to the loaders may be, classified without contacting anything.

    revelio-sae@champion           NAME@alias
    revelio-sae/3                  NAME/version
    models:/revelio-sae@champion   models:/NAME@alias, models:/NAME/version, models:/m-<logged model id>
    runs:/<run id>/<path>          a model (or a raw saved SAE/probe/classifier directory) logged to a run
    s3://..., file://...           any artifact URI MLflow can download
    /some/dir                      a local directory: one written by `pull`, or a raw saved model directory
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_NAMES = {"sae": "revelio-sae", "probe": "revelio-probe", "classifier": "revelio-classifier",
               "backbone": "revelio-backbone"}
KINDS = {v: k for k, v in MODEL_NAMES.items()}
CHAMPION = "champion"
CHALLENGER = "challenger"


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


def _name_ref(uri: str, body: str, bare_is_champion: bool) -> ModelRef | None:
    """NAME@alias, NAME/version (and a bare NAME meaning its champion) → a registry reference."""
    if m := re.fullmatch(rf"({_NAME})@([A-Za-z0-9_\-]+)", body):
        return ModelRef(uri, "registry", name=m.group(1), alias=m.group(2))
    if m := re.fullmatch(rf"({_NAME})/(\d+)", body):
        return ModelRef(uri, "registry", name=m.group(1), version=m.group(2))
    if bare_is_champion and re.fullmatch(_NAME, body):
        return ModelRef(uri, "registry", name=body, alias=CHAMPION)
    return None


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
        ref = _name_ref(s, body, bare_is_champion=True)
        if ref is None:
            raise ValueError(f"cannot read the model URI {s!r}: expected models:/NAME@alias, models:/NAME/version "
                             "or models:/m-<id>")
        return ref
    if re.match(r"^[a-z][a-z0-9+.\-]*:/", s):  # runs:/, s3://, file://, mlflow-artifacts:/, http(s)://
        return ModelRef(s, "artifact")
    ref = _name_ref(s, s, bare_is_champion=s in KINDS)  # a bare registered-model name means its champion
    if ref is not None:
        return ref
    raise ValueError(f"{s!r} is neither an existing directory nor a model reference; use NAME@alias "
                     f"(e.g. revelio-sae@champion), NAME/version, models:/..., runs:/<run id>/<path> or a "
                     "directory written by `revelio registry pull`")
