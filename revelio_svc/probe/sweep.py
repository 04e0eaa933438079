"""`revelio sweep`: probe accuracy over every (hook point, timestep) of a store, beside its controls.

For each pair and concept: a linear probe on the pooled features (train split → test split), the same
probe on the random-init backbone's features at the same pair, the pixels control, and `sigma_label` of the
raw channels. SAE metrics join in where SAE result JSONs exist. Outputs (also logged to MLflow):

    <out>/sweep.csv, sweep.parquet        every number, long format
    <out>/heatmaps/<concept>__<metric>.png hook point × timestep grids
    <out>/lines/<concept>__accuracy_vs_timestep.png
    <out>/summary.md                      best (hook point, t) per concept, controls beside it
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, config_hash
from ..features.store import FeatureStore, open_store, parse_set_key
from .controls import aligned_features, dataset_for_store, pixel_control, random_init_store
from .linear import fit_linear_probe
from .metrics import accuracy, chance_accuracy, macro_f1, metric_key, sigma_label

SHAPES_CONCEPTS = ("shape", "colour", "size", "background")
SAE_METRICS = ("fvu", "explained_variance", "l0", "dead_frac", "sigma_label", "label_purity")


def sweep_concepts(label_names: dict[str, list[str]]) -> list[str]:
    """The shapes dataset's four studied concepts when present (position is a nuisance there), else every label."""
    picked = [c for c in SHAPES_CONCEPTS if c in label_names]
    return picked or list(label_names)


def store_pairs(store: FeatureStore, pooling: str, prefer: Sequence[str] = ()) -> tuple[list[str], list[int]]:
    """Hook points (in `prefer` order first, then the store's) and sorted timesteps that have `pooling` features."""
    hps: list[str] = []
    ts: set[int] = set()
    for key in store.manifest["feature_sets"]:
        h, t, p = parse_set_key(key)
        if p == pooling:
            if h not in hps:
                hps.append(h)
            ts.add(t)
    if not hps:
        raise KeyError(f"the store at {store.uri} has no {pooling!r}-pooled features (probe.pooling); it has: "
                       f"{', '.join(store.keys())}")
    order = [h for h in prefer if h in hps] + [h for h in hps if h not in prefer]
    return order, sorted(ts)


def probe_scores(X: np.ndarray, labels: np.ndarray, is_test: np.ndarray, n_classes: int, C: float,
                 max_iter: int) -> dict[str, float]:
    """Accuracy and macro-F1 of a linear probe fitted on the train rows, measured on the test rows."""
    probe = fit_linear_probe(X[~is_test], labels[~is_test], C=C, max_iter=max_iter)
    pred = probe.predict(X[is_test])
    return {"accuracy": accuracy(labels[is_test], pred), "macro_f1": macro_f1(labels[is_test], pred, n_classes)}


