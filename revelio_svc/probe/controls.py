"""Controls computed beside the model under study; a result table always carries them.

- `pixels`: the same rows' images, downsampled (and flattened for the linear probe). What any probe
  gets without a backbone.
- `random_init`: the same backbone architecture with random weights, same hook point / timestep /
  pooling. What the architecture alone gives (strong at small t: report it every time).
- `random_relu` (SAE latents only): a random ReLU expansion of the same features to the SAE's width with
  the SAE's pooling. What a wide non-linear pooling gives without anything learned.
- `raw_features` (SAE latents only): the features the SAE reads, pooled, without the SAE.

Every control is aligned to the main store's rows by dataset index, so row r of a control is the same
image as row r of the model's features.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..config import Config, replace
from ..data import load_dataset
from ..features.extract import extract, store_uri_for
from ..features.store import FeatureStore, StoreError, open_store, set_key
from ..sae.base import pooling_q
from ..sae.latents import pool_positions


class ControlError(RuntimeError):
    """A control could not be computed; the message says what is missing and how to fix it."""


# --------------------------------------------------------------------------- pixels
def downsample(images: np.ndarray, size: int | None) -> np.ndarray:
    """(n, S, S, 3) uint8 → (n, size, size, 3) float32 in [0, 1], box-filtered; size None keeps S."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, H, W, 3); got {images.shape}")
    x = images.astype(np.float32) / 255.0
    if size is None or size >= images.shape[1]:
        return x
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BOX), np.float32) / 255.0
                     for im in images.astype(np.uint8)])


def dataset_for_store(cfg: Config, store: FeatureStore):
    """`load_dataset(cfg.data)`, checked to be the dataset the store was extracted from."""
    ds = load_dataset(cfg.data)
    want = store.config.get("dataset", {}).get("fingerprint")
    got = ds.fingerprint()
    if want is not None and want != got:
        raise ControlError(
            f"the pixels control needs the images of the store at {store.uri}, but data.* describes another "
            f"dataset (fingerprint {got}, store has {want}). Use the same data section as the extraction.")
    return ds


def pixel_control(cfg: Config, store: FeatureStore, size: int | None = 16, flatten: bool = True,
                  dataset=None) -> np.ndarray:
    """Pixels of the store's rows: (n_rows, size·size·3) flattened, or (n_rows, size, size, 3) maps."""
    ds = dataset if dataset is not None else dataset_for_store(cfg, store)
    idx = store.index()
    # a chunk at a time: the full-resolution images of a large dataset need not fit in memory together
    parts = [downsample(np.stack([ds.image(int(i)) for i in idx[s:s + 256]]), size) for s in range(0, len(idx), 256)]
    if not parts:
        raise ControlError(f"the store at {store.uri} has no rows")
    imgs = np.concatenate(parts)
    return imgs.reshape(len(imgs), -1) if flatten else imgs


# --------------------------------------------------------------------------- random-init backbone
def random_init_config(cfg: Config, hook_points: Sequence[str] | None = None, timesteps: Sequence[int] | None = None,
                       poolings: Sequence[str] | None = None) -> Config:
    """The extraction config of the random-init control: same everything, backbone.init=random.

    extract.store is cleared so the control gets its own store named by its config hash instead of
    colliding with (and being refused by) the model's store.
    """
    changes: dict = {"backbone.init": "random", "extract.store": ""}
    # the control extracts exactly the sets asked for: the model's token filters (which name its own hook
    # points and timesteps) do not apply to it
    if hook_points is not None:
        changes["extract.hook_points"] = tuple(hook_points)
        changes["extract.token_hook_points"] = ()
    if timesteps is not None:
        changes["extract.timesteps"] = tuple(int(t) for t in timesteps)
        changes["extract.token_timesteps"] = ()
    if poolings is not None:
        changes["extract.pooling"] = tuple(poolings)
    return replace(cfg, **changes)


def _usable(uri: str, keys: Sequence[str], fingerprint: str | None) -> FeatureStore | None:
    if not (Path(uri) / "manifest.json").is_file() and not uri.startswith("s3://"):
        return None
    try:
        st = open_store(uri)
    except StoreError:
        return None
    if not st.complete or any(k not in st.manifest.feature_sets for k in keys):
        return None
    if fingerprint is not None and st.config.get("dataset", {}).get("fingerprint") != fingerprint:
        return None
    return st


