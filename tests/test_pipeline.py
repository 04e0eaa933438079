"""`mlflow run .` (main entry point, local env manager) end to end on the tiny chain; caching and force."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from revelio_svc.config import load_config
from tests.registry.helpers import (
    PY,
    REPO,
    isolate_mlflow_env,
    new_store,
    reset_mlflow_experiment,
    subprocess_env,
    tiny_overrides,
    write_config_yaml,
)

pytest_plugins = ("tests.registry.fixtures",)

NAMES = ("revelio-sae", "revelio-probe", "revelio-classifier")
CHILD_STAGES = ("extract", "train_sae", "train_probe", "register")


@pytest.fixture(scope="module")
def project_run(template_db, tiny_unet_dir, tmp_path_factory):
    """One `mlflow run . --env-manager local` of the main entry point on a fresh store."""
    tmp = tmp_path_factory.mktemp("project")
    uri = new_store(template_db, tmp / "tracking")
    overrides = tiny_overrides(tiny_unet_dir, tmp / "out")
    config = write_config_yaml(tmp / "tiny.yaml", overrides)
    env = subprocess_env(MLFLOW_TRACKING_URI=uri, PATH=f"{Path(PY).parent}:{subprocess_env()['PATH']}")
    proc = subprocess.run([str(Path(PY).parent / "mlflow"), "run", str(REPO), "--env-manager", "local",
                           "--experiment-name", "revelio", "-P", f"config={config}", "-P", "overrides=probe.C=0.5"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {"uri": uri, "config": config, "tmp": tmp, "log": proc.stdout + proc.stderr}


@pytest.fixture(autouse=True)
def _forget_experiment():
    yield
    reset_mlflow_experiment()


def use(uri: str, monkeypatch) -> MlflowClient:
    isolate_mlflow_env(monkeypatch, uri)
    mlflow.set_experiment("revelio")
    return MlflowClient()


def stage_runs(client: MlflowClient, parent_id: str) -> dict[str, mlflow.entities.Run]:
    exp = client.get_experiment_by_name("revelio").experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["stage"]: r for r in runs}


def test_mlflow_run_registers_the_three_models_in_one_parent_run(project_run, tiny_unet_dir, monkeypatch):
    client = use(project_run["uri"], monkeypatch)
    exp = client.get_experiment_by_name("revelio").experiment_id
    (parent,) = client.search_runs([exp], "tags.stage = 'main'")
    # the parent is the MLflow-Projects run itself: it carries the entry point's own params
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
    assert parent.data.params["overrides"] == "probe.C=0.5" and parent.data.params["probe.C"] == "0.5"
    children = stage_runs(client, parent.info.run_id)
    assert set(children) == set(CHILD_STAGES)
    for stage, r in children.items():
        assert r.info.status == "FINISHED"
        assert r.data.tags["backbone"] == str(tiny_unet_dir) and r.data.tags["stage"] == stage
        assert (r.data.tags["hook_point"], r.data.tags["timestep"], r.data.tags["dataset"]) == ("up_blocks.1", "10",
                                                                                                "shapes")
        assert r.data.tags["mlflow.note.content"] and REUSED not in r.data.tags
        assert parent.data.tags[f"run_id.{stage}"] == r.info.run_id
    # outputs are handed on explicitly and the lineage is recorded
    assert children["train_sae"].data.tags["store_uri"] == children["extract"].data.tags["store_uri"]
    assert "sae.store" not in children["train_sae"].data.params  # locations are tags, not params
    # runs are named after their stage and subject; the dataset and the store are run inputs
    assert children["train_sae"].info.run_name == "train_sae · up_blocks.1 t=10 · topk k=4 ×4"
    inputs = {d.dataset.name for d in children["extract"].inputs.dataset_inputs}
    assert inputs == {"shapes", f"features-{children['extract'].data.tags['config_hash'][:8]}"}
    assert children["train_probe"].data.tags["upstream.train_sae"] == children["train_sae"].info.run_id
    assert children["train_probe"].data.metrics["accuracy"] >= 0
    arts = {a.path for a in client.list_artifacts(children["register"].info.run_id, "classifier")}
    assert "classifier/example_explanation.png" in arts
    assert "pipeline_stages.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    for name in NAMES:
        mv = client.get_model_version_by_alias(name, "champion")
        assert str(mv.version) == "1" and mv.tags["hook_point"] == "up_blocks.1" and mv.tags["dataset"] == "shapes"
        assert mv.tags["run_id.train_sae"] == children["train_sae"].info.run_id
    assert float(client.get_model_version_by_alias("revelio-sae", "champion").tags["metric.fvu"]) > 0
    # the faithfulness of the classifier's explanations is on the run of its registered version
    clf_run = client.get_run(client.get_model_version_by_alias("revelio-classifier", "champion").run_id)
    assert 0 <= clf_run.data.metrics["faithfulness.deletion_auc"] <= 1
    assert "faithfulness.deletion_auc_random" in clf_run.data.metrics
    # and so are the steering flip rates of the SAE's class latents against random directions (shapes: judged)
    assert 0 <= clf_run.data.metrics["steering.flip_rate"] <= 1
    assert 0 <= clf_run.data.metrics["steering.flip_rate_random"] <= 1
    # and those of each class's most specific latents placed as an exemplar has them, beside their control
    assert 0 <= clf_run.data.metrics["steering_exemplar.flip_rate"] <= 1
    assert 0 <= clf_run.data.metrics["steering_exemplar.flip_rate_random"] <= 1


def test_a_second_process_loads_every_model_by_alias(project_run, tiny_unet_dir):
    code = """
