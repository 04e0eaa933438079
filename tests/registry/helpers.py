"""Shared pieces of the registry, pipeline and tune tests.

Fixtures defined here are imported by the test modules that use them (tests/registry/conftest.py,
tests/test_pipeline.py, tests/test_tune.py), so one session builds the tiny models once.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(unet_dir: Path, out: Path) -> list[str]:
    """A seconds-long chain: the tiny UNet, 48 shapes at 16 px, one hook point, a 32-latent token SAE."""
    return [
        "data.source=shapes", "data.n_images=48", "data.image_size=16",
        f"backbone.id={unet_dir}", "backbone.device=cpu",
        "extract.hook_points=[up_blocks.1]", "extract.timesteps=[10]", "extract.pooling=[mean, tokens]",
        "extract.batch_size=16", "extract.shard_size=24", "extract.num_threads=1",
        "sae.hook_point=up_blocks.1", "sae.timestep=10", "sae.input=tokens", "sae.expansion=4", "sae.k=4",
        "sae.steps=40", "sae.batch_size=256", "sae.warmup_steps=5", "sae.eval_every=20",
        "sae.checkpoint_every=1000", "sae.num_threads=1",
        "probe.kind=linear", "probe.input=sae", "probe.hook_point=up_blocks.1", "probe.timestep=10",
        "probe.concept=colour", "probe.shots=[all]", "probe.seeds=1", "probe.max_iter=200", "probe.controls=false",
        "tune.n_trials=2", "tracking.experiment=revelio", f"output_dir={out}",
    ]


def tiny_config(unet_dir: Path, out: Path, *more: str):
    from revelio_svc.config import load_config

    return load_config(None, tiny_overrides(unet_dir, out) + list(more))


def write_config_yaml(path: Path, overrides: list[str]) -> Path:
    """The same config as a YAML file (what `mlflow run -P config=...` takes)."""
    import yaml

    from revelio_svc.config import load_config

    path.write_text(yaml.safe_dump(load_config(None, overrides).to_dict(), sort_keys=False))
    return path


# --------------------------------------------------------------------------- MLflow stores
@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An initialised MLflow SQLite store: creating the tables takes ~10 s, copying the file does not."""
    import mlflow

    d = tmp_path_factory.mktemp("mlflow_template")
    cwd = os.getcwd()
    os.chdir(d)  # the Default experiment's artifact location is resolved against the working directory
    try:
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}").search_experiments()
    finally:
        os.chdir(cwd)
    return d / "mlflow.db"


def new_store(template_db: Path, where: Path) -> str:
    """A fresh tracking store (copy of the template) with the `revelio` experiment's artifacts under `where`."""
    import mlflow

    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, where / "mlflow.db")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).create_experiment("revelio", artifact_location=str(where / "artifacts"))
    return uri


@pytest.fixture()
def fresh_mlflow(template_db, tmp_path, monkeypatch) -> str:
    """A fresh tracking store for one test, set in the environment (subprocesses inherit it)."""
    import mlflow

    uri = new_store(template_db, tmp_path / "tracking")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("REVELIO_OPTUNA_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("revelio")  # artifacts under this test's directory, never the template's
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def dead_server_uri() -> str:
    """An http URI on a local port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "GIT_PYTHON_REFRESH": "quiet", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


PY = sys.executable


# --------------------------------------------------------------------------- trained parts (no MLflow)
@pytest.fixture(scope="session")
def trained(tiny_unet_dir, tmp_path_factory):
    """(config, store uri, SAE dir, probe dir, SAE metrics, probe metrics) of the tiny chain, built once."""
    from revelio_svc.config import replace
    from revelio_svc.features.extract import extract
    from revelio_svc.probe.stage import train_probe_stage
    from revelio_svc.sae.trainer import train_sae

    out = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tiny_unet_dir, out)
    store_uri = extract(cfg, progress=False).store_uri
    cfg = replace(cfg, **{"sae.store": store_uri, "probe.store": store_uri})
    sae_res = train_sae(cfg, progress=False)
    cfg = replace(cfg, **{"probe.sae": sae_res.output_dir})
    probe_res = train_probe_stage(cfg)
    sae_m = {k: float(v) for k, v in sae_res.metrics.items() if isinstance(v, (int, float))}
    probe_m = {k: float(v) for k, v in probe_res["metrics"].items() if isinstance(v, (int, float))}
    return cfg, store_uri, sae_res.output_dir, probe_res["probe_dir"], sae_m, probe_m


@pytest.fixture(scope="session")
def classifier_dir(trained, tmp_path_factory) -> Path:
    from revelio_svc.classifier import Classifier

    cfg, store_uri, sae_dir, probe_dir, _, _ = trained
    d = tmp_path_factory.mktemp("classifier")
    Classifier.build(cfg, sae_dir, probe_dir, store_uri, top_n=6).save(d)
    return d


def dataset_images(cfg, indices) -> list[np.ndarray]:
    from revelio_svc.data import load_dataset

    ds = load_dataset(cfg.data)
    return [ds.image(int(i)) for i in indices]
