"""`revelio sweep`: probe accuracy over every (hook point, timestep) of a store, beside its controls.

For each pair and concept: a linear probe on the pooled features (train split → test split), the same
probe on the random-init backbone's features at the same pair, the pixels control, and `sigma_label` of the
raw channels. SAE metrics join in where SAE result JSONs exist. Outputs:

    <out>/sweep.csv, sweep.parquet        every number, long format
    <out>/heatmaps/<concept>__<metric>.png hook point × timestep grids
    <out>/lines/<concept>__accuracy_vs_timestep.png
    <out>/summary.md                      best (hook point, t) per concept, controls beside it
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config
from ..contracts import Artifact, StageResult, metric_key
from ..features.extract import store_uri_for
from ..features.store import FeatureStore, open_store, parse_set_key
from ..identity import Paths, digest
from ..interpret.purity import sigma_label_stats
from ..probe.controls import (
    aligned_features,
    dataset_for_store,
    pixel_control,
    random_init_store,
)
from ..probe.linear import fit_linear_probe
from ..probe.metrics import accuracy, chance_accuracy, macro_f1

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
    for key in store.manifest.feature_sets:
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
    import matplotlib  # deferred: pyplot picks a backend on import

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
@dataclass(frozen=True, kw_only=True)
class SweepResult(StageResult):
    output_dir: Path
    summary: Path
    table: Any  # pandas DataFrame, long format: hook_point, timestep, concept, input, metric, value, source
    best: Mapping[str, Mapping[str, Any]]  # concept → best (hook point, t) and its controls
    heatmaps: tuple[str, ...] = ()
    line_plots: tuple[str, ...] = ()
    random_init_store: str | None = None

    def outputs(self) -> dict[str, str]:
        return {"output_dir": str(self.output_dir)}


@dataclass
class _Sweep:
    """What the rows of the sweep are computed from."""

    store: FeatureStore
    pooling: str
    hook_points: list[str]
    timesteps: list[int]
    concepts: list[str]
    labels: dict[str, np.ndarray]
    is_test: np.ndarray
    chance: dict[str, float]
    pixels: dict[str, float]
    rstore: FeatureStore | None


def _prepare(cfg: Config, concepts: Sequence[str] | None, progress: bool) -> _Sweep:
    pc = cfg.probe
    store = open_store(pc.store or store_uri_for(cfg))
    hook_points, timesteps = store_pairs(store, pc.pooling, cfg.extract.hook_points)
    concepts = list(sweep_concepts(store.label_names) if concepts is None else concepts)
    unknown = [c for c in concepts if c not in store.label_names]
    if unknown:
        raise KeyError(f"the store at {store.uri} has no labels for {unknown}; it has: {', '.join(store.label_names)}")
    is_test = store.is_test()
    if is_test.all() or not is_test.any():
        raise ValueError(f"the store at {store.uri} needs both train and test rows (data.test_fraction)")
    labels = {c: store.labels(c) for c in concepts}
    chance = {c: chance_accuracy(labels[c][~is_test], labels[c][is_test]) for c in concepts}
    pixels: dict[str, float] = {}
    rstore = None
    if pc.controls:
        ds = dataset_for_store(cfg, store)
        Xp = pixel_control(cfg, store, size=16, flatten=True, dataset=ds)
        for c in concepts:
            pixels[c] = probe_scores(Xp, labels[c], is_test, len(store.label_names[c]), pc.C, pc.max_iter)["accuracy"]
        rstore = random_init_store(cfg, hook_points, timesteps, [pc.pooling],
                                   store.config.get("dataset", {}).get("fingerprint"), ds, progress,
                                   model_backbone=store.config.get("backbone"))
    return _Sweep(store, pc.pooling, hook_points, timesteps, concepts, labels, is_test, chance, pixels, rstore)


def _rows(cfg: Config, sw: _Sweep, top_n: int, sae_results: str | Path | None) -> list[dict[str, Any]]:
    """Every number of the sweep, one row each (long format)."""
    pc, store = cfg.probe, sw.store
    rows: list[dict[str, Any]] = []

    def add(hp, t, concept, inp, metric, value, source=""):
        rows.append({"hook_point": hp, "timestep": int(t), "concept": concept, "input": inp, "metric": metric,
                     "value": float(value), "source": source})

    for hp in sw.hook_points:
        for t in sw.timesteps:
            X = store.feature_set(hp, t, sw.pooling).load()
            Xr = aligned_features(sw.rstore, hp, t, sw.pooling, store.index()) if sw.rstore is not None else None
            for c in sw.concepts:
                n_cls = len(store.label_names[c])
                s = probe_scores(X, sw.labels[c], sw.is_test, n_cls, pc.C, pc.max_iter)
                add(hp, t, c, "trained", "accuracy", s["accuracy"])
                add(hp, t, c, "trained", "macro_f1", s["macro_f1"])
                sig = sigma_label_stats(X, sw.labels[c], n_cls, top_n=min(top_n, len(X)), require_active=False)
                add(hp, t, c, "trained", "sigma_label", sig["sigma_label"])
                add(hp, t, c, "trained", "sigma_label_chance", sig["sigma_label_chance"])
                add(hp, t, c, "chance", "accuracy", sw.chance[c])
                if Xr is not None:
                    r = probe_scores(Xr, sw.labels[c], sw.is_test, n_cls, pc.C, pc.max_iter)
                    add(hp, t, c, "random_init", "accuracy", r["accuracy"])
                    add(hp, t, c, "random_init", "macro_f1", r["macro_f1"])
                if c in sw.pixels:
                    # the same number at every pair, so a row of the table always has its controls beside it
                    add(hp, t, c, "pixels", "accuracy", sw.pixels[c])
    sae_dir = sae_results if sae_results is not None else Path(cfg.output_dir) / "sae"
    for r in read_sae_results(sae_dir):
        add(r["hook_point"], r["timestep"], "", "sae", r["metric"], r["value"], r["source"])
    return rows


def _grid(df, sw: _Sweep, concept: str, inp: str, metric: str) -> np.ndarray:
    g = np.full((len(sw.hook_points), len(sw.timesteps)), np.nan)
    sel = df[(df.concept == concept) & (df.input == inp) & (df.metric == metric)]
    # several SAEs at one pair: show their mean
    for (hp, t), v in sel.groupby(["hook_point", "timestep"]).value.mean().items():
        if hp in sw.hook_points and t in sw.timesteps:
            g[sw.hook_points.index(hp), sw.timesteps.index(t)] = v
    return g


def _best(df, sw: _Sweep, c: str) -> dict[str, Any]:
    acc = _grid(df, sw, c, "trained", "accuracy")
    i, j = np.unravel_index(np.nanargmax(acc), acc.shape)
    b = {"hook_point": sw.hook_points[i], "timestep": sw.timesteps[j], "accuracy": float(acc[i, j]),
         "macro_f1": float(_grid(df, sw, c, "trained", "macro_f1")[i, j]), "chance": sw.chance[c],
         "pixels": sw.pixels.get(c, float("nan"))}
    if sw.rstore is not None:
        rand = _grid(df, sw, c, "random_init", "accuracy")
        ri, rj = np.unravel_index(np.nanargmax(rand), rand.shape)
        b.update({"random_init_at_best": float(rand[i, j]), "random_init_best": float(rand[ri, rj]),
                  "random_init_best_at": f"{sw.hook_points[ri]} t={sw.timesteps[rj]}"})
    return b


def _figures(df, sw: _Sweep, out: Path) -> tuple[list[str], list[str]]:
    """Heatmaps over hook points × timesteps and accuracy-vs-timestep lines, per concept; their paths."""
    plt = _plt()
    heatmaps: list[str] = []
    lines: list[str] = []

    def save(fig, rel: str, bucket: list) -> None:
        fig.savefig(out / rel, dpi=100)
        plt.close(fig)
        bucket.append(str(out / rel))

    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    (out / "lines").mkdir(parents=True, exist_ok=True)
    for c in sw.concepts:
        acc = _grid(df, sw, c, "trained", "accuracy")
        rand = _grid(df, sw, c, "random_init", "accuracy") if sw.rstore is not None else None
        specs = [("accuracy", acc, 0, 1, "viridis"), ("macro_f1", _grid(df, sw, c, "trained", "macro_f1"), 0, 1,
                                                       "viridis"),
                 ("sigma_label", _grid(df, sw, c, "trained", "sigma_label"), 0, None, "magma_r")]
        if rand is not None:
            specs += [("random_init_accuracy", rand, 0, 1, "viridis"),
                      ("gain_over_random_init", acc - rand, -1, 1, "RdBu")]
        for metric, g, lo, hi, cmap in specs:
            title = f"{c}: {metric} ({sw.pooling}-pooled, chance {sw.chance[c]:.2f}" + (
                f", pixels {sw.pixels[c]:.2f})" if c in sw.pixels else ")")
            save(heatmap_figure(g, sw.hook_points, sw.timesteps, title, lo, hi, cmap),
                 f"heatmaps/{_slug(c)}__{metric}.png", heatmaps)
        save(lines_figure(acc, rand, sw.hook_points, sw.timesteps, sw.pixels.get(c), sw.chance[c],
                          f"{c}: probe accuracy vs timestep ({sw.pooling}-pooled)"),
             f"lines/{_slug(c)}__accuracy_vs_timestep.png", lines)
    for metric in sorted(df[df.input == "sae"].metric.unique()):
        save(heatmap_figure(_grid(df, sw, "", "sae", metric), sw.hook_points, sw.timesteps, f"SAE: {metric}"),
             f"heatmaps/sae__{_slug(metric)}.png", heatmaps)
    return heatmaps, lines


def _sweep_metrics(best: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    mets, tags = {}, {}
    for c, b in best.items():
        for k in ("accuracy", "pixels", "random_init_at_best", "random_init_best", "chance"):
            if k in b and math.isfinite(b[k]):
                mets[metric_key(f"sweep.{c}.best_{k}" if k == "accuracy" else f"sweep.{c}.{k}")] = b[k]
        tags[metric_key(f"sweep.{c}.best")] = f"{b['hook_point']} t={b['timestep']}"
    return mets, tags


def sweep_identity(cfg: Config, store: FeatureStore, top_n: int = 20, concepts: Sequence[str] | None = None) -> str:
    """See identity.py: the store, the probe options the sweep uses, and the concepts."""
    pc = cfg.probe
    concepts = list(sweep_concepts(store.label_names) if concepts is None else concepts)
    return digest({"store": store.config_hash, "pooling": pc.pooling, "C": pc.C, "max_iter": pc.max_iter,
                   "controls": pc.controls, "top_n": top_n, "concepts": concepts})


def sweep_stage(cfg: Config, sae_results: str | Path | None = None, output: str | Path | None = None,
                top_n: int = 20, concepts: Sequence[str] | None = None, progress: bool = False) -> SweepResult:
    """Sweep every (hook point, timestep) of the store at `probe.pooling`: tables, figures, the best pairs.

    `sae_results`: directory of SAE result JSONs (default `<output_dir>/sae` when it exists).
    `concepts`: labels to probe (default: shape, colour, size, background for shapes; else every label).
    """
    sw = _prepare(cfg, concepts, progress)
    df = pd.DataFrame(_rows(cfg, sw, top_n, sae_results),
                      columns=["hook_point", "timestep", "concept", "input", "metric", "value", "source"])
    identity = sweep_identity(cfg, sw.store, top_n, sw.concepts)
    out = Path(output) if output is not None else Paths.under(cfg.output_dir).sweep(identity)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "sweep.csv", index=False)
    df.to_parquet(out / "sweep.parquet", index=False)
    heatmaps, lines = _figures(df, sw, out)
    best = {c: _best(df, sw, c) for c in sw.concepts}
    summary = out / "summary.md"
    summary.write_text(summary_markdown(sw.store.uri, sw.pooling, sw.hook_points, sw.timesteps, sw.concepts, best,
                                        df, int((~sw.is_test).sum()), int(sw.is_test.sum())))
    metrics, tags = _sweep_metrics(best)
    return SweepResult(identity=identity, metrics=metrics, artifacts=(Artifact(out, "sweep"),),
                       tags={**tags, "sweep_dir": str(out), "store_uri": sw.store.uri}, output_dir=out, summary=summary,
                       table=df, best=best,
                       heatmaps=tuple(heatmaps), line_plots=tuple(lines),
                       random_init_store=sw.rstore.uri if sw.rstore is not None else None)


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