import json, numpy as np, torch
from revelio_svc.registry import load_classifier, load_probe, load_sae
from revelio_svc.data import load_dataset
sae, probe, clf = load_sae("revelio-sae@champion"), load_probe("revelio-probe@champion"), load_classifier("revelio-classifier@champion")
img = load_dataset(clf.data).image(5)
z = clf.latents([img])
print(json.dumps({"n_latents": sae.n_latents, "probe_features": probe.n_features, "classes": clf.class_names,
                  "p": clf.predict([img])[0].tolist(), "p_probe": probe.predict_proba(z)[0].tolist(),
                  "label": clf.explain(img)["label"]}))
"""
    out = subprocess.run([PY, "-c", code], cwd=project_run["tmp"], env=subprocess_env(
        MLFLOW_TRACKING_URI=project_run["uri"]), capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n_latents"] == got["probe_features"] == 32
    assert len(got["p"]) == len(got["classes"]) and abs(sum(got["p"]) - 1) < 1e-6
    # the classifier is the SAE and the probe of the same run: same probabilities through either path
    np.testing.assert_allclose(np.asarray(got["p"])[:len(got["p_probe"])], got["p_probe"], atol=1e-6)
    assert got["label"] == got["classes"][int(np.argmax(got["p"]))]


REUSED = "reused_from"


def test_rerun_reuses_every_stage_and_force_recomputes(project_run, monkeypatch):
    from revelio_svc.pipeline import run

    client = use(project_run["uri"], monkeypatch)
    monkeypatch.chdir(project_run["tmp"])
    exp = client.get_experiment_by_name("revelio").experiment_id
    (first,) = client.search_runs([exp], "tags.stage = 'main'")
    originals = {s: r.info.run_id for s, r in stage_runs(client, first.info.run_id).items()}
    cfg = load_config(project_run["config"], ["probe.C=0.5"])

    again = run(cfg, progress=False)
    children = stage_runs(client, again.parent_run_id)
    assert set(children) == set(CHILD_STAGES)
    for stage, r in children.items():
        assert r.data.tags[REUSED] == originals[stage], stage  # nothing recomputed ...
        assert r.info.run_id != originals[stage]
    assert children["train_probe"].data.metrics["accuracy"] == stage_runs(
        client, first.info.run_id)["train_probe"].data.metrics["accuracy"]  # ... and the results travel along
    assert [str(v.version) for v in client.search_model_versions("name='revelio-sae'")] == ["1"]

    # a changed stage config recomputes that stage and what reads it, reusing what it reads
    changed = run(load_config(project_run["config"], ["probe.C=0.25"]), progress=False)
    assert changed.stages["extract"].reused_from == originals["extract"]
    assert changed.stages["train_sae"].reused_from == originals["train_sae"]
    assert changed.stages["train_probe"].reused_from is None and changed.stages["register"].reused_from is None

    # the sweep stage (pipeline.sweep) as a child of its own, on the reused store
    swept = run(cfg, stages=("extract", "sweep"), progress=False)
    assert set(swept.stages) == {"extract", "sweep"} and swept.stages["extract"].reused_from == originals["extract"]
    sweep_run = client.get_run(swept.stages["sweep"].run_id)
    assert sweep_run.data.tags["mlflow.parentRunId"] == swept.parent_run_id
    assert any(a.path.endswith(".png") for a in client.list_artifacts(sweep_run.info.run_id, "sweep/heatmaps"))

    forced = run(load_config(project_run["config"], ["probe.C=0.5", "force=true"]), progress=False)
    assert all(o.reused_from is None for o in forced.stages.values())
    assert REUSED not in client.get_run(forced.stages["train_sae"].run_id).data.tags
    # retrained from scratch, evaluations logged on the way (not the trainer's "already complete" shortcut)
    assert len(client.get_metric_history(forced.stages["train_sae"].run_id, "fvu")) == 2  # steps 40 / eval 20
    # same seed → same fvu
    assert client.get_run(forced.stages["train_sae"].run_id).data.metrics["fvu"] == pytest.approx(
        client.get_run(originals["train_sae"]).data.metrics["fvu"], rel=1e-4)
    reg = forced.registrations["sae"]
    assert reg.version == "3" and not reg.champion  # the same model again: no evidence it is better
    assert str(client.get_model_version_by_alias("revelio-sae", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("revelio-sae", "challenger").version) == "3"
