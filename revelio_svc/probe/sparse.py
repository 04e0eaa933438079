"""Sparse probes: each class's logit rests on at most m latents, so an explanation names few of them.

`fit_sparse_probe(X, y, m)`: fit the dense L2 probe (`fit_linear_probe`), keep for each class the m latents
with the largest positive weight (the latents whose presence speaks *for* that class), and refit the
multinomial logistic regression with every other weight held at zero (same standardisation, same C, L-BFGS on
the masked weights). The result is an ordinary `LinearProbe` whose coefficient rows have at most m non-zeros,
so everything that reads a probe (prediction, attribution, saving) works unchanged.

`sparsity_curve` fits it for m = 1, 2, 4, … on the train rows and scores it on held-out rows;
`smallest_within` picks the fewest latents per class that stay within a tolerance (2 points) of the dense
probe. Choose on a validation split carved from the train rows (`validation_split`), never on the test rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from .linear import LinearProbe, Matrix, apply_scaler, fit_linear_probe

MS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def top_m_mask(coef: np.ndarray, m: int) -> np.ndarray:
    """(K, U) bool: per class row, the m largest positive weights (fewer if fewer are positive; ties: lower index)."""
    coef = np.asarray(coef, np.float64)
    if m < 1:
        raise ValueError(f"latents per class must be >= 1, got {m}")
    order = np.argsort(-coef, axis=1, kind="stable")[:, :m]
    mask = np.zeros(coef.shape, bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask & (coef > 0)


def _refit(Xs: Matrix, y_idx: np.ndarray, mask: np.ndarray, W0: np.ndarray, b0: np.ndarray, C: float,
           max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Multinomial logistic regression with weights outside `mask` fixed at 0 (sklearn's objective:
    C · Σ cross-entropy + ½‖W‖²), started from (W0, b0)."""
    K, U = mask.shape
    n = Xs.shape[0]
    Y = np.zeros((n, K))
    Y[np.arange(n), y_idx] = 1.0
    free = np.flatnonzero(mask.reshape(-1))

    def unpack(theta):
        W = np.zeros(K * U)
        W[free] = theta[:free.size]
        return W.reshape(K, U), theta[free.size:]

    def f(theta):
        W, b = unpack(theta)
        Z = np.asarray(Xs @ W.T) + b
        Z -= Z.max(1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
        P = np.exp(logp)
        loss = -C * float((Y * logp).sum()) + 0.5 * float((W * W).sum())
        G = C * (P - Y)
        gW = np.asarray(Xs.T @ G).T + W
        return loss, np.concatenate([gW.reshape(-1)[free], G.sum(0)])

    theta0 = np.concatenate([np.asarray(W0, np.float64).reshape(-1)[free], np.asarray(b0, np.float64)])
    res = minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": int(max_iter)})
    W, b = unpack(res.x)
    return W, b, int(res.nit)


def fit_sparse_probe(X: Matrix, y: np.ndarray, m: int, *, C: float = 1.0, max_iter: int = 1000, seed: int = 0,
                     meta: dict[str, Any] | None = None) -> LinearProbe:
    """A probe whose every class reads at most `m` latents (see the module docstring)."""
    dense = fit_linear_probe(X, y, C=C, max_iter=max_iter, seed=seed, meta=meta)
    mask = top_m_mask(dense.coef, m)
    y_idx = np.searchsorted(dense.classes, np.asarray(y, np.int64))
    Xs = apply_scaler(sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, np.float64),
                      dense.scaler_mean, dense.scaler_scale)
    W, b, nit = _refit(Xs, y_idx, mask, dense.coef * mask, dense.intercept, C, max_iter)
    info = {**dense.meta, "latents_per_class": int(m), "n_iter": nit, "converged": nit < max_iter,
            "latents_used": int((np.abs(W) > 0).any(0).sum())}
    c = np.ascontiguousarray
    return LinearProbe(c(W, np.float64), c(b, np.float64), dense.scaler_mean, dense.scaler_scale, dense.classes, info)


def validation_split(y: np.ndarray, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """A class-stratified, seeded boolean mask of rows held out for validation (at least one per class with 2+)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = int(round(fraction * len(rows))) if len(rows) > 1 else 0
        held[rng.permutation(rows)[:max(k, 1 if len(rows) > 1 else 0)]] = True
    return held


def sparsity_curve(X: Matrix, y: np.ndarray, held_out: np.ndarray, ms: Sequence[int] = MS, *, C: float = 1.0,
                   max_iter: int = 1000) -> dict[str, float]:
    """Accuracy on `held_out` rows of the dense probe ("dense") and of the m-sparse probe for each m, all
    fitted on the other rows."""
    y = np.asarray(y, np.int64)
    held = np.asarray(held_out, bool)
    fit = np.flatnonzero(~held)
    Xf, yf = X[fit], y[fit]
    Xh, yh = X[np.flatnonzero(held)], y[held]
    out = {"dense": float(np.mean(fit_linear_probe(Xf, yf, C=C, max_iter=max_iter).predict(Xh) == yh))}
    for m in ms:
        out[str(int(m))] = float(np.mean(fit_sparse_probe(Xf, yf, int(m), C=C, max_iter=max_iter).predict(Xh) == yh))
    return out


def smallest_within(curve: dict[str, float], tolerance: float = 0.02) -> int | None:
    """The fewest latents per class whose accuracy is within `tolerance` of the dense probe (None: no m is)."""
    ok = [int(k) for k, v in curve.items() if k != "dense" and v >= curve["dense"] - tolerance]
    return min(ok) if ok else None


def sparsity_figure(curves: dict[str, dict[str, float]], chosen: int | None = None, title: str = ""):
    """Accuracy against latents per class (log scale), one line per curve, the dense probe dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for (name, curve), color in zip(curves.items(), ("C0", "C1", "C2", "C3")):
        ms = sorted(int(k) for k in curve if k != "dense")
        ax.plot(ms, [curve[str(m)] for m in ms], "o-", color=color, label=f"{name}: m latents per class")
        ax.axhline(curve["dense"], color=color, linestyle="--", linewidth=0.9, label=f"{name}: dense probe")
    if chosen is not None:
        ax.axvline(chosen, color="grey", linestyle=":", label=f"chosen m = {chosen}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latents per class")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "sparse probe: accuracy against latents per class", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

