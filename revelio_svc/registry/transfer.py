"""SAEs that travel: `revelio registry export` (ours → SAELens, sparsify or our own layout, with a model card)
and `revelio registry import` (SAELens, sparsify, unbox, SAeUron → a registered `revelio-sae` version).

The conversions themselves are in `sae/formats.py`; this module finds the model, writes the card from what the
registry and the training run recorded, and registers imports so they work everywhere ours do (train-probe,
the control report, the demo, export again).
"""
from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
import tempfile
from collections.abc import Mapping
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
from .errors import RegistryError
from .refs import MODEL_NAMES
from .register import METRIC_TAG, Registration, register_model

CARD_FILE = "README.md"

# backbone id (or the start of one) → its licence; anything else points at the backbone's own card
LICENCES = {
    "builtin:shapes-unet": "Apache-2.0 (trained by this project; ships with revelio-svc)",
    "arch:": "none: a randomly initialised architecture, no published weights",
    "stable-diffusion-v1-5/": "CreativeML OpenRAIL-M",
    "runwayml/stable-diffusion-v1-5": "CreativeML OpenRAIL-M",
    "CompVis/stable-diffusion-v1-4": "CreativeML OpenRAIL-M",
    "stabilityai/stable-diffusion-2": "CreativeML OpenRAIL++-M",
    "stabilityai/stable-diffusion-xl-base-1.0": "CreativeML OpenRAIL++-M",
    "stabilityai/sdxl-turbo": "Stability AI Non-Commercial Research Community License",
    "facebook/DiT": "CC-BY-NC-4.0",
}


# what the card's metric table shows besides the control gaps (throughput and losses say little to a reader)
HEADLINE = ("fvu", "explained_variance", "l0", "dead_frac", "l2_ratio")


class TransferError(RegistryError):
    """An export or import that cannot be done; the message names the model or folder and the reason."""


def backbone_licence(backbone: str) -> str:
    for prefix, lic in LICENCES.items():
        if backbone == prefix or backbone.startswith(prefix):
            return lic
    if not backbone:
        return "unknown (the SAE does not record its backbone)"
    return f"see the model card of `{backbone}`; the SAE is derived from its activations"


# --------------------------------------------------------------------------- the card
def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def reproduce_command(cfg) -> str:
    """The `revelio train-sae` line that trains an SAE like this one on the same feature store."""
    parts = ["revelio train-sae", f"--sae.hook_point {cfg.hook_point}", f"--sae.timestep {cfg.timestep}",
             f"--sae.variant {cfg.variant}", f"--sae.k {cfg.k}",
             f"--sae.expansion {max(1, cfg.n_latents // cfg.d_in)}", f"--sae.input {cfg.input}",
             f"--sae.normalize {cfg.normalize}"]
    if cfg.normalize == "whiten":
        parts.append(f"--sae.whiten_power {cfg.whiten_power}")
    if cfg.backbone:
        parts.append(f"--backbone.id {cfg.backbone}")
    return " ".join(parts)


def model_card(sae: SparseAutoencoder, *, fmt: str, source: Mapping[str, Any], metrics: Mapping[str, float],
               origin: Mapping[str, Any] | None = None, command: str = "") -> str:
    """The README.md of an export (and the description of an imported version)."""
    c = sae.config
    title = c.hook_point or "unknown hook point"
    registered = f"{source['name']}/{source['version']}" if source.get("name") and source.get("version") else ""
    where = registered or str(source.get("uri", "")) or "a local directory"
    if origin and not command:
        command = f"revelio registry import {origin.get('source', '<folder>')} --format {origin.get('format')}"
    selection = ("exactly k per row, then ReLU" if c.variant == "topk" else
                 f"ReLU where the pre-activation exceeds {_fmt(float(getattr(sae, 'threshold', 0.0)))} (BatchTopK)")
    lines = [f"# Sparse autoencoder: `{title}` at t={c.timestep}", "",
             f"A {c.variant} sparse autoencoder with {c.n_latents} latents (k={c.k}) on {c.d_in}-channel "
             f"activations of `{c.backbone or 'an unrecorded backbone'}`.", "",
             "| field | value |", "|---|---|",
             f"| backbone | `{c.backbone or 'unknown'}` ({c.backbone_init or 'init not recorded'}) |",
             f"| backbone licence | {backbone_licence(c.backbone)} |",
             f"| hook point | `{c.hook_point or 'unknown'}`"
             + (" (capture mode update: the block's output minus its input)" if c.hook_point.endswith(":update")
                else "")
             + " |",
             f"| timestep | {c.timestep if c.timestep >= 0 else 'not recorded'} |",
             f"| inputs | {c.input} ({'one vector per spatial position' if c.input == 'tokens' else c.pooling + '-pooled'})"
             " |",
             f"| trained on | dataset fingerprint `{c.dataset_fingerprint or 'not recorded'}`, feature store "
             f"`{c.store_config_hash or 'not recorded'}`"
             + (f", dataset `{source['tags']['dataset']}`" if source.get("tags", {}).get("dataset") else "") + " |",
             f"| selection | {selection} |",
             f"| source | {where} |", ""]
    if fmt in ("saelens", "sparsify"):
        lines += ["## Input normalisation is folded into the weights", "",
                  f"This SAE was trained with `normalize={c.normalize}`"
                  + (" (the input minus its mean, times a whitening matrix)" if c.normalize == "whiten" else "")
                  + ". Neither format has a field for that, so the affine normalisation and the pre-encoder bias "
                  "are folded exactly into the exported linear maps: with x_n = (x − μ) M, "
                  "W_enc' = W_enc Mᵀ, b_enc' = b_enc − (μ M + b_pre) W_encᵀ, W_dec' = W_dec M⁻¹, "
                  "b_dec' = b_pre M⁻¹ + μ (computed in float64). The exported SAE takes **raw** activations and "
                  "returns reconstructions in the raw space; `normalize_activations` is `none`. Decoder rows are "
                  "therefore not unit norm.", ""]
    if origin:
        lines += ["## Origin", "", f"Imported from the `{origin.get('format')}` layout"
                  + (f" ({origin['note']})" if origin.get("note") else "") + ".", ""]
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if shown:
        gaps = {k: v for k, v in shown.items() if k.startswith("gap.")}
        head = {k: v for k, v in shown.items() if k in HEADLINE}
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(float(v))} |" for k, v in sorted(head.items())]
        if gaps:
            lines += ["", "Against matched controls (`gap.*`: the SAE vs a random dictionary with its width, k, "
                      "centring and normalisation; ratios for shares and counts, differences for accuracies):", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(float(v))} |" for k, v in sorted(gaps.items())]
        lines.append("")
    else:
        lines += ["## Metrics", "", "No training metrics were recorded with this model"
                  + (" (it was imported)." if origin else "."), ""]
    lines += ["## How it was made", "", "```bash", command or reproduce_command(c), "```", "",
              "## Loading", ""]
    if fmt == "saelens":
        lines += ["```python", "from sae_lens import SAE", "sae = SAE.load_from_disk('.')", "codes = sae.encode(x)",
                  "```", ""]
    elif fmt == "sparsify":
        lines += ["```python", "from sparsify import SparseCoder",
                  f"sae = SparseCoder.load_from_disk('{Path(c.hook_point or 'sae').name}')",
                  "top_acts, top_indices, _ = sae.encode(x)", "```", ""]
    else:
        lines += ["```python", "from revelio_svc.registry import load_sae", "sae = load_sae('.')",
                  "codes = sae.encode(x)", "```", ""]
    return "\n".join(lines)


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

