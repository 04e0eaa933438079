"""SAEs that travel: `revelio registry export` (ours → SAELens, sparsify or our own layout, with a model card)
and `revelio registry import` (SAELens, sparsify, unbox, SAeUron → a registered `revelio-sae` version).

The conversions themselves are in `sae/formats.py`; this module finds the model, writes the card from what the
registry and the training run recorded, and registers imports so they work everywhere ours do (train-probe,
the control report, the demo, export again).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from ..sae import SAELoadError, SparseAutoencoder, read_sae
from ..sae.formats import (
    EXPORT_FORMATS,
    IMPORT_FORMATS,
    ORIGIN_FILE,
    SAEFormatError,
    export_layout,
    import_layout,
)
from .access import local_copy, payload_dir, registry_client
from .card import HEADLINE, model_card, reproduce_command
from .errors import RegistryError
from .refs import MODEL_NAMES
from .register import METRIC_TAG, Registration, register_model

CARD_FILE = "README.md"


class TransferError(RegistryError):
    """An export or import that cannot be done; the message names the model or folder and the reason."""


def _run_metrics(info: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """(metrics, command) of the run that trained a registered SAE: its version's metric tags, and the
    train_sae run's logged metrics (the control gaps) where the tracking store still has it."""
    tags = dict(info.get("tags") or {})
    metrics: dict[str, float] = {}
    for k, v in tags.items():
        if k.startswith(METRIC_TAG):
            try:
                metrics[k[len(METRIC_TAG):]] = float(v)
            except ValueError:
                pass
    run_id = tags.get("run_id.train_sae") or info.get("run_id")
    command = ""
    if run_id:
        try:
            run = registry_client().get_run(run_id)
            metrics.update({k: float(v) for k, v in run.data.metrics.items() if k.startswith("gap.") or k in HEADLINE})
            command = run.data.tags.get("command", "")
        except (MlflowException, RegistryError, OSError):
            pass
    return metrics, command


def _trainer_metrics(payload: Path) -> dict[str, float]:
    """The final metrics the trainer wrote beside the weights (metrics.json), when it is there."""
    try:
        final = json.loads((payload / "metrics.json").read_text()).get("metrics") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return {k: float(v) for k, v in final.items() if k in HEADLINE and isinstance(v, (int, float))}


# --------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportResult:
    path: Path  # the export's root (README.md is here)
    weights_dir: Path  # the folder a loader is pointed at
    format: str


def _source_sae(uri: str) -> tuple[SparseAutoencoder, dict[str, Any], Path]:
    try:
        d, info = local_copy(uri)
        p = payload_dir(d, "sae")
        return read_sae(p), info, p
    except (SAELoadError, OSError, ValueError) as e:
        raise TransferError(f"cannot export {uri}: {e}") from e


def export_sae(uri: str, dest: str | Path, fmt: str) -> ExportResult:
    """Write the SAE that `uri` names (registered, pulled, or a directory) into the new directory `dest`."""
    if fmt not in EXPORT_FORMATS:
        raise TransferError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; export into a new directory")
    sae, info, payload = _source_sae(uri)
    metrics = _trainer_metrics(payload)
    logged, command = _run_metrics(info)
    metrics.update(logged)
    origin = json.loads((payload / ORIGIN_FILE).read_text()) if (payload / ORIGIN_FILE).is_file() else None
    card = model_card(sae, fmt=fmt, source=info, metrics=metrics, origin=origin, command=command)
    extra = {"source": str(info.get("uri", uri)), "command": command or reproduce_command(sae.config)}
    # written beside `dest` first and moved into place: a failed export leaves no half-written directory
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        weights = export_layout(sae, fmt, tmp, metadata=extra)
        if fmt == "revelio" and origin is not None:
            shutil.copy(payload / ORIGIN_FILE, tmp / ORIGIN_FILE)
        (tmp / CARD_FILE).write_text(card)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except SAEFormatError as e:
        raise TransferError(f"cannot export {uri} as {fmt}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(dest, dest / weights.relative_to(tmp), fmt)


# --------------------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportResult:
    sae_dir: Path
    registration: Registration | None


def import_sae(src: str | Path, fmt: str, *, dest: str | Path | None = None, register: bool = True,
               hook_point: str | None = None, timestep: int | None = None, backbone: str | None = None,
               ) -> ImportResult:
    """Convert the SAE in `src` (layout `fmt`) into ours at `dest` and register it as a `revelio-sae` version
    tagged `origin=<fmt>` (in the active MLflow run, or a new `import_sae` run)."""
    if fmt not in IMPORT_FORMATS:
        raise TransferError(f"unknown import format {fmt!r}; choose one of {', '.join(IMPORT_FORMATS)}")
    src = Path(src)
    out = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="revelio-import-"))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; import into a new directory")
    overrides = {"hook_point": hook_point, "timestep": timestep, "backbone": backbone}
    try:
        sae = import_layout(src, fmt, out, **{k: v for k, v in overrides.items() if v is not None})
    except SAEFormatError as e:
        shutil.rmtree(out, ignore_errors=True)
        raise TransferError(f"cannot import {src} as {fmt}: {e}") from e
    origin = json.loads((out / ORIGIN_FILE).read_text())
    card = model_card(sae, fmt="revelio", source={"uri": str(src)}, metrics={}, origin=origin)
    (out / CARD_FILE).write_text(card)
    if not register:
        return ImportResult(out, None)
    c = sae.config
    tags = {"origin": fmt, "origin_path": str(src)[:500], "hook_point": c.hook_point, "timestep": str(c.timestep),
            "backbone": c.backbone}
    run = mlflow.active_run()
    with (mlflow.start_run(run_name=f"import_sae · {fmt} · {c.hook_point or src.name}",
                           tags={"stage": "import_sae", **tags}) if run is None else nullcontext(run)):
        reg = register_model("sae", out, {}, tags=tags, name=MODEL_NAMES["sae"], description=card[:5000])
    return ImportResult(out, reg)

