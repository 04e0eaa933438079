"""Extraction throughput: one-pass capture of 7 hook points × 5 timesteps vs the straightforward way.

Prints images/s for
  * ours: one forward per (batch, t) capturing all 7 hook points, stopped after the deepest one;
  * straightforward (the paper's code): one full forward per (hook point, t);
  * floor: the same 5 timesteps as plain forwards with no hooks at all;
the ratios, measured in the same run with the methods interleaved round by round (so load drift on a shared
machine hits all three alike), and each method's peak resident memory (own process each).
Targets: ours ≥ 6× straightforward, ours ≤ 1.15× the floor's time.

    python benchmarks/bench_extract.py [--images 256] [--batch 64] [--repeats 3] [--threads 0]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

HOOKS = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"]
TIMESTEPS = [10, 50, 100, 250, 500]


def _adapter():
    from revelio_svc.backbones import load_backbone
    from revelio_svc.backbones.hub import builtin_names
    from revelio_svc.config import BackboneConfig

    if "shapes-unet" in builtin_names():
        return load_backbone(BackboneConfig(id="builtin:shapes-unet")), "builtin:shapes-unet"
    # same architecture, random weights: speed does not depend on the weights
    import tempfile

    from revelio_svc.backbones.unet2d import build_unet
    from revelio_svc.config import PretrainConfig
    d = tempfile.mkdtemp()
    build_unet(PretrainConfig(), 32).save_pretrained(d)
    return load_backbone(BackboneConfig(id=d)), "default architecture (random weights)"


def _setup(n_images: int, threads: int):
    import torch

    from revelio_svc.data.shapes import ShapesDataset

    if threads:
        torch.set_num_threads(threads)
    adapter, name = _adapter()
    imgs = ShapesDataset(n_images, 32, 0).images(range(n_images))
    return adapter, name, imgs, [str(i) for i in range(n_images)]


def _once(method: str, adapter, imgs, ids, batch: int) -> float:
    import torch

    from revelio_svc.features.extract import pool

    cond = adapter.conditioning(batch)
    t0 = time.perf_counter()
    for b in range(0, len(ids), batch):
        x0 = adapter.encode(imgs[b:b + batch])
        bid = ids[b:b + batch]
        for t in TIMESTEPS:
            xt = adapter.add_noise(x0, t, bid, 0)
            if method == "ours":
                maps = adapter.capture(xt, t, cond, HOOKS)
                _ = [pool(m, "mean").numpy() for m in maps.values()]
            elif method == "straightforward":
                for h in HOOKS:
                    maps = adapter.capture(xt, t, cond, [h], stop_early=False)
                    _ = pool(maps[h], "mean").numpy()
            else:
                with torch.inference_mode():
                    adapter.denoise_forward(xt, t, cond)
    return time.perf_counter() - t0


def _peak(method: str, n_images: int, batch: int, threads: int, q) -> None:
    adapter, _, imgs, ids = _setup(n_images, threads)
    _once(method, adapter, imgs, ids, batch)
    q.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_mb(method, args) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak, args=(method, min(args.images, args.batch), args.batch, args.threads, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import torch

    adapter, name, imgs, ids = _setup(args.images, args.threads)
    methods = ("ours", "straightforward", "plain")
    for m in methods:  # warm-up
        _once(m, adapter, imgs[:args.batch], ids[:args.batch], args.batch)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for m in methods:
            times[m].append(_once(m, adapter, imgs, ids, args.batch))
    res = {m: {"seconds": statistics.median(times[m]), "peak_mb": peak_mb(m, args)} for m in methods}
    work = args.images * len(TIMESTEPS)  # images·timesteps
    print(f"backbone: {name}, {len(HOOKS)} hook points × {len(TIMESTEPS)} timesteps, "
          f"{args.images} images, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved rounds")
    print(f"{'method':<18}{'seconds':>10}{'images·t/s':>14}{'images/s (all t)':>18}{'peak RSS MB':>14}")
    for m in methods:
        r = res[m]
        print(f"{m:<18}{r['seconds']:>10.2f}{work / r['seconds']:>14.1f}{args.images / r['seconds']:>18.1f}"
              f"{r['peak_mb']:>14.0f}")
    speedup = res["straightforward"]["seconds"] / res["ours"]["seconds"]
    overhead = res["ours"]["seconds"] / res["plain"]["seconds"]
    print(f"speed-up of ours over straightforward: {speedup:.2f}x  (target >= 6x, ceiling {len(HOOKS)}x)")
    print(f"ours / plain forwards (time): {overhead:.3f}x  (target <= 1.15x)")


if __name__ == "__main__":
    main()
