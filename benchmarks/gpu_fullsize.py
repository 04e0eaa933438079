"""GPU figures at real size: extraction images/s and peak memory per full-size model, and SAE samples/s.

For each full-size architecture (`arch:sd15`, `arch:sd21`, `arch:sdxl-base`, `arch:dit-xl-2-256`, random
weights: speed and memory do not depend on the weights) at native resolution, in bfloat16 (or --dtype
float16), with the hook points, timesteps and batch of its example config in mlproject/configs/:

  * ours: encode once per batch, then one forward per (batch, t) capturing every hook point, stopped after
    the deepest one, mean-pooled;
  * one forward per (block, t): the straightforward way, a full forward for every (hook point, t);

interleaved round by round; images/s (an image through every timestep), images·t/s, the peak GPU memory of
each method (torch.cuda.max_memory_allocated) and, beside it, `revelio plan`'s estimate for ours (weights +
the larger of the encode and capture transients on fake tensors).

Then SAE training at d_in = 1280, 16× (20 480 latents), k = 32: our sparse step (`SparseStep`) against a
dense autograd reference step (the formulation bench_sae.py describes), samples/s and peak GPU memory.

    python benchmarks/gpu_fullsize.py                          # CUDA, bf16, the four models
    python benchmarks/gpu_fullsize.py --dtype float16 --models sd15 dit-xl-2-256
    python benchmarks/gpu_fullsize.py --device cpu --tiny      # the same code on tiny local models (CI)

Without CUDA (and without --device cpu) it says so and exits 0. The last line is the results as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests` (tiny pipelines) and the package from a checkout
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# model → (arch id, kind, example config whose hook points / timesteps / batch it uses)
MODELS = {
    "sd15": ("arch:sd15", "sd", "sd15_pets.yaml"),
    "sd21": ("arch:sd21", "sd", "sd21_pets.yaml"),
    "sdxl-base": ("arch:sdxl-base", "sdxl", "sdxl_pets.yaml"),
    "dit-xl-2-256": ("arch:dit-xl-2-256", "dit", "dit_xl2_256.yaml"),
}
TINY = {"sd15": "sd", "sdxl-base": "sdxl", "dit-xl-2-256": "dit"}  # --tiny: tiny pipelines of the tests


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def extraction(name: str, args, tiny_root: Path | None) -> dict:
    import numpy as np
    import torch

    from revelio_svc.backbones import load_backbone
    from revelio_svc.config import BackboneConfig, load_config
    from revelio_svc.features.extract import pool
    from revelio_svc.features.plan import adapter_modules, analyse_forward, weight_bytes

    arch, kind, cfg_name = MODELS[name]
    ex = load_config(ROOT / "mlproject" / "configs" / cfg_name)
    if tiny_root is not None:
        from tests.backbones import tiny_models as tm

        kind = TINY[name]
        folder = tm._BUILDERS[kind](tiny_root / kind)
        bcfg = BackboneConfig(kind=kind, id=str(folder), device=args.device, dtype=args.dtype)
    else:
        bcfg = BackboneConfig(kind=kind, id=arch, init="random", device=args.device, dtype=args.dtype)
    t0 = time.perf_counter()
    a = load_backbone(bcfg)
    load_s = time.perf_counter() - t0
    hooks = [h for h in ex.extract.hook_points if h in a.hook_points()] or a.hook_points()
    timesteps = list(ex.extract.timesteps)
    batch = args.batch or ex.extract.batch_size
    imgs = np.random.default_rng(0).integers(0, 256, (batch, a.resolution, a.resolution, 3), dtype=np.uint8)
    ids = [f"img-{i}" for i in range(batch)]
    cond = a.conditioning(batch)

    def run(method: str) -> None:
        with torch.inference_mode():
            x0 = a.encode(imgs)
            for t in timesteps:
                xt = a.add_noise(x0, t, ids, 0)
                if method == "ours":
                    maps = a.capture(xt, t, cond, hooks)
                    _ = [pool(m, "mean").cpu() for m in maps.values()]
                else:
                    for h in hooks:
                        maps = a.capture(xt, t, cond, [h], stop_early=False)
                        _ = pool(maps[h], "mean").cpu()

    methods = ("ours", "per_block_t")
    times: dict[str, list[float]] = {m: [] for m in methods}
    peaks: dict[str, int | None] = {}
    for m in methods:  # warm-up, and the peak memory of one batch
        _reset_peak(a.device)
        run(m)
        _sync(a.device)
        peaks[m] = _peak(a.device)
    for _ in range(args.iters):
        for m in methods:
            _sync(a.device)
            t0 = time.perf_counter()
            run(m)
            _sync(a.device)
            times[m].append(time.perf_counter() - t0)
    an = analyse_forward(a, imgs[0], a.conditioning(1), hooks, timesteps[0], batch)
    estimate = weight_bytes(adapter_modules(a)) + max(an.encode_peak, an.capture_peak)
    res = {"model": name, "id": bcfg.id, "resolution": a.resolution, "dtype": str(a.dtype).replace("torch.", ""),
           "batch": batch, "hook_points": hooks, "timesteps": timesteps, "load_s": load_s,
           "plan_peak_estimate": estimate}
    for m in methods:
        s = statistics.median(times[m])
        res[m] = {"seconds_per_batch": s, "images_per_s": batch / s, "images_t_per_s": batch * len(timesteps) / s,
                  "peak_memory": peaks[m]}
    res["speedup"] = res["per_block_t"]["seconds_per_batch"] / res["ours"]["seconds_per_batch"]
    return res


def sae_training(args) -> dict:
    import torch

    from revelio_svc.sae import TopKSAE, TopKSAEConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_sae import sae_step  # the same two step functions bench_sae.py times on the CPU

    device = torch.device(args.device)
    d, n, k, batch = args.sae_d, args.sae_d * args.sae_expansion, args.sae_k, args.sae_batch
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(4 * d, d, generator=g)
    pool = []
    for _ in range(4):  # sparse combinations of random directions plus noise, like real activations
        codes = torch.rand(batch, 4 * d, generator=g).lt_(16 / (4 * d)).float() * torch.rand(batch, 4 * d, generator=g)
        pool.append((codes @ atoms + 0.1 * torch.randn(batch, d, generator=g)).to(device))
    out = {"d_in": d, "n_latents": n, "k": k, "batch": batch, "steps": args.sae_steps}
    lr = 1e-4
    for variant in ("ours", "dense_reference"):
        sae = TopKSAE(TopKSAEConfig(d_in=d, n_latents=n, k=k), seed=0)
        with torch.no_grad():
            sae.init_from_data(torch.cat([p.cpu() for p in pool]))
        sae = sae.to(device)
        try:
            with torch.device(device):  # SparseStep allocates its buffers on the default device
                step = sae_step(sae, variant, lr, k)
                step(pool[0])  # warm-up
                _reset_peak(device)
                times = []
                for i in range(args.sae_steps):
                    _sync(device)
                    t0 = time.perf_counter()
                    step(pool[i % len(pool)])
                    _sync(device)
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            out[variant] = {"samples_per_s": batch / med, "step_ms": med * 1000, "peak_memory": _peak(device)}
        except Exception as e:  # report, do not hide the other variant's figures
            out[variant] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    if "samples_per_s" in out["ours"] and "samples_per_s" in out["dense_reference"]:
        out["speedup"] = out["ours"]["samples_per_s"] / out["dense_reference"]["samples_per_s"]
    return out


def _gib(x) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=0, help="images per batch (0 = the example config's)")
    ap.add_argument("--iters", type=int, default=3, help="timed batches per method (median)")
    ap.add_argument("--tiny", action="store_true", help="tiny local pipelines instead of the full-size models")
    ap.add_argument("--sae-d", type=int, default=1280)
    ap.add_argument("--sae-expansion", type=int, default=16)
    ap.add_argument("--sae-k", type=int, default=32)
    ap.add_argument("--sae-batch", type=int, default=4096)
    ap.add_argument("--sae-steps", type=int, default=20)
    ap.add_argument("--no-sae", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_fullsize: no CUDA device found; nothing to measure (use --device cpu to run the same path on the CPU)")
        return 0
    if args.tiny:
        args.models = [m for m in args.models if m in TINY]
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {dev}; torch {torch.__version__}; {args.dtype}; {args.iters} timed batches per method"
          + ("; TINY local models" if args.tiny else ""), flush=True)
    results: dict = {"device": dev, "dtype": args.dtype, "tiny": args.tiny, "extraction": [], "sae": None}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = extraction(name, args, Path(tmp) if args.tiny else None)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the model of the previous architecture is gone
            results["extraction"].append(r)
            o, s = r["ours"], r["per_block_t"]
            print(f"{name:13s} {r['resolution']:5d}px {r['dtype']:9s} batch {r['batch']:3d}, {len(r['hook_points'])} "
                  f"hooks × {len(r['timesteps'])} t | ours {o['images_per_s']:8.2f} img/s ({o['images_t_per_s']:8.2f} "
                  f"img·t/s) peak {_gib(o['peak_memory'])} GiB (plan est. {_gib(r['plan_peak_estimate'])}) | "
                  f"per (block, t) {s['images_per_s']:8.2f} img/s peak {_gib(s['peak_memory'])} GiB | "
                  f"speed-up {r['speedup']:.2f}x | load {r['load_s']:.0f} s", flush=True)
    if not args.no_sae:
        sae = sae_training(args)
        results["sae"] = sae
        print(f"SAE d_in={sae['d_in']} ({sae['n_latents']} latents), k={sae['k']}, batch {sae['batch']}:")
        for v in ("ours", "dense_reference"):
            r = sae[v]
            if "error" in r:
                print(f"  {v:16s} failed: {r['error']}")
            else:
                print(f"  {v:16s} {r['samples_per_s']:12.0f} samples/s  {r['step_ms']:8.2f} ms/step  "
                      f"peak {_gib(r['peak_memory'])} GiB")
        if "speedup" in sae:
            print(f"  speed-up ours / dense reference: {sae['speedup']:.2f}x")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
