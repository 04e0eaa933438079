"""benchmarks/judge.py and the judge figures of benchmarks/science.py, on the shipped judge and a tiny UNet."""
from __future__ import annotations

import json

from tests.benchmarks.helpers import load_bench as _load


def test_accuracy_command_reports_the_ceiling(capsys):
    assert _load("judge").main(["accuracy", "--n", "60"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 60 and res["heldout_seed2001"] >= 0.9 and res["eval_seed0"] >= 0.9


def test_samples_command_judges_a_backbones_samples_and_caches_them(tiny_unet_dir, tmp_path, capsys):
    judge = _load("judge")
    cache, grid = tmp_path / "s.npz", tmp_path / "grid.png"
    args = ["samples", "--backbone", str(tiny_unet_dir), "--n", "5", "--steps", "2", "--cache", str(cache)]
    assert judge.main(args + ["--save-grid", str(grid)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 5 and 0 <= res["confident_share"] <= 1 and sum(res["argmax_histogram"].values()) == 5
    assert cache.is_file() and grid.is_file()
    assert judge.main(args) == 0  # the second run reads the cache: the same verdicts
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["argmax_histogram"] == res["argmax_histogram"]


def test_science_judge_section_says_when_there_is_no_judge(capsys):
    from revelio_svc.config import load_config

    cfg = load_config(None, ["data.source=digits"])
    _load("science").judge_section(cfg, "", None, 8, 8)
    assert "no judge figures" in capsys.readouterr().out


def test_science_explanation_section_prints_the_sae_beside_its_controls(capsys):
    from revelio_svc.inference.precision import explanation_report, headline
    from tests.inference.test_precision import planted

    sae, feats, y, test = planted()
    _load("science").explanation_section(sae, feats, y, test, 1.0, "shape")
    out = capsys.readouterr().out
    h = headline(explanation_report(sae, feats, y, test, C=1.0))
    assert f"SAE {h['explanation_precision']:.3f}" in out and "L2 probes at C=1" in out
    assert f"matched random dictionary {h['explanation_precision_random']:.3f}" in out
    _load("science").explanation_section(sae, feats, y, test, 0.5, "shape", "l1")  # the config's probe kind
    out_l1 = capsys.readouterr().out
    h1 = headline(explanation_report(sae, feats, y, test, C=0.5, penalty="l1"))
    assert f"SAE {h1['explanation_precision']:.3f}" in out_l1 and "L1 probes at C=0.5" in out_l1
    assert "atlas: leave-one-out kNN accuracy of shape in the image codes it places images by" in out
    from revelio_svc.inference.atlas import layout_report
    from revelio_svc.sae.latents import image_latents

    k = layout_report(image_latents(sae, feats, "max"), None, y)["knn_codes"]  # the atlas' max-pooled codes
    assert f"(max pooling): SAE {k:.3f}" in out
    assert ("with the classifier's" in out) == (sae.config.latent_pooling != "max")


def test_science_probe_section_reads_the_probe_table_and_names_the_losing_shots(tmp_path, capsys):
    from types import SimpleNamespace

    from revelio_svc.config import load_config
    from revelio_svc.identity import Paths
    from revelio_svc.sae import TopKSAEConfig, build_sae
    from revelio_svc.sae.io import sae_identity
    from revelio_svc.stages.train_probe import probe_identity

    sae_dir = tmp_path / "sae"
    build_sae(TopKSAEConfig(d_in=8, n_latents=16, k=2)).save(sae_dir)
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"])
    store = SimpleNamespace(config_hash="abc")
    science = _load("science")
    science.probe_section(cfg, store, sae_dir)
    assert "no probe table" in capsys.readouterr().out
    report = Paths.under(cfg.output_dir).probe(probe_identity(cfg, "abc", sae_identity(sae_dir))) / "report"
    report.mkdir(parents=True)
    rows = ["input,role,shots,accuracy_mean,loses_to",
            "model,model,1,0.30,random_relu", "model,model,all,0.95,",
            "random_relu,control,1,0.40,", "random_relu,control,all,0.90,",
            "raw_features,control,1,0.20,", "raw_features,control,all,0.93,"]
    (report / "results.csv").write_text("\n".join(rows) + "\n")
    science.probe_section(cfg, store, sae_dir)
    out = capsys.readouterr().out
    assert "shots where it loses to a control: 1 (random_relu)" in out
    assert "0.950" in out and "0.400" in out
