"""What each SAE latent responds to: top images, frequency, labels; tables, image grids and heatmaps.

`interpret_sae` runs the whole interpretation of a trained SAE on the rows of its feature store:

- image-level latents (`image_latents`, ranked by the sparse codes) for every row of the store;
- `latents.parquet`: one row per latent — n_active, frequency, mean/max activation, top rows, their
  dataset indices and activations, and per concept the majority label, its purity and the label counts
  over the top images;
- `purity.parquet` + `purity.png`: per-unit label purity per concept for the SAE, random unit directions
  and raw channels, `summary.json` with `sigma_label`, purity summaries and chance;
- `grids/latent_XXXXX.png`: the top images of the most active latents; for token SAEs each image
  carries the latent's spatial map as a heatmap.

Rows: every row of the store (train and test); the SAE never sees labels, so using the train rows
leaks nothing and gives more images per latent.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonmeta import json_default
from .knn import ATLAS_POOLING, knn_accuracy
from .purity import (
    compare_purity,
    direction_activations,
    majority,
    plot_purity_distributions,
    random_directions,
    sigma_label,
    top_rows,
)
from .report import (
    HEADLINE_K,
    VALIDATION_FRACTION,
    ControlReport,
    ReportData,
    compared_metric,
    control_report,
    dissection_rows,
    headline_keys,
    report_rows,
    split_roles,
)


# --------------------------------------------------------------------------- tables
def latent_table(acts: np.ndarray, labels: dict[str, np.ndarray] | None = None,
                 label_names: dict[str, list[str]] | None = None, top_n: int = 10,
                 index: np.ndarray | None = None):
    """One row per latent of image-level activations `acts` (n_images, n_latents) → pandas DataFrame."""
    import pandas as pd

    acts = np.asarray(acts)
    n_img, n_lat = acts.shape
    active = acts > 0
    n_active = active.sum(0)
    top = top_rows(acts, top_n)  # (n_lat, top_n)
    top_act = np.take_along_axis(acts.T, top, axis=1)
    idx = np.asarray(index) if index is not None else np.arange(n_img)
    data: dict[str, Any] = {
        "latent": np.arange(n_lat),
        "n_active": n_active.astype(np.int64),
        "frequency": n_active / max(n_img, 1),
        "mean_activation": acts.mean(0).astype(np.float64),
        "max_activation": acts.max(0).astype(np.float64) if n_img else np.zeros(n_lat),
        # only images where the latent is active count as its top images
        "top_rows": [top[j][top_act[j] > 0].tolist() for j in range(n_lat)],
        "top_indices": [idx[top[j][top_act[j] > 0]].tolist() for j in range(n_lat)],
        "top_activations": [top_act[j][top_act[j] > 0].astype(float).tolist() for j in range(n_lat)],
    }
    for c, lab in (labels or {}).items():
        names = (label_names or {}).get(c) or [str(i) for i in range(int(np.max(lab)) + 1)]
        maj, share, counts = majority(acts, lab, top_n)
        dead = n_active == 0
        data[f"{c}.majority"] = [None if dead[j] else names[maj[j]] for j in range(n_lat)]
        data[f"{c}.purity"] = np.where(dead, np.nan, share)
        data[f"{c}.distribution"] = [json.dumps({names[i]: int(v) for i, v in enumerate(row) if v})
                                     for row in counts]
    return pd.DataFrame(data)


def save_table(df, path: str | Path) -> Path:
    """Parquet (pyarrow); list columns stay lists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


# --------------------------------------------------------------------------- grids
def _colormap(x: np.ndarray) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["inferno"](np.clip(x, 0, 1))[..., :3] * 255).astype(np.float32)


