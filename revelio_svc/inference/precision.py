"""Explanation precision of SAE latents against their controls, and the comparison of latent poolings.

`interpret.explanation` defines the score: on correctly classified test images, the share of the top-3
contributing units' top-8 dataset images that carry the predicted label. Here it is measured for three
dictionaries read the same way (same features, same pooling over positions, a linear probe of the same C fitted
on the train rows only, top images drawn from the train rows only, so an explained test image never shows
itself):

- `sae`: the SAE's latents (with a given probe, e.g. a registered classifier's, or a fresh one);
- `random`: the matched random dictionary (`interpret.controls.matched_random`; mean over seeds);
- `channels`: the raw channels, ReLU(x_c) pooled like the latents.

Beside each: the probe's test accuracy, the units' mean firing rate over the images (`density`) and the share of
live units firing on more than half the images (`dense_share`). `pooling_comparison` repeats all of it for each
way of pooling token latents (max, mean, top-q mean) so the default can be chosen by the numbers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..interpret.controls import matched_random
from ..interpret.explanation import ATTRIBUTIONS, explanation_precision
from ..interpret.purity import direction_activations
from ..parallel import thread_map
from ..probe.linear import apply_scaler, fit_linear_probe, fit_warnings
from ..probe.sparse import fit_sparse_probe
from ..sae.latents import image_latents_pooled

METHODS = ("sae", "random", "channels")
POOLINGS = ("max", "mean", "top8")
CONTROL_SEEDS = (1, 2, 3)
DENSE_RATE = 0.5


def density_stats(acts) -> dict[str, float]:
    """Mean firing rate of the units over the images and the share of live units firing on > DENSE_RATE."""
    on = (acts > 0)
    rate = np.asarray(on.mean(axis=0)).reshape(-1)
    live = rate[rate > 0]
    return {"density": float(rate.mean()) if rate.size else float("nan"),
            "dense_share": float((live > DENSE_RATE).mean()) if live.size else float("nan")}


def unit_precision(acts, labels: np.ndarray, is_test: np.ndarray, *, probe=None, C: float = 1.0,
                   max_iter: int = 1000, latents_per_class: int = 0, penalty: str = "l2",
                   modes: Sequence[str] = ATTRIBUTIONS, rank_acts=None) -> dict[str, float]:
    """Probe accuracy, density and explanation precision (per attribution mode) of one unit matrix (N, U).

    `probe`: a LinearProbe already fitted on these units' train rows; None fits one on the train rows (C; with
    `latents_per_class` > 0 the sparse probe of `probe.sparse`, each class reading at most that many units;
    `penalty` "l1": an L1 probe). `rank_acts` (N, U): the same units pooled another way, to rank their top
    images by instead of `acts` (the probe still reads `acts`)."""
    labels = np.asarray(labels, np.int64)
    test = np.asarray(is_test, bool)
    acts = sp.csr_matrix(acts, dtype=np.float64) if sp.issparse(acts) else np.asarray(acts, np.float64)
    if probe is None and latents_per_class > 0:
        probe = fit_sparse_probe(acts[~test], labels[~test], latents_per_class, C=C, max_iter=max_iter)
    elif probe is None:
        probe = fit_linear_probe(acts[~test], labels[~test], C=C, max_iter=max_iter, penalty=penalty)
    xs = apply_scaler(acts, probe.scaler_mean, probe.scaler_scale)
    out: dict[str, float] = {"accuracy": float(np.mean(probe.predict(acts[test]) == labels[test])),
                             "units_per_class": float(np.mean((np.abs(probe.coef) > 0).sum(1))),
                             **density_stats(acts)}
    for mode in modes:
        r = explanation_precision(xs, probe.coef, probe.intercept, probe.classes,
                                  acts if rank_acts is None else rank_acts, labels,
                                  np.flatnonzero(test), image_rows=np.flatnonzero(~test), mode=mode)
        out[f"precision.{mode}"] = r["precision"]
        out["chance"] = r["chance"]
        out["n_explained"] = r["n_explained"]
    return out


def _calibration(feats: np.ndarray, rows: np.ndarray, n: int = 8192, seed: int = 0) -> np.ndarray:
    """A sample of the vectors the SAE reads (a BatchTopK control's threshold is set on it)."""
    x = np.asarray(feats[rows[: max(1, n // max(1, int(np.prod(feats.shape[1:-1]))))]], np.float32)
    return x.reshape(-1, x.shape[-1])[:n]


def unit_sets(sae, feats: np.ndarray, is_test: np.ndarray, poolings: Sequence[str],
              seeds: Sequence[int] = CONTROL_SEEDS) -> dict[str, dict[str, Any]]:
    """{pooling: {"sae": acts, "random": [acts per seed], "channels": acts}}, each dictionary encoded once."""
    test = np.asarray(is_test, bool)
    calib = _calibration(feats, np.flatnonzero(~test)) if sae.config.variant == "batchtopk" else None
    # the SAE and its random dictionaries encoded side by side (threads: the encodings leave cores idle)
    dicts = [sae, *(matched_random(sae, s, calibration=calib) for s in seeds)]
    z, *rnd = thread_map(lambda d: image_latents_pooled(d, feats, poolings), dicts)
    return {p: {"sae": z[p], "random": [r[p] for r in rnd],
                "channels": direction_activations(feats, None, p if feats.ndim == 4 else "max")} for p in poolings}


def report_sets(sets: dict[str, Any], labels, test, probe=None, rank: dict[str, Any] | None = None,
                **kw) -> dict[str, dict[str, float]]:
    """{method: unit_precision(...)} over one pooling's `unit_sets` entry (the dictionaries already encoded);
    `rank`: another pooling's entry, which ranks each unit's top images."""
    def ranked(m, i=None):
        return None if rank is None else (rank[m] if i is None else rank[m][i])

    # one probe fit per dictionary, side by side (the random seeds' L1 fits are most of a register stage)
    jobs = [("sae", None, sp.csr_matrix(sets["sae"]), probe)]
    jobs += [("random", i, sp.csr_matrix(a), None) for i, a in enumerate(sets["random"])]
    jobs.append(("channels", None, sets["channels"], None))
    scored = thread_map(lambda j: unit_precision(j[2], labels, test, probe=j[3], rank_acts=ranked(j[0], j[1]), **kw),
                        jobs, quiet=fit_warnings())
    out = {"sae": scored[0]}
    runs = scored[1:-1]
    out["random"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    out["random"].update({f"{k}_sd": float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else float("nan")
                          for k in runs[0] if k.startswith("precision.")})
    out["channels"] = scored[-1]
    return out


def explanation_report(sae, feats: np.ndarray, labels: np.ndarray, is_test: np.ndarray, *,
                       pooling: str | None = None, probe=None, C: float = 1.0, seeds: Sequence[int] = CONTROL_SEEDS,
                       latents_per_class: int = 0, penalty: str = "l2", modes: Sequence[str] = ATTRIBUTIONS
                       ) -> dict[str, dict[str, float]]:
    """{method: unit_precision(...)} for the SAE, its matched random dictionary (mean over `seeds`, with
    `<metric>_sd`) and the raw channels, on features `feats` (N, C) or (N, H, W, C) read with `pooling`
    (default: the SAE's latent pooling). `probe` (optional) is the SAE's own probe for this pooling; the
    controls get probes of the same C, `latents_per_class` and `penalty`."""
    pooling = pooling or sae.config.latent_pooling
    test = np.asarray(is_test, bool)
    sets = unit_sets(sae, feats, test, (pooling,), seeds)[pooling]
    return report_sets(sets, labels, test, probe, C=C, modes=modes, latents_per_class=latents_per_class,
                       penalty=penalty)


def headline(report: dict[str, dict[str, float]], mode: str = "contrastive") -> dict[str, float]:
    """Flat metrics of an explanation report (names without dots: they also become registry version tags)."""
    key = f"precision.{mode}"
    s, r, c = report["sae"], report["random"], report["channels"]
    out = {"explanation_precision": s[key], "explanation_precision_random": r[key],
           "explanation_precision_channels": c[key], "explanation_precision_chance": s["chance"],
           "explanation_precision_ratio_random": s[key] / r[key] if r[key] > 0 else float("nan")}
    other = [m for m in ATTRIBUTIONS if m != mode and f"precision.{m}" in s]
    for m in other:
        out[f"explanation_precision_{m}"] = s[f"precision.{m}"]
    return out


def pooling_comparison(sae, feats: np.ndarray, labels: np.ndarray, is_test: np.ndarray,
                       poolings: Sequence[str] = POOLINGS, *, C: float = 1.0, seeds: Sequence[int] = CONTROL_SEEDS,
                       latents_per_class: Sequence[int] = (0,), penalty: str = "l2",
                       modes: Sequence[str] = ATTRIBUTIONS, rank_pooling: str | None = None) -> list[dict[str, Any]]:
    """One row per (pooling, probe sparsity, method) with accuracy, density, dense_share and precision per
    attribution mode (`latents_per_class` 0 = the dense probe). `rank_pooling`: rank every unit's top images by
    this pooling instead of the one its probe reads."""
    test = np.asarray(is_test, bool)
    if rank_pooling and feats.ndim != 4:
        raise ValueError("rank_pooling needs token features (N, H, W, C): pooled vectors have one pooling only")
    sets = unit_sets(sae, feats, test, tuple(dict.fromkeys((*poolings, *([rank_pooling] if rank_pooling else [])))),
                     seeds)
    rows = []
    for p in poolings:
        for m in latents_per_class:
            rep = report_sets(sets[p], labels, test, C=C, modes=modes, latents_per_class=int(m), penalty=penalty,
                              rank=sets[rank_pooling] if rank_pooling else None)
            rows.extend({"pooling": p, "latents_per_class": int(m), "method": k, **rep[k]} for k in METHODS)
    return rows


def pooling_figure(rows: Sequence[dict[str, Any]], title: str = ""):
    """Bars per pooling: explanation precision (contrastive, plain) per method, probe accuracy and density."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    def group(r):  # x-axis category: the pooling, with the probe's latents per class when it is sparse
        m = int(r.get("latents_per_class", 0))
        return r["pooling"] if m == 0 else f"{r['pooling']}, m={m}"

    poolings = list(dict.fromkeys(group(r) for r in rows))
    panels = [("precision.contrastive", "explanation precision (contrastive)"),
              ("precision.logit", "explanation precision (logit share)"),
              ("accuracy", "probe accuracy (test)"), ("density", "mean firing rate")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    width = 0.8 / len(METHODS)
    x = np.arange(len(poolings))
    for ax, (key, name) in zip(axes[0], panels):
        for i, m in enumerate(METHODS):
            v = [next((r.get(key, np.nan) for r in rows if group(r) == p and r["method"] == m), np.nan)
                 for p in poolings]
            ax.bar(x + (i - 1) * width, v, width, label=m)
        if key.startswith("precision"):
            chance = [r["chance"] for r in rows if "chance" in r]
            if chance:
                ax.axhline(float(np.mean(chance)), color="grey", linestyle=":", label="chance")
        ax.set_xticks(x, poolings, fontsize=7, rotation=20)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def classifier_precision(clf, store, seeds: Sequence[int] = CONTROL_SEEDS) -> dict[str, float]:
    """`headline` metrics of a Classifier built on `store`: its own probe on its SAE's latents of the store's
    rows (the SAE's latent pooling), its controls with probes of the same C, contrastive attribution first."""
    from ..sae.data import feature_set_for  # the store's feature set the SAE reads

    sc = clf.sae.config
    feats = feature_set_for(store, clf.hook_point, clf.timestep, sc.input, sc.pooling or "mean").load()
    labels = store.labels(clf.concept)
    meta = getattr(clf.probe, "meta", {})
    C, penalty = float(meta.get("C", 1.0)), str(meta.get("penalty", "l2"))
    rep = explanation_report(clf.sae, feats, labels, store.is_test(), probe=clf.probe, C=C, seeds=seeds,
                             penalty=penalty, latents_per_class=int(meta.get("latents_per_class", 0)))
    return headline(rep)
