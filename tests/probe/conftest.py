"""Tiny inputs for the probe tests: planted feature stores (no backbone) and a tiny random UNet."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from revelio_svc.config import Config, DataConfig, replace
from revelio_svc.features.store import StoreWriter, new_manifest, set_key

SHAPES_LABELS = {
    "shape": ["circle", "square", "triangle"],
    "colour": ["red", "green"],
    "size": ["small", "large"],
    "background": ["plain", "stripes"],
}


def write_planted_store(root: Path, n: int = 120, hook_points=("down_blocks.1", "up_blocks.1"),
                        timesteps=(10, 250), dim: int = 12, shard_size: int = 50, seed: int = 0,
                        planted=("up_blocks.1", 10), tokens_hw: tuple[int, int] | None = None) -> Path:
    """A store whose `shape` label is linearly readable only at `planted`; other pairs are noise.

    Every fourth row is test. `colour` is readable everywhere (a constant-strength signal), so a sweep
    has an easy concept beside the planted one.
    """
    rng = np.random.default_rng(seed)
    labels = {c: rng.integers(len(v), size=n) for c, v in SHAPES_LABELS.items()}
    split = (np.arange(n) % 4 == 3).astype(np.uint8)
    sets: dict[str, np.ndarray] = {}
    fs_meta: dict[str, dict] = {}
    for h in hook_points:
        for t in timesteps:
            x = rng.standard_normal((n, dim)).astype(np.float32)
            x[:, 1] += 2.0 * labels["colour"]
            if (h, t) == tuple(planted):
                x[np.arange(n), 2 + labels["shape"]] += 4.0
            sets[set_key(h, t, "mean")] = x
            fs_meta[set_key(h, t, "mean")] = {"hook_point": h, "timestep": t, "pooling": "mean", "shape": [dim],
                                              "dtype": "float32"}
            if tokens_hw is not None:
                H, W = tokens_hw
                tok = np.repeat(np.repeat(x[:, None, None, :], H, 1), W, 2) + 0.1 * rng.standard_normal((n, H, W, dim))
                sets[set_key(h, t, "tokens")] = tok.astype(np.float32)
                fs_meta[set_key(h, t, "tokens")] = {"hook_point": h, "timestep": t, "pooling": "tokens",
                                                    "shape": [H, W, dim], "dtype": "float32"}
    conf = {"planted": list(planted), "seed": seed, "dataset": {"fingerprint": "planted"}}
    w = StoreWriter(root, new_manifest(conf, f"planted{seed}", n, shard_size, SHAPES_LABELS, fs_meta))
    for s in range((n + shard_size - 1) // shard_size):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        rows = {"index": np.arange(lo, hi, dtype=np.int64), "split": split[lo:hi]}
        rows.update({f"label.{c}": v[lo:hi].astype(np.int64) for c, v in labels.items()})
        w.write_shard(s, rows, {k: v[lo:hi] for k, v in sets.items()}, [])
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread():
    """lbfgs on these tiny problems is 3× slower with a BLAS thread per core on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def tiny_unet(tmp_path_factory) -> Path:
    """A random 2-level UNet2DModel saved with save_pretrained (no hub, seconds to build)."""
    import torch
    from diffusers import UNet2DModel

    # not seed 0: the random-init control draws its weights with backbone.init_seed=0, and the "model"
    # must be a different network than its control
    torch.manual_seed(123)
    d = tmp_path_factory.mktemp("unet")
    UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).save_pretrained(d)
    return d


def tiny_config(unet: Path, out: Path, **changes) -> Config:
    cfg = Config(data=DataConfig(source="shapes", n_images=48, image_size=16))
    cfg = replace(cfg, **{"backbone.id": str(unet), "backbone.device": "cpu",
                          "extract.hook_points": ("down_blocks.1", "up_blocks.1"), "extract.timesteps": (10, 250),
                          "extract.pooling": ("mean", "tokens"), "extract.token_hook_points": (),
                          "extract.token_timesteps": (), "extract.dtype": "float32", "extract.batch_size": 16,
                          "extract.shard_size": 16, "output_dir": str(out),
                          "probe.input": "features", "probe.hook_point": "up_blocks.1", "probe.timestep": 10, "probe.shots": ("1", "all"),
                          "probe.seeds": 2, "probe.max_iter": 200, "probe.concept": "colour"})
    return replace(cfg, **changes) if changes else cfg


@pytest.fixture(scope="session")
def extracted(tiny_unet, tmp_path_factory):
    """(config, store uri) of a real extraction with the tiny UNet on 48 shapes images; shared, read-only.

    Stages running on it write their random-init control store under the same output_dir, so later
    tests reuse it instead of extracting again.
    """
    from revelio_svc.features.extract import extract

    out = tmp_path_factory.mktemp("out")
    cfg = tiny_config(tiny_unet, out)
    res = extract(cfg, progress=False)
    return cfg, res.store_uri


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow SQLite file: creating one takes ~10 s on a loaded 2-core machine."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture()
def mlflow_db(mlflow_tmp, _mlflow_template) -> str:
    """`mlflow_tmp` (a fresh tracking store per test) whose database file starts as a copy of the template."""
    shutil.copy(_mlflow_template, mlflow_tmp.removeprefix("sqlite:///"))
    import mlflow

    # the template's Default experiment stores artifacts where the template was made; a new experiment
    # created now keeps them under this test's directory
    mlflow.set_experiment("probe-tests")
    return mlflow_tmp
