"""SAE training throughput and peak memory: our sparse step against a straightforward dense reference.

Setting (the paper's width): d_in = 1280, 16× expansion (20480 latents), k = 32, batch 1024, fp32, CPU.

- ours: `revelio_svc.sae.trainer.SparseStep` — sparse decode (embedding_bag over the k active rows),
  exact sparse encoder/decoder weight gradients scattered row by row, fused Adam, decoder-gradient
  projection and renormalisation (the same exact objective as the reference).
- reference: autograd on the textbook formulation — dense codes (scatter into (B, n_latents)), dense
  decode matmul, dense encoder gradient, torch.optim.Adam with default settings over every row, the
  same decoder-gradient projection and renormalisation.

Each variant runs in its own subprocess (so peak RSS — resource.getrusage ru_maxrss — belongs to it
alone; tracemalloc would not see torch's allocations), alternately for `--rounds` rounds so both see the
same background load; we report the median step time of each. Run: `python benchmarks/bench_sae.py`
(`--quick` for a small smoke run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(variant: str, d: int, expansion: int, k: int, batch: int, steps: int, warmup: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from revelio_svc.sae import TopKSAE, TopKSAEConfig
    from revelio_svc.sae.trainer import SparseStep

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = d * expansion
    sae = TopKSAE(TopKSAEConfig(d_in=d, n_latents=n, k=k), seed=0)
    # a fixed pool of inputs: sparse combinations of random directions plus noise (like real activations)
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(4 * d, d, generator=g)
    pool = []
    for _ in range(4):
        codes = torch.rand(batch, 4 * d, generator=g).lt_(16 / (4 * d)).float() * torch.rand(batch, 4 * d, generator=g)
        pool.append(codes @ atoms + 0.1 * torch.randn(batch, d, generator=g))
    with torch.no_grad():
        sae.init_from_data(torch.cat(pool))
    lr = 1e-4

    if variant == "ours":
        eng = SparseStep(sae, lr, auxk_coef=1 / 32, dead_window=10**9)

        def step(x):
            eng.step(sae.normalize(x), lr)
    else:
        params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre]
        opt = torch.optim.Adam(params, lr=lr)

        def step(x):
            xn = sae.normalize(x)
            pre = (xn - sae.b_pre) @ sae.W_enc.t() + sae.b_enc
            v, idx = pre.topk(k, dim=1)
            z = torch.zeros_like(pre).scatter(1, idx, F.relu(v))
            xhat = z @ sae.W_dec + sae.b_pre
            loss = ((xhat - xn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_decoder_grad_()
            opt.step()
            sae.normalize_decoder_()

    rss_setup = _rss_mb()
    for i in range(warmup):
        step(pool[i % len(pool)])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(pool[i % len(pool)])
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "step_s": statistics.median(times), "times": times,
            "samples_per_s": batch / statistics.median(times), "peak_rss_mb": _rss_mb(),
            "setup_rss_mb": rss_setup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.d, a.expansion, a.batch, a.steps, a.warmup, a.rounds = 128, 8, 256, 3, 1, 1
    if a.worker:
        print(json.dumps(worker(a.worker, a.d, a.expansion, a.k, a.batch, a.steps, a.warmup, a.threads)))
        return
    args = [f"--d={a.d}", f"--expansion={a.expansion}", f"--k={a.k}", f"--batch={a.batch}", f"--steps={a.steps}",
            f"--warmup={a.warmup}", f"--threads={a.threads}"]
    res: dict[str, list[dict]] = {"ours": [], "reference": []}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    print(f"SAE training step, d_in={a.d}, {a.expansion}x ({a.d * a.expansion} latents), k={a.k}, "
          f"batch={a.batch}, {a.threads} threads, {a.steps} timed steps × {a.rounds} rounds per variant")
    for r in range(a.rounds):
        for v in ("ours", "reference"):
            out = subprocess.run([sys.executable, __file__, f"--worker={v}", *args], capture_output=True, text=True,
                                 env=env, check=False)
            if out.returncode != 0:
                sys.exit(f"worker {v} failed:\n{out.stderr[-3000:]}")
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            res[v].append(rec)
            print(f"  round {r + 1} {v:9s}: {rec['step_s'] * 1000:8.1f} ms/step  {rec['samples_per_s']:8.0f} samples/s"
                  f"  peak RSS {rec['peak_rss_mb']:7.0f} MB (after setup {rec['setup_rss_mb']:.0f} MB)")
    summary = {}
    for v, recs in res.items():
        times = [t for rec in recs for t in rec["times"]]
        med = statistics.median(times)
        summary[v] = {"samples_per_s": a.batch / med, "step_ms": med * 1000,
                      "peak_rss_mb": max(rec["peak_rss_mb"] for rec in recs),
                      "step_peak_above_setup_mb": max(rec["peak_rss_mb"] - rec["setup_rss_mb"] for rec in recs)}
    ratio = summary["ours"]["samples_per_s"] / summary["reference"]["samples_per_s"]
    print()
    print(f"{'':10s} {'samples/s':>10s} {'ms/step':>9s} {'peak RSS MB':>12s} {'step peak above setup MB':>26s}")
    for v, s in summary.items():
        print(f"{v:10s} {s['samples_per_s']:10.0f} {s['step_ms']:9.1f} {s['peak_rss_mb']:12.0f} "
              f"{s['step_peak_above_setup_mb']:26.0f}")
    print(f"speed-up ours / reference: {ratio:.2f}x (target >= 2.5x)")
    print(json.dumps({"summary": summary, "speedup": ratio}))


if __name__ == "__main__":
    main()
