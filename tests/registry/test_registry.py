"""Registration (champion rules, no dangling versions), loading by every kind of reference, pull, promote, errors."""
from __future__ import annotations

import io
import json
import shutil
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from revelio_svc import registry
from revelio_svc.inference.classifier import Classifier
from revelio_svc.registry import (
    AliasNotFoundError,
    MissingArtifactsError,
    ModelMismatchError,
    ModelNotFoundError,
    RegistrationError,
)
from revelio_svc.registry.models import ENTRY_CODE
from revelio_svc.sae import read_sae
from revelio_svc.tracking import TrackingUnavailableError
from tests.registry.helpers import REPO, dataset_images, dead_server_uri

pytest_plugins = ("tests.registry.fixtures",)

TAGS = {"dataset": "shapes", "backbone": "tiny", "hook_point": "up_blocks.1", "timestep": "10"}


def versions(name: str) -> list[str]:
    return sorted((str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'")), key=int)


def aliases(name: str) -> dict[str, str]:
    return {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


def register_sae(sae_dir, fvu: float):
    with mlflow.start_run():
        return registry.register_model("sae", sae_dir, {"fvu": fvu, "l0": 4.0}, TAGS, "fvu")


def test_a_model_registered_alone_is_a_challenger_once_there_is_a_champion(fresh_mlflow, trained):
    sae_dir = trained[2]
    r1 = register_sae(sae_dir, 0.50)
    assert (r1.version, r1.champion, r1.previous_champion) == ("1", True, None)
    for fvu in (0.60, 0.50, 0.40):  # alone, not even a better fvu moves the champion of a set
        r = register_sae(sae_dir, fvu)
        assert not r.champion and r.previous_champion == "1" and "champion stays version 1" in r.reason
    assert aliases("revelio-sae") == {"champion": "1", "challenger": "4"}
    mv = MlflowClient().get_model_version("revelio-sae", "4")
    assert {k: mv.tags[k] for k in TAGS} == TAGS
    assert float(mv.tags["metric.fvu"]) == 0.40 and mv.tags["compared_on"] == "fvu"
    assert mv.run_id  # the version points at the run that logged it

    # the registered model is a pyfunc with a signature and an input example; weights are safetensors
    info = mlflow.models.get_model_info("models:/revelio-sae@champion")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 8)
    assert info.saved_input_example_info is not None
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    py = mlflow.pyfunc.load_model("models:/revelio-sae@champion")
    with torch.no_grad():
        want = read_sae(sae_dir).encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(py.predict(x), want, atol=1e-6)

    # promote: an explicit version, or whatever another alias points at
    assert registry.promote("revelio-sae/2") == "2"
    assert aliases("revelio-sae")["champion"] == "2"
    assert MlflowClient().get_model_version("revelio-sae", "2").tags["champion_decision"] == "promoted by hand"
    assert registry.promote("revelio-sae@challenger", "staging") == "4"
    listed = {m["name"]: m for m in registry.list_models()}["revelio-sae"]
    assert listed["aliases"] == {"champion": "2", "challenger": "4", "staging": "4"}
    assert [v["version"] for v in listed["versions"]] == ["4", "3", "2", "1"]
    assert listed["versions"][0]["metrics"]["fvu"] == "0.4"


def test_failed_registration_leaves_no_version(fresh_mlflow, trained, monkeypatch):
    sae_dir = trained[2]
    register_sae(sae_dir, 0.5)

    def broken(self, name, alias, version):
        raise RuntimeError("registry went away")

    # fails after the version exists: the version is deleted again
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
    with pytest.raises(RegistrationError, match="version 2 failed.*deleted"):
        register_sae(sae_dir, 0.1)
    monkeypatch.undo()
    assert versions("revelio-sae") == ["1"]
    assert aliases("revelio-sae") == {"champion": "1", "challenger": "1"}

    # the artifact store lost a file before the version was created: no version is created at all
    real = mlflow.artifacts.list_artifacts

    def lossy(artifact_uri=None, **kw):
        return [f for f in real(artifact_uri=artifact_uri, **kw) if not f.path.endswith("sae.safetensors")]

    monkeypatch.setattr(mlflow.artifacts, "list_artifacts", lossy)
    with pytest.raises(MissingArtifactsError, match="sae.safetensors"):
        register_sae(sae_dir, 0.1)
    monkeypatch.undo()
    assert versions("revelio-sae") == ["1"]
    assert registry.load_sae("revelio-sae@champion").n_latents == 32


def test_unknown_model_version_or_alias_lists_what_exists(fresh_mlflow, trained):
    register_sae(trained[2], 0.5)
    with pytest.raises(AliasNotFoundError) as e:
        registry.load_sae("revelio-sae@nope")
    assert "'nope'" in str(e.value) and "champion → version 1" in str(e.value) and "challenger" in str(e.value)
    with pytest.raises(ModelNotFoundError, match=r"version 7.*versions: 1"):
        registry.load_sae("models:/revelio-sae/7")
    with pytest.raises(ModelNotFoundError, match=r"revelio-nothing.*registered models: revelio-sae"):
        registry.load_sae("revelio-nothing@champion")
    with pytest.raises(ValueError, match="neither an existing directory nor a model reference"):
        registry.load_sae("no such thing")


def test_every_kind_of_reference_loads_the_same_model(fresh_mlflow, trained, tmp_path):
    r = register_sae(trained[2], 0.5)
    x = torch.randn(3, 8)
    want = read_sae(trained[2]).encode(x)
    run_id = MlflowClient().get_model_version("revelio-sae", r.version).run_id
    for ref in ("revelio-sae@champion", "revelio-sae/1", "models:/revelio-sae@challenger", "models:/revelio-sae/1",
                r.logged_model_uri, trained[2]):
        torch.testing.assert_close(registry.load_sae(ref).encode(x), want)
    # a run artifact URI: a raw SAE directory logged to a run
    with mlflow.start_run() as run:
        mlflow.log_artifacts(trained[2], "my_sae")
    torch.testing.assert_close(registry.load_sae(f"runs:/{run.info.run_id}/my_sae").encode(x), want)
    assert run_id


def test_config_disagreeing_with_weights_and_missing_files(trained, tmp_path):
    d = tmp_path / "sae"
    shutil.copytree(trained[2], d)
    conf = json.loads((d / "config.json").read_text())
    conf["d_in"] = 9
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ModelMismatchError, match="do not belong together"):
        registry.load_sae(str(d))
    (d / "sae.safetensors").unlink()
    with pytest.raises(MissingArtifactsError, match="sae.safetensors missing"):
        registry.load_sae(str(d))


def test_classifier_and_probe_pyfunc_pull_and_dead_server(fresh_mlflow, trained, classifier_dir, tmp_path,
                                                          monkeypatch, capsys):
    cfg, _, _, probe_dir, _, probe_m = trained
    img = dataset_images(cfg, [4])[0]
    with mlflow.start_run():
        rc = registry.register_model("classifier", classifier_dir, probe_m, TAGS, "accuracy", example=img)
        rp = registry.register_model("probe", probe_dir, probe_m, TAGS, "accuracy")
    assert rc.champion and rp.champion

    # one URI serves the whole prediction: encoded image bytes in, probabilities and attributions out
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    frame = mlflow.pyfunc.load_model("models:/revelio-classifier@champion").predict(
        pd.DataFrame({"image": [buf.getvalue()]}), params={"top": 2})
    clf = Classifier.load(classifier_dir)
    probs = clf.predict([img])[0]
    assert list(frame.columns) == ["label", *[f"prob.{n}" for n in clf.class_names], "attributions"]
    np.testing.assert_allclose(frame.iloc[0, 1:-1].to_numpy(float), probs, atol=1e-6)
    assert frame.label[0] == clf.class_names[int(np.argmax(probs))]
    attributions = json.loads(frame.attributions[0])
    assert 1 <= len(attributions) <= 2 and {"latent", "contribution", "top_images"} <= set(attributions[0])

    probe_py = mlflow.pyfunc.load_model("models:/revelio-probe@champion")
    z = clf.latents([img])
    np.testing.assert_allclose(probe_py.predict(z)[0], probs, atol=1e-6)

    pulled = registry.pull("revelio-classifier@champion", tmp_path / "pulled")
    source = json.loads((pulled / "revelio-source.json").read_text())
    assert source["name"] == "revelio-classifier" and source["version"] == "1" and source["alias"] == "champion"
    with pytest.raises(FileExistsError):
        registry.pull("revelio-classifier@champion", pulled)

    # the server is gone: the pulled directory still loads and predicts; a registry reference fails fast
    dead = dead_server_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    mlflow.set_tracking_uri(dead)
    local = registry.load_classifier(str(pulled))
    np.testing.assert_allclose(local.predict([img])[0], probs, atol=1e-9)
    assert registry.load_sae(str(pulled)).n_latents == 32  # the classifier's own SAE
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=dead.replace(".", r"\.")):
        registry.load_classifier("revelio-classifier@champion")
    assert cli(["registry", "list"]) == 1  # the CLI says so too, and so does the pipeline
    with pytest.raises(TrackingUnavailableError, match="did not answer"):
        from revelio_svc.pipeline import run

        run(cfg, progress=False)
    assert time.monotonic() - t0 < 15
    assert dead in capsys.readouterr().err


