"""The probe fits and control scorings of `make run`, one after another and side by side (`revelio_svc.parallel`).

Two pieces of the pipeline, on a synthetic store of the default's size (2000 images of 16 × 16 tokens with 128
channels, a TopK SAE of 1024 latents at k = 12 with top-8 pooling, six classes):

- `precision`: the register stage's explanation precision (`inference.precision.explanation_report`): the SAE,
  three matched random dictionaries and the raw channels, each encoded and given an L1 probe (C = 0.5);
- `controls`: the SAE stage's control report (`interpret.report.score_controls`) over every control.

Each runs with REVELIO_FIT_WORKERS=1 (the serial baseline) and with the default worker count, alternately for
`--rounds` rounds in this one process (the same background load for both); the script prints the median seconds
of each, the speed-up, and whether the two give identical results (they must: threads change only the order in
which independent fits finish).

    python benchmarks/bench_fits.py [--rounds 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revelio_svc.inference.precision import explanation_report  # noqa: E402
from revelio_svc.interpret.report import ReportData, score_controls  # noqa: E402
from revelio_svc.parallel import WORKERS_ENV, fit_workers  # noqa: E402
from revelio_svc.sae import TopKSAEConfig, build_sae  # noqa: E402


def synthetic(n: int, side: int, d: int, n_latents: int, n_classes: int = 6, seed: int = 0):
    """Token features where each class adds its own direction on a random patch, and an SAE whose rows are
    noisy copies of those directions and of random ones (so probes have something to find and to miss)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    dirs = rng.standard_normal((n_classes, d)).astype(np.float32)
    feats = rng.standard_normal((n, side, side, d)).astype(np.float32)
    patch = rng.random((n, side, side)) < 0.2
    feats[patch] += 2.0 * dirs[np.broadcast_to(y[:, None, None], patch.shape)[patch]]
    sae = build_sae(TopKSAEConfig(d_in=d, n_latents=n_latents, k=12, normalize="none", input="tokens",
                                  latent_pooling="top8", hook_point="h", timestep=10), seed=seed)
    with torch.no_grad():
        rows = rng.standard_normal((n_latents, d)).astype(np.float32)
        rows[: n_latents // 4] += 3 * dirs[rng.integers(0, n_classes, n_latents // 4)]
        w = torch.from_numpy(rows / np.linalg.norm(rows, axis=1, keepdims=True))
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w)
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    test = np.zeros(n, bool)
    test[rng.permutation(n)[: n // 4]] = True
    return sae.eval(), feats, y, test


def timed(fn, workers: int):
    os.environ[WORKERS_ENV] = str(workers)
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a small store (a smoke run, not a measurement)")
    args = ap.parse_args(argv)
    saved = os.environ.pop(WORKERS_ENV, None)
    many = fit_workers()
    n, side, d, L = (240, 8, 32, 128) if args.quick else (2000, 16, 128, 1024)
    sae, feats, y, test = synthetic(n, side, d, L)
    data = ReportData.build(feats, {"shape": y}, test, "shape", class_names=[f"c{i}" for i in range(6)])
    jobs = {"precision": lambda: explanation_report(sae, feats, y, test, C=0.5, penalty="l1"),
            "controls": lambda: {k: [s.flat() for s in v] for k, v in score_controls(sae, data).items()}}
    report = {"workers": many, "rounds": args.rounds, "n_images": n, "n_latents": L, "pieces": {}}
    try:
        for name, fn in jobs.items():
            times: dict[int, list[float]] = {1: [], many: []}
            results = {}
            timed(fn, many)  # warm-up: lazy imports and first-call allocations are not what is measured
            for _ in range(args.rounds):
                for w in (1, many):
                    s, results[w] = timed(fn, w)
                    times[w].append(s)
            serial, threaded = statistics.median(times[1]), statistics.median(times[many])
            same = json.dumps(results[1], sort_keys=True, default=str) == json.dumps(results[many], sort_keys=True,
                                                                                    default=str)
            report["pieces"][name] = {"serial_s": serial, "threaded_s": threaded, "speedup": serial / threaded,
                                      "identical": same}
            print(f"{name:<10} one after another {serial:7.1f} s | {many} side by side {threaded:7.1f} s | "
                  f"{serial / threaded:4.2f}x | identical results: {same}")
    finally:
        os.environ.pop(WORKERS_ENV, None)
        if saved is not None:
            os.environ[WORKERS_ENV] = saved
    print(json.dumps(report))
    return 0 if all(p["identical"] for p in report["pieces"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
