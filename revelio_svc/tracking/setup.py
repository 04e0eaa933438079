"""Where runs go: the tracking URI (the way MLflow resolves it), the experiment, and a fast check of a server."""
from __future__ import annotations

import contextlib
import fcntl
import os

import mlflow
import requests

from .. import distributed
from ..config import TrackingConfig
from ..sqlite_uri import sqlite_file

# the project's documented default when neither the config nor MLFLOW_TRACKING_URI names a store
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# What the experiment holds, for the MLflow UI: training runs ("Machine learning"), not GenAI traces. MLflow
# 3.x reads this experiment tag (values in its UI: genai_development, custom_model_development, ...); the
# 3.17 UI also keeps a global GenAI / Model-training switch, which `?workflowType=machine_learning` in a
# link sets (ui_link).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_WORKFLOW = "workflowType=machine_learning"


class TrackingUnavailableError(RuntimeError):
    """The tracking store or server does not answer; the message names the URI and how to fix it."""


def tracking_uri(cfg: TrackingConfig | None = None) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else the project's default."""
    return (cfg.tracking_uri if cfg is not None else "") or os.environ.get("MLFLOW_TRACKING_URI", "") \
        or DEFAULT_TRACKING_URI


def check_server(uri: str | None = None, timeout: float = 3.0) -> str:
    """Fail fast (seconds, not minutes of retries) when an HTTP tracking server does not answer."""
    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
        except requests.RequestException as e:
            raise TrackingUnavailableError(
                f"the MLflow tracking server at {uri} did not answer ({type(e).__name__}: {str(e)[:160]}). "
                "Start it or point MLFLOW_TRACKING_URI at a running one; to use a model without a server, "
                "`revelio registry pull` it where the server is reachable and load the pulled directory.") from e
    return uri


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold an exclusive file lock beside a local SQLite store while it may be created or migrated.

    Two processes opening a fresh `sqlite:///` store at once both run MLflow's schema migration and one of
    them fails half-way (a stray `_alembic_tmp_*` table, an alembic row "not found"); they would also both
    create the experiment. Other stores (servers, PostgreSQL) serialise this themselves: no lock. Where the
    lock file cannot be written (a read-only folder holding an existing store) the store is opened unlocked."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fh = open(f"{db}.lock", "a+")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def setup(cfg: TrackingConfig, experiment: bool = True) -> str:
    """Point MLflow at the configured store (and experiment); returns the tracking URI."""
    ctx = distributed.context()
    if not ctx.is_main:
        # one writer per run and per registered version: a second rank would duplicate or race them
        raise RuntimeError(f"{ctx.describe()} asked for MLflow tracking; only rank 0 talks to the tracking "
                           "server and the registry")
    uri = tracking_uri(cfg)
    if uri.startswith("http"):
        # a dead server otherwise retries for minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    if cfg.registry_uri:
        mlflow.set_registry_uri(cfg.registry_uri)
    if experiment or uri.startswith("sqlite:"):
        try:
            with store_lock(uri):  # the first touch of a fresh SQLite store creates its schema
                if experiment:
                    _ensure_experiment(cfg)
                else:
                    mlflow.MlflowClient().search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy, HTTP and MLflow errors all mean "not reachable" here
            raise TrackingUnavailableError(
                f"the MLflow tracking store at {uri} did not answer ({type(e).__name__}: {str(e)[:200]}). "
                "Check that the server is running and the URI is right (it comes from tracking.tracking_uri in "
                f"the config, else MLFLOW_TRACKING_URI); leave both unset to use the local {DEFAULT_TRACKING_URI}."
            ) from e
    if cfg.system_metrics:
        mlflow.enable_system_metrics_logging()
    return uri


def _ensure_experiment(cfg: TrackingConfig) -> None:
    """Create the experiment (tagged as model training) if missing, tag an untagged one, make it current."""
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        mlflow.create_experiment(cfg.experiment, artifact_location=cfg.artifact_location or None,
                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    elif EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # made by an earlier version or by hand
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(cfg.experiment)


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where a run (or the experiment's runs) opens in the MLflow UI, on the model-training view.

    A server URI links to itself; a local store to `mlflow ui`'s default address (start it with
    `mlflow ui --backend-store-uri <the store>`)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    path = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base}/{path}?{UI_WORKFLOW}"