def render_grid(images: np.ndarray, maps: np.ndarray | None = None, scale: int | None = None,
                alpha: float = 0.65, pad: int = 2, cols: int | None = None) -> np.ndarray:
    """Tile uint8 images (m, S, S, 3) into one image; overlay `maps` (m, h, w) as heatmaps if given.

    Heatmaps share one scale (the largest value over all maps), so brighter = stronger activation.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (m, S, S, 3) uint8, got shape {images.shape}")
    m, S = images.shape[0], images.shape[1]
    scale = scale or max(1, 96 // S)
    T = S * scale
    cols = cols or min(m, 5)
    rows = (m + cols - 1) // cols
    canvas = np.full((rows * (T + pad) + pad, cols * (T + pad) + pad, 3), 255, np.uint8)
    vmax = float(np.max(maps)) if maps is not None and np.size(maps) and np.max(maps) > 0 else 1.0
    for i in range(m):
        img = np.asarray(Image.fromarray(images[i]).resize((T, T), Image.NEAREST), np.float32)
        if maps is not None:
            hm = Image.fromarray((np.asarray(maps[i], np.float32) / vmax).astype(np.float32), mode="F")
            h = np.clip(np.asarray(hm.resize((T, T), Image.BILINEAR)), 0, 1)[..., None]
            img = img * (1 - alpha * h) + _colormap(h[..., 0]) * (alpha * h)
        r, c = divmod(i, cols)
        y, x = pad + r * (T + pad), pad + c * (T + pad)
        canvas[y:y + T, x:x + T] = np.clip(img, 0, 255).astype(np.uint8)
    return canvas


def select_latents(acts: np.ndarray, n: int, min_active: int = 1) -> list[int]:
    """The n latents with the largest mean activation among those active on at least `min_active` images."""
    acts = np.asarray(acts)
    eligible = np.flatnonzero((acts > 0).sum(0) >= min_active)
    order = eligible[np.argsort(-acts[:, eligible].mean(0), kind="stable")]
    return [int(j) for j in order[:n]]


def read_rows(fset, rows: np.ndarray) -> np.ndarray:
    """Features of the given store rows (any order), reading only the shards that hold them."""
    store = fset.store
    ids = store.shard_ids
    sizes = np.array([store.manifest.shards[i].n_rows for i in ids], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.asarray(rows, np.int64)
    out = np.zeros((len(rows), *fset.shape), np.float32)
    which = np.searchsorted(starts, rows, side="right") - 1
    for j in np.unique(which):
        arr = fset.shard(ids[j])
        sel = np.flatnonzero(which == j)
        out[sel] = arr[rows[sel] - starts[j]]
    return out


def store_report_data(fset, primary: str, *, masks_fn: Callable | None = None,
                      concept_parts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                      concepts: Sequence[str] | None = None, rows: str = "test",
                      validation_fraction: float = VALIDATION_FRACTION, seed: int = 0) -> ReportData:
    """What a control report reads from a store: the report rows of `fset` (every scored row, a class-stratified
    seeded sample of the fitting rows; `rows` = "test" or, for tuning, "validation": see `report.split_roles`),
    the labels of `concepts` (default: all), and, given the dataset's `masks_batch`, the concept masks of the
    rows dissection uses. With rows="validation" no test row is read."""
    store = fset.store
    index = store.index()
    scored, fitted = split_roles(store.is_test(), index, rows, validation_fraction, seed)
    use = report_rows(scored, labels=store.labels(primary), seed=seed, train=fitted)
    is_test = scored[use]
    drows = dissection_rows(is_test)
    return ReportData.build(read_rows(fset, use),
                            {c: store.labels(c)[use] for c in (concepts or store.label_names)}, is_test, primary,
                            masks=masks_fn(index[use][drows]) if masks_fn else None, mask_rows=drows,
                            class_names=list(store.label_names[primary]),
                            parts=(concept_parts or {}).get(primary), rows=use)


def dataset_report_data(fset, primary: str, dataset=None, **kw) -> ReportData:
    """`store_report_data` with the masks and concept parts of `dataset`, when it has them."""
    return store_report_data(fset, primary, masks_fn=getattr(dataset, "masks_batch", None),
                             concept_parts=getattr(dataset, "concept_parts", None), **kw)


# --------------------------------------------------------------------------- the whole interpretation
@dataclass
class InterpretResult:
    out_dir: str
    metrics: dict[str, float]
    summary: dict[str, Any]
    artifacts: list[str] = field(default_factory=list)


def interpret_sae(sae, store, out_dir: str | Path, *, image_fn: Callable[[int], np.ndarray] | None = None,
                  primary_concept: str | None = None, top_n: int = 10, purity_top_n: int = 20,
                  n_grids: int = 32, n_random: int | None = None, threshold: float = 0.6, seed: int = 0,
                  grids_note: str = "", masks_fn: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
                  concept_parts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                  controls: bool = True, init_seed: int = 0) -> InterpretResult:
    """Interpret `sae` on every row of `store` (see the module docstring); writes into `out_dir`.

    image_fn(dataset_index) → uint8 (S, S, 3) supplies the images of the grids; None skips the grids
    (the reason, `grids_note`, is recorded in summary.json). `masks_fn(dataset indices)` → per-pixel
    masks ({name: bool (m, S, S)}) enables dissection; `concept_parts` ({concept: {class: parts}}) adds
    the classes' parts to it. `controls`: score the SAE against its matched controls (report.py).
    """
    from ..sae.data import feature_set_for
    from ..sae.latents import image_latents_pooled, latent_maps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = sae.config
    fset = feature_set_for(store, c.hook_point, c.timestep, c.input, c.pooling or "mean")
    if fset.dim != sae.d_in:
        raise ValueError(f"the store's {fset.key} has {fset.dim} channels but the SAE takes d_in={sae.d_in}")
    concepts = list(store.label_names)
    labels = {k: store.labels(k) for k in concepts}
    index = store.index()
    n_random = n_random or min(sae.n_latents, 4096)
    dirs = random_directions(sae.d_in, n_random, seed)
    pooling = c.latent_pooling

    # the atlas pools a token SAE's latents its own way (ATLAS_POOLING); its kNN figures read those codes
    atlas_pool = ATLAS_POOLING if c.input == "tokens" else pooling
    parts: dict[str, list[np.ndarray]] = {"sae": [], "random": [], "channels": []}
    atlas_parts: dict[str, list[np.ndarray]] = {"sae": [], "channels": []}
    for i, feats in fset.iter_shards():
        feats = np.asarray(feats, np.float32)
        if not np.isfinite(feats).all():
            raise ValueError(f"shard {i} of {fset.key} ({store.uri}) holds NaN/inf features; re-extract it")
        z = image_latents_pooled(sae, feats, (pooling, atlas_pool))
        parts["sae"].append(z[pooling])
        parts["random"].append(direction_activations(feats, dirs, pooling))
        parts["channels"].append(direction_activations(feats, None, pooling))
        atlas_parts["sae"].append(z[atlas_pool])
        atlas_parts["channels"].append(parts["channels"][-1] if atlas_pool == pooling
                                       else direction_activations(feats, None, atlas_pool))
    acts = {k: np.concatenate(v) if v else np.zeros((0, 1), np.float32) for k, v in parts.items()}
    atlas_acts = {k: np.concatenate(v) if v else np.zeros((0, 1), np.float32) for k, v in atlas_parts.items()}
    sae_acts = acts["sae"]

    primary = primary_concept if primary_concept in labels else (concepts[0] if concepts else None)
    metrics: dict[str, float] = {}
    summary: dict[str, Any] = {"n_images": int(sae_acts.shape[0]), "n_latents": sae.n_latents,
                               "feature_set": fset.key, "primary_concept": primary, "top_n": top_n,
                               "purity_top_n": purity_top_n, "threshold": threshold, "n_random": n_random,
                               "latent_pooling": pooling}
    n_active = (sae_acts > 0).sum(0)
    metrics["latents_active_frac"] = float((n_active > 0).mean())
    sig: dict[str, dict[str, float]] = {}
    for k, lab in labels.items():
        n_cls = len(store.label_names.get(k, [])) or None
        sig[k] = {m: sigma_label(a, lab, purity_top_n, n_classes=n_cls) for m, a in acts.items()}
        metrics[f"sigma_label.{k}"] = sig[k]["sae"]
        metrics[f"sigma_label_random.{k}"] = sig[k]["random"]
    if primary is not None:
        metrics["sigma_label"] = sig[primary]["sae"]
    summary["sigma_label"] = sig

    pur_summary, purities = compare_purity(acts, labels, purity_top_n, threshold, seed)
    summary["label_purity"] = pur_summary
    for k, s in pur_summary.items():
        for m in ("sae", "random", "channels"):
            suffix = "" if m == "sae" else f"_{m}"
            metrics[f"label_purity{suffix}.{k}"] = s[m]["mean"]
            metrics[f"label_purity_share{suffix}.{k}"] = s[m]["share_above"]
        metrics[f"label_purity_chance.{k}"] = s["chance"]
    if primary is not None:
        metrics["label_purity"] = pur_summary[primary]["sae"]["mean"]

    # how well an atlas of the images would carry each concept: leave-one-out kNN in the codes the atlas places
    # images by (cosine, the atlas' geometry), beside the same in the raw channels pooled alike
    for k, lab in labels.items():
        metrics[f"atlas_knn.{k}"] = knn_accuracy(atlas_acts["sae"], lab, metric="cosine")
        metrics[f"atlas_knn_channels.{k}"] = knn_accuracy(atlas_acts["channels"], lab, metric="cosine")

    artifacts: list[str] = []
    table = latent_table(sae_acts, labels, store.label_names, top_n, index)
    if controls and primary is not None:
        cmetrics, ctable, cfiles = control_section(sae, fset, store, labels, primary, sae_acts, out, masks_fn,
                                                   concept_parts or {}, init_seed)
        metrics.update(cmetrics)
        table = table.join(ctable)
        artifacts += cfiles
        summary["controls"] = dict(cmetrics)
    artifacts.append(str(save_table(table, out / "latents.parquet")))
    import pandas as pd

    long = [pd.DataFrame({"concept": k, "method": m, "unit": np.arange(len(p)), "purity": p})
            for k, d in purities.items() for m, p in d.items()]
    if long:
        artifacts.append(str(save_table(pd.concat(long, ignore_index=True), out / "purity.parquet")))
    if purities:
        fig = plot_purity_distributions(purities, {k: s["chance"] for k, s in pur_summary.items()}, threshold)
        fig.savefig(out / "purity.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        artifacts.append(str(out / "purity.png"))

    chosen = select_latents(sae_acts, n_grids, min_active=1)
    summary["grid_latents"] = chosen
    if image_fn is None:
        summary["grids"] = f"skipped: {grids_note or 'no image source'}"
        if grids_note:
            print(f"interpret: image grids skipped: {grids_note}", file=sys.stderr)
    else:
        from PIL import Image

        gdir = out / "grids"
        gdir.mkdir(exist_ok=True)
        tops = top_rows(sae_acts[:, chosen], top_n) if chosen else np.zeros((0, top_n), np.int64)
        for j, lat in enumerate(chosen):
            rows = tops[j][sae_acts[tops[j], lat] > 0]
            if not len(rows):
                continue
            images = _load_images(image_fn, [int(index[r]) for r in rows])
            if images is None:
                continue
            maps = None
            if c.input == "tokens":
                maps = latent_maps(sae, read_rows(fset, rows), [lat])[:, 0]
            p = gdir / f"latent_{lat:05d}.png"
            Image.fromarray(render_grid(images, maps)).save(p, compress_level=1)
            artifacts.append(str(p))
        summary["grids"] = f"{len(chosen)} latents, top {top_n} images each" + (
            ", heatmaps of the latent's token map" if c.input == "tokens" else "")
    summary["metrics"] = metrics
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=2, default=json_default))
    artifacts.append(str(out / "summary.json"))
    return InterpretResult(str(out), metrics, summary, artifacts)


def _load_images(image_fn: Callable[[int], np.ndarray], indices: list[int]) -> np.ndarray | None:
    """Images for a grid; one that fails to load becomes a grey tile (None if none loads)."""
    got: list[np.ndarray | None] = []
    for i in indices:
        try:
            got.append(np.asarray(image_fn(i), np.uint8))
        except Exception as e:  # noqa: BLE001 - a bad image must not stop the report
            print(f"interpret: image {i} could not be loaded ({type(e).__name__}: {e}); shown grey", file=sys.stderr)
            got.append(None)
    ok = [g for g in got if g is not None]
    if not ok:
        return None
    return np.stack([g if g is not None else np.full_like(ok[0], 128) for g in got])


def _clean(o):
    """NaN → null, so summary.json is strict JSON."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return None
    return o


