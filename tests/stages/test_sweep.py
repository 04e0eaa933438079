from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from revelio_svc.config import Config, replace
from revelio_svc.features.store import open_store
from revelio_svc.stages.sweep import read_sae_results, sweep_concepts, sweep_stage
from revelio_svc.tracking import log_result

from .conftest import write_planted_store


def all_artifacts(run_id: str, path: str = "") -> set[str]:
    out = set()
    for a in MlflowClient().list_artifacts(run_id, path or None):
        out |= all_artifacts(run_id, a.path) if a.is_dir else {a.path}
    return out


def test_sweep_on_a_planted_store_writes_and_logs_every_artifact(tmp_path, mlflow_db):
    store = write_planted_store(tmp_path / "store")
    sae_dir = tmp_path / "sae_results"
    (sae_dir / "a").mkdir(parents=True)
    (sae_dir / "a" / "result.json").write_text(json.dumps(
        {"hook_point": "up_blocks.1", "timestep": 10, "metrics": {"fvu": 0.1, "dead_frac": 0.02,
                                                                  "label_purity": {"shape": 0.4}}}))
    (sae_dir / "b.json").write_text(json.dumps({"config": {"hook_point": "down_blocks.1", "timestep": 250},
                                                "fvu": 0.3}))
    (sae_dir / "unrelated.json").write_text(json.dumps({"something": 1}))
    cfg = replace(Config(), **{"probe.store": str(store), "probe.controls": False, "probe.input": "features",
                               "output_dir": str(tmp_path / "o"), "extract.hook_points": ("up_blocks.1", "down_blocks.1")})
    with mlflow.start_run() as run:
        out = sweep_stage(cfg, sae_results=sae_dir, concepts=["shape", "colour"])  # fewer figures, faster
        log_result(out)

    # the planted pair wins for shape and is far above chance (3 classes)
    assert (out.best["shape"]["hook_point"], out.best["shape"]["timestep"]) == ("up_blocks.1", 10)
    assert out.best["shape"]["accuracy"] > 0.8
    df = pd.read_csv(out.output_dir / "sweep.csv")
    pq = pd.read_parquet(out.output_dir / "sweep.parquet")
    assert len(df) == len(pq) > 0
    shape_acc = df[(df.concept == "shape") & (df.input == "trained") & (df.metric == "accuracy")]
    assert len(shape_acc) == 4  # 2 hook points × 2 timesteps
    assert shape_acc[(shape_acc.hook_point == "down_blocks.1")].value.max() < 0.7  # noise pairs stay low
    assert set(df[df.input == "sae"].metric) == {"fvu", "dead_frac", "label_purity.shape"}
    assert {"sigma_label", "macro_f1"} <= set(df[df.input == "trained"].metric)

    summary = out.summary.read_text()
    assert "| shape | up_blocks.1, t=10 |" in summary and "SAE metrics" in summary
    for c in ("shape", "colour"):
        assert any(p.endswith(f"heatmaps/{c}__accuracy.png") for p in out.heatmaps)
        assert any(p.endswith(f"lines/{c}__accuracy_vs_timestep.png") for p in out.line_plots)
    assert any(p.endswith("heatmaps/sae__fvu.png") for p in out.heatmaps)

    logged = all_artifacts(run.info.run_id)
    for name in ("sweep/sweep.csv", "sweep/sweep.parquet", "sweep/summary.md", "sweep/heatmaps/shape__accuracy.png",
                 "sweep/heatmaps/shape__sigma_label.png", "sweep/heatmaps/sae__fvu.png",
                 "sweep/lines/shape__accuracy_vs_timestep.png"):
        assert name in logged, name
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.metrics["sweep.shape.best_accuracy"] == out.best["shape"]["accuracy"]
    assert data.tags["sweep.shape.best"] == "up_blocks.1 t=10"


def test_sweep_controls_sit_beside_every_pair(extracted, tmp_path):
    cfg, uri = extracted
    cfg = replace(cfg, **{"probe.store": uri})
    out = sweep_stage(cfg, output=tmp_path / "sweep", concepts=["colour"])
    df = out.table
    pairs = {(h, t) for h in ("down_blocks.1", "up_blocks.1") for t in (10, 250)}
    for inp in ("trained", "random_init", "pixels", "chance"):
        sel = df[(df.input == inp) & (df.metric == "accuracy")]
        assert {(r.hook_point, r.timestep) for r in sel.itertuples()} == pairs, inp
    assert (tmp_path / "sweep" / "heatmaps" / "colour__gain_over_random_init.png").is_file()
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "random-init there" in summary and "pixels" in summary
    # the random-init control really is another network: its features differ from the model's
    model = open_store(uri)
    rand_uri = out.random_init_store
    rand = open_store(rand_uri)
    assert rand_uri != uri
    assert rand.config["backbone"]["init"] == "random"
    a = model.feature_set("up_blocks.1", 10, "mean").load()
    b = rand.feature_set("up_blocks.1", 10, "mean").load()
    assert a.shape == b.shape and not np.allclose(a, b)


def test_read_sae_results_ignores_other_json(tmp_path):
    (tmp_path / "x.json").write_text("not json")
    (tmp_path / "y.json").write_text(json.dumps([1, 2]))
    (tmp_path / "z.json").write_text(json.dumps({"hook_point": "mid_block", "timestep": 100, "l0": 31.5,
                                                 "fvu": float("nan")}))
    recs = read_sae_results(tmp_path)
    assert [(r["metric"], r["value"]) for r in recs] == [("l0", 31.5)]
    assert read_sae_results(tmp_path / "missing") == []


def test_default_concepts():
    names = {c: ["a", "b"] for c in ("position", "background", "shape", "size", "colour")}
    assert sweep_concepts(names) == ["shape", "colour", "size", "background"]  # position is a nuisance
    assert sweep_concepts({"label": ["0", "1"]}) == ["label"]
