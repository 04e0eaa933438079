"""Turn explanations and latent reports into what the components show: images, tables, markdown.

Pure functions of numpy arrays and dicts (no Gradio), so they are tested and timed on their own.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

VIEW = 192  # display size of the input and its heatmaps: the model's 16–64 px images are unreadable as is
THUMB = 80  # display size of a dataset image in a top-images strip
GAP = 4


def _upscale(rgb: np.ndarray, size: int) -> Image.Image:
    # nearest keeps the pixels the model saw honest; a smooth resize would invent detail
    return Image.fromarray(np.asarray(rgb, np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def _colormap(v: np.ndarray) -> np.ndarray:
    """v in [0, 1] (H, W) → RGB uint8 (H, W, 3) with matplotlib's inferno (perceptually uniform)."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(v, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(rgb: np.ndarray, heat: np.ndarray, scale: float | None = None, size: int = VIEW) -> np.ndarray:
    """The image with `heat` (h, w) on top: colour shows where the latent fires, its opacity how strongly.

    `scale` is the activation shown at full strength (default: the map's own maximum). Passing the latent's
    strongest activation on the dataset keeps a weak response looking weak.
    """
    heat = np.asarray(heat, np.float32)
    top = float(scale) if scale and scale > 0 else float(heat.max())
    v = heat / top if top > 0 else np.zeros_like(heat)
    # bilinear up-sampling of the coarse map: the hook point's grid is 4–16× coarser than the view
    hv = np.asarray(Image.fromarray(np.clip(v, 0, 1).astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR), np.float32)
    base = np.asarray(_upscale(rgb, size), np.float32)
    colour = _colormap(hv).astype(np.float32)
    alpha = (0.15 + 0.7 * np.clip(hv, 0, 1))[..., None]
    dimmed = base * 0.6  # dim the image a little so the colour reads on bright backgrounds
    return np.clip(dimmed * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def strip(images: list[np.ndarray], size: int = THUMB, gap: int = GAP) -> np.ndarray:
    """Images side by side on a white background (one gallery item per latent)."""
    n = max(1, len(images))
    out = Image.new("RGB", (n * size + (n - 1) * gap, size), (255, 255, 255))
    for i, im in enumerate(images):
        out.paste(_upscale(im, size), (i * (size + gap), 0))
    return np.asarray(out)


def probs_for_label(exp: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in exp["probs"].items()}


def contribution_frame(exp: dict[str, Any]):
    """Bar-chart data: one row per top latent, in contribution order."""
    import pandas as pd

    rows = exp["contributions"]
    return pd.DataFrame({
        "latent": [f"#{r['latent']}" for r in rows],
        "contribution": [round(float(r["contribution"]), 4) for r in rows],
        "activation": [round(float(r["activation"]), 4) for r in rows],
        "weight": [round(float(r["weight"]), 4) for r in rows],
    })


def heatmap_items(exp: dict[str, Any], top_values: np.ndarray | None = None) -> list[tuple[np.ndarray, str]]:
    """(overlay, caption) per top latent."""
    items = []
    for r, heat in zip(exp["contributions"], exp["heatmaps"]):
        scale = float(top_values[r["latent"], 0]) if top_values is not None and top_values.shape[1] else None
        items.append((overlay(exp["rgb"], heat, scale),
                      f"latent {r['latent']}: {r['contribution']:+.3f} "
                      f"(activation {r['activation']:.2f} × weight {r['weight']:+.3f})"))
    return items


def top_image_items(exp: dict[str, Any], thumb, n_top: int, top_values: np.ndarray | None = None,
                    size: int = THUMB) -> list[tuple[np.ndarray, str]]:
    """A grid for a gallery with `n_top + 1` columns: per latent, one row of
    [the input with that latent's heatmap | its top-activating dataset images, padded to n_top].

    `thumb(i)` gives dataset image i. Rows stay aligned because short rows are padded with blank tiles.
    """
    blank = np.full((size, size, 3), 245, np.uint8)
    items: list[tuple[np.ndarray, str]] = []
    for r, heat in zip(exp["contributions"], exp["heatmaps"]):
        scale = float(top_values[r["latent"], 0]) if top_values is not None and top_values.shape[1] else None
        items.append((overlay(exp["rgb"], heat, scale, size=size),
                      f"latent {r['latent']} ({r['contribution']:+.2f}): in your image"))
        labels = r.get("top_labels") or []
        vals = r.get("top_values") or []
        for k in range(n_top):
            if k < len(r["top_images"]):
                i = r["top_images"][k]
                what = labels[k] if k < len(labels) else f"#{i}"
                act = f" ({vals[k]:.2f})" if k < len(vals) else ""
                items.append((np.asarray(_upscale(thumb(i), size)), f"#{i} {what}{act}"))
            else:
                items.append((blank, "—"))
    return items


def explanation_json(exp: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The explanation without pixel arrays: what API users read."""
    return {
        "label": exp["label"], "probs": probs_for_label(exp), "concept": exp.get("concept", ""),
        "logit": exp.get("logit"), "intercept": exp.get("intercept"), "image_id": exp.get("image_id"),
        "input": exp.get("input", {}),
        "contributions": [{k: v for k, v in r.items()} for r in exp["contributions"]],
        "heatmap_grid": list(np.asarray(exp["heatmaps"]).shape[1:]),
        "model": {k: info.get(k) for k in ("model", "version", "alias", "backbone", "hook_point", "timestep")},
    }


def model_markdown(info: dict[str, Any], note: str = "") -> str:
    """The header line: which model, version, backbone, hook point and timestep are being served."""
    ver = f" version {info['version']}" if info.get("version") else ""
    alias = f" (alias `{info['alias']}`)" if info.get("alias") else ""
    sae = info.get("sae") or {}
    lines = [
        f"**Serving** `{info['model']}`{ver}{alias}",
        f"**Backbone** `{info['backbone']}` ({info['backbone_kind']}, {info['backbone_init']} weights) · "
        f"**hook point** `{info['hook_point']}` · **timestep** t={info['timestep']}",
        f"**SAE** {sae.get('variant') or '?'}, {sae.get('n_latents')} latents, k={sae.get('k')}, "
        f"on {sae.get('input')} · **predicts** {info['concept'] or 'label'} "
        f"({len(info['classes'])} classes: {', '.join(info['classes'][:12])}"
        f"{', …' if len(info['classes']) > 12 else ''}) · **images** {info['dataset']} at "
        f"{info['image_size']} px",
    ]
    if info.get("uri") and info["uri"] != info["model"]:
        lines.append(f"from `{info['uri']}`")
    if note:
        lines.append(f"⚠️ {note}")
    return "  \n".join(lines)


def input_notes_markdown(exp: dict[str, Any]) -> str:
    inp = exp.get("input") or {}
    notes = inp.get("notes") or []
    head = (f"Predicted **{exp['label']}** (p = {exp['probs'][exp['label']]:.2f}). "
            f"Bars: each latent's share of the logit for *{exp['label']}* = activation × probe weight.")
    w, h = (inp.get("size") or [0, 0])[:2]
    if w and inp.get("model_size") and (w, h) != (inp["model_size"],) * 2:
        head += f"  \nInput {w}×{h} px, seen by the model at {inp['model_size']}×{inp['model_size']}."
    if notes:
        head += "  \nConverted: " + "; ".join(notes)
    return head


def latent_markdown(rep: dict[str, Any]) -> str:
    j = rep["latent"]
    if not rep["top_images"]:
        return (f"### Latent {j}\nNever active on the dataset's images (a dead latent): no top images, "
                f"frequency {rep['frequency']:.1%} over {rep['n_images']} images.")
    w = rep.get("probe_weights") or {}
    top_w = sorted(w.items(), key=lambda kv: -kv[1])[:3]
    lines = [f"### Latent {j}",
             f"**Activation frequency** {rep['frequency']:.1%} of {rep['n_images']} dataset images · "
             f"**mean when active** {rep['mean_when_active']:.3f} · **strongest** {rep['max_activation']:.3f}"]
    if top_w:
        lines.append("**Probe votes for** " + ", ".join(f"{k} ({v:+.3f})" for k, v in top_w))
    if rep["purity"]:
        lines.append("**Concept purity of its top images** (majority label share; chance in brackets): "
                     + " · ".join(f"{c}: {p['label']} {p['purity']:.0%}"
                                  + (f" ({p['chance']:.0%})" if p.get("chance") is not None else "")
                                  for c, p in rep["purity"].items()))
    return "  \n".join(lines)


def label_distribution_frame(rep: dict[str, Any]):
    import pandas as pd

    rows = [{"concept": c, "label": lab, "top images": n}
            for c, d in rep["label_distribution"].items() for lab, n in d.items()]
    return pd.DataFrame(rows, columns=["concept", "label", "top images"])


def search_frame(rows: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame([{"latent": r["latent"], "selectivity": round(r["selectivity"], 3),
                          "top-image precision": round(r["top_image_precision"], 3),
                          "frequency": round(r["frequency"], 3)} for r in rows],
                        columns=["latent", "selectivity", "top-image precision", "frequency"])


def fewshot_markdown(summary: dict[str, Any]) -> str:
    per = ", ".join(f"{k}: {v}" for k, v in summary["per_class"].items())
    lines = [f"**Few-shot probe trained** on {summary['n_train']} images ({per}) from {summary['source']} · "
             f"train accuracy {summary['train_accuracy']:.0%}"]
    if summary.get("test_accuracy") is not None:
        lines.append(f"**Held-out accuracy** {summary['test_accuracy']:.0%} on {summary['n_test']} test images "
                     f"(chance {summary['chance']:.0%})")
    if summary.get("skipped"):
        lines.append("**Skipped files:** " + " | ".join(summary["skipped"][:5]))
    return "  \n".join(lines)
