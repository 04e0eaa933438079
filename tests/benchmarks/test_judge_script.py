"""benchmarks/judge.py and the judge figures of benchmarks/science.py, on the shipped judge and a tiny UNet."""
from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks.helpers import ROOT
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
