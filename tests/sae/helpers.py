"""Tiny feature stores with planted sparse structure, written with the store's own writer (no backbone)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from revelio_svc.config import Config, SAEConfig
from revelio_svc.features.store import StoreWriter, new_manifest, set_key

HOOK, T = "up_blocks.1", 10
GROUPS = ("a", "b", "c")


def planted_atoms(d: int, n_atoms: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n_atoms, d))
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def planted_vectors(n: int, atoms: np.ndarray, per_sample: int = 2, noise: float = 0.01, seed: int = 1):
    """Each vector = a sum of `per_sample` atoms with coefficients in [0.5, 1.5] plus noise.

    Returns (x (n, d), first atom of each vector (n,)).
    """
    rng = np.random.default_rng(seed)
    n_atoms, d = atoms.shape
    x = np.zeros((n, d), np.float32)
    first = np.zeros(n, np.int64)
    for i in range(n):
        ids = rng.choice(n_atoms, per_sample, replace=False)
        coef = rng.uniform(0.5, 1.5, per_sample)
        x[i] = coef @ atoms[ids]
        first[i] = ids[np.argmax(coef)]
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
    return x, first


def build_store(root: Path, n_images: int = 400, shard_size: int = 100, d: int = 16, n_atoms: int = 24,
                hw: int = 0, test_every: int = 4, nan_shard: int | None = None, seed: int = 0,
                no_test: bool = False) -> Path:
    """A complete store with `up_blocks.1/t10/mean` (and `/tokens` of hw × hw positions when hw > 0).

    Pooled rows are planted sparse vectors; token rows hold planted vectors at every position, and the
    mean set is their mean. Labels: `group` = which third of the atoms the dominant atom of the row
    belongs to (tokens: of position (0, 0)); `parity` = row index parity. Every `test_every`-th image is a
    test row.
    """
    atoms = planted_atoms(d, n_atoms, seed)
    per = hw * hw if hw else 1
    x, first = planted_vectors(n_images * per, atoms, seed=seed + 1)
    group = (first.reshape(n_images, per)[:, 0] * len(GROUPS)) // n_atoms
    sets = {set_key(HOOK, T, "mean"): {"hook_point": HOOK, "timestep": T, "pooling": "mean", "shape": [d],
                                       "dtype": "float32"}}
    if hw:
        sets[set_key(HOOK, T, "tokens")] = {"hook_point": HOOK, "timestep": T, "pooling": "tokens",
                                            "shape": [hw, hw, d], "dtype": "float32"}
    conf = {"dataset": {"fingerprint": f"planted{seed}", "n": n_images},
            "backbone": {"id": "planted", "init": "random"},
            "shard_size": shard_size, "hw": hw, "nan_shard": nan_shard, "no_test": no_test}
    manifest = new_manifest(conf, f"planted-{seed}-{n_images}-{hw}-{nan_shard}-{no_test}", n_images, shard_size,
                            {"group": list(GROUPS), "parity": ["even", "odd"]}, sets)
    w = StoreWriter(root, manifest)
    tokens = x.reshape(n_images, hw, hw, d) if hw else None
    pooled = tokens.mean(axis=(1, 2)) if hw else x
    for s in range((n_images + shard_size - 1) // shard_size):
        idx = np.arange(s * shard_size, min((s + 1) * shard_size, n_images))
        split = np.zeros(len(idx), np.uint8) if no_test else (idx % test_every == test_every - 1).astype(np.uint8)
        rows = {"index": idx.astype(np.int64), "split": split, "label.group": group[idx].astype(np.int64),
                "label.parity": (idx % 2).astype(np.int64)}
        arrays = {set_key(HOOK, T, "mean"): pooled[idx].copy()}
        if hw:
            arrays[set_key(HOOK, T, "tokens")] = tokens[idx].copy()
        if nan_shard == s:
            arrays[set_key(HOOK, T, "mean")][2, 2] = np.nan  # a train row
            arrays[set_key(HOOK, T, "mean")][7, 0] = np.inf  # a test row
            if hw:
                arrays[set_key(HOOK, T, "tokens")][2, 0, 1, 2] = np.nan
                arrays[set_key(HOOK, T, "tokens")][7, 1, 0, 0] = np.inf
        w.write_shard(s, rows, arrays, [])
    return Path(root)


def tiny_cfg(tmp_path: Path, store: Path, **sae) -> Config:
    base = {"hook_point": HOOK, "timestep": T, "input": "pooled", "pooling": "mean", "expansion": 4, "k": 4,
            "normalize": "scalar",
            "steps": 200, "batch_size": 64, "lr": 3e-3, "warmup_steps": 10, "eval_every": 50,
            "checkpoint_every": 50, "dead_window": 2000, "store": str(store), "seed": 0}
    base.update(sae)
    return Config(sae=SAEConfig(**base), output_dir=str(tmp_path / "out"))


class FakeDataset:
    """Stands in for revelio_svc.data's ImageDataset in grid rendering: image(i) is a colour from i."""

    image_size = 8

    def __init__(self, fingerprint: str = "planted0"):
        self._fp = fingerprint

    def fingerprint(self) -> str:
        return self._fp

    def image(self, i: int) -> np.ndarray:
        img = np.zeros((8, 8, 3), np.uint8)
        img[..., 0] = (i * 37) % 256
        img[..., 1] = (i * 91) % 256
        img[2:6, 2:6, 2] = 255
        return img
