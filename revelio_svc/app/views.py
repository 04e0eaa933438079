"""Turn explanations and latent reports into what the components show: images, tables, markdown.

Pure functions of numpy arrays and dicts (no Gradio), so they are tested and timed on their own.

Many small pictures are drawn into one image (`Sheet`): a request that shows 6 latents × 7 tiles sends one
file instead of 48, which is what a client pays for (each file is one more HTTP request). A click on a sheet
comes back as pixel coordinates; `Sheet.cell(x, y)` says which tile it hit.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

VIEW = 192  # display size of the input and its heatmaps: the model's 16–64 px images are unreadable as is
THUMB = 80  # display size of a dataset image in a top-images strip
GAP = 4


def _upscale(rgb: np.ndarray, size: int) -> Image.Image:
    # nearest keeps the pixels the model saw honest; a smooth resize would invent detail
    return Image.fromarray(np.asarray(rgb, np.uint8)).resize((size, size), Image.Resampling.NEAREST)


_INFERNO: np.ndarray | None = None


def _colormap(v: np.ndarray) -> np.ndarray:
    """v in [0, 1] (H, W) → RGB uint8 (H, W, 3) with matplotlib's inferno (perceptually uniform), via a
    256-entry table: a lookup per pixel instead of matplotlib's interpolation (a sixth of the time)."""
    global _INFERNO
    if _INFERNO is None:
        from matplotlib import (
            colormaps,  # matplotlib's import is slow; only for the first heatmap
        )

        _INFERNO = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return _INFERNO[np.round(np.clip(v, 0, 1) * 255).astype(np.intp)]


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


def probs_for_label(exp: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in exp["probs"].items()}


def contribution_frame(exp: dict[str, Any]):
    """Bar-chart data: one row per top latent, in contribution order."""
    import pandas as pd

    rows = exp["contributions"]

    def opt(r, k):  # density and selectivity are absent for classifiers saved without latent statistics
        return None if r.get(k) is None else round(float(r[k]), 4)

    return pd.DataFrame({
        "latent": [f"#{r['latent']}" for r in rows],
        "contribution": [round(float(r["contribution"]), 4) for r in rows],
        "activation": [round(float(r["activation"]), 4) for r in rows],
        "weight": [round(float(r["weight"]), 4) for r in rows],
        "density": [opt(r, "density") for r in rows],
        "selectivity": [opt(r, "selectivity") for r in rows],
        "dense": ["dense" if r.get("dense") else "" for r in rows],
    })


def explanation_quality_markdown(exp: dict[str, Any]) -> str:
    """How dense the shown latents are, and the classifier's explanation precision against its controls."""
    lines = []
    rows = exp["contributions"]
    if rows and rows[0].get("density") is not None:
        dense = sum(1 for r in rows if r.get("dense"))
        lines.append(f"Beside each latent: **density** (share of the dataset's images it fires on) and "
                     f"**selectivity** (share of its top images that are *{exp['label']}*). "
                     + (f"{exp.get('hidden_dense', 0)} dense latents (firing on > 50 % of images) hidden."
                        if exp.get("hidden_dense") else f"{dense} of the {len(rows)} shown are dense (> 50 %)."))
    q = exp.get("explanation_precision") or {}
    if q.get("explanation_precision") is not None:
        lines.append(
            f"Explanation precision of this classifier: **{q['explanation_precision']:.2f}** of the top-3 latents' "
            f"top-8 images carry the predicted label on correctly classified test images (matched random "
            f"dictionary {q.get('explanation_precision_random', float('nan')):.2f}, raw channels "
            f"{q.get('explanation_precision_channels', float('nan')):.2f}, chance "
            f"{q.get('explanation_precision_chance', float('nan')):.2f}).")
    return "  \n".join(lines)


