"""What an explanation names, and whether the images it shows agree with the prediction.

A linear probe's logit for class c is Σ_j x_j · W[c, j] + b_c, with x the standardised units (SAE latents,
control units or channels). Two ways to split a prediction over units:

- `logit`: unit j's share of the predicted class's logit, x_j · W[c, j]. A dense unit that fires on every
  image with a positive weight for every class gets a large share although it says nothing about *which*
  class: it lifts all logits alike.
- `contrastive` (the default): unit j's share of the *margin* between the predicted class c and the
  runner-up r, x_j · (W[c, j] − W[r, j]). The shares sum to logit_c − logit_r minus (b_c − b_r), so a unit
  that pushes both classes equally contributes nothing: class-agnostic units cancel out.

`explanation_precision` scores the images an explanation would show: for each (correctly classified) image,
the `n_units` units contributing most (among those present on it, standardised value > 0, with a positive
share: a unit with no share in the prediction is not part of its explanation), and each unit's
`n_images` top-activating dataset images; the score is the share of those images that carry the predicted
label, averaged over images. A planted explanation (every class read off units that fire only on it) scores
1; units unrelated to the label score about the label's base rate (`chance_precision`).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

ATTRIBUTIONS = ("contrastive", "logit")
Attribution = Literal["contrastive", "logit"]
N_UNITS = 3  # contributing units per explanation
N_IMAGES = 8  # top dataset images per unit


def check_attribution(mode: str) -> str:
    if mode not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {', '.join(ATTRIBUTIONS)}, got {mode!r}")
    return mode


def contributions(xs: np.ndarray, coef: np.ndarray, intercept: np.ndarray, mode: str = "contrastive"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-unit shares of each row's prediction (see the module docstring).

    xs: (n, U) standardised inputs; coef: (K, U); intercept: (K,). Returns (contrib (n, U), predicted row of
    `coef` (n,), runner-up row (n,); with one class the runner-up is the predicted row itself and the
    contrastive shares are 0).
    """
    check_attribution(mode)
    xs = np.atleast_2d(np.asarray(xs, np.float64))
    coef = np.asarray(coef, np.float64)
    if coef.ndim != 2 or xs.shape[1] != coef.shape[1]:
        raise ValueError(f"inputs have {xs.shape[1]} units but the weights are {coef.shape}")
    logits = xs @ coef.T + np.asarray(intercept, np.float64)
    order = np.argsort(-logits, axis=1, kind="stable")
    pred = order[:, 0]
    runner = order[:, 1] if coef.shape[0] > 1 else pred
    w = coef[pred] if mode == "logit" else coef[pred] - coef[runner]
    return xs * w, pred, runner


def top_contributors(contrib: np.ndarray, present: np.ndarray, n: int = N_UNITS) -> np.ndarray:
    """(rows, n) units with the largest contribution among those present on each row, best first (−1: fewer)."""
    contrib = np.atleast_2d(np.asarray(contrib, np.float64))
    present = np.atleast_2d(np.asarray(present, bool))
    if contrib.shape != present.shape:
        raise ValueError(f"contributions {contrib.shape} and presence {present.shape} differ in shape")
    masked = np.where(present, contrib, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :n]
    ok = np.take_along_axis(present, order, 1)
    out = np.where(ok, order, -1)
    if out.shape[1] < n:  # fewer units than n
        out = np.concatenate([out, np.full((out.shape[0], n - out.shape[1]), -1)], axis=1)
    return out.astype(np.int64)


