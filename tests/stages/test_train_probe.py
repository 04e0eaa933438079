from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from mlflow.tracking import MlflowClient

from revelio_svc.config import ConfigError, replace
from revelio_svc.contracts import Evaluation
from revelio_svc.features.store import open_store
from revelio_svc.inference import ProbeWithSAE, load_probe_with_sae
from revelio_svc.probe import linear, read_probe
from revelio_svc.probe.controls import pool_tokens
from revelio_svc.probe.diffc import DiffCProbe
from revelio_svc.probe.metrics import accuracy
from revelio_svc.sae import TopKSAEConfig, build_sae
from revelio_svc.stages import train_probe as stage
from revelio_svc.tracking import log_result


def artifact_names(run_id: str, path: str) -> set[str]:
    return {a.path.split("/")[-1] for a in MlflowClient().list_artifacts(run_id, path)}


def test_linear_probe_stage_logs_probe_controls_and_report(extracted, mlflow_db):
    cfg, uri = extracted
    with mlflow.start_run() as run:
        out = stage.train_probe_stage(cfg)
        log_result(out)
    table = out.table
    # the result table carries its controls, for every shot count
    assert set(table.input) == {"model", "pixels", "random_init"}
    assert set(table.shots) == {"1", "all"}
    assert (table[table.input == "model"].role == "model").all()
    assert table[(table.input == "model") & (table.shots == "1")].n_runs.item() == 2  # probe.seeds
    assert table.chance.notna().all()

    probe = read_probe(out.probe_dir)
    assert probe.meta["concept"] == "colour" and probe.meta["hook_point"] == "up_blocks.1"
    assert probe.meta["timestep"] == 10 and probe.meta["C"] == cfg.probe.fit_C and probe.meta["sae"] is None
    store = open_store(uri)
    X = store.feature_set("up_blocks.1", 10, "mean").load()
    is_test = store.is_test()
    assert probe.meta["n_train"] == int((~is_test).sum())  # the saved probe saw every train row, no test row
    assert accuracy(store.labels("colour")[is_test], probe.predict(X[is_test])) == out.metrics["accuracy"]

    run_id = run.info.run_id
    assert artifact_names(run_id, "probe") == {"probe.json", "probe.safetensors", "evaluation.json"}
    report = artifact_names(run_id, "probe_report")
    assert {"results.csv", "fewshot_runs.csv", "metrics.json", "confusion.png"} <= report
    logged = MlflowClient().get_run(run_id).data
    assert logged.metrics["accuracy"] == pytest.approx(out.metrics["accuracy"])
    assert "control.random_init.all.accuracy_mean" in logged.metrics
    assert "fewshot.1.accuracy_std" in logged.metrics
    assert logged.tags["probe_dir"] == str(out.probe_dir)
    # beside it, the raw features' own probe: every candidate reported, one chosen, its test accuracy logged
    raw = pd.read_csv(out.report_dir / "raw_probe.csv")
    assert set(raw.inputs) == {"mean", "top8"} and raw.chosen.sum() == 1  # the sets this store holds
    best = raw[raw.chosen].iloc[0]
    assert best.cv_accuracy == raw.cv_accuracy.max()
    Xc = {"mean": X, "top8": pool_tokens(store.feature_set("up_blocks.1", 10, "tokens").load(), "top8")}
    y = store.labels("colour")
    refit = linear.fit_linear_probe(Xc[best.inputs][~is_test], y[~is_test], C=best.C, max_iter=2000)
    assert logged.metrics["raw_probe.accuracy"] == pytest.approx(accuracy(y[is_test], refit.predict(Xc[best.inputs][is_test])))
    assert logged.metrics["raw_probe.C"] == best.C and "raw_probe.csv" in report
    # the per-image results the registry compares champions on: one per test row
    ev = Evaluation.read(out.probe_dir / "evaluation.json")
    assert ev.index == tuple(store.index()[is_test]) and ev.accuracy == pytest.approx(out.metrics["accuracy"])


def test_probe_stage_without_a_run_still_saves(extracted, tmp_path):
    cfg, uri = extracted
    cfg = replace(cfg, **{"output_dir": str(tmp_path), "probe.controls": False, "probe.shots": ("all",),
                          "probe.store": uri})
    assert mlflow.active_run() is None
    out = stage.train_probe_stage(cfg)
    assert mlflow.active_run() is None and set(out.table.input) == {"model"}
    assert (tmp_path / "probe").is_dir() and str(out.probe_dir).startswith(str(tmp_path))


