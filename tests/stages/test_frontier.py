"""`revelio eval-frontier` end to end on the tiny chain: every dictionary at every k, and the raw channels."""
from __future__ import annotations

import pandas as pd
import yaml
from mlflow import MlflowClient

from revelio_svc.cli.main import dispatch

pytest_plugins = ("tests.registry.fixtures",)


def test_frontier_scores_the_sae_and_its_baselines_at_each_k(trained, fresh_mlflow, tmp_path):
    cfg, store_uri, *_ = trained
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg.to_dict()))
    sets = [f"evaluate.store={store_uri}", f"output_dir={tmp_path / 'out'}", "evaluate.frontier_ks=[2,4]",
            "evaluate.frontier_steps=10", "evaluate.n_images=4", "evaluate.mean_images=4", "evaluate.scr_draws=2"]
    assert dispatch(["eval-frontier", "--config", str(conf)] + [a for s in sets for a in ("--set", s)]) == 0
    out = next((tmp_path / "out" / "eval_frontier").iterdir())
    table = pd.read_csv(out / "frontier.csv")
    assert set(table.units) == {"sae", "random_matched", "random_raw", "pca_topk", "channels"}
    sae = table[table.units == "sae"]
    assert set(sae.k) == {2, 4}
    assert set(sae.metric) >= {"fvu", "l0", "loss_recovered", "sparse_probe.k16"}
    l0 = sae[sae.metric == "l0"].set_index("k")["value"]
    assert l0[2] <= 2 and l0[4] <= 4 and l0[4] > l0[2]
    assert (out / "sae_k2" / "sae.safetensors").is_file()  # resumable: the short SAEs are kept
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("revelio").experiment_id],
                                "tags.stage = 'eval_frontier'")
    assert "sae.k4.fvu" in run.data.metrics and "channels.k8.sparse_probe.k16" in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id, "eval_frontier")}
    assert {"eval_frontier/frontier.png", "eval_frontier/frontier.csv", "eval_frontier/frontier.md"} <= files