def unit_top_images(acts: np.ndarray, rows: np.ndarray | None = None, n: int = N_IMAGES) -> np.ndarray:
    """(U, n) row indices of each unit's n most activating rows among `rows` (default all), strongest first;
    −1 where the unit is not active (> 0) on that many rows. Ties go to the lower row."""
    acts = np.asarray(acts.toarray() if hasattr(acts, "toarray") else acts, np.float32)
    rows = np.arange(acts.shape[0]) if rows is None else np.asarray(rows, np.int64)
    sub = acts[rows]
    n_take = min(n, len(rows))
    if n_take == 0:
        return np.full((acts.shape[1], n), -1, np.int64)
    part = np.argpartition(-sub, n_take - 1, axis=0)[:n_take] if n_take < len(rows) else np.broadcast_to(
        np.arange(len(rows))[:, None], sub.shape)
    vals = np.take_along_axis(sub, part, 0)
    order = np.lexsort((part, -vals), axis=0)
    part, vals = np.take_along_axis(part, order, 0), np.take_along_axis(vals, order, 0)
    top = np.where(vals > 0, rows[part], -1).T
    if n_take < n:
        top = np.concatenate([top, np.full((top.shape[0], n - n_take), -1)], axis=1)
    return top.astype(np.int64)


def precision_per_row(units: np.ndarray, predicted: np.ndarray, top_images: np.ndarray, labels: np.ndarray
                      ) -> np.ndarray:
    """Share of the shown images carrying the predicted label, per explained row (NaN: nothing shown).

    units: (rows, m) unit ids (−1 none); predicted: (rows,) label ids; top_images: (U, n) dataset rows
    (−1 none); labels: (N,) label of every dataset row.
    """
    units = np.atleast_2d(np.asarray(units, np.int64))
    top_images = np.asarray(top_images, np.int64)
    labels = np.asarray(labels)
    out = np.full(units.shape[0], np.nan)
    for i, (us, c) in enumerate(zip(units, np.asarray(predicted))):
        imgs = top_images[us[us >= 0]].reshape(-1)
        imgs = imgs[imgs >= 0]
        if imgs.size:
            out[i] = float(np.mean(labels[imgs] == c))
    return out


def chance_precision(labels: np.ndarray, predicted: np.ndarray) -> float:
    """What images drawn at random would score: the mean base rate of the predicted labels."""
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    if predicted.size == 0 or labels.size == 0:
        return float("nan")
    vals, counts = np.unique(labels, return_counts=True)
    rate = dict(zip(vals.tolist(), (counts / labels.size).tolist()))
    return float(np.mean([rate.get(int(c), 0.0) for c in predicted]))


def explanation_precision(xs: np.ndarray, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray,
                          acts: np.ndarray, labels: np.ndarray, eval_rows: np.ndarray, *,
                          image_rows: np.ndarray | None = None, mode: str = "contrastive", n_units: int = N_UNITS,
                          n_images: int = N_IMAGES) -> dict[str, float]:
    """Explanation precision of a linear probe over units `acts` (see the module docstring).

    xs: (N, U) the probe's standardised inputs of every row; coef/intercept/classes: the probe (classes: the
    label id of each coef row); acts: (N, U) the units' activations (what ranks their top images); labels:
    (N,) true labels; eval_rows: rows to explain (only those the probe classifies correctly count);
    image_rows: rows the top images are drawn from (default: all).

    Returns precision (mean over explained rows), chance (base rate of the predicted labels), n_explained,
    and accuracy (of the probe on eval_rows).
    """
    labels = np.asarray(labels, np.int64)
    eval_rows = np.asarray(eval_rows, np.int64)
    classes = np.asarray(classes, np.int64)
    x_eval = xs[eval_rows]
    x_eval = np.asarray(x_eval.toarray() if hasattr(x_eval, "toarray") else x_eval, np.float64)
    contrib, pred_row, _ = contributions(x_eval, coef, intercept, mode)
    pred = classes[pred_row]
    correct = pred == labels[eval_rows]
    present = (x_eval > 0) & (contrib > 0)  # a unit on the image that speaks for the prediction
    units = top_contributors(contrib[correct], present[correct], n_units)
    top = unit_top_images(acts, image_rows, n_images)
    per_row = precision_per_row(units, pred[correct], top, labels)
    ok = np.isfinite(per_row)
    return {"precision": float(per_row[ok].mean()) if ok.any() else float("nan"),
            "chance": chance_precision(labels if image_rows is None else labels[image_rows], pred[correct]),
            "n_explained": float(ok.sum()), "accuracy": float(correct.mean()) if correct.size else float("nan")}