def explanation_json(exp: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The explanation without pixel arrays: what API users read."""
    return {
        "label": exp["label"], "probs": probs_for_label(exp), "concept": exp.get("concept", ""),
        "logit": exp.get("logit"), "intercept": exp.get("intercept"), "image_id": exp.get("image_id"),
        "attribution": exp.get("attribution"), "runner_up": exp.get("runner_up"), "margin": exp.get("margin"),
        "hidden_dense": exp.get("hidden_dense", 0), "explanation_precision": exp.get("explanation_precision") or {},
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
    if exp.get("attribution", "logit") == "contrastive" and exp.get("runner_up"):
        how = (f"Bars: each latent's share of the margin between *{exp['label']}* and the runner-up "
               f"*{exp['runner_up']}* = activation × (its weight for {exp['label']} − for {exp['runner_up']}).")
    else:
        how = f"Bars: each latent's share of the logit for *{exp['label']}* = activation × probe weight."
    head = f"Predicted **{exp['label']}** (p = {exp['probs'][exp['label']]:.2f}). {how}"
    quality = explanation_quality_markdown(exp)
    if quality:
        head += "  \n" + quality
    w, h = (inp.get("size") or [0, 0])[:2]
    if w and inp.get("model_size") and (w, h) != (inp["model_size"],) * 2:
        head += f"  \nInput {w}×{h} px, seen by the model at {inp['model_size']}×{inp['model_size']}."
    if inp.get("dataset_index") is not None:
        head += f"  \nThis is {inp['name']} (its own training-time noise, so exactly what the SAE saw)."
    resized = [n for n in notes if n.startswith("resized from")]
    converted = [n for n in notes if n not in resized]
    for n in resized:
        head += f"  \n⚠️ **Input {n.split(':')[0]}**:{n.split(':', 1)[1]}"
    if converted:
        head += "  \nConverted: " + "; ".join(converted)
    return head


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


# --------------------------------------------------------------------------- sheets: many tiles, one image
CAPTION = 16  # px of caption text above each sheet row
_FONT_CACHE: dict[int, Any] = {}


def _font(size: int = 12):
    if size not in _FONT_CACHE:
        try:
            _FONT_CACHE[size] = ImageFont.load_default(size=size)
        except TypeError:  # Pillow without FreeType: the fixed bitmap font
            _FONT_CACHE[size] = ImageFont.load_default()
    return _FONT_CACHE[size]


@dataclass(frozen=True)
class Sheet:
    """Where the tiles of a composite image are: rows of `cols` tiles, each row under a caption line."""

    rows: int
    cols: int
    tile: int
    gap: int = GAP
    caption: int = CAPTION

    @property
    def size(self) -> tuple[int, int]:
        return (self.cols * (self.tile + self.gap) - self.gap,
                self.rows * (self.caption + self.tile + self.gap) - self.gap)

    def origin(self, r: int, c: int) -> tuple[int, int]:
        return c * (self.tile + self.gap), r * (self.caption + self.tile + self.gap) + self.caption

    def cell(self, x: float, y: float) -> tuple[int, int] | None:
        """(row, column) of the tile at pixel (x, y); None for a gap, a caption or outside."""
        r, ry = divmod(int(y), self.caption + self.tile + self.gap)
        c, cx = divmod(int(x), self.tile + self.gap)
        if not (0 <= r < self.rows and 0 <= c < self.cols) or ry < self.caption or ry >= self.caption + self.tile \
                or cx >= self.tile:
            return None
        return r, c


_ASCII = str.maketrans({"×": "x", "α": "alpha", "−": "-", "–": "-", "·": "|", "≤": "<=", "≥": ">="})


def _ascii(text: str) -> str:
    """PIL's built-in font has no glyphs for ×, α, …: captions drawn into images use ASCII stand-ins."""
    return text.translate(_ASCII)


def draw_sheet(rows: Sequence[Sequence[np.ndarray | None]], captions: Sequence[str], tile: int = THUMB,
               cols: int | None = None, labels: Sequence[Sequence[str]] | None = None) -> tuple[np.ndarray, Sheet]:
    """Rows of RGB tiles (any size, shown at `tile` px; None = blank) with a caption above each row.

    `labels[r][c]`, when given, is printed small in the tile's corner (e.g. the label of a dataset image).
    """
    cols = cols or max((len(r) for r in rows), default=1)
    sheet = Sheet(max(1, len(rows)), max(1, cols), tile)
    w, h = sheet.size
    canvas = np.full((h, w, 3), 255, np.uint8)
    for r, row in enumerate(rows):  # tiles by array slicing: a sheet is ~50 of them
        for c, im in enumerate(row[:cols]):
            x, y = sheet.origin(r, c)
            if im is None:
                canvas[y:y + tile, x:x + tile] = 245
            else:
                a = np.asarray(im, np.uint8)
                canvas[y:y + tile, x:x + tile] = a if a.shape[:2] == (tile, tile) else np.asarray(_upscale(a, tile))
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    font, small = _font(12), _font(10)
    for r, row in enumerate(rows):
        _, y0 = sheet.origin(r, 0)
        if r < len(captions) and captions[r]:
            draw.text((2, y0 - CAPTION + 1), _ascii(captions[r]), fill=(30, 30, 30), font=font)
        for c, im in enumerate(row[:cols]):
            text = _ascii(labels[r][c]) if im is not None and labels and r < len(labels) and c < len(labels[r]) else ""
            if text:
                x, y = sheet.origin(r, c)
                tw = draw.textlength(text, font=small)
                draw.rectangle((x, y + tile - 13, x + tw + 4, y + tile - 1), fill=(0, 0, 0))
                draw.text((x + 2, y + tile - 13), text, fill=(255, 255, 255), font=small)
    return np.asarray(out), sheet


_TILES: OrderedDict[tuple, np.ndarray] = OrderedDict()  # labelled dataset tiles: the same ones come back often
_TILES_LOCK = threading.Lock()
_TILES_MAX = 4096


def labelled_tile(thumb, index: int, text: str, tile: int = THUMB) -> np.ndarray:
    """Dataset image `index` at `tile` px with `text` in its corner, cached (drawing text is most of a sheet's
    cost, and a latent's top images are the same on every request)."""
    key = (id(getattr(thumb, "__self__", thumb)), int(index), text, tile)
    with _TILES_LOCK:
        if key in _TILES:
            _TILES.move_to_end(key)
            return _TILES[key]
    img, _ = draw_sheet([[thumb(index)]], [""], tile, labels=[[text]])
    out = img[CAPTION:CAPTION + tile, :tile].copy()
    with _TILES_LOCK:
        _TILES[key] = out
        while len(_TILES) > _TILES_MAX:
            _TILES.popitem(last=False)
    return out


def explanation_sheet(exp: dict[str, Any], thumb, n_top: int, top_values: np.ndarray | None = None,
                      tile: int = THUMB) -> tuple[np.ndarray, Sheet]:
    """Per top latent, one row: the input with that latent's heatmap, then its top-activating dataset images."""
    rows, caps, labs = [], [], []
    for r, heat in zip(exp["contributions"], exp["heatmaps"]):
        scale = float(top_values[r["latent"], 0]) if top_values is not None and top_values.shape[1] else None
        tops = r["top_images"][:n_top]
        labels = r.get("top_labels") or []
        rows.append([overlay(exp["rgb"], heat, scale, size=tile)]
                    + [labelled_tile(thumb, i, f"#{i} {labels[k]}" if k < len(labels) else f"#{i}", tile)
                       for k, i in enumerate(tops)])
        caps.append(f"latent {r['latent']}: {r['contribution']:+.3f} = activation {r['activation']:.2f} × weight "
                    f"{r['weight']:+.3f}")
        labs.append(["you"])
    if not rows:
        return draw_sheet([[exp["rgb"]]], ["no latent is active on this image"], tile)
    return draw_sheet(rows, caps, tile, cols=n_top + 1, labels=labs)


# --------------------------------------------------------------------------- latent pages
def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def latent_page_markdown(st: dict[str, Any]) -> str:
    """The head of a latent page: firing density, strength, best concept, probe votes, dissection."""
    j = st["latent"]
    sample = (f"{st['n_images']:,} dataset images" if st["n_images"] >= st.get("n_dataset", 0)
              else f"a sample of {st['n_images']:,} of the dataset's {st['n_dataset']:,} images")
    if st["n_active"] == 0 and not st["top_images"]:
        return (f"### Latent {j}\nNever active on {sample} (a dead latent): no top images, no statistics. "
                "Pick another latent on the atlas or search by label.")
    w = st.get("probe_weights") or {}
    top_w = sorted(w.items(), key=lambda kv: -kv[1])[:3]
    lines = [f"### Latent {j}" + (f" — best concept: **{st['best_concept']}**" if st.get("best_concept") else ""),
             f"**Fires on** {st['frequency']:.1%} of {sample} ({st['n_active']:,} images) · "
             f"**mean when active** {st['mean_when_active']:.3f} · **strongest** {st['max_activation']:.3f}"]
    if top_w:
        lines.append("**Probe weights it feeds** (class: weight per unit of activation): "
                     + ", ".join(f"{k} {v:+.3f}" for k, v in top_w)
                     + (f" · {len(w) - 3} more in the JSON" if len(w) > 3 else ""))
    if st.get("dissection_iou"):
        lines.append("**Dissection IoU** (its best concepts): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in list(st["dissection_iou"].items())[:3])
                     + f" · {st.get('dissection_note', '')}")
    else:
        lines.append(f"**Dissection IoU**: {st.get('dissection_note') or 'not available for this model'}")
    lines.append(f"Purity = share of its top {st['top_n']} images with the majority label; control: "
                 f"{st['control_name']}.")
    return "  \n".join(lines)


def concept_frame(st: dict[str, Any]):
    """Purity per concept next to the control's and chance, with the label distribution of the top images."""
    import pandas as pd

    rows = [{"concept": c["concept"], "majority label": c["majority"] or "—", "purity": _pct(c["purity"]),
             "control purity": _pct(c["control_purity"]), "chance": _pct(c["chance"]),
             "beats control units": _pct(c["beats_control"]),
             "labels of top images": ", ".join(f"{k} {v}" for k, v in c["distribution"].items())}
            for c in st["concepts"]]
    return pd.DataFrame(rows, columns=["concept", "majority label", "purity", "control purity", "chance",
                                       "beats control units", "labels of top images"])


def histogram_frame(st: dict[str, Any]):
    import pandas as pd

    e, n = st["histogram_edges"], st["histogram_counts"]
    return pd.DataFrame({"activation": [f"{(e[i] + e[i + 1]) / 2:.2f}" for i in range(len(n))],
                         "images": [int(c) for c in n]})


def cofire_frame(st: dict[str, Any]):
    import pandas as pd

    return pd.DataFrame([{"latent": r["latent"], "jaccard": round(r["jaccard"], 3), "images together": r["both"]}
                         for r in st["cofiring"]], columns=["latent", "jaccard", "images together"])


def latent_sheet(st: dict[str, Any], images: Sequence[np.ndarray], maps: np.ndarray | None, labels: Sequence[str],
                 tile: int = 96, per_row: int = 6) -> tuple[np.ndarray, Sheet]:
    """The latent's top dataset images with its heatmap on each, `per_row` to a row."""
    scale = st["max_activation"] or None
    tiles = [overlay(im, maps[k], scale, size=tile) if maps is not None else np.asarray(_upscale(im, tile))
             for k, im in enumerate(images)]
    rows = [tiles[s:s + per_row] for s in range(0, len(tiles), per_row)] or [[None]]
    labs = [list(labels[s:s + per_row]) for s in range(0, len(tiles), per_row)]
    caps = ["where it fires most (click one to explain it)"] + [""] * (len(rows) - 1)
    return draw_sheet(rows, caps, tile, cols=per_row, labels=labs)


# --------------------------------------------------------------------------- the atlas
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
                    [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [57, 59, 121],
                    [173, 73, 74]], np.uint8)