def test_diffc_stage_trains_on_token_maps(extracted, tmp_path):
    cfg, uri = extracted
    cfg = replace(cfg, **{"output_dir": str(tmp_path / "o"), "probe.kind": "diffc", "probe.width": 8,
                          "probe.epochs": 2, "probe.batch_size": 16, "probe.seeds": 1})
    # a new output_dir moves the default store location: name the store explicitly
    cfg = replace(cfg, **{"probe.store": uri})
    out = stage.train_probe_stage(cfg)
    assert set(out.table.input) == {"model", "pixels", "random_init"}
    probe = read_probe(out.probe_dir)
    assert isinstance(probe, DiffCProbe) and probe.meta["pooling"] == "tokens"
    store = open_store(uri)
    T = store.feature_set("up_blocks.1", 10, "tokens").load()
    assert probe.arch["in_channels"] == T.shape[-1]
    is_test = store.is_test()
    assert accuracy(store.labels("colour")[is_test], probe.predict(T[is_test])) == out.metrics["accuracy"]


def test_diffc_on_sae_latents_is_refused(extracted):
    cfg, _ = extracted
    with pytest.raises(ConfigError, match="Diff-C runs on spatial feature maps"):
        stage.train_probe_stage(replace(cfg, **{"probe.kind": "diffc", "probe.input": "sae", "probe.sae": "x"}))


def tiny_token_sae(d_in: int, directory):
    """A real TopK token SAE (random directions, not trained): enough to exercise the SAE path end to end."""
    sae = build_sae(TopKSAEConfig(d_in=d_in, n_latents=64, k=8, input="tokens", latent_pooling="max",
                                  hook_point="up_blocks.1", timestep=10), seed=7)
    sae.save(directory)
    return sae


def test_sae_latent_probe_is_sparse_end_to_end_and_loads_with_its_sae(extracted, tmp_path, monkeypatch):
    cfg, uri = extracted
    store = open_store(uri)
    d_in = store.feature_set("up_blocks.1", 10, "tokens").shape[-1]
    sae_dir = tmp_path / "sae"
    tiny_token_sae(d_in, sae_dir)
    handed = []

    class Spy(linear.LogisticRegression):
        def fit(self, X, y, *a, **kw):
            handed.append(X)
            return super().fit(X, y, *a, **kw)

    monkeypatch.setattr(linear, "LogisticRegression", Spy)
    cfg = replace(cfg, **{"output_dir": str(tmp_path / "o"), "probe.input": "sae", "probe.sae": str(sae_dir),
                          "probe.store": uri, "probe.pooling": "max", "probe.seeds": 1})
    out = stage.train_probe_stage(cfg)
    assert set(out.table.input) == {"model", "pixels", "random_init", "random_relu", "raw_features"}
    wide = [X for X in handed if X.shape[1] == 64]  # SAE latents and their random-ReLU control
    assert wide and all(sp.issparse(X) for X in wide)
    assert all(isinstance(X, np.ndarray) for X in handed if X.shape[1] != 64)

    meta = json.loads((out.probe_dir / "probe.json").read_text())
    assert meta["sae"]["path"] == str(sae_dir) and meta["input"] == "sae" and meta["sparse_input"]
    both = load_probe_with_sae(out.probe_dir)
    assert isinstance(both, ProbeWithSAE) and both.sae.n_latents == 64
    T = store.feature_set("up_blocks.1", 10, "tokens").load()
    is_test = store.is_test()
    # features → SAE latents → probe gives the stage's own test accuracy
    assert accuracy(store.labels("colour")[is_test], both.predict(T[is_test])) == out.metrics["accuracy"]
    # the results table says, per shot count, whether the probe beats random_relu and raw_features
    csv = pd.read_csv(out.report_dir / "results.csv", keep_default_na=False)
    model = out.table[out.table.role == "model"]
    assert {"beats_controls", "loses_to"} <= set(csv.columns) and model.beats_controls.notna().all()
    assert out.metrics["shots_losing_to_controls"] == int((model.loses_to != "").sum())
    for _, r in model.iterrows():
        ref = out.table[(out.table.shots == r.shots) & out.table.input.isin(["random_relu", "raw_features"])]
        assert r.beats_controls == bool((r.accuracy_mean > ref.accuracy_mean).all())
        assert set(filter(None, r.loses_to.split(","))) == set(ref[ref.accuracy_mean > r.accuracy_mean].input)