# --------------------------------------------------------------------------- SAE results
def read_sae_results(directory: str | Path | None) -> list[dict[str, Any]]:
    """SAE metrics from every JSON under `directory` that names a hook point and timestep.

    Accepted shapes: {"hook_point", "timestep", <metric>: number, ...}, with the metrics possibly under
    "metrics" and the identity possibly under "config". Nested metric dicts (e.g. label_purity per
    concept) become `label_purity.<concept>`. Files that are not SAE results are ignored.
    """
    if directory is None or not Path(directory).is_dir():
        return []
    out = []
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if not isinstance(obj, dict):
            continue
        conf = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        hp = obj.get("hook_point", conf.get("hook_point"))
        t = obj.get("timestep", conf.get("timestep"))
        if not isinstance(hp, str) or not isinstance(t, (int, float)):
            continue
        mets = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else obj
        for name in SAE_METRICS:
            v = mets.get(name)
            items = v.items() if isinstance(v, dict) else [("", v)]
            for sub, val in items:
                if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val):
                    out.append({"hook_point": hp, "timestep": int(t), "metric": f"{name}.{sub}" if sub else name,
                                "value": float(val), "source": str(path.relative_to(directory))})
    return out


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def heatmap_figure(grid: np.ndarray, hook_points: Sequence[str], timesteps: Sequence[int], title: str,
                   vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis"):
    """Hook points down, timesteps across, the value printed in each cell (NaN cells left blank)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.1 * len(timesteps) + 2.6, 0.5 * len(hook_points) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_yticks(range(len(hook_points)), list(hook_points))
    ax.set_xlabel("timestep")
    ax.set_ylabel("hook point")
    finite = grid[np.isfinite(grid)]
    mid = float(np.mean(finite)) if finite.size else 0.0
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < mid else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def lines_figure(acc: np.ndarray, rand: np.ndarray | None, hook_points: Sequence[str], timesteps: Sequence[int],
                 pixels: float | None, chance: float, title: str):
    """Accuracy versus timestep, one line per hook point; random-init dashed in the same colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, h in enumerate(hook_points):
        line, = ax.plot(timesteps, acc[i], marker="o", label=h)
        if rand is not None:
            ax.plot(timesteps, rand[i], ls="--", marker=".", color=line.get_color(), alpha=0.7)
    if pixels is not None and math.isfinite(pixels):
        ax.axhline(pixels, color="black", ls=":", label="pixels")
    ax.axhline(chance, color="grey", ls="-.", lw=0.8, label="chance")
    if rand is not None:
        ax.plot([], [], ls="--", color="grey", label="random-init (dashed)")
    ax.set_xlabel("timestep")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


# --------------------------------------------------------------------------- the stage
def sweep_stage(cfg: Config, sae_results: str | Path | None = None, output: str | Path | None = None,
                top_n: int = 20, concepts: Sequence[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Sweep every (hook point, timestep) of the store at `probe.pooling`; returns paths and the best pairs.

    `sae_results`: directory of SAE result JSONs (default `<output_dir>/sae` when it exists).
    `concepts`: labels to probe (default: shape, colour, size, background for shapes; else every label).
    """
    import mlflow
    import pandas as pd

    from ..features.extract import store_uri_for

    pc = cfg.probe
    store = open_store(pc.store or store_uri_for(cfg))
    pooling = pc.pooling
    hook_points, timesteps = store_pairs(store, pooling, cfg.extract.hook_points)
    if concepts is None:
        concepts = sweep_concepts(store.label_names)
    unknown = [c for c in concepts if c not in store.label_names]
    if unknown:
        raise KeyError(f"the store at {store.uri} has no labels for {unknown}; it has: {', '.join(store.label_names)}")
    concepts = list(concepts)
    is_test = store.is_test()
    if is_test.all() or not is_test.any():
        raise ValueError(f"the store at {store.uri} needs both train and test rows (data.test_fraction)")
    labels = {c: store.labels(c) for c in concepts}
    n_cls = {c: len(store.label_names[c]) for c in concepts}
    chance = {c: chance_accuracy(labels[c][~is_test], labels[c][is_test]) for c in concepts}

    rows: list[dict[str, Any]] = []

    def add(hp, t, concept, inp, metric, value, source=""):
        rows.append({"hook_point": hp, "timestep": int(t), "concept": concept, "input": inp, "metric": metric,
                     "value": float(value), "source": source})

    pixels: dict[str, float] = {}
    rstore = None
    if pc.controls:
        ds = dataset_for_store(cfg, store)
        Xp = pixel_control(cfg, store, size=16, flatten=True, dataset=ds)
        for c in concepts:
            pixels[c] = probe_scores(Xp, labels[c], is_test, n_cls[c], pc.C, pc.max_iter)["accuracy"]
        rstore = random_init_store(cfg, hook_points, timesteps, [pooling],
                                   store.config.get("dataset", {}).get("fingerprint"), ds, progress,
                                   model_backbone=store.config.get("backbone"))

    for hp in hook_points:
        for t in timesteps:
            X = store.feature_set(hp, t, pooling).load()
            Xr = aligned_features(rstore, hp, t, pooling, store.index()) if rstore is not None else None
            for c in concepts:
                s = probe_scores(X, labels[c], is_test, n_cls[c], pc.C, pc.max_iter)
                add(hp, t, c, "trained", "accuracy", s["accuracy"])
                add(hp, t, c, "trained", "macro_f1", s["macro_f1"])
                sig = sigma_label(X, labels[c], n_cls[c], top_n=min(top_n, len(X)), require_active=False)
                add(hp, t, c, "trained", "sigma_label", sig["sigma_label"])
                add(hp, t, c, "trained", "sigma_label_chance", sig["sigma_label_chance"])
                add(hp, t, c, "chance", "accuracy", chance[c])
                if Xr is not None:
                    r = probe_scores(Xr, labels[c], is_test, n_cls[c], pc.C, pc.max_iter)
                    add(hp, t, c, "random_init", "accuracy", r["accuracy"])
                    add(hp, t, c, "random_init", "macro_f1", r["macro_f1"])
                if c in pixels:
                    # the same number at every pair, so a row of the table always has its controls beside it
                    add(hp, t, c, "pixels", "accuracy", pixels[c])

    sae_dir = sae_results if sae_results is not None else Path(cfg.output_dir) / "sae"
    for r in read_sae_results(sae_dir):
        add(r["hook_point"], r["timestep"], "", "sae", r["metric"], r["value"], r["source"])

    df = pd.DataFrame(rows, columns=["hook_point", "timestep", "concept", "input", "metric", "value", "source"])
    h = config_hash({"store": store.manifest.get("config_hash"), "pooling": pooling, "C": pc.C,
                     "max_iter": pc.max_iter, "controls": pc.controls, "top_n": top_n, "concepts": concepts})
    out = Path(output) if output is not None else Path(cfg.output_dir) / "sweep" / h
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    (out / "lines").mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "sweep.csv", index=False)
    df.to_parquet(out / "sweep.parquet", index=False)

    def grid(concept: str, inp: str, metric: str) -> np.ndarray:
        g = np.full((len(hook_points), len(timesteps)), np.nan)
        sel = df[(df.concept == concept) & (df.input == inp) & (df.metric == metric)]
        # several SAEs at one pair: show their mean
        for (hp, t), v in sel.groupby(["hook_point", "timestep"]).value.mean().items():
            if hp in hook_points and t in timesteps:
                g[hook_points.index(hp), timesteps.index(t)] = v
        return g

    plt = _plt()
    heatmaps, lines = [], []

    def save(fig, rel: str, bucket: list) -> None:
        fig.savefig(out / rel, dpi=100)
        plt.close(fig)
        bucket.append(str(out / rel))

    best: dict[str, dict[str, Any]] = {}
    for c in concepts:
        acc = grid(c, "trained", "accuracy")
        rand = grid(c, "random_init", "accuracy") if rstore is not None else None
        specs = [("accuracy", acc, 0, 1, "viridis"), ("macro_f1", grid(c, "trained", "macro_f1"), 0, 1, "viridis"),
                 ("sigma_label", grid(c, "trained", "sigma_label"), 0, None, "magma_r")]
        if rand is not None:
            specs += [("random_init_accuracy", rand, 0, 1, "viridis"),
                      ("gain_over_random_init", acc - rand, -1, 1, "RdBu")]
        for metric, g, lo, hi, cmap in specs:
            title = f"{c}: {metric} ({pooling}-pooled, chance {chance[c]:.2f}" + (
                f", pixels {pixels[c]:.2f})" if c in pixels else ")")
            save(heatmap_figure(g, hook_points, timesteps, title, lo, hi, cmap),
                 f"heatmaps/{_slug(c)}__{metric}.png", heatmaps)
        save(lines_figure(acc, rand, hook_points, timesteps, pixels.get(c), chance[c],
                          f"{c}: probe accuracy vs timestep ({pooling}-pooled)"),
             f"lines/{_slug(c)}__accuracy_vs_timestep.png", lines)
        i, j = np.unravel_index(np.nanargmax(acc), acc.shape)
        b = {"hook_point": hook_points[i], "timestep": timesteps[j], "accuracy": float(acc[i, j]),
             "macro_f1": float(grid(c, "trained", "macro_f1")[i, j]), "chance": chance[c],
             "pixels": pixels.get(c, float("nan"))}
        if rand is not None:
            ri, rj = np.unravel_index(np.nanargmax(rand), rand.shape)
            b.update({"random_init_at_best": float(rand[i, j]), "random_init_best": float(rand[ri, rj]),
                      "random_init_best_at": f"{hook_points[ri]} t={timesteps[rj]}"})
        best[c] = b
    for metric in sorted(df[df.input == "sae"].metric.unique()):
        save(heatmap_figure(grid("", "sae", metric), hook_points, timesteps, f"SAE: {metric}"),
             f"heatmaps/sae__{_slug(metric)}.png", heatmaps)

    summary = out / "summary.md"
    summary.write_text(summary_markdown(store.uri, pooling, hook_points, timesteps, concepts, best, df,
                                        int((~is_test).sum()), int(is_test.sum())))

    if mlflow.active_run() is not None:
        mlflow.log_artifacts(str(out), "sweep")
        mets = {}
        for c, b in best.items():
            for k in ("accuracy", "pixels", "random_init_at_best", "random_init_best", "chance"):
                if k in b and math.isfinite(b[k]):
                    mets[metric_key(f"sweep.{c}.best_{k}" if k == "accuracy" else f"sweep.{c}.{k}")] = b[k]
        mlflow.log_metrics(mets)
        mlflow.set_tags({metric_key(f"sweep.{c}.best"): f"{b['hook_point']} t={b['timestep']}"
                         for c, b in best.items()})
        mlflow.set_tag("sweep_dir", str(out))
    return {"output_dir": str(out), "csv": str(out / "sweep.csv"), "parquet": str(out / "sweep.parquet"),
            "summary": str(summary), "heatmaps": heatmaps, "line_plots": lines, "best": best, "table": df,
            "random_init_store": rstore.uri if rstore is not None else None}


def summary_markdown(store_uri: str, pooling: str, hook_points: Sequence[str], timesteps: Sequence[int],
                     concepts: Sequence[str], best: dict[str, dict[str, Any]], df, n_train: int, n_test: int) -> str:
    def f(x: Any) -> str:
        return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"

    has_rand = any("random_init_at_best" in b for b in best.values())
    intro = (f"Store `{store_uri}`, {pooling}-pooled features, linear probe trained on {n_train} train rows and "
             f"tested on {n_test} test rows.")
    header = ("| concept | best (hook point, t) | accuracy | macro-F1 | random-init there | best random-init "
              "| pixels | chance |")
    lines = ["# Probe sweep over hook points × timesteps", "", intro, "",
             "## Best (hook point, timestep) per concept, with its controls", "", header,
             "|---|---|---|---|---|---|---|---|"]
    for c in concepts:
        b = best[c]
        rb = f"{f(b.get('random_init_best'))} ({b['random_init_best_at']})" if has_rand else "–"
        lines.append(f"| {c} | {b['hook_point']}, t={b['timestep']} | {f(b['accuracy'])} | {f(b['macro_f1'])} | "
                     f"{f(b.get('random_init_at_best'))} | {rb} | {f(b['pixels'])} | {f(b['chance'])} |")
    for c in concepts:
        lines += ["", f"## {c}: accuracy" + (" (random-init in parentheses)" if has_rand else ""), "",
                  "| hook point | " + " | ".join(f"t={t}" for t in timesteps) + " |",
                  "|---|" + "---|" * len(timesteps)]
        sel = df[(df.concept == c) & (df.metric == "accuracy")]
        for hp in hook_points:
            cells = []
            for t in timesteps:
                a = sel[(sel.hook_point == hp) & (sel.timestep == t) & (sel.input == "trained")].value
                r = sel[(sel.hook_point == hp) & (sel.timestep == t) & (sel.input == "random_init")].value
                cells.append(f(float(a.iloc[0]) if len(a) else None) + (f" ({f(float(r.iloc[0]))})" if len(r) else ""))
            lines.append(f"| {hp} | " + " | ".join(cells) + " |")
    sae = df[df.input == "sae"]
    if len(sae):
        lines += ["", "## SAE metrics (mean over the SAEs found at each pair)", "",
                  "| hook point | t | " + " | ".join(sorted(sae.metric.unique())) + " |",
                  "|---|---|" + "---|" * sae.metric.nunique()]
        for (hp, t), g in sae.groupby(["hook_point", "timestep"]):
            means = g.groupby("metric").value.mean()
            lines.append(f"| {hp} | {t} | " + " | ".join(f(means.get(m)) for m in sorted(sae.metric.unique())) + " |")
    lines.append("")
    return "\n".join(lines)
