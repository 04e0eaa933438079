"""`revelio tune`: n trials → n nested runs under one parent; pruning; resume; two processes, one study."""
from __future__ import annotations

import subprocess

import optuna
import pytest
from mlflow import MlflowClient

from revelio_svc.config import replace
from revelio_svc.tune import PARENT_ATTR, tune
from tests.registry.helpers import PY, subprocess_env

pytest_plugins = ("tests.registry.fixtures",)

GOOD, BAD = 3e-3, 1e-7  # SAE learning rates: one that trains in 40 steps, one that does not move at all


def tune_cfg(trained, tmp_path, **changes):
    cfg = trained[0]
    return replace(cfg, **{"output_dir": str(tmp_path / "out"), "tune.storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                           "tune.study_name": "tiny", "tune.metric": "fvu", "tune.direction": "minimize",
                           # expansion and k fixed, only the learning rate is searched: a few seconds per trial
                           "tune.search_space": {"expansion": 4, "k": 4, "auxk_coef": 0.0,
                                                 "lr": {"low": 1e-8, "high": 5e-3, "log": True}},
                           **changes})


def trial_runs(client, parent_id):
    exp = client.get_experiment_by_name("revelio").experiment_id
    return sorted(client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'"),
                  key=lambda r: int(r.data.tags["optuna.trial"]))