def cli(argv: list[str]) -> int:
    """`revelio ...` through the real parser into the command functions."""
    from revelio_svc.cli import dispatch

    return dispatch(argv)


def test_cli_lists_promotes_and_reports_errors(fresh_mlflow, trained, classifier_dir, capsys):
    main = cli
    with mlflow.start_run():
        registry.register_model("classifier", classifier_dir, trained[5], TAGS, "accuracy")
    # a loaded classifier keeps working after its temporary download is gone (bundled backbone read eagerly)
    clf = registry.load_classifier("revelio-classifier@champion")
    assert clf.predict([np.zeros((16, 16, 3), np.uint8)]).shape == (1, len(clf.class_names))

    assert main(["registry", "list", "--set", "tracking.experiment=revelio"]) == 0
    out = capsys.readouterr().out
    assert "revelio-classifier" in out and "champion→1" in out and "up_blocks.1" in out
    assert main(["registry", "promote", "revelio-classifier/1", "--alias", "blue"]) == 0
    assert aliases("revelio-classifier")["blue"] == "1"
    assert main(["registry", "pull", "revelio-classifier@nope", "--dest", "x"]) == 1
    assert "no alias 'nope'" in capsys.readouterr().err


def test_models_from_code_entry_matches_the_documented_file():
    # MLflow stores ENTRY_CODE with every model; registry/pyfunc_models.py is the same file for readers
    assert (REPO / "registry" / "pyfunc_models.py").read_text() == ENTRY_CODE