ATLAS_SIZE = 560
ATLAS_PAD = 10


def categorical_colours(values: Sequence[Any]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """RGB per point and the legend [(value, colour)], most frequent values first; None is grey."""
    vals = ["—" if v is None else str(v) for v in values]
    uniq, counts = np.unique(vals, return_counts=True)
    order = [u for _, u in sorted(zip(-counts, uniq))]
    order = [u for u in order if u != "—"] + (["—"] if "—" in order else [])
    cmap = {u: (PALETTE[i % len(PALETTE)] if u != "—" else np.array([190, 190, 190], np.uint8))
            for i, u in enumerate(order)}
    return np.stack([cmap[v] for v in vals]) if vals else np.zeros((0, 3), np.uint8), [(u, cmap[u]) for u in order]


def continuous_colours(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """RGB per point on a diverging map (blue < 0 < red when lo < 0 < hi); NaN is grey."""
    from matplotlib import colormaps

    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    lo = float(np.nanmin(v)) if lo is None and ok.any() else (lo or 0.0)
    hi = float(np.nanmax(v)) if hi is None and ok.any() else (hi or 1.0)
    m = max(abs(lo), abs(hi), 1e-9)
    rgb = (colormaps["coolwarm"]((np.nan_to_num(v) / m + 1) / 2)[:, :3] * 255).astype(np.uint8)
    rgb[~ok] = (190, 190, 190)
    return rgb


def render_atlas(xy: np.ndarray, colours: np.ndarray, size: int = ATLAS_SIZE, point: int = 2) -> np.ndarray:
    """Every point as a small square in a `size` px raster (later points on top; the caller shuffles the draw
    order). Points map to [pad, size − pad] on both axes; 50k points are one raster, not 50k plot marks."""
    img = np.full((size, size, 3), 255, np.uint8)
    if len(xy):
        p = atlas_pixels(xy, size)
        for dx in range(-point, point + 1):
            for dy in range(-point, point + 1):
                img[np.clip(p[:, 1] + dy, 0, size - 1), np.clip(p[:, 0] + dx, 0, size - 1)] = colours
    return img


def atlas_pixels(xy: np.ndarray, size: int = ATLAS_SIZE) -> np.ndarray:
    return np.round(ATLAS_PAD + np.asarray(xy) * (size - 2 * ATLAS_PAD)).astype(np.int64)


def atlas_coords(px: float, py: float, size: int = ATLAS_SIZE) -> tuple[float, float]:
    """A click's pixel → the atlas' [0, 1] coordinates (inverse of atlas_pixels)."""
    return (px - ATLAS_PAD) / (size - 2 * ATLAS_PAD), (py - ATLAS_PAD) / (size - 2 * ATLAS_PAD)


def legend_markdown(legend: list[tuple[str, np.ndarray]], title: str, limit: int = 14) -> str:
    items = [f'<span style="color:#{int(c[0]):02x}{int(c[1]):02x}{int(c[2]):02x}">■</span> {v}'
             for v, c in legend[:limit]]
    more = f" · … {len(legend) - limit} more" if len(legend) > limit else ""
    return f"**{title}**: " + " · ".join(items) + more


# --------------------------------------------------------------------------- steering and deletion
def steering_sheet(images: np.ndarray, variants: Sequence[str], seeds: Sequence[int], tile: int = 96
                   ) -> tuple[np.ndarray, Sheet]:
    """images (n_variants, n_seeds, S, S, 3): one row per variant (the baseline first), one column per seed."""
    rows = [list(images[v]) for v in range(images.shape[0])]
    caps = [f"{name}" + (" (no steering)" if v == 0 else "") for v, name in enumerate(variants)]
    labs = [[f"seed {s}" for s in seeds] for _ in rows]
    return draw_sheet(rows, caps, tile, cols=len(seeds), labels=labs)


# the two series of the deletion curve; short, so the legend (Vega-Lite cuts labels at 160 px) shows them whole
DELETION_ORDERS = ("top first", "random (control)")
# the plot's axis and legend titles
DELETION_PLOT = {"x_title": "latents removed", "color_title": "order"}


def deletion_frame(curve: dict[str, Any]):
    """Line-plot data: the probability after removing 0, 1, 2, … latents, for both orders.

    The count is a category (a string, in `deletion_x_order`): a numeric axis would put ticks at
    half-steps (0.5 latents removed) when few latents are removed."""
    import pandas as pd

    n = len(curve["prob"])
    return pd.DataFrame({"latents removed": deletion_x_order(curve) * 2,
                         "probability": [round(p, 4) for p in (*curve["prob"], *curve["prob_random"])],
                         "order": [DELETION_ORDERS[0]] * n + [DELETION_ORDERS[1]] * n})


def deletion_x_order(curve: dict[str, Any]) -> list[str]:
    return [str(i) for i in range(len(curve["prob"]))]


def contribution_y_lim(df) -> list[float | None]:
    """The contribution axis starts at 0 (or below, for a negative bar): from the smallest bar, bars of
    similar height would look like nothing."""
    low = float(df["contribution"].min()) if len(df) else 0.0
    return [min(0.0, low), None]


def deletion_markdown(curve: dict[str, Any]) -> str:
    removed = ", ".join(f"#{j}" for j in curve["removed"][:8]) + (" …" if len(curve["removed"]) > 8 else "")
    return (f"Removing the latents that pushed hardest toward **{curve['label']}** ({removed}) one by one: "
            f"p({curve['label']}) goes from {curve['prob'][0]:.2f} to {curve['prob'][-1]:.2f}. "
            f"Area under the curve **{curve['auc']:.3f}** (random order: {curve['auc_random']:.3f}); "
            "lower than random means the explanation names latents the prediction really rests on.")
