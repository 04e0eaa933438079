"""MLflow through a tracking server: PostgreSQL backend, artifacts proxied to S3, clear failure when the
server is down; Optuna's study storage on the same PostgreSQL."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from revelio_svc.config import Config, TrackingConfig
from revelio_svc.tracking import TrackingUnavailableError, log_json, setup, stage_run

from .conftest import free_port, isolate_aws

pytestmark = pytest.mark.services


@pytest.fixture()
def mlflow_client_env(monkeypatch, tmp_path):
    """A client environment with no AWS credentials and no S3 endpoint: only the server has them."""
    import mlflow
    from mlflow.tracking import fluent

    isolate_aws(monkeypatch, tmp_path)
    # set first, so that monkeypatch restores whatever mlflow.set_experiment writes there
    for name in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri()
    # set_experiment also keeps the id in a module global: a later test on another store would
    # otherwise start its runs in an experiment id of this server
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(before)


def test_run_goes_through_the_server_with_proxied_artifacts(services, mlflow_client_env, tmp_path):
    import boto3
    import mlflow
    from mlflow import MlflowClient

    # the client really cannot reach S3 by itself
    assert boto3.session.Session().get_credentials() is None

    experiment = f"services-{uuid.uuid4().hex[:10]}"
    cfg = Config(tracking=TrackingConfig(tracking_uri=services.tracking_uri, experiment=experiment))
    with stage_run(cfg, "extract") as run:
        mlflow.log_metric("fvu", 0.25, step=1)
        log_json({"hello": "s3"}, "summary.json", artifact_path="reports")
    run_id = run.info.run_id

    client = MlflowClient(services.tracking_uri)
    got = client.get_run(run_id)
    assert got.data.params["extract.shard_size"] == str(cfg.extract.shard_size)
    assert got.data.metrics["fvu"] == 0.25 and got.data.tags["stage"] == "extract"
    assert got.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: the client never sees s3://
    assert client.get_experiment_by_name(experiment).artifact_location.startswith("mlflow-artifacts:/")
    local = client.download_artifacts(run_id, "reports/summary.json", str(tmp_path))
    assert Path(local).read_text() == '{\n  "hello": "s3"\n}'

    # and the server put it in the bucket, under --artifacts-destination s3://BUCKET/mlartifacts
    s3 = services.s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=services.bucket, Prefix="mlartifacts/").get("Contents", [])]
    key = next((k for k in keys if k.endswith(f"/{run_id}/artifacts/reports/summary.json")), None)
    assert key is not None, f"no artifact of run {run_id} in s3://{services.bucket}/mlartifacts: {keys[:20]}"
    assert s3.get_object(Bucket=services.bucket, Key=key)["Body"].read() == b'{\n  "hello": "s3"\n}'


def test_runs_live_in_postgresql(services, mlflow_client_env):
    import mlflow
    import psycopg2

    experiment = f"services-pg-{uuid.uuid4().hex[:10]}"
    setup(TrackingConfig(tracking_uri=services.tracking_uri, experiment=experiment))
    with mlflow.start_run() as run:
        mlflow.log_param("alpha", "0.5")
    dsn = services.env["REVELIO_MLFLOW_BACKEND_STORE_URI"].replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'alpha'", (run.info.run_id,))
        assert cur.fetchall() == [("0.5",)]
    conn.close()


def test_optuna_workers_share_a_study_on_postgresql(services):
    import optuna

    storage = services.env["REVELIO_OPTUNA_STORAGE"]
    assert storage.startswith("postgresql+psycopg2://") and storage.endswith("/optuna")
    name = f"services-{uuid.uuid4().hex[:10]}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=name, storage=storage, direction="minimize")
    # two workers = two handles on the same study, as two machines would have
    for seed in (0, 1):
        worker = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed))
        worker.optimize(lambda t: (t.suggest_float("x", -1, 1)) ** 2, n_trials=2)
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    optuna.delete_study(study_name=name, storage=storage)


def test_dead_tracking_server_is_a_clear_error_within_seconds(mlflow_client_env, monkeypatch):
    # what a user gets: setup's own retry defaults, not the test suite's (tests/conftest.py sets 0 retries);
    # setenv first so that monkeypatch restores the suite's values afterwards
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as err:
        setup(TrackingConfig(tracking_uri=uri, experiment="never-created"))
    elapsed = time.monotonic() - t0
    assert uri in str(err.value) and "did not answer" in str(err.value)
    assert elapsed < 15, f"a dead tracking server took {elapsed:.1f} s to be reported"
