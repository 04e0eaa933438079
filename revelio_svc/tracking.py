"""MLflow set-up shared by every stage: where runs go, how they are named and tagged."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .config import Config, TrackingConfig, to_dict

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_TRACKING_URI


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the tracking URI."""
    import mlflow

    uri = tracking_uri(cfg)
    if uri.startswith("http"):
        # a dead server otherwise retries for minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(uri)
    if cfg.registry_uri:
        mlflow.set_registry_uri(cfg.registry_uri)
    try:
        if mlflow.get_experiment_by_name(cfg.experiment) is None:
            mlflow.create_experiment(cfg.experiment, artifact_location=cfg.artifact_location or None)
        mlflow.set_experiment(cfg.experiment)
    except Exception as e:
        raise TrackingUnavailableError(
            f"the MLflow tracking store at {uri} did not answer ({type(e).__name__}: {str(e)[:200]}). "
            "Check that the server is running and the URI is right (it comes from tracking.tracking_uri in the "
            f"config, else MLFLOW_TRACKING_URI); leave both unset to use the local {DEFAULT_TRACKING_URI}.") from e
    if cfg.system_metrics:
        mlflow.enable_system_metrics_logging()
    return uri


class TrackingUnavailableError(RuntimeError):
    pass


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = str(v)
    return out


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, sections: tuple[str, ...], tags: dict[str, str] | None = None,
              description: str = "") -> Iterator[Any]:
    """An MLflow run for one stage, with the sections it depends on logged as params.

    Inside `mlflow run`, the entry point's run is active already (MLFLOW_RUN_ID): reuse it. A stage
    started while another run is active becomes its child.
    """
    import mlflow

    setup(cfg.tracking)
    active = mlflow.active_run()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    all_tags = {"stage": stage, **(tags or {})}
    if env_run and active is None:
        run_cm = mlflow.start_run(run_id=env_run)
    else:
        run_cm = mlflow.start_run(run_name=stage, nested=active is not None, tags=all_tags,
                                  description=description or None)
    with run_cm as run:
        mlflow.set_tags(all_tags)
        if description:
            mlflow.set_tag("mlflow.note.content", description)
        params: dict[str, str] = {}
        for s in sections:
            params.update(flat_params(to_dict(getattr(cfg, s)), s + "."))
        existing = run.data.params if hasattr(run, "data") else {}
        params = {k: v[:6000] for k, v in params.items() if k not in existing}
        if params:
            items = list(params.items())
            for i in range(0, len(items), 90):
                mlflow.log_params(dict(items[i:i + 90]))
        yield run


def log_json(obj: Any, name: str, artifact_path: str | None = None) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_text(json.dumps(obj, indent=2, default=str))
        mlflow.log_artifact(str(p), artifact_path)


def log_figure(fig, name: str) -> None:
    import mlflow

    mlflow.log_figure(fig, name)
