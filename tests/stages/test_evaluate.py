"""`revelio eval` end to end on the tiny chain, and the `evaluate` step of `revelio run`."""
from __future__ import annotations

import csv

import mlflow
import yaml
from mlflow import MlflowClient

from revelio_svc.cli.main import dispatch
from tests.registry.helpers import tiny_config

pytest_plugins = ("tests.registry.fixtures",)

QUICK = ["evaluate.n_images=8", "evaluate.mean_images=4", "evaluate.timesteps=[200]", "evaluate.samples=2",
         "evaluate.sample_steps=2", "evaluate.ablate=[1,4]"]


def test_eval_command_logs_one_run_with_the_summary_report_and_figures(trained, fresh_mlflow, tmp_path, capsys):
    cfg, store_uri, sae_dir, *_ = trained
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg.to_dict()))
    sets = [f"evaluate.sae={sae_dir}", f"evaluate.store={store_uri}", f"output_dir={tmp_path / 'out'}", *QUICK]
    assert dispatch(["eval", "--config", str(conf)] + [a for s in sets for a in ("--set", s)]) == 0
    assert "## Inside the model" in capsys.readouterr().out

    client = MlflowClient()
    exp = client.get_experiment_by_name("revelio").experiment_id
    (run,) = client.search_runs([exp], "tags.stage = 'evaluate'")
    m = run.data.metrics
    for t in (10, 200):  # the SAE's timestep and the extra one
        assert {f"loss.clean.t{t}", f"loss.spliced.t{t}", f"loss.zero.t{t}", f"loss.mean.t{t}"} <= set(m)
    assert {"tpp.n1", "tpp.n4", "control.random.tpp.n1", "control.channels.tpp.n1", "health.dead",
            "health.max_dec_cosine_max", "sampling.pixel_mae"} <= set(m)
    assert run.data.params["evaluate.n_images"] == "8" and run.data.params["eval.concept"] == "colour"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/summary.csv", "eval/report.md", "eval/health.png", "eval/fidelity.png", "eval/scr_tpp.png",
            "eval/samples.png"} <= files
    out = next((tmp_path / "out" / "eval").iterdir())
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["units"] for r in rows} == {"sae", "control.random", "control.channels"}
    tpp = {r["units"]: float(r["value"]) for r in rows if r["metric"] == "tpp.n1"}
    assert tpp["sae"] == m["tpp.n1"] and tpp["control.random"] == m["control.random.tpp.n1"]


def test_eval_command_names_a_missing_sae(trained, fresh_mlflow, tmp_path, capsys):
    cfg, store_uri, *_ = trained
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg.to_dict()))
    code = dispatch(["eval", "--config", str(conf), "--set", f"evaluate.sae={tmp_path / 'nothing'}",
                     "--set", f"evaluate.store={store_uri}"])
    assert code == 2 and "evaluate.sae: no SAE at" in capsys.readouterr().err


def test_run_with_the_evaluate_step_tags_the_registered_sae(tiny_unet_dir, fresh_mlflow, tmp_path):
    from revelio_svc.pipeline import run

    cfg = tiny_config(tiny_unet_dir, tmp_path / "out", "pipeline.evaluate=true", *QUICK)
    res = run(cfg, progress=False)
    assert list(res.stages) == ["extract", "train_sae", "train_probe", "register", "evaluate"]
    ev = mlflow.get_run(res.stages["evaluate"].run_id)
    assert ev.data.tags["mlflow.parentRunId"] == res.parent_run_id
    assert ev.data.tags["upstream.train_sae"] == res.stages["train_sae"].run_id
    assert "tpp.n4" in ev.data.metrics
    reg = res.registrations["sae"]
    tags = MlflowClient().get_model_version(reg.name, reg.version).tags
    assert float(tags["eval.tpp.n4"]) == float(f"{ev.data.metrics['tpp.n4']:.4g}")
    assert "eval.health.dead" in tags
    # a second run reuses the evaluation (same SAE, store and options)
    again = run(cfg, progress=False)
    assert again.stages["evaluate"].reused_from == res.stages["evaluate"].run_id

    # `revelio eval` of the registered version (a registry URI) tags that version with its own headline
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg.to_dict()))
    assert dispatch(["eval", "--config", str(conf), "--set", "evaluate.sae=revelio-sae@champion",
                     "--set", "evaluate.ablate=[1,2]"]) == 0
    champion = MlflowClient().get_model_version_by_alias("revelio-sae", "champion")
    assert "eval.tpp.n2" in champion.tags and "eval.tpp.n4" in MlflowClient().get_model_version(reg.name,
                                                                                             reg.version).tags
