"""Building and loading SAEs of every variant: the one place that knows which variants exist."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from ..identity import digest
from .base import (
    CONFIG_FILE,
    SAE_FORMAT,
    SAE_VERSION,
    WEIGHTS_FILE,
    SAEConfigBase,
    SAELoadError,
    SparseAutoencoder,
)
from .batchtopk import BatchTopKSAE, BatchTopKSAEConfig
from .topk import TopKSAE, TopKSAEConfig

VARIANTS: dict[str, tuple[type[SAEConfigBase], type[SparseAutoencoder]]] = {
    "topk": (TopKSAEConfig, TopKSAE),
    "batchtopk": (BatchTopKSAEConfig, BatchTopKSAE),
}


def config_from_dict(data: dict[str, Any], where: str = "config") -> SAEConfigBase:
    data = dict(data)
    name = data.pop("variant", None)
    if name not in VARIANTS:
        raise SAELoadError(f"{where}: unknown SAE variant {name!r}; known variants: {', '.join(sorted(VARIANTS))}")
    cls = VARIANTS[name][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise SAELoadError(f"{where}: unknown field(s) {', '.join(unknown)} for variant {name!r}; "
                           f"known fields: {', '.join(sorted(fields))}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise SAELoadError(f"{where}: {e}") from e


def build_sae(config: SAEConfigBase, seed: int = 0) -> SparseAutoencoder:
    """The model class for a config's variant."""
    for ccls, mcls in VARIANTS.values():
        if type(config) is ccls:
            return mcls(config, seed=seed)
    raise ValueError(f"no SAE variant takes a {type(config).__name__}")


def _resolve_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, CONFIG_FILE):
        p = p.parent
    if not p.exists():
        raise SAELoadError(f"no SAE at {p}: the path does not exist")
    if not p.is_dir():
        raise SAELoadError(f"{p} is not an SAE directory (expected a directory with {WEIGHTS_FILE} and {CONFIG_FILE})")
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (p / f).is_file():
            raise SAELoadError(f"{p} is not a complete SAE directory: {f} is missing")
    return p


def read_sae(path: str | os.PathLike) -> SparseAutoencoder:
    """Load an SAE saved by `SparseAutoencoder.save` from a local directory (or one of its two files)."""
    d = _resolve_dir(path)
    cfg_path = d / CONFIG_FILE
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SAELoadError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != SAE_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise SAELoadError(f"{cfg_path} is not a revelio SAE config (format {fmt!r}, expected {SAE_FORMAT!r})")
    if meta.get("version") != SAE_VERSION:
        raise SAELoadError(f"{cfg_path} has SAE format version {meta.get('version')!r}; this revelio reads "
                           f"version {SAE_VERSION}")
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    config = config_from_dict(meta, where=str(cfg_path))
    try:
        tensors = load_file(str(d / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise SAELoadError(f"{d / WEIGHTS_FILE} could not be read as safetensors: {e}") from e
    model = build_sae(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SAELoadError(f"{d / WEIGHTS_FILE} does not match a {config.variant} SAE: "
                           + (f"missing tensors {missing}" if missing else "")
                           + ("; " if missing and extra else "") + (f"unexpected tensors {extra}" if extra else ""))
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise SAELoadError(
                f"{d}: tensor {name} has shape {got} but config.json says d_in={config.d_in}, "
                f"n_latents={config.n_latents} (expected {shape}); the config and the weights do not belong together")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    model.check_loaded(meta, d)
    model.eval()
    return model


def sae_identity(path: str | os.PathLike) -> str:
    """The identity of a saved SAE (identity.py): the digest of its training key when the trainer wrote it
    (the name of its output directory), else of its config and weights."""
    d = _resolve_dir(path)
    metrics = d / "metrics.json"
    if metrics.is_file():
        key = json.loads(metrics.read_text()).get("training_key")
        if key is not None:
            return digest(key)
    return digest({"config": json.loads((d / CONFIG_FILE).read_text()),
                   "weights": hashlib.sha256((d / WEIGHTS_FILE).read_bytes()).hexdigest()})
