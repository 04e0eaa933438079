"""Test-wide settings: offline hubs, one torch thread, MLflow in a temporary SQLite store."""
from __future__ import annotations

import os

# a hub id must fail at once instead of retrying for ~23 s
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture()
def mlflow_tmp(tmp_path, monkeypatch):
    """A fresh SQLite tracking store for one test; returns its URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    # set_experiment remembers the id in a module global; a later test's fresh store has no such id
    import mlflow.tracking.fluent as fluent
    fluent._active_experiment_id = None


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory):
    """A tiny random pixel-space UNet saved like a diffusers model directory (16×16, 2 levels)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                        up_block_types=("UpBlock2D",) * 2)
    path = tmp_path_factory.mktemp("tiny_unet")
    model.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_cfg(tiny_unet_dir, tmp_path):
    """Config for a seconds-long extraction with the tiny UNet on 40 shapes."""
    from revelio_svc.config import load_config

    return load_config(None, [
        "data.source=shapes", "data.n_images=40", "data.image_size=16",
        f"backbone.id={tiny_unet_dir}",
        "extract.hook_points=[down_blocks.0, mid_block, up_blocks.0]", "extract.timesteps=[10, 200]",
        "extract.pooling=[mean, max, tokens]", "extract.token_hook_points=[]", "extract.token_timesteps=[]",
        "extract.dtype=float32", "extract.batch_size=8", "extract.shard_size=16",
        f"output_dir={tmp_path / 'out'}",
    ])
