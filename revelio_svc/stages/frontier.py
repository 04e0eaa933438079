"""The sparsity frontier (`revelio eval-frontier`): short SAEs at each k of `evaluate.frontier_ks`, against the
dictionaries they have to beat, on the same held-out rows.

For each k: an SAE trained like `cfg.sae` for `evaluate.frontier_steps` steps (the same store, hook point,
timestep, width, normalisation; written under `<output_dir>/eval_frontier/<identity>/sae_k<k>`, resumable),
and the baselines of evaluate/baselines.py at the same k (random directions through the SAE's normalisation,
random directions on raw features, PCA directions with TopK). Each is scored on

    fvu        reconstruction of the held-out vectors (test rows)
    l0         active latents per vector on them
    loss_recovered  the dictionary spliced into the backbone at the SAE's timestep (mean-ablation floor)
    sparse_probe.k16  16 units, chosen on train rows, predicting the concept (interpret/sparse_probe.py)
    scr.share  SCR at the headline N (evaluate/concepts.py)

and the raw channels join the two metrics that apply to them (sparse probe and SCR, at L0 = d_in). Outputs:
`frontier.csv` (units, k, metric, value), `frontier.png` (each metric against L0) and `frontier.md`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, replace, to_dict
from ..contracts import Artifact, StageResult
from ..evaluate import baselines, concepts, fidelity
from ..features.store import FeatureStore, open_store
from ..identity import digest
from ..interpret.purity import direction_activations
from ..interpret.report import report_rows
from ..interpret.sparse_probe import sparse_probe_curve
from ..interpret.toplatents import read_rows
from ..sae import image_latents
from ..sae.data import feature_set_for
from ..sae.metrics import fvu
from ..sae.trainer import resolve_store_uri, train_sae
from .evaluate import finish_axis, pick_concepts, pyplot, train_sample, backbone_for_store, headline_n, store_dataset

PROBE_K = 16
METRICS = ("fvu", "l0", "loss_recovered", f"sparse_probe.k{PROBE_K}", "scr.share")


@dataclass(frozen=True, kw_only=True)
class FrontierResult(StageResult):
    output_dir: Path
    table: Any  # pandas DataFrame: units, k, metric, value

    def outputs(self) -> dict[str, str]:
        return {"output_dir": str(self.output_dir)}


@torch.no_grad()
def _reconstruction(model, vectors: np.ndarray, batch: int = 16384) -> tuple[float, float]:
    """(fvu, l0) of `model` on `vectors` (n, d_in)."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    outs, active = [], 0
    for s in range(0, len(x), batch):
        vals, idx = model.encode_sparse(x[s:s + batch])
        outs.append(model.decode_sparse(vals, idx))
        active += int((vals > 0).sum())
    return fvu(x, torch.cat(outs)), active / max(len(x), 1)


