"""A registration that fails half-way, against the real tracking server (PostgreSQL + proxied S3 artifacts),
leaves no version that points at missing artifacts."""
import uuid

import mlflow
import pytest
from mlflow import MlflowClient

from revelio_svc import registry
from revelio_svc.registry import MissingArtifactsError, RegistrationError

pytest_plugins = ("tests.registry.fixtures",)
pytestmark = pytest.mark.services

TAGS = {"dataset": "shapes", "backbone": "tiny", "hook_point": "up_blocks.1", "timestep": "10"}


def _register(name, sae_dir, fvu):
    with mlflow.start_run():
        return registry.register_model("sae", sae_dir, {"fvu": fvu, "l0": 4.0}, TAGS, "fvu", name=name)


def _versions(name):
    return sorted((str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'")), key=int)


def test_half_way_failures_leave_no_dangling_version_on_the_server(services, trained, monkeypatch, tmp_path):
    services.use_s3(monkeypatch, tmp_path)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # artifacts go through the server only
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services.tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(services.tracking_uri)
    mlflow.set_experiment(f"faults-{uuid.uuid4().hex[:8]}")
    name = f"revelio-sae-faults-{uuid.uuid4().hex[:8]}"
    sae_dir = trained[2]
    _register(name, sae_dir, 0.5)

    def broken(self, *a, **kw):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
    with pytest.raises(RegistrationError, match="deleted"):
        _register(name, sae_dir, 0.1)
    monkeypatch.undo()
    services.use_s3(monkeypatch, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services.tracking_uri)
    assert _versions(name) == ["1"]

    real = mlflow.artifacts.list_artifacts

    def lossy(artifact_uri=None, **kw):
        return [f for f in real(artifact_uri=artifact_uri, **kw) if not f.path.endswith("sae.safetensors")]

    monkeypatch.setattr(mlflow.artifacts, "list_artifacts", lossy)
    with pytest.raises(MissingArtifactsError, match="sae.safetensors"):
        _register(name, sae_dir, 0.1)
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services.tracking_uri)
    assert _versions(name) == ["1"]
    # the surviving champion loads through the server
    assert registry.load_sae(f"{name}@champion").n_latents == 32
    mlflow.set_tracking_uri(None)
