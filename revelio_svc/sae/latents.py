"""SAE latents per image, and spatial latent maps for token SAEs.

A pooled SAE gives one code per image directly. A token SAE gives one code per spatial position; an
image's latent vector pools each latent over positions: `max` or `mean` of its dense per-position code
(computed from the sparse codes without ever forming the (positions × latents) matrix), or `top<q>` (e.g.
`top8`), the mean of its q largest position values (zeros count when it fires on fewer than q positions), which
sits between the two: one strong position no longer makes a latent as loud as a latent covering the object.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import SparseAutoencoder, pooling_q

_TARGET_VECTORS = 16384  # vectors encoded per chunk when `batch` is not given
_DENSE_BUDGET = 1 << 24  # floats of a dense (images, positions, latents) block for top-q pooling (64 MB)


def pool_positions(a: torch.Tensor, pooling: str) -> torch.Tensor:
    """(b, positions, units) → (b, units) by `max`, `mean` or `top<q>` (mean of the q largest positions)."""
    q = pooling_q(pooling)
    if q is None:
        return a.amax(1) if pooling == "max" else a.mean(1)
    return a.topk(min(q, a.shape[1]), dim=1).values.sum(1) / q


def top_q_sparse(vals: torch.Tensor, idx: torch.Tensor, n_units: int, q: int) -> torch.Tensor:
    """`pool_positions(dense, "top<q>")` from the sparse codes: vals/idx (b, entries) are image i's
    (position, unit) activations, each unit at most once per position, none negative. Each unit's q largest
    entries are summed and divided by q (absent positions are the zeros the dense form would hold), without
    forming the (b, positions, units) block: the entries are sorted by (image, unit, value descending) and
    the first q of each group kept (one int64 sort)."""
    b = vals.shape[0]
    key = (idx + torch.arange(b).unsqueeze(1) * n_units).reshape(-1)
    v = vals.reshape(-1).float().contiguous()
    # one sort on (group, value descending): a non-negative float32's bits, read as int32, order like it
    inv = (2 ** 31 - 1) - v.view(torch.int32).to(torch.int64)
    order = torch.argsort(key * 2 ** 31 + inv)
    key, v = key[order], v[order]
    pos = torch.arange(key.numel())
    new = torch.ones(key.numel(), dtype=torch.bool)
    new[1:] = key[1:] != key[:-1]
    rank = pos - torch.cummax(torch.where(new, pos, 0), 0).values
    keep = rank < q
    out = torch.zeros(b * n_units, dtype=vals.dtype).index_add_(0, key[keep], v[keep])
    return out.view(b, n_units).div_(q)


def _as_tensor(a) -> torch.Tensor:
    t = a if torch.is_tensor(a) else torch.from_numpy(np.ascontiguousarray(a))
    return t.float()


def _check_feats(sae: SparseAutoencoder, feats) -> None:
    shape = tuple(feats.shape)
    if len(shape) not in (2, 4):
        raise ValueError(f"features must be (n, C) pooled or (n, H, W, C) tokens, got shape {shape}")
    if shape[-1] != sae.d_in:
        raise ValueError(f"features have {shape[-1]} channels; the SAE takes d_in={sae.d_in} "
                         f"(trained on {sae.config.hook_point or '?'} t={sae.config.timestep})")


@torch.no_grad()
def image_latents(sae: SparseAutoencoder, feats, pooling: str | None = None, batch: int | None = None) -> np.ndarray:
    """Image-level latent activations (n, n_latents), float32.

    feats: (n, C) pooled vectors, or (n, H, W, C) tokens whose per-position latents are pooled over
    positions with `pooling` (`max` | `mean` | `top<q>`; default: the SAE's `latent_pooling`). `batch`: images per
    chunk (default: about 16k vectors per chunk).
    """
    pooling = pooling or sae.config.latent_pooling
    return image_latents_pooled(sae, feats, (pooling,), batch)[pooling]


@torch.no_grad()
def image_latents_pooled(sae: SparseAutoencoder, feats, poolings, batch: int | None = None) -> dict[str, np.ndarray]:
    """`image_latents` for several poolings from one sparse encoding: {pooling: (n, n_latents)}."""
    _check_feats(sae, feats)
    poolings = tuple(dict.fromkeys(poolings))
    qs = {p: pooling_q(p) for p in poolings}
    n = feats.shape[0]
    per_image = int(np.prod(feats.shape[1:-1])) if len(feats.shape) == 4 else 1
    batch = batch or max(1, _TARGET_VECTORS // per_image)
    sparse_q = getattr(sae.config, "relu", False) is True  # no negative codes: top-q from the sparse codes
    if any(q is not None for q in qs.values()) and per_image > 1 and not sparse_q:
        batch = max(1, min(batch, _DENSE_BUDGET // (per_image * sae.n_latents)))  # top-q needs the dense block
    out = {p: np.zeros((n, sae.n_latents), np.float32) for p in poolings}
    for s in range(0, n, batch):
        x = _as_tensor(feats[s:s + batch])
        b = x.shape[0]
        vals, idx = sae.encode_sparse(x.reshape(-1, sae.d_in))
        if per_image == 1:
            z = torch.zeros(b, sae.n_latents).scatter_add_(1, idx, vals).numpy()
            for p in poolings:
                out[p][s:s + b] = z
            continue
        vals = vals.reshape(b, -1)
        idx = idx.reshape(b, -1)
        for p in poolings:
            out[p][s:s + b] = _pool_sparse(vals, idx, b, per_image, sae.n_latents, p, qs[p], sparse_q).numpy()
    return out


def _pool_sparse(vals: torch.Tensor, idx: torch.Tensor, b: int, per_image: int, n_latents: int, pooling: str,
                 q: int | None, sparse_q: bool) -> torch.Tensor:
    """(b, n_latents) pooled over positions from image-wise sparse codes vals/idx (b, positions × k)."""
    z = torch.zeros(b, n_latents)
    if pooling == "max":
        return z.scatter_reduce_(1, idx, vals, reduce="amax", include_self=True)
    if pooling == "mean":
        return z.scatter_add_(1, idx, vals).div_(per_image)
    if sparse_q:
        return top_q_sparse(vals, idx, n_latents, q)
    dense = torch.zeros(b, per_image, n_latents).scatter_add_(
        2, idx.reshape(b, per_image, -1), vals.reshape(b, per_image, -1))
    return pool_positions(dense, pooling)


@torch.no_grad()
def latent_maps(sae: SparseAutoencoder, tokens, latents: list[int], batch: int | None = None) -> np.ndarray:
    """Spatial maps (n, len(latents), H, W) of the chosen latents over token features (n, H, W, C)."""
    _check_feats(sae, tokens)
    if len(tokens.shape) != 4:
        raise ValueError(f"latent_maps needs token features (n, H, W, C), got shape {tuple(tokens.shape)}")
    lat = torch.as_tensor(list(latents), dtype=torch.int64)
    if lat.numel() and (int(lat.min()) < 0 or int(lat.max()) >= sae.n_latents):
        raise ValueError(f"latent ids must be in [0, {sae.n_latents}), got {list(latents)}")
    n, H, W, _ = tokens.shape
    batch = batch or max(1, _TARGET_VECTORS // (H * W))
    out = np.zeros((n, lat.numel(), H, W), np.float32)
    for s in range(0, n, batch):
        x = _as_tensor(tokens[s:s + batch])
        b = x.shape[0]
        vals, idx = sae.encode_sparse(x.reshape(-1, sae.d_in))  # (b·H·W, m)
        hit = (idx.unsqueeze(-1) == lat).to(vals.dtype)  # (b·H·W, m, L)
        maps = (vals.unsqueeze(-1) * hit).sum(1)  # (b·H·W, L)
        out[s:s + b] = maps.reshape(b, H, W, -1).permute(0, 3, 1, 2).numpy()
    return out