def test_study_nests_n_trials_under_one_parent_prunes_and_resumes(fresh_mlflow, trained, tmp_path):
    cfg = tune_cfg(trained, tmp_path)
    # two good trials first, so the median pruner has a reference when the hopeless one reports
    res = tune(cfg, n_trials=3, enqueue=[{"sae.lr": GOOD}, {"sae.lr": GOOD * 0.9}, {"sae.lr": BAD}])
    client = MlflowClient()
    runs = trial_runs(client, res.parent_run_id)
    assert len(runs) == 3 and res.n_trials_run == 3
    states = [r.data.tags["optuna.state"] for r in runs]
    assert states == ["complete", "complete", "pruned"]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "KILLED"]
    for r in runs[:2]:
        assert float(r.data.params["sae.lr"]) in (GOOD, GOOD * 0.9)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "intermediate.fvu")] == [20, 40]
        assert r.data.metrics["value"] == pytest.approx(r.data.metrics["fvu"])
    # the hopeless trial stopped at its first evaluation, half-way through training
    assert [m.step for m in client.get_metric_history(runs[2].info.run_id, "intermediate.fvu")] == [20]
    assert "value" not in runs[2].data.metrics

    study = optuna.load_study(study_name="tiny", storage=cfg.tune.storage)
    assert study.user_attrs[PARENT_ATTR] == res.parent_run_id
    assert study.trials[2].state == optuna.trial.TrialState.PRUNED
    parent = client.get_run(res.parent_run_id)
    best = min(runs[:2], key=lambda r: r.data.metrics["value"])
    assert parent.data.metrics["best_value"] == pytest.approx(best.data.metrics["value"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert float(parent.data.tags["best.sae.lr"]) == float(best.data.params["sae.lr"])
    assert parent.data.params["tune.metric"] == "fvu" and "optuna.db" in parent.data.params["tune.storage"]
    # the best trial's SAE is registered, tagged with its study and trial
    mv = client.get_model_version_by_alias("revelio-sae", "champion")
    assert mv.run_id == best.info.run_id and mv.tags["optuna.trial"] == f"tiny:{best.data.tags['optuna.trial']}"

    # resuming the study adds trials under the same parent
    again = tune(cfg, n_trials=1)
    assert again.parent_run_id == res.parent_run_id
    assert len(trial_runs(client, res.parent_run_id)) == 4


def test_two_processes_share_one_sqlite_study(fresh_mlflow, trained, tmp_path):
    cfg = tune_cfg(trained, tmp_path, **{"tracking.register": False,
                                         "tune.search_space": {"expansion": 4, "k": 4, "lr": [GOOD, GOOD * 0.9]}})
    import yaml

    conf = tmp_path / "tune.yaml"
    conf.write_text(yaml.safe_dump(cfg.to_dict()))
    code = ("import sys; from revelio_svc.config import load_config; from revelio_svc.tune import tune;"
            "tune(load_config(sys.argv[1]), n_trials=1)")
    env = subprocess_env(MLFLOW_TRACKING_URI=fresh_mlflow)
    procs = [subprocess.Popen([PY, "-c", code, str(conf)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)

    study = optuna.load_study(study_name="tiny", storage=cfg.tune.storage)
    assert len(study.trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    parent = study.user_attrs[PARENT_ATTR]
    runs = trial_runs(MlflowClient(), parent)
    assert len(runs) == 2  # the trials of both workers under the one parent
    assert len({r.data.tags["optuna.worker"] for r in runs}) == 2  # and both workers contributed
    exp = MlflowClient().get_experiment_by_name("revelio").experiment_id
    assert len(MlflowClient().search_runs([exp], "tags.stage = 'tune'")) == 1


def test_bad_tuning_config_is_refused(trained, tmp_path):
    from revelio_svc.config import ConfigError

    with pytest.raises(ConfigError, match="tune.metric.*accuracy"):
        tune(replace(tune_cfg(trained, tmp_path), **{"tune.target": "probe", "tune.metric": "fvu"}))
    with pytest.raises(ConfigError, match="tune.search_space.*nonsense"):
        tune(replace(tune_cfg(trained, tmp_path), **{"tune.search_space": {"nonsense": [1, 2]}}))


def test_interpretation_metric_is_reported_during_training_and_prunes(fresh_mlflow, trained, tmp_path):
    # the SAE-minus-matched-control gap of 4-sparse probing is not a trainer metric: the SAE stage computes the
    # interpretation report at every evaluation, so a study on it gets intermediate values and prunes like
    # one on fvu (the untrained SAE of the hopeless trial is no better than its random control)
    cfg = tune_cfg(trained, tmp_path, **{"tune.metric": "gap.sparse_probe.k4", "tune.direction": "maximize",
                                         "tracking.register": False})
    res = tune(cfg, n_trials=3, enqueue=[{"sae.lr": GOOD}, {"sae.lr": GOOD * 0.9}, {"sae.lr": BAD}])
    client = MlflowClient()
    runs = trial_runs(client, res.parent_run_id)
    vals = [[(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "intermediate.gap.sparse_probe.k4")]
            for r in runs]
    assert [r.data.tags["optuna.state"] for r in runs] == ["complete", "complete", "pruned"], vals
    for r in runs[:2]:
        hist = client.get_metric_history(r.info.run_id, "intermediate.gap.sparse_probe.k4")
        assert [m.step for m in hist] == [20, 40] and all(-1 <= m.value <= 1 for m in hist)
    assert vals[2] and "value" not in runs[2].data.metrics
    assert vals[2][-1][1] < min(v[len(vals[2]) - 1][1] for v in vals[:2]), vals


def test_a_tuning_study_never_reads_a_test_row(fresh_mlflow, trained, tmp_path, monkeypatch):
    """Every read of the store's features hands back NaN on the test rows and -1 as their labels: any use of a
    test row in training, pruning or the objective would fail the trial or make its value NaN."""
    import numpy as np

    from revelio_svc.features.store import FeatureSet, FeatureStore, open_store
    from revelio_svc.stages import train_sae_stage

    real_shard, real_labels = FeatureSet.shard, FeatureStore.labels

    def poisoned_shard(self, i):
        arr = np.array(real_shard(self, i), np.float32)
        test = self.store.rows(i)["split"].astype(bool)
        arr[test] = np.nan
        return arr

    def poisoned_labels(self, concept):
        y = np.array(real_labels(self, concept))
        y[self.is_test()] = -1
        return y

    monkeypatch.setattr(FeatureSet, "shard", poisoned_shard)
    monkeypatch.setattr(FeatureStore, "labels", poisoned_labels)
    store = open_store(trained[1])
    assert store.is_test().sum() > 0
    cfg = tune_cfg(trained, tmp_path, **{"tune.metric": "gap.score", "tune.direction": "maximize",
                                         "tracking.register": False, "sae.validation_fraction": 0.4})
    # the poison works: the default (test-row) evaluation of the same SAE cannot run on it
    with pytest.raises(Exception, match="NaN"):
        train_sae_stage(replace(cfg, **{"sae.lr": GOOD, "output_dir": str(tmp_path / "plain")}), progress=False,
                        interpret=False)
    res = tune(cfg, n_trials=2, enqueue=[{"sae.lr": GOOD}, {"sae.lr": GOOD * 0.9}])
    client = MlflowClient()
    runs = trial_runs(client, res.parent_run_id)
    assert [r.data.tags["optuna.state"] for r in runs] == ["complete", "complete"]
    for r in runs:
        assert np.isfinite(r.data.metrics["value"]) and np.isfinite(r.data.metrics["fvu"])
        assert [m.step for m in client.get_metric_history(r.info.run_id, "intermediate.gap.score")] == [20, 40]


def test_the_probe_search_space_tunes_the_C_of_the_probe_it_fits():
    from revelio_svc.config import load_config
    from revelio_svc.tune import search_space

    l1 = search_space(load_config(None, ["tune.target=probe", "probe.penalty=l1"]))
    l2 = search_space(load_config(None, ["tune.target=probe", "probe.penalty=l2", "probe.latents_per_class=0"]))
    assert "probe.C_l1" in l1 and "probe.C" not in l1
    assert "probe.C" in l2 and "probe.C_l1" not in l2
