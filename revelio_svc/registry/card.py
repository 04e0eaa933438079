"""The model card of an SAE: what it was trained on, hook point, timestep, its metrics against the matched
controls, the command that made it and the backbone's licence. Written as README.md by `revelio registry
export`, and as the description of the SAE versions that `register_set` and `revelio registry import` create.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..sae import SparseAutoencoder, read_sae

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


def sae_card(sae_dir: str | Path, metrics: Mapping[str, float], tags: Mapping[str, str] | None = None) -> str:
    """The card of a saved SAE directory being registered (its metrics as logged by its run)."""
    return model_card(read_sae(sae_dir), fmt="revelio", source={"tags": dict(tags or {})}, metrics=metrics)
