"""Latent tables, grids, the whole interpretation and the train-sae stage with MLflow."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from revelio_svc.features.store import open_store
from revelio_svc.interpret import latent_table, render_grid, select_latents
from revelio_svc.interpret.report import CONTROL_NAMES
from revelio_svc.interpret.toplatents import read_rows
from revelio_svc.stages import train_sae_stage
from revelio_svc.tracking import log_result, step_logger
from tests.sae.helpers import FakeDataset, build_store, tiny_cfg


def test_latent_table_planted():
    labels = {"colour": np.array([0, 0, 1, 1, 2, 2])}
    acts = np.array([[0, 5, 0], [0, 4, 0], [3, 0, 0], [2, 3, 0], [1, 0, 0], [0, 0, 0]], float)
    df = latent_table(acts, labels, {"colour": ["red", "green", "blue"]}, top_n=2, index=np.arange(100, 106))
    assert list(df["latent"]) == [0, 1, 2]
    assert list(df["n_active"]) == [3, 3, 0]
    assert df["frequency"].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert df.loc[0, "top_rows"] == [2, 3] and df.loc[0, "top_indices"] == [102, 103]
    assert df.loc[1, "top_activations"] == [5.0, 4.0]
    assert df.loc[2, "top_rows"] == []  # a dead latent has no top images
    assert df.loc[0, "colour.majority"] == "green" and df.loc[0, "colour.purity"] == 1.0
    assert df.loc[1, "colour.majority"] == "red"
    assert json.loads(df.loc[1, "colour.distribution"]) == {"red": 2}
    assert pd.isna(df.loc[2, "colour.majority"]) and np.isnan(df.loc[2, "colour.purity"])
    assert select_latents(acts, 5) == [1, 0]


def test_render_grid_tiles_and_overlays_heatmaps():
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    plain = render_grid(imgs, scale=2, pad=1, cols=2)
    assert plain.shape == (2 * 17 + 1, 2 * 17 + 1, 3)
    maps = np.zeros((3, 2, 2))
    maps[0, 0, 0] = 1.0
    hot = render_grid(imgs, maps, scale=2, pad=1, cols=2)
    assert hot[1:17, 1:17].sum() > 0  # the first tile is lit where its map is
    assert hot[1:3, 1:3].sum() > hot[14:17, 14:17].sum()
    assert hot[1:17, 18:34].sum() == 0  # the second tile's map is zero


def test_read_rows_reads_any_rows_across_shards(tmp_path):
    store = open_store(build_store(tmp_path / "s", n_images=40, shard_size=15, hw=2))
    fset = store.feature_set("up_blocks.1", 10, "tokens")
    rows = np.array([39, 0, 16, 14, 15])
    assert np.array_equal(read_rows(fset, rows), fset.load()[rows])


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("tok") / "store", n_images=120, shard_size=40, hw=4)


def test_stage_logs_sae_metrics_and_interpretation_to_mlflow(tmp_path, token_store, mlflow_tmp, capsys):
    import mlflow

    cfg = tiny_cfg(tmp_path, token_store, input="tokens", expansion=2, k=3, steps=60, eval_every=30, lr=1e-2)
    with mlflow.start_run() as run:
        out = train_sae_stage(cfg, dataset=FakeDataset("planted0"), progress=False, on_eval=step_logger())
        log_result(out, step=out.steps, skip_existing_metrics=True)
    m = out.metrics
    for key in ("fvu", "explained_variance", "l0", "dead_frac", "l2_ratio", "auxk_loss", "samples_per_s",
                "sigma_label", "sigma_label.group", "label_purity", "label_purity.group",
                "label_purity_random.group", "label_purity_channels.group", "label_purity_share.group",
                "label_purity_chance.parity"):
        assert key in m, key
    assert m["fvu"] < 0.5 and np.isfinite(m["sigma_label"])

    client = mlflow.tracking.MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert {"fvu", "explained_variance", "l0", "dead_frac", "l2_ratio", "auxk_loss", "samples_per_s",
            "sigma_label", "label_purity.group"} <= set(data.metrics)
    assert [h.step for h in client.get_metric_history(run.info.run_id, "fvu")] == [30, 60]
    assert data.params["n_latents"] == "32" and data.params["n_train_vectors"] == str(90 * 16)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "sae")}
    assert arts == {"sae/sae.safetensors", "sae/config.json", "sae/metrics.json"}
    assert "sae_dir" not in data.params and data.tags["sae_dir"] == str(out.sae_dir)  # paths are tags
    iarts = {a.path for a in client.list_artifacts(run.info.run_id, "interpret")}
    assert {"interpret/latents.parquet", "interpret/purity.parquet", "interpret/purity.png",
            "interpret/summary.json", "interpret/grids"} <= iarts

    idir = out.interpret_dir
    table = pd.read_parquet(idir / "latents.parquet")
    assert len(table) == 32 and {"top_indices", "group.purity", "parity.majority"} <= set(table.columns)
    summary = json.loads((idir / "summary.json").read_text())
    assert "heatmaps" in summary["grids"]
    grids = sorted((idir / "grids").glob("latent_*.png"))
    assert len(grids) == len(summary["grid_latents"]) > 0
    assert Image.open(grids[0]).size[0] > 96  # tiles of the 8×8 images, scaled up
    purity = pd.read_parquet(idir / "purity.parquet")
    assert set(purity["method"]) == {"sae", "random", "channels"}
    # every control is scored and logged; the gaps are to the strongest one, named in controls.json
    controls = json.loads((idir / "controls.json").read_text())
    for name in CONTROL_NAMES:
        assert f"control.{name}.sparse_probe.k16" in data.metrics, name
    best = controls["strongest"]
    assert [r["units"] for r in controls["table"]] == ["sae", *CONTROL_NAMES]
    key = "sparse_probe.k16"
    assert data.metrics[f"gap.{key}"] == pytest.approx(m[key] - m[f"control.{best[key]}.{key}"])
    assert m[f"control.{best[key]}.{key}"] == max(m[f"control.{n}.{key}"] for n in CONTROL_NAMES)
    assert "vs strongest control" in capsys.readouterr().err
    assert 0 <= m["atlas_knn.group"] <= 1 and "atlas_knn_channels.group" in m


def test_stage_without_mlflow_skips_grids_for_another_dataset(tmp_path, token_store, capsys):
    cfg = tiny_cfg(tmp_path, token_store, input="tokens", expansion=2, k=3, steps=20, lr=1e-2)
    out = train_sae_stage(cfg, dataset=FakeDataset("some-other-dataset"), progress=False)
    summary = out.interpret_summary
    assert summary["grids"].startswith("skipped: the configured dataset (fingerprint some-other-dataset)")
    assert "would not match the rows" in capsys.readouterr().err
    assert not (out.interpret_dir / "grids").exists()
    assert "label_purity.group" in out.metrics
    # a second call finds the finished SAE and interpretation and redoes neither
    again = train_sae_stage(cfg, dataset=FakeDataset("some-other-dataset"), progress=False)
    assert again.skipped_training and again.metrics["fvu"] == out.metrics["fvu"]