# --------------------------------------------------------------------------- against the controls
def control_section(sae, fset, store, labels: dict[str, np.ndarray], primary: str, sae_acts: np.ndarray,
                    out: Path, masks_fn, concept_parts: Mapping[str, Mapping[str, Sequence[str]]],
                    init_seed: int) -> tuple[dict[str, float], Any, list[str]]:
    """The SAE against its matched controls (report.py): metrics, per-latent columns, files."""
    import pandas as pd

    data = store_report_data(fset, primary, masks_fn=masks_fn, concept_parts=concept_parts, concepts=list(labels))
    rep = control_report(sae, data, init_seed=init_seed, sae_acts=sae_acts[data.rows])
    metrics = rep.metrics()
    strongest = rep.strongest()
    _print_strongest(rep, metrics, strongest)
    columns: dict[str, Any] = {}
    for c, pur in rep.sae.unit_purity.items():
        ref = np.concatenate([r.unit_purity[c] for r in rep.controls["random"]])
        ref = np.sort(ref[~np.isnan(ref)])
        # where each latent's purity falls among the random control's units (1 = purer than all of them)
        pct = np.searchsorted(ref, pur, side="right") / max(len(ref), 1)
        columns[f"{c}.test_purity"] = pur
        columns[f"{c}.purity_percentile_vs_random"] = np.where(np.isnan(pur), np.nan, pct)
    if rep.sae.dissection is not None:
        d = rep.sae.dissection
        columns["dissection.best_concept"] = [d.concepts[j] for j in d.best_concept]
        columns["dissection.best_iou"] = d.best_iou
        columns["dissection.detector"] = d.detectors
    files = [str(_write_json(out / "controls.json", {"metrics": metrics, "headline": rep.headline(),
                                                     "strongest": strongest, "table": rep.table(),
                                                     "seeds": list(rep.seeds), "n_test_rows": rep.n_test,
                                                     "primary_concept": primary, "note": rep.dissection_note}))]
    files += [str(p) for p in _control_figures(rep, out)]
    return metrics, pd.DataFrame(columns), files