def test_probe_table_flags_every_shot_count_the_model_loses_at(capsys):
    table = pd.DataFrame([
        {"input": "model", "role": "model", "shots": "10", "accuracy_mean": 0.469},
        {"input": "model", "role": "model", "shots": "all", "accuracy_mean": 0.90},
        {"input": "random_relu", "role": "control", "shots": "10", "accuracy_mean": 0.519},
        {"input": "random_relu", "role": "control", "shots": "all", "accuracy_mean": 0.885},
        {"input": "raw_features", "role": "control", "shots": "10", "accuracy_mean": 0.40},
        {"input": "raw_features", "role": "control", "shots": "all", "accuracy_mean": 0.90},  # a tie
        {"input": "pixels", "role": "control", "shots": "all", "accuracy_mean": 0.99},  # not a flagged control
    ])
    flagged = stage.flag_losses(table)
    model = flagged[flagged.role == "model"].set_index("shots")
    assert model.loc["10", "loses_to"] == "random_relu" and model.loc["10", "beats_controls"] is False
    assert model.loc["all", "loses_to"] == "" and model.loc["all", "beats_controls"] is False  # a tie does not beat
    assert flagged[flagged.role == "control"].loses_to.eq("").all()
    lines = stage.loss_warnings(flagged, "the probe on SAE latents")
    assert lines == ["warning: the probe on SAE latents loses to its controls at 10 shots: 0.469 vs random_relu 0.519"]
    # no flagged control ran: nothing to say
    plain = stage.flag_losses(table[table.input.isin(["model", "pixels"])])
    assert plain.beats_controls.isna().all() and not stage.loss_warnings(plain)


def test_sparse_probe_option_and_the_latents_per_class_curve(extracted, tmp_path):
    cfg, uri = extracted
    store = open_store(uri)
    d_in = store.feature_set("up_blocks.1", 10, "tokens").shape[-1]
    sae_dir = tmp_path / "sae"
    build_sae(TopKSAEConfig(d_in=d_in, n_latents=64, k=8, input="tokens", latent_pooling="top4",
                            hook_point="up_blocks.1", timestep=10), seed=7).save(sae_dir)
    cfg = replace(cfg, **{"output_dir": str(tmp_path / "o"), "probe.input": "sae", "probe.sae": str(sae_dir),
                          "probe.store": uri, "probe.seeds": 1, "probe.controls": False,
                          "probe.penalty": "l2", "probe.latents_per_class": 3})
    out = stage.train_probe_stage(cfg)
    probe = read_probe(out.probe_dir)
    assert ((np.asarray(probe.coef) != 0).sum(1) <= 3).all()  # every class reads at most 3 latents
    assert probe.meta["latents_per_class"] == 3
    # the curve is on a validation split of the train rows, with the fewest latents within 2 points marked
    curve = json.loads((out.report_dir / "sparsity.json").read_text())
    assert set(curve["validation"]) == {"dense", "1", "2", "4", "8", "16", "32", "64", "128", "256"}
    assert (out.report_dir / "sparsity.png").is_file()
    assert out.metrics["sparsity.val.dense"] == curve["validation"]["dense"]
    chosen = curve["chosen"]
    if chosen is not None:
        assert curve["validation"][str(chosen)] >= curve["validation"]["dense"] - 0.02
        assert out.metrics["sparsity.chosen_latents_per_class"] == chosen
    assert out.metrics["sparsity.latents_per_class"] == 3
    with pytest.raises(ConfigError, match="probe.latents_per_class"):
        replace(cfg, **{"probe.latents_per_class": -2})
    # auto (-1, the default): the fewest latents per class within 2 points on validation, else all of them
    auto = stage.train_probe_stage(replace(cfg, **{"probe.latents_per_class": -1,
                                                   "output_dir": str(tmp_path / "auto")}))
    curve = json.loads((auto.report_dir / "sparsity.json").read_text())
    used = auto.metrics["sparsity.latents_per_class"]
    assert used == (curve["chosen"] if curve["chosen"] is not None else 0)
    nz = (np.asarray(read_probe(auto.probe_dir).coef) != 0).sum(1)
    assert (nz <= used).all() if used else True


def test_the_probe_fitter_states_C_for_every_train_row():
    from revelio_svc.config import load_config

    cfg = load_config(None, ["probe.penalty=l1", "probe.C=0.5"])
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 2)
    X = sp.csr_matrix(np.eye(3)[y] * (1 + rng.random((6, 3))))
    few = stage.probe_fitter(cfg, 3, {}, n_train=300)(X, y, 0)  # 6 of 300 train rows: C × 50
    assert few.meta["C"] == 0.5 and few.meta["C_fit"] == pytest.approx(25.0) and np.abs(few.coef).any()
    assert "C_fit" not in stage.probe_fitter(cfg, 3, {})(X, y, 0).meta  # no n_train: C as given
