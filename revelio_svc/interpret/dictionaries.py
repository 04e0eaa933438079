"""Fixed dictionaries read like an SAE: the controls that do not share the SAE's input normalisation.

The matched random dictionary (`controls.matched_random`) reads the SAE's own input. With a whitened input
random directions mostly pick up low-variance directions, so that control alone flatters the SAE. The
controls here all read the raw features, centred on their train mean, and encode them the way an SAE does:

    codes(x) = ReLU(TopK_k((x − centre) · Dᵀ))        (k = None: every unit, ReLU only)

with unit-norm dictionary rows D:

- `random_raw`: random unit directions, the SAE's width and k;
- `token_rows`: random training vectors (centred, unit norm) as rows, the SAE's width and k;
- `pca`: the principal directions of the centred training vectors with both signs (2·C units: ReLU keeps
  one side of a direction), the SAE's k;
- `kmeans`: spherical k-means centroids of the centred training vectors, the SAE's width, k = 1 — a learned
  1-sparse dictionary (gain-shape vector quantisation), the simplest thing an SAE has to beat;
- `channels`: the raw channels, ReLU(x_c) (no centring, identity rows, every unit).

A `Dictionary` has the attributes and `encode_sparse` that `sae.image_latents` and the report's token maps
read, so a control is pooled and dissected by the very code that reads the SAE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

KMEANS_ITERS = 20
KMEANS_POINTS = 32768  # training vectors k-means is fitted on (bounded time on 2 cores)


@dataclass(frozen=True, eq=False)
class Dictionary:
    """Unit rows (U, C), a centre (C,), TopK k (None = all units) and the image pooling of token codes."""

    name: str
    rows: np.ndarray
    centre: np.ndarray
    k: int | None
    latent_pooling: str = "max"
    _w: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rows = np.asarray(self.rows, np.float32)
        if rows.ndim != 2 or np.asarray(self.centre).shape != (rows.shape[1],):
            raise ValueError(f"dictionary {self.name!r}: rows must be (units, C) and centre (C,), got "
                             f"{rows.shape} and {np.asarray(self.centre).shape}")
        object.__setattr__(self, "_w", torch.from_numpy(np.ascontiguousarray(rows)))

    @property
    def d_in(self) -> int:
        return int(self.rows.shape[1])

    @property
    def n_latents(self) -> int:
        return int(self.rows.shape[0])

    @property
    def config(self) -> SimpleNamespace:
        """What `image_latents` reads of an SAE's config."""
        return SimpleNamespace(latent_pooling=self.latent_pooling, hook_point=self.name, timestep="-")

    @torch.no_grad()
    def encode_sparse(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C) → (values, indices), each (N, m): the kept units after ReLU (m = k, or every unit)."""
        x = torch.as_tensor(x).float().reshape(-1, self.d_in)
        pre = (x - torch.from_numpy(np.asarray(self.centre, np.float32))) @ self._w.t()
        if self.k is None or self.k >= self.n_latents:
            idx = torch.arange(self.n_latents).expand(pre.shape[0], -1)
            return torch.relu(pre), idx
        vals, idx = pre.topk(self.k, dim=1)
        return torch.relu(vals), idx


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def random_raw(sample: np.ndarray, n_units: int, k: int, seed: int, pooling: str = "max") -> Dictionary:
    """Random unit directions on the raw centred features (`sample`: train vectors (N, C))."""
    gen = np.random.default_rng([int(seed), 0xA11])
    rows = _unit(gen.standard_normal((n_units, sample.shape[1])))
    return Dictionary("random_raw", rows, sample.mean(0).astype(np.float32), k, pooling)


def token_rows(sample: np.ndarray, n_units: int, k: int, seed: int, pooling: str = "max") -> Dictionary:
    """Randomly chosen centred training vectors (unit norm) as rows."""
    centre = sample.mean(0).astype(np.float32)
    gen = np.random.default_rng([int(seed), 0x70C])
    pick = gen.choice(len(sample), n_units, replace=n_units > len(sample))
    return Dictionary("token_rows", _unit(sample[pick] - centre), centre, k, pooling)


def pca(sample: np.ndarray, k: int, pooling: str = "max") -> Dictionary:
    """± principal directions of the centred training vectors (2·C units), TopK k."""
    centre = sample.mean(0).astype(np.float64)
    _, _, vt = np.linalg.svd(np.asarray(sample, np.float64) - centre, full_matrices=False)
    vt = vt * np.where(vt.sum(1, keepdims=True) < 0, -1.0, 1.0)  # a fixed sign per component
    return Dictionary("pca", _unit(np.concatenate([vt, -vt])), centre.astype(np.float32), k, pooling)


@torch.no_grad()
def spherical_kmeans(x: np.ndarray, n_clusters: int, seed: int, iters: int = KMEANS_ITERS) -> np.ndarray:
    """Unit centroids (n_clusters, C) maximising Σ max_j ⟨x̂_i, c_j⟩ over unit rows x̂ (Lloyd iterations);
    an empty cluster is re-seeded on the point its centroid explains worst."""
    X = torch.from_numpy(_unit(x))
    gen = np.random.default_rng([int(seed), 0xC1])
    C = X[torch.from_numpy(gen.choice(len(X), n_clusters, replace=n_clusters > len(X)))].clone()
    for _ in range(iters):
        sim = X @ C.t()
        best, assign = sim.max(1)
        new = torch.zeros_like(C).index_add_(0, assign, X)
        counts = torch.bincount(assign, minlength=n_clusters)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            worst = torch.argsort(best)[:len(empty)]
            new[empty] = X[worst]
        C = new / new.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return C.numpy()


def kmeans(sample: np.ndarray, n_units: int, seed: int = 0, pooling: str = "max",
           max_points: int = KMEANS_POINTS) -> Dictionary:
    """Spherical k-means centroids of the centred training vectors, read 1-sparse (TopK with k = 1)."""
    centre = sample.mean(0).astype(np.float32)
    gen = np.random.default_rng([int(seed), 0xC2])
    pts = sample[gen.choice(len(sample), min(max_points, len(sample)), replace=False)] - centre
    return Dictionary("kmeans", spherical_kmeans(pts, n_units, seed), centre, 1, pooling)


def channels(d_in: int, pooling: str = "max") -> Dictionary:
    """The raw channels, ReLU(x_c): identity rows, no centring, every unit."""
    return Dictionary("channels", np.eye(d_in, dtype=np.float32), np.zeros(d_in, np.float32), None, pooling)
