"""Plain helpers of the registry, pipeline and tune tests (their fixtures are in fixtures.py)."""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def tiny_overrides(unet_dir: Path, out: Path) -> list[str]:
    """A seconds-long chain: the tiny UNet, 48 shapes at 16 px, one hook point, a 32-latent token SAE."""
    return [
        "data.source=shapes", "data.n_images=48", "data.image_size=16",
        f"backbone.id={unet_dir}", "backbone.device=cpu",
        "extract.hook_points=[up_blocks.1]", "extract.timesteps=[10]", "extract.pooling=[mean, tokens]",
        "extract.dtype=float32", "extract.batch_size=16", "extract.shard_size=24", "extract.num_threads=1",
        "sae.hook_point=up_blocks.1", "sae.timestep=10", "sae.input=tokens", "sae.expansion=4", "sae.k=4",
        "sae.normalize=scalar", "sae.latent_pooling=max",
        "sae.steps=40", "sae.batch_size=256", "sae.warmup_steps=5", "sae.eval_every=20",
        "sae.checkpoint_every=1000", "sae.num_threads=1",
        "probe.kind=linear", "probe.input=sae", "probe.hook_point=up_blocks.1", "probe.timestep=10",
        "probe.concept=colour", "probe.shots=[all]", "probe.seeds=1", "probe.max_iter=200", "probe.controls=false",
        "probe.latents_per_class=0",
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


def new_store(template_db: Path, where: Path) -> str:
    """A fresh tracking store (copy of the template) with the `revelio` experiment's artifacts under `where`."""
    import mlflow

    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, where / "mlflow.db")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).create_experiment("revelio", artifact_location=str(where / "artifacts"))
    return uri


# set_experiment writes MLFLOW_EXPERIMENT_ID into os.environ and a module global: a later test (or a
# subprocess such as `mlflow run --experiment-name`) would otherwise inherit another store's experiment
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
               "REVELIO_OPTUNA_STORAGE")


def isolate_mlflow_env(monkeypatch, uri: str) -> None:
    """Point MLflow at `uri` for one test; every MLflow variable comes back as it was afterwards."""
    import mlflow

    for k in _MLFLOW_ENV:
        monkeypatch.setenv(k, "")  # records the original value for undo, whatever writes it later
        monkeypatch.delenv(k)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


def reset_mlflow_experiment() -> None:
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None


def dead_server_uri() -> str:
    """An http URI on a local port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k not in _MLFLOW_ENV}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "GIT_PYTHON_REFRESH": "quiet", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


def dataset_images(cfg, indices) -> list[np.ndarray]:
    from revelio_svc.data import load_dataset

    ds = load_dataset(cfg.data)
    return [ds.image(int(i)) for i in indices]
