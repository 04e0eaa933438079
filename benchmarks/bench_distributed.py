"""Throughput of 1 versus 2 processes under torchrun (one thread each) for extraction and SAE training on the
default config (mlproject/configs/default.yaml), measured side by side in one run.

Each measurement is its own `torchrun --standalone --nproc-per-node N` launch of this script as a worker;
the worker loads the dataset and backbone first, then times only the stage between two barriers (start-up
and imports are not counted). The SAE runs on the store the one-process extraction wrote; the two-process
store is compared with it byte for byte on the way.

    python benchmarks/bench_distributed.py [--images 2000] [--sae-steps 1000] [--procs 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "mlproject" / "configs" / "default.yaml"


# --------------------------------------------------------------------------- worker (one rank)
def _worker(args: argparse.Namespace) -> int:
    import torch

    from revelio_svc import distributed
    from revelio_svc.config import load_config

    torch.set_num_threads(1)
    overrides = [f"output_dir={args.out}", f"data.n_images={args.images}", "extract.num_threads=1",
                 "sae.num_threads=1", f"sae.steps={args.sae_steps}", f"extract.store={args.store}",
                 f"sae.store={args.store}", f"sae.output={Path(args.out) / 'sae'}", "force=true"]
    cfg = load_config(str(CONFIG), overrides)
    ctx = distributed.init()
    if args.worker == "extract":
        from revelio_svc.backbones import load_backbone
        from revelio_svc.data import load_dataset
        from revelio_svc.features.extract import extract

        ds, adapter = load_dataset(cfg.data), load_backbone(cfg.backbone)
        distributed.barrier()
        t0 = time.perf_counter()
        res = extract(cfg, adapter=adapter, dataset=ds, progress=False)
        distributed.barrier()
        seconds = time.perf_counter() - t0
        work = res.n_images * len(cfg.extract.timesteps)
        out = {"seconds": seconds, "throughput": work / seconds, "unit": "images·t/s",
               "compute_rate": res.images_per_s}
    else:
        from revelio_svc.sae.trainer import train_sae

        distributed.barrier()
        t0 = time.perf_counter()
        res = train_sae(cfg, progress=False)
        distributed.barrier()
        seconds = time.perf_counter() - t0
        out = {"seconds": seconds, "throughput": cfg.sae.steps * cfg.sae.batch_size / seconds, "unit": "samples/s",
               "compute_rate": res.metrics.get("samples_per_s", 0.0), "fvu": res.metrics.get("fvu", float("nan"))}
    if ctx.is_main:
        print("RESULT " + json.dumps({**out, "world_size": ctx.world_size}), flush=True)
    distributed.shutdown()
    return 0


# --------------------------------------------------------------------------- driver
def _launch(n: int, worker: str, args: argparse.Namespace, out: Path, store: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "REVELIO_DIST_BACKEND": "gloo", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", __file__,
           "--worker", worker, "--out", str(out), "--store", str(store), "--images", str(args.images),
           "--sae-steps", str(args.sae_steps)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
        raise SystemExit(f"{worker} with {n} process(es) failed (exit code {p.returncode})")
    return json.loads(lines[0][len("RESULT "):])


def _same_files(a: Path, b: Path) -> bool:
    fa = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b): p.read_bytes() for p in b.rglob("*") if p.is_file()}
    return fa == fb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="data.n_images (default: the config's 2000)")
    ap.add_argument("--sae-steps", type=int, default=1000, help="sae.steps (default: the config's 1000)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", choices=["extract", "sae"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = {n: Path(tmp) / f"store-{n}" for n in args.procs}
        for stage in ("extract", "sae"):
            for n in args.procs:
                store = stores[n] if stage == "extract" else stores[args.procs[0]]
                r = _launch(n, stage, args, Path(tmp) / f"{stage}-{n}", store)
                rows.append((stage, n, r))
                print(f"{stage} × {n}: {r['seconds']:.1f} s, {r['throughput']:.0f} {r['unit']}", flush=True)
        identical = all(_same_files(stores[args.procs[0]], s) for s in stores.values())

    print(f"\nconfig {CONFIG.relative_to(ROOT)}, data.n_images={args.images}, sae.steps={args.sae_steps}; "
          "one thread per process; wall time of the stage between barriers")
    print(f"{'stage':<8} {'procs':>5} {'seconds':>8} {'throughput':>14} {'unit':<11} {'speed-up':>8}")
    base = {stage: r["throughput"] for stage, n, r in rows if n == args.procs[0]}
    for stage, n, r in rows:
        print(f"{stage:<8} {n:>5} {r['seconds']:>8.1f} {r['throughput']:>14.1f} {r['unit']:<11} "
              f"{r['throughput'] / base[stage]:>7.2f}×" + (f"   fvu {r['fvu']:.4f}" if "fvu" in r else ""))
    print(f"stores written by {args.procs} process(es) byte-identical: {identical}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
