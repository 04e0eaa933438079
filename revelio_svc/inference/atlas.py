"""2-D maps of a classifier's dataset and of its SAE latents (the demo's latent atlas).

- Images: each image's SAE latent vector (rows of `DatasetLatents.Z`, L2-normalised so the map shows which
  latents fire rather than how hard), reduced to 50 dimensions (truncated SVD: the codes stay sparse) and
  embedded with scikit-learn's t-SNE.
- Latents: each latent's decoder direction (rows of W_dec, unit norm: cosine geometry), embedded the same way.

Scale: t-SNE runs on at most `max_landmarks` points (default 1000: Barnes-Hut t-SNE grows like n log n,
and on a busy 2-core machine 2000 points took 3.6× as long as 1000; the demo's 2000-image atlas is drawn
while a user waits). With more points, a seeded uniform sample are the landmarks and every other
point is placed at the distance-weighted mean of its 5 nearest landmarks in the 50-d space (exact nearest
neighbours, scikit-learn), so all points get coordinates in one pass that grows linearly with n. The display
draws every point into a raster (a 50k-point map is one image, not 50k plot marks), so nothing is dropped.

`method="pca"` uses the first two SVD components instead (instant; for quick looks and tests). UMAP is not
used: `umap-learn` pulls numba/llvmlite and compiles on first use, which costs more than t-SNE at this size.
Coordinates are scaled to [0, 1] on both axes.

How well a map carries a concept (`knn_accuracy`, `layout_report`): the leave-one-out k-nearest-neighbour
accuracy of the concept's labels in the latent code space (cosine, the geometry the map is built from) and
in the 2-D layout itself (Euclidean), beside the majority-class share (what a map with no structure gets).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..interpret.knn import KNN_K, knn_accuracy, unit_rows

# scikit-learn's decomposition/manifold/neighbors modules are imported where a map is computed: importing them
# takes about a second, and an app that serves from the cache never needs them
METHODS = ("tsne", "pca")
MAX_LANDMARKS = 1000
N_COMPONENTS = 50
N_NEIGHBOURS = 5


def reduce(X, n_components: int = N_COMPONENTS, seed: int = 0) -> np.ndarray:
    """Rows of X (dense or sparse) → at most n_components dense dimensions (truncated SVD, centred when dense)."""
    from sklearn.decomposition import TruncatedSVD

    n, d = X.shape
    k = int(min(n_components, d - 1, n - 1))
    if k < 2:  # too few points or dimensions to reduce: pad to two
        dense = X.toarray() if sp.issparse(X) else np.asarray(X)
        out = np.zeros((n, 2), np.float32)
        out[:, :min(2, d)] = dense[:, :2]
        return out
    if not sp.issparse(X):
        X = X - X.mean(0, keepdims=True)
    return TruncatedSVD(k, random_state=seed, algorithm="randomized", n_iter=4).fit_transform(X).astype(np.float32)


def _unit_square(xy: np.ndarray) -> np.ndarray:
    lo, hi = xy.min(0), xy.max(0)
    return ((xy - lo) / np.where(hi - lo > 0, hi - lo, 1)).astype(np.float32)


def _tsne(Y: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = Y.shape[0]
    if n < 4:
        return Y[:, :2]
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500,
                learning_rate="auto").fit_transform(Y)


def embed(X, method: str = "tsne", *, max_landmarks: int = MAX_LANDMARKS, seed: int = 0,
          normalise: bool = True) -> np.ndarray:
    """(n, d) rows → (n, 2) coordinates in [0, 1] (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = X.shape[0]
    if n == 0:
        return np.zeros((0, 2), np.float32)
    Y = reduce(unit_rows(X) if normalise else X, seed=seed)
    if method == "pca" or n < 4:
        return _unit_square(Y[:, :2])
    if n <= max_landmarks:
        return _unit_square(_tsne(Y, seed))
    from sklearn.neighbors import NearestNeighbors

    land = np.sort(np.random.default_rng(seed).choice(n, int(max_landmarks), replace=False))
    xy_land = _tsne(Y[land], seed)
    nn = NearestNeighbors(n_neighbors=N_NEIGHBOURS).fit(Y[land])
    dist, nb = nn.kneighbors(Y)
    w = 1.0 / np.maximum(dist, 1e-6)
    xy = (xy_land[nb] * w[..., None]).sum(1) / w.sum(1, keepdims=True)
    xy[land] = xy_land  # landmarks keep their own coordinates
    return _unit_square(xy)


def image_atlas(Z, method: str = "tsne", seed: int = 0, max_landmarks: int = MAX_LANDMARKS) -> np.ndarray:
    """Coordinates of images from their SAE latents (n, L); images with no active latent sit at the origin."""
    return embed(Z, method, seed=seed, max_landmarks=max_landmarks)


def latent_atlas(sae, method: str = "tsne", seed: int = 0, max_landmarks: int = MAX_LANDMARKS) -> np.ndarray:
    """Coordinates of latents from their decoder directions (cosine geometry)."""
    W = sae.W_dec.detach().float().cpu().numpy()
    return embed(W, method, seed=seed, max_landmarks=max_landmarks)


def layout_report(Z, xy: np.ndarray | None, labels, k: int = KNN_K) -> dict[str, float]:
    """How well a map carries a concept: kNN accuracy in the code space (`knn_codes`, cosine) and in the 2-D
    layout `xy` (`knn_layout`, when given), the majority-class share (`chance`) and k."""
    y = np.asarray([-1 if v is None else v for v in labels], np.int64)
    lab = y[y >= 0]
    out = {"knn_codes": knn_accuracy(Z, y, k, "cosine"), "k": float(k),
           "chance": float(np.bincount(lab).max() / len(lab)) if len(lab) else float("nan")}
    if xy is not None:
        out["knn_layout"] = knn_accuracy(np.asarray(xy, np.float32), y, k, "euclidean")
    return out


def nearest_point(xy: np.ndarray, x: float, y: float, max_dist: float = 0.05) -> int | None:
    """Index of the point nearest to (x, y) in the atlas' [0, 1] coordinates, or None when none is within max_dist."""
    if len(xy) == 0:
        return None
    d2 = ((xy - np.array([x, y], np.float32)) ** 2).sum(1)
    i = int(np.argmin(d2))
    return i if d2[i] <= max_dist ** 2 else None