def markdown_table(table) -> str:
    """One row per (units, k), one column per metric."""
    wide = table.pivot_table(index=["units", "k"], columns="metric", values="value", sort=False)
    cols = [m for m in METRICS if m in wide.columns]
    lines = ["| units | k | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (units, k), r in wide.iterrows():
        lines.append(f"| {units} | {k} | " + " | ".join("—" if not np.isfinite(r[c]) else f"{r[c]:.3f}" for c in cols)
                     + " |")
    return "\n".join(lines)


def frontier_figure(table, path: Path, concept: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(METRICS) - 1, figsize=(4 * (len(METRICS) - 1), 3.4))
    for ax, metric in zip(axes, [m for m in METRICS if m != "l0"]):
        for units, g in table.groupby("units", sort=False):
            l0 = g[g.metric == "l0"].set_index("k")["value"]
            v = g[g.metric == metric].set_index("k")["value"]
            ks = [k for k in v.index if k in l0.index]
            if ks:
                ax.plot(l0[ks], v[ks], marker="o" if units == "sae" else ".", lw=2 if units == "sae" else 1,
                        label=units)
        ax.set_xscale("log")
        if metric == "fvu":
            ax.set_yscale("log")  # random dictionaries overshoot (fvu > 1) by orders of magnitude more
        l0s = sorted({int(round(v)) for v in table[table.metric == "l0"]["value"]})
        ax.set_xlabel("L0 (active latents per vector)")
        ax.set_title(metric + (f" ({concept})" if metric.startswith(("sparse", "scr")) else ""), fontsize=9)
        finish_axis(ax, l0s)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def frontier_stage(cfg: Config, *, store: FeatureStore | str | None = None, adapter=None, dataset=None,
                   progress: bool = False) -> FrontierResult:
    """Train and score the frontier (see the module docstring)."""
    import pandas as pd

    t0 = time.perf_counter()
    say = (lambda msg: print(f"[eval-frontier] {msg}", file=sys.stderr)) if progress else (lambda msg: None)
    ec, sc = cfg.evaluate, cfg.sae
    store = store if isinstance(store, FeatureStore) else open_store(store or ec.store or resolve_store_uri(cfg))
    notes: list[str] = []
    concept, spurious = pick_concepts(cfg, store, notes)
    identity = digest({"store": store.config_hash, "sae": {k: v for k, v in to_dict(sc).items()
                                                           if k not in ("k", "steps", "store", "output")},
                       "evaluate": to_dict(ec), "concept": concept})
    out = Path(cfg.output_dir) / "eval_frontier" / identity
    out.mkdir(parents=True, exist_ok=True)

    # what every dictionary is scored on: report rows (test + train sample), held-out vectors, test images
    fset = feature_set_for(store, sc.hook_point, sc.timestep, sc.input, sc.pooling)
    test = store.is_test()
    rows = report_rows(test, ec.train_rows)
    feats, is_test = read_rows(fset, rows), test[rows]
    labels = {c: store.labels(c)[rows] for c in store.label_names}
    held = feats[is_test].reshape(-1, fset.dim)
    sample = train_sample(feats, is_test)
    ds = dataset if dataset is not None else store_dataset(cfg, store)
    adapter = adapter if adapter is not None else backbone_for_store(cfg, store)
    ids, index = ds.ids(), store.index()
    test_idx = index[test][:ec.n_images]
    mean_idx = index[~test][:ec.mean_images]
    images = np.stack([ds.image(int(i)) for i in test_idx])
    img_ids = [ids[int(i)] for i in test_idx]
    noise_seed = int(store.config.get("noise_seed", 0))
    t = int(sc.timestep)
    means = fidelity.mean_maps(adapter, sc.hook_point, np.stack([ds.image(int(i)) for i in mean_idx]),
                               [ids[int(i)] for i in mean_idx], [t], noise_seed, ec.batch_size)
    n = headline_n(tuple(ec.ablate))
    rows_out: list[dict[str, Any]] = []
    floors = None

    def score(units: str, k: int, model=None, acts=None, l0=None) -> None:
        m: dict[str, float] = {}
        nonlocal floors
        if model is not None:
            m["fvu"], m["l0"] = _reconstruction(model, held)
            if floors is None:
                floors = fidelity.denoising_losses(adapter, model, sc.hook_point, images, img_ids, [t], means,
                                                   noise_seed, ec.batch_size, modes=("clean", "mean")).losses[t]
            L = fidelity.denoising_losses(adapter, model, sc.hook_point, images, img_ids, [t], means, noise_seed,
                                          ec.batch_size, modes=("spliced",)).losses[t]
            m["loss_recovered"] = fidelity.loss_recovered(floors["clean"], L["spliced"], floors["mean"])
            acts = image_latents(model, feats)
        else:
            m["l0"] = float(l0)
        m[f"sparse_probe.k{PROBE_K}"] = sparse_probe_curve(acts, labels[concept], is_test, ks=(PROBE_K,))[PROBE_K]
        if spurious is not None:
            try:
                s_res = concepts.scr(acts, labels[concept], labels[spurious], is_test, ns=(n,),
                                     correlation=ec.correlation, draws=ec.scr_draws, seed=ec.seed, C=cfg.probe.C)
                m["scr.share"] = s_res.share(n)
            except ValueError as e:
                notes.append(f"{units} k={k}: no SCR ({e})")
        rows_out.extend({"units": units, "k": int(k), "metric": key, "value": float(v)} for key, v in m.items())
        say(f"{units} k={k}: " + ", ".join(f"{key}={v:.3g}" for key, v in m.items()))

    for k in ec.frontier_ks:
        kcfg = replace(cfg, **{"sae.k": int(k), "sae.steps": ec.frontier_steps, "sae.output": str(out / f"sae_k{k}"),
                               "sae.warmup_steps": min(sc.warmup_steps, ec.frontier_steps // 5)})
        say(f"training the SAE at k={k} ({ec.frontier_steps} steps)")
        res = train_sae(kcfg, store=store, progress=False)
        sae = res.sae.eval()
        score("sae", k, model=sae)
        for name in baselines.BASELINES:
            score(name, k, model=baselines.baseline(sae, name, sample, seed=1))
    score("channels", fset.dim, acts=direction_activations(feats, None, sc.latent_pooling), l0=fset.dim)

    table = pd.DataFrame(rows_out, columns=["units", "k", "metric", "value"])
    table.to_csv(out / "frontier.csv", index=False)
    fig = frontier_figure(table, out / "frontier.png", concept)
    seconds = time.perf_counter() - t0
    (out / "frontier.md").write_text(
        f"# Sparsity frontier\n\nStore `{store.uri}`, {sc.hook_point} t={t}, concept `{concept}`, "
        f"{ec.frontier_steps} training steps per SAE; {seconds:.0f} s.\n\n" + markdown_table(table)
        + ("\n\n" + "\n".join(f"- {x}" for x in notes) if notes else "") + "\n")
    metrics = {f"{r.units}.k{r.k}.{r.metric}": r.value for r in table.itertuples() if np.isfinite(r.value)}
    metrics["seconds"] = seconds
    return FrontierResult(identity=identity, metrics=metrics, artifacts=(Artifact(out, "eval_frontier"),),
                          params={"eval_frontier.concept": concept}, output_dir=out, table=table)
