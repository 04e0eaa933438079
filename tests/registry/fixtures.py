"""Fixtures shared by the registry, pipeline and tune tests; test modules load them with
`pytest_plugins = ("tests.registry.fixtures",)` so one session builds the tiny models once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.registry.helpers import (
    isolate_mlflow_env,
    new_store,
    reset_mlflow_experiment,
    tiny_config,
)


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


@pytest.fixture()
def fresh_mlflow(template_db, tmp_path, monkeypatch) -> str:
    """A fresh tracking store for one test, set in the environment (subprocesses inherit it)."""
    import mlflow

    uri = new_store(template_db, tmp_path / "tracking")
    isolate_mlflow_env(monkeypatch, uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_experiment("revelio")  # artifacts under this test's directory, never the template's
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    reset_mlflow_experiment()


@pytest.fixture(scope="session")
def trained(tiny_unet_dir, tmp_path_factory):
    """(config, store uri, SAE dir, probe dir, SAE metrics, probe metrics) of the tiny chain, built once."""
    from revelio_svc.config import replace
    from revelio_svc.features.extract import extract
    from revelio_svc.sae.trainer import train_sae
    from revelio_svc.stages import train_probe_stage

    out = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tiny_unet_dir, out)
    store_uri = extract(cfg, progress=False).store_uri
    cfg = replace(cfg, **{"sae.store": store_uri, "probe.store": store_uri})
    sae_res = train_sae(cfg, progress=False)
    cfg = replace(cfg, **{"probe.sae": sae_res.output_dir})
    probe_res = train_probe_stage(cfg)
    sae_m = {k: float(v) for k, v in sae_res.metrics.items() if isinstance(v, (int, float))}
    return cfg, store_uri, sae_res.output_dir, str(probe_res.probe_dir), sae_m, dict(probe_res.metrics)


@pytest.fixture(scope="session")
def classifier_dir(trained, tmp_path_factory) -> Path:
    from revelio_svc.inference.classifier import Classifier

    cfg, store_uri, sae_dir, probe_dir, _, _ = trained
    d = tmp_path_factory.mktemp("classifier")
    Classifier.build(cfg, sae_dir, probe_dir, store_uri, top_n=6).save(d)
    return d





@pytest.fixture()
def registered(fresh_mlflow, trained, tmp_path, monkeypatch):
    """A registered SAE in a store of its own, and a model cache in this test's directory."""
    import mlflow

    from revelio_svc import registry

    tags = {"dataset": "shapes", "backbone": "tiny", "hook_point": "up_blocks.1", "timestep": "10"}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with mlflow.start_run():
        registry.register_model("sae", trained[2], {"fvu": 0.5}, tags, "fvu")
    return fresh_mlflow
