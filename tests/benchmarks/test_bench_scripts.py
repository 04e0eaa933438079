"""The benchmark scripts' CPU paths: tiny runs of the same code the GPU / full-size runs use."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.helpers import ROOT
from tests.benchmarks.helpers import load_bench as _load


def test_gpu_fullsize_cpu_path_on_tiny_models(capsys):
    gpu = _load("gpu_fullsize")
    rc = gpu.main(["--device", "cpu", "--tiny", "--dtype", "float32", "--iters", "1", "--batch", "2",
                   "--sae-d", "32", "--sae-expansion", "4", "--sae-k", "4", "--sae-batch", "64", "--sae-steps", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads(out.strip().splitlines()[-1])
    assert [r["model"] for r in res["extraction"]] == ["sd15", "sdxl-base", "dit-xl-2-256"]
    for r in res["extraction"]:
        for m in ("ours", "per_block_t"):
            assert r[m]["images_per_s"] > 0 and r[m]["peak_memory"] is None  # CPU: no CUDA peak
        assert r["speedup"] > 0 and r["plan_peak_estimate"] > 0 and len(r["timesteps"]) == 2
    sae = res["sae"]
    assert sae["ours"]["samples_per_s"] > 0 and sae["dense_reference"]["samples_per_s"] > 0 and sae["speedup"] > 0
    assert "speed-up ours / dense reference" in out


def test_gpu_fullsize_without_cuda_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert _load("gpu_fullsize").main([]) == 0
    assert "no CUDA device found" in capsys.readouterr().out


def test_bench_sae_quick_skips_absent_trainers_with_a_message(tmp_path):
    missing = tmp_path / "no-such-python"
    # the test extra installs both libraries; modules that refuse to import stand in for their absence
    hide = tmp_path / "hide"
    hide.mkdir()
    for module in ("sparsify", "sae_lens"):
        (hide / f"{module}.py").write_text("raise ImportError('hidden by the test')\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sae.py"), "--quick", "--steps", "1",
                          "--sparsify-python", str(missing), "--saelens-python", str(missing)],
                         capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "REVELIO_BENCH_SPARSIFY_PYTHON": "",
                              "REVELIO_BENCH_SAELENS_PYTHON": "", "PYTHONPATH": str(hide)})
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    res = json.loads(text.strip().splitlines()[-1])
    assert set(res["summary"]) == {"ours", "reference"}
    assert res["summary"]["ours"]["fvu"] < res["summary"]["ours"]["fvu_init"]
    for name, dist in (("sparsify", "eai-sparsify"), ("saelens", "sae-lens")):
        assert f"{name}: skipped" in text and dist in text and f"--{name}-python" in text


def test_explanations_benchmark_on_a_planted_store(tmp_path, capsys):
    from revelio_svc.sae import TopKSAEConfig, build_sae
    from tests.probe.conftest import write_planted_store

    store = write_planted_store(tmp_path / "store", n=80, dim=12, tokens_hw=(2, 2))
    sae = build_sae(TopKSAEConfig(d_in=12, n_latents=24, k=3, input="tokens", latent_pooling="max",
                                  hook_point="up_blocks.1", timestep=10), seed=0)
    sae.save(tmp_path / "sae")
    rc = _load("explanations").main([
        "--config", str(ROOT / "mlproject" / "configs" / "default.yaml"), "--set", f"sae.store={store}",
        "--set", "probe.concept=shape", "--sae", str(tmp_path / "sae"), "--pooling", "max", "--pooling", "top2",
        "--latents-per-class", "0", "--latents-per-class", "2", "--seeds", "2", "--out", str(tmp_path / "out")])
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "pooling_precision.json").read_text())
    assert {(r["pooling"], r["latents_per_class"], r["method"]) for r in res["rows"]} == {
        (p, m, k) for p in ("max", "top2") for m in (0, 2) for k in ("sae", "random", "channels")}
    assert (tmp_path / "out" / "pooling_precision.png").is_file()
    assert "targets (contrastive attribution)" in out and "latents per class" in out


def test_bench_fits_times_both_ways_and_finds_the_same_results(capsys, monkeypatch):
    monkeypatch.setenv("REVELIO_FIT_WORKERS", "2")  # the script measures against its own default and restores this
    assert _load("bench_fits").main(["--quick", "--rounds", "1"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["pieces"]) == {"precision", "controls"}
    for piece in res["pieces"].values():
        assert piece["identical"] is True and piece["serial_s"] > 0 and piece["threaded_s"] > 0
    import os

    assert os.environ["REVELIO_FIT_WORKERS"] == "2"
