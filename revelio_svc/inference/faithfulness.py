"""Deletion curves: does removing the latents an explanation names actually change the prediction?

For one image: take its image-level SAE latents z, rank the active latents by their contribution to the
predicted class c (what `Classifier.explain` shows: by default their share of the margin over the runner-up),
zero the top 1, 2, …, n of them and re-classify (the probe on the edited z). The curve is p(c) against the number removed. Its area, normalised to the
x-range [0, 1] (trapezoids over n = 0…n_max, divided by n_max), is small when the named latents carry the
prediction: a faithful explanation. The same curve with the active latents removed in random order (mean
over `n_random` orders) is the control: an explanation is only as good as its gap to random.

`faithfulness_metrics` averages both areas over held-out dataset images: `deletion_auc`,
`deletion_auc_random` and `deletion_auc_gap` (= random − ranked; > 0 is better than random). The registry
logs them on a registered classifier version's run (`registry.faithfulness.log_faithfulness`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import train_test_indices

DEFAULT_N_MAX = 16


@dataclass
class DeletionCurve:
    label: str  # the predicted class whose probability is followed
    label_index: int
    removed: list[int]  # latents in removal order
    prob: list[float]  # p(label) after removing 0, 1, …, len(removed) latents
    prob_random: list[float]  # the same for random removal orders (mean)
    auc: float
    auc_random: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "removed": self.removed, "prob": self.prob, "prob_random": self.prob_random,
                "auc": self.auc, "auc_random": self.auc_random, "n_removed": list(range(len(self.prob)))}


def normalised_auc(y: Sequence[float]) -> float:
    """Trapezoid area under y over x = 0…n, divided by n (a constant curve at p has area p)."""
    y = np.asarray(y, np.float64)
    if y.size < 2:
        return float(y[0]) if y.size else float("nan")
    return float(((y[1:] + y[:-1]) / 2).sum() / (y.size - 1))


def _curve(clf, z: np.ndarray, c: int, order: Sequence[int]) -> np.ndarray:
    """p(c) after zeroing order[:n] for n = 0…len(order), in one probe call."""
    zz = np.repeat(z[None].astype(np.float64), len(order) + 1, axis=0)
    for n in range(1, len(order) + 1):
        zz[n:, order[n - 1]] = 0.0
    return clf.predict_latents(zz)[:, c]


def deletion_curve(clf, z: np.ndarray, n_max: int = DEFAULT_N_MAX, n_random: int = 8, seed: int = 0,
                   attribution: str = "contrastive") -> DeletionCurve:
    """The deletion curve of one image's latents `z` (n_latents,) — see the module docstring; latents are
    removed in the order `Classifier.explain` shows them with the same `attribution`."""
    z = np.asarray(z, np.float32).reshape(-1)
    contrib, c, _, _ = clf.attribution(z, attribution)
    active = np.flatnonzero(z > 0)
    ranked = active[np.argsort(-contrib[active], kind="stable")]
    n = int(min(max(int(n_max), 1), len(ranked)))
    order = [int(j) for j in ranked[:n]]
    prob = _curve(clf, z, c, order)
    rng = np.random.default_rng(seed)
    rand = np.mean([_curve(clf, z, c, list(rng.permutation(active)[:n])) for _ in range(max(1, n_random))], axis=0) \
        if n else prob
    return DeletionCurve(clf.class_names[c], c, order, [float(p) for p in prob], [float(p) for p in rand],
                         normalised_auc(prob), normalised_auc(rand))


def heldout_indices(clf, n_images: int, seed: int = 0) -> np.ndarray:
    """Up to n_images dataset indices from the test split of the classifier's dataset (fixed, seeded)."""
    ds = clf.dataset()
    try:
        _, test = train_test_indices(ds.ids(), clf.data.seed, clf.data.test_fraction)
    except ValueError:
        test = np.arange(len(ds))
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(test)[: int(n_images)])


def faithfulness_metrics(clf, n_images: int = 64, n_max: int = DEFAULT_N_MAX, seed: int = 0,
                         batch: int = 32) -> dict[str, float]:
    """Mean deletion areas over held-out images of the classifier's dataset (see the module docstring)."""
    ds = clf.dataset()
    idx = heldout_indices(clf, n_images, seed)
    ids = ds.ids()
    aucs, rands = [], []
    for s in range(0, len(idx), batch):
        part = idx[s:s + batch]
        z = clf.latents([ds.image(int(i)) for i in part], [ids[int(i)] for i in part])
        for row in z:
            if not (row > 0).any():
                continue
            cur = deletion_curve(clf, row, n_max, seed=seed)
            aucs.append(cur.auc)
            rands.append(cur.auc_random)
    if not aucs:
        return {"deletion_n_images": 0.0}
    auc, rand = float(np.mean(aucs)), float(np.mean(rands))
    return {"deletion_auc": auc, "deletion_auc_random": rand, "deletion_auc_gap": rand - auc,
            "deletion_n_images": float(len(aucs)), "deletion_n_max": float(n_max)}