def _print_strongest(rep: ControlReport, m: Mapping[str, float], strongest: Mapping[str, str]) -> None:
    """One line per headline number: the SAE, the strongest control, the gap; a loss says so."""
    for key in headline_keys(rep.primary):
        name = strongest.get(key)
        if name is None or f"gap.{key}" not in m:
            continue
        cmp = compared_metric(key)
        g = m[f"gap.{key}"]
        lost = g < 0 if key.startswith("sparse_probe.") else g < 1
        print(f"interpret: {cmp}: SAE {m[cmp]:.4g} vs strongest control {name} {m[f'control.{name}.{cmp}']:.4g} "
              f"(gap {g:+.3f}{'' if key.startswith('sparse_probe.') else '×'})"
              + ("  — the SAE LOSES to this control" if lost else ""), file=sys.stderr)


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(_clean(obj), indent=2, default=json_default))
    return path


def _control_figures(rep: ControlReport, out: Path) -> list[Path]:
    """sparse_probe.png (accuracy vs k), controls.png (purity shares and detectors, SAE vs controls)."""
    import matplotlib  # deferred: pyplot picks a backend on import

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ks = sorted(rep.sae.sparse_probe)
    ax.plot(ks, [rep.sae.sparse_probe[k] for k in ks], "o-", label="SAE", lw=2)
    for name, runs in rep.controls.items():
        mean = [np.mean([r.sparse_probe[k] for r in runs]) for k in ks]
        ax.plot(ks, mean, ".--", label=f"{name}" + (f" (mean of {len(runs)})" if len(runs) > 1 else ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k units (chosen on train rows)")
    ax.set_ylabel(f"test accuracy: {rep.primary}")
    ax.set_title("k-sparse probing")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "sparse_probe.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    m = rep.metrics()
    best = rep.strongest()
    concepts = list(rep.sae.purity)
    names = ["sae", *rep.controls]

    def value(name: str, key: str) -> float:
        return m.get(key if name == "sae" else f"control.{name}.{key}", np.nan)

    def sd(name: str, key: str) -> float:
        return m.get(f"control.{name}_sd.{key}", 0.0) if name != "sae" else 0.0

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [2, 1, 1]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        keys = [f"label_purity_share.{c}" for c in concepts]
        axes[0].bar(np.arange(len(concepts)) + i * width, [value(name, k) for k in keys], width,
                    yerr=[sd(name, k) for k in keys], label=name, edgecolor="black" if name == "sae" else None)
    axes[0].set_xticks(np.arange(len(concepts)) + 0.4 - width / 2, concepts, rotation=30)
    axes[0].set_ylabel("share of units with purity > 0.6")
    pkey = f"label_purity_share.{rep.primary}"
    pg = f", {rep.primary}: {m[f'gap.{pkey}']:.2f}× the strongest ({best.get(pkey)})" if f"gap.{pkey}" in m else ""
    axes[0].set_title(f"label purity (scored rows){pg}", fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    panels = [(axes[1], f"sparse_probe.k{HEADLINE_K}", f"{HEADLINE_K}-sparse probe: {rep.primary}", "test accuracy")]
    if rep.sae.dissection is not None:
        panels.append((axes[2], "dissection.detectors", f"dissection: {rep.primary} and parts",
                       "share of units that detect (IoU > 0.04)"))
    else:
        axes[2].axis("off")
        axes[2].text(0.5, 0.5, rep.dissection_note or "no dissection", ha="center", va="center", wrap=True)
    for ax, key, title, ylabel in panels:
        cmp = compared_metric(key)
        colors = ["black" if n == "sae" else ("tab:red" if best.get(key) == n else "tab:grey") for n in names]
        ax.bar(names, [value(n, cmp) for n in names], yerr=[sd(n, cmp) for n in names], color=colors)
        g = m.get(f"gap.{key}")
        gap = "" if g is None else (f"{g:+.3f}" if key.startswith("sparse_probe.") else f"{g:.2f}×")
        ax.set_title(f"{title}\ngap to strongest ({best.get(key, '?')}, red): {gap}", fontsize=9)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    paths.append(out / "controls.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
