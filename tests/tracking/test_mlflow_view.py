"""MLflow as users read it: the experiment opens on training runs, the parent run is named, every stage run
shows its dataset inputs, and promotion decisions are kept as history."""
from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from revelio_svc.config import TrackingConfig
from revelio_svc.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, setup, ui_link
from tests.registry.helpers import tiny_config

pytest_plugins = ("tests.registry.fixtures",)


def test_the_experiment_is_marked_as_model_training(mlflow_tmp):
    setup(TrackingConfig(tracking_uri=mlflow_tmp, experiment="fresh"))
    exp = MlflowClient().get_experiment_by_name("fresh")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    # an experiment made before (or by `mlflow run --experiment-name`) gets the tag too
    MlflowClient().create_experiment("older")
    assert EXPERIMENT_KIND_TAG not in MlflowClient().get_experiment_by_name("older").tags
    setup(TrackingConfig(tracking_uri=mlflow_tmp, experiment="older"))
    assert MlflowClient().get_experiment_by_name("older").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_ui_links_open_the_model_training_view():
    assert ui_link("http://mlflow:5000/", "3", "abc") == \
        "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_link("sqlite:///mlflow.db", "1") == \
        "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"


def _inputs(client: MlflowClient, run_id: str) -> dict[str, str]:
    """{context: dataset name} of a run's dataset inputs."""
    out = {}
    for d in client.get_run(run_id).inputs.dataset_inputs:
        ctx = next((t.value for t in d.tags if t.key == "mlflow.data.context"), "")
        out[ctx] = d.dataset.name
    return out


def test_parent_named_and_every_stage_run_logs_its_inputs(fresh_mlflow, tiny_unet_dir, tmp_path, monkeypatch,
                                                          capsys):
    from revelio_svc.pipeline import run

    client = MlflowClient()
    exp = client.get_experiment_by_name("revelio").experiment_id
    # what `mlflow run .` hands the entry point: its own run, with a random name
    projects_run = client.create_run(exp, run_name="bright-owl-123").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", projects_run)
    cfg = tiny_config(tiny_unet_dir, tmp_path / "o")
    first = run(cfg, progress=False)
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert first.parent_run_id == projects_run
    assert client.get_run(projects_run).info.run_name == "run · shapes · up_blocks.1 t=10"
    second = run(cfg, progress=False)  # every stage reused from the first
    assert all(o.reused_from for o in second.stages.values())
    assert client.get_run(second.parent_run_id).info.run_name == "run · shapes · up_blocks.1 t=10"
    for res in (first, second):
        store_name = _inputs(client, res.stages["extract"].run_id)["features"]
        assert store_name.startswith("features-")
        for rid in [res.parent_run_id, *(o.run_id for o in res.stages.values())]:
            ins = _inputs(client, rid)
            assert ins.get("features") == store_name, (client.get_run(rid).info.run_name, ins)
            assert ins.get("images") == "shapes", (client.get_run(rid).info.run_name, ins)
    assert client.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_promotion_decisions_are_kept_as_history(fresh_mlflow, trained):
    from revelio_svc import registry
    from revelio_svc.registry.decisions import decision_history

    sae_dir = trained[2]
    for fvu in (0.5, 0.4):
        with mlflow.start_run():
            registry.register_model("sae", sae_dir, {"fvu": fvu}, {}, "fvu")
    registry.promote("revelio-sae/2")
    registry.promote("revelio-sae/1")
    client = MlflowClient()
    v1 = dict(client.get_model_version("revelio-sae", "1").tags)
    assert [text.split(": ", 1)[1] for _, text in decision_history(v1)] == [
        "no champion yet", "replaced as champion by version 2 (by hand)", "promoted by hand"]
    assert v1["champion_decision"] == "promoted by hand"  # the latest, in words
    v2 = dict(client.get_model_version("revelio-sae", "2").tags)
    assert [text.split(": ", 1)[1] for _, text in decision_history(v2)] == [
        "registered alone: champion stays version 1 (promote with `revelio registry promote revelio-sae/2`)",
        "promoted by hand", "replaced as champion by version 1 (by hand)"]
    model_log = [text.split(": ", 1)[1] for _, text in
                 decision_history(dict(client.get_registered_model("revelio-sae").tags))]
    assert model_log == ["version 1: no champion yet",
                         "version 2: registered alone: champion stays version 1 (promote with "
                         "`revelio registry promote revelio-sae/2`)",
                         "version 2: promoted by hand", "version 1: replaced as champion by version 2 (by hand)",
                         "version 1: promoted by hand", "version 2: replaced as champion by version 1 (by hand)"]