def random_init_store(cfg: Config, hook_points: Sequence[str], timesteps: Sequence[int], poolings: Sequence[str],
                      fingerprint: str | None = None, dataset=None, progress: bool = False,
                      model_backbone: dict | None = None) -> FeatureStore:
    """A store of the random-init backbone holding every requested (hook point, t, pooling).

    Reuses the store a full random-init extraction of this config wrote, or one restricted to exactly
    these sets; otherwise extracts the restricted one (one forward per batch and t captures every hook).
    `model_backbone` (the model store's `config["backbone"]`) guards against a control built from
    another architecture than the one under study.
    """
    if model_backbone and (model_backbone.get("kind"), model_backbone.get("id")) != (cfg.backbone.kind,
                                                                                    cfg.backbone.id):
        raise ControlError(
            f"the model's store was extracted from backbone {model_backbone.get('kind')}:{model_backbone.get('id')} "
            f"but backbone.* names {cfg.backbone.kind}:{cfg.backbone.id}; the random-init control must be the "
            "same architecture. Use the backbone section of the extraction, or probe.controls=false.")

    keys = [set_key(h, t, p) for h in hook_points for t in timesteps for p in poolings]
    if dataset is None:
        dataset = load_dataset(cfg.data)
    full = random_init_config(cfg)
    narrow = random_init_config(cfg, hook_points, timesteps, poolings)
    for c in (full, narrow):
        st = _usable(store_uri_for(c, dataset), keys, fingerprint)
        if st is not None:
            return st
    try:
        res = extract(narrow, dataset=dataset, progress=progress)
    except Exception as e:
        raise ControlError(f"could not extract the random-init control ({type(e).__name__}: {e}). Set "
                           "probe.controls=false to skip the controls.") from e
    st = open_store(res.store_uri)
    if fingerprint is not None and st.config.get("dataset", {}).get("fingerprint") != fingerprint:
        raise ControlError(f"the random-init store at {st.uri} was extracted from another dataset than the "
                           "model's store; use the same data section as the model's extraction")
    return st


def align_rows(src_index: np.ndarray, want_index: np.ndarray) -> np.ndarray:
    """Positions in `src_index` of every dataset index of `want_index` (both increasing, as in a store)."""
    src_index, want_index = np.asarray(src_index), np.asarray(want_index)
    pos = np.searchsorted(src_index, want_index)
    ok = (pos < len(src_index)) & (src_index[np.minimum(pos, len(src_index) - 1)] == want_index)
    if not ok.all():
        missing = want_index[~ok][:5].tolist()
        raise ControlError(f"the control store lacks {int((~ok).sum())} of the model's rows (dataset indices "
                           f"{missing}...); an image decoded in one extraction but not the other?")
    return pos


def aligned_features(src: FeatureStore, hook_point: str, timestep: int, pooling: str,
                     want_index: np.ndarray) -> np.ndarray:
    """Features of `src` for the rows whose dataset indices are `want_index`, in that order."""
    X = src.feature_set(hook_point, timestep, pooling).load()
    return X[align_rows(src.index(), want_index)]


# --------------------------------------------------------------------------- random ReLU expansion
def random_relu_expansion(feats: np.ndarray, n_latents: int, fit_rows: np.ndarray, pooling: str = "max",
                          seed: int = 0, chunk: int = 64) -> sp.csr_matrix:
    """ReLU(W·(x − μ)) with W random Gaussian (d → n_latents), μ the mean of the training rows.

    `feats` is (n, C) pooled or (n, H, W, C) tokens; tokens are expanded per position and then pooled
    (max/mean) over positions, as the SAE's latents are. Returned CSR, non-negative, like SAE latents,
    so the probe treats it exactly as it treats the latents.
    """
    feats = np.asarray(feats)
    if feats.ndim not in (2, 4):
        raise ValueError(f"features must be (n, C) or (n, H, W, C); got {feats.shape}")
    C = feats.shape[-1]
    fit_rows = np.asarray(fit_rows, np.int64)
    if fit_rows.size == 0:
        raise ValueError("random_relu_expansion needs training rows to centre on")
    axes = (0,) if feats.ndim == 2 else (0, 1, 2)
    mu = feats[fit_rows].astype(np.float64).mean(axis=axes).astype(np.float32)
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((C, n_latents)) / np.sqrt(C)).astype(np.float32)
    parts = []
    for i in range(0, len(feats), chunk):
        z = np.maximum((feats[i:i + chunk].astype(np.float32) - mu) @ W, 0.0)
        if z.ndim == 4:
            z = pool_positions(torch.from_numpy(z.reshape(z.shape[0], -1, n_latents)), pooling).numpy()
        parts.append(sp.csr_matrix(z))
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, n_latents), dtype=np.float32)


def pool_tokens(tokens: np.ndarray, how: str) -> np.ndarray:
    """(n, H, W, C) → (n, C) by max, mean or top<q> over positions."""
    if how == "max":
        return tokens.max(axis=(1, 2)).astype(np.float32)
    if how == "mean":
        return tokens.astype(np.float32).mean(axis=(1, 2))
    pooling_q(how)  # names the choices on a bad value
    t = torch.from_numpy(np.ascontiguousarray(tokens, np.float32))
    return pool_positions(t.reshape(t.shape[0], -1, t.shape[-1]), how).numpy()
