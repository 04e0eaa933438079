"""Reconstruction and sparsity metrics, named as the field does: fvu, explained_variance, l0, dead_frac, l2_ratio.

Small pure functions of arrays, plus `ReconstructionStats`, which accumulates the same quantities over
batches (float64) so a large held-out set never needs to be in memory at once.
"""
from __future__ import annotations

import numpy as np
import torch


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over all rows."""
    x = _np(x).astype(np.float64).reshape(-1, _np(x).shape[-1])
    x_hat = _np(x_hat).astype(np.float64).reshape(x.shape)
    den = ((x - x.mean(0)) ** 2).sum()
    return float(((x - x_hat) ** 2).sum() / den) if den > 0 else float("nan")


def explained_variance(x, x_hat) -> float:
    """1 − fvu."""
    return 1.0 - fvu(x, x_hat)


def l0(codes) -> float:
    """Mean number of non-zero latents per row of dense codes (..., n_latents)."""
    z = _np(codes)
    return float((z != 0).reshape(-1, z.shape[-1]).sum(1).mean()) if z.size else 0.0


def l2_ratio(x, x_hat) -> float:
    """Mean over rows of ‖x̂‖ / ‖x‖ (1 = norms preserved; < 1 = shrinkage)."""
    x = _np(x).astype(np.float64).reshape(-1, _np(x).shape[-1])
    x_hat = _np(x_hat).astype(np.float64).reshape(x.shape)
    nx = np.linalg.norm(x, axis=1)
    ok = nx > 0
    return float((np.linalg.norm(x_hat, axis=1)[ok] / nx[ok]).mean()) if ok.any() else float("nan")


def dead_frac(samples_since_fired, window: int, samples_seen: int | None = None) -> float:
    """Share of latents that did not fire in the last `window` samples (or in all samples seen, if fewer)."""
    s = _np(samples_since_fired)
    w = window if samples_seen is None else min(window, samples_seen)
    if w <= 0:
        return 0.0
    return float((s >= w).mean())


def normalized_mse(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Σ‖target − recon‖² / Σ‖target − mean(target)‖² over a batch (the training loss; = batch fvu)."""
    den = ((target - target.mean(0)) ** 2).sum().clamp_min(1e-30)
    return ((target - recon) ** 2).sum() / den


class ReconstructionStats:
    """Accumulates fvu, l2_ratio and l0 over batches; `result()` gives the metrics of all of them."""

    def __init__(self, d: int):
        self.n = 0
        self.sum_x = np.zeros(d, np.float64)
        self.sum_x2 = 0.0
        self.sse = 0.0
        self.ratio = 0.0
        self.n_ratio = 0
        self.active = 0.0

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, n_active: torch.Tensor) -> None:
        xd = x.double()
        self.n += x.shape[0]
        self.sum_x += xd.sum(0).numpy()
        self.sum_x2 += float((xd ** 2).sum())
        self.sse += float(((xd - x_hat.double()) ** 2).sum())
        nx = torch.linalg.vector_norm(xd, dim=1)
        ok = nx > 0
        self.ratio += float((torch.linalg.vector_norm(x_hat.double(), dim=1)[ok] / nx[ok]).sum())
        self.n_ratio += int(ok.sum())
        self.active += float(n_active.double().sum())

    def result(self) -> dict[str, float]:
        var = self.sum_x2 - float((self.sum_x ** 2).sum()) / max(self.n, 1)
        f = self.sse / var if var > 0 else float("nan")
        return {"fvu": f, "explained_variance": 1.0 - f,
                "l0": self.active / max(self.n, 1),
                "l2_ratio": self.ratio / max(self.n_ratio, 1)}
