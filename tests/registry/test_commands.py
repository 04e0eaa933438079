"""The stage commands through the real CLI parser: one MLflow run each, tagged."""
from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from revelio_svc.config import to_dict
from tests.registry.test_registry import cli

pytest_plugins = ("tests.registry.fixtures",)


def test_train_sae_and_train_probe_commands_open_tagged_runs(fresh_mlflow, trained, tmp_path, capsys):
    import yaml

    cfg = trained[0]
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(to_dict(cfg)))
    assert cli(["train-sae", "--config", str(conf)]) == 0
    assert "SAE written to" in capsys.readouterr().out
    assert cli(["train-probe", "--config", str(conf), "--set", "probe.C=0.5"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    exp = MlflowClient().get_experiment_by_name("revelio").experiment_id
    runs = {r.data.tags["stage"]: r for r in MlflowClient().search_runs([exp])}
    assert set(runs) == {"train_sae", "train_probe"}
    for r in runs.values():
        assert r.info.status == "FINISHED" and r.data.tags["hook_point"] == "up_blocks.1"
        assert r.data.tags["mlflow.note.content"]
    assert runs["train_probe"].data.params["probe.C"] == "0.5"
    assert "fvu" in runs["train_sae"].data.metrics and "accuracy" in runs["train_probe"].data.metrics
    assert mlflow.active_run() is None
