"""GPU smoke test and throughput of the latent-diffusion adapters (SD, SDXL, DiT) on tiny models.

Builds the tiny random-weight pipelines the unit tests use, loads each through its adapter in
bfloat16 on the GPU, checks the captured maps are finite and agree with a float32 run, and prints
images/s for encode → add_noise → conditioning → capture (every block-level hook point, one timestep).

    python benchmarks/gpu_smoke.py                 # on a machine with CUDA
    python benchmarks/gpu_smoke.py --device cpu    # the same code path on the CPU (slow, for checking)

Without CUDA (and without --device cpu) it says so and exits 0, so CI on CPU machines can run it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# the tiny pipeline builders live with the tests; the repository root makes `tests` importable
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench(kind: str, folder: Path, device: str, dtype: str, batch: int, iters: int, resolution: int) -> dict:
    import torch

    from revelio_svc.backbones import load_backbone
    from revelio_svc.config import BackboneConfig
    from tests.backbones import tiny_models as tm

    a = load_backbone(BackboneConfig(kind=kind, id=str(folder), device=device, dtype=dtype,
                                     resolution=resolution))
    names = a.hook_points()
    imgs = tm.images(batch, size=a.resolution, seed=0)
    ids = [f"img-{i}" for i in range(batch)]

    def step():
        return tm.features(a, imgs, ids, 100, names)

    sync = torch.cuda.synchronize if a.device.type == "cuda" else (lambda: None)
    maps = step()  # warm-up (kernel selection, prompt cache)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        maps = step()
    sync()
    elapsed = time.perf_counter() - start
    bad = [n for n, m in maps.items() if not torch.isfinite(m.float()).all()]
    if bad:
        raise SystemExit(f"{kind}: non-finite features in {dtype} at {bad}")
    return {"images_per_s": batch * iters / elapsed, "maps": {n: m.float().cpu() for n, m in maps.items()},
            "resolution": a.resolution, "dtype": str(a.dtype).replace("torch.", "")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=64, help="pixels; the tiny models' native size is 16")
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device found; nothing to measure (use --device cpu to run the same path on the CPU)")
        return 0
    from tests.backbones import tiny_models as tm

    print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"batch {args.batch}, {args.iters} iterations, {args.resolution} px")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        builders = {"sd": tm.build_sd, "sdxl": tm.build_sdxl, "dit": tm.build_dit}
        for kind, build in builders.items():
            folder = build(Path(tmp) / kind)
            fast = bench(kind, folder, args.device, "bfloat16", args.batch, args.iters, args.resolution)
            ref = bench(kind, folder, args.device, "float32", args.batch, 1, args.resolution)
            # bf16 features must point the same way as fp32 ones (cosine per image and hook point)
            worst = min(torch.nn.functional.cosine_similarity(fast["maps"][n].flatten(1), ref["maps"][n].flatten(1))
                        .min().item() for n in fast["maps"])
            status = "ok" if worst > 0.98 else "MISMATCH"
            if status != "ok":
                failures.append(kind)
            print(f"{kind:5s} {fast['dtype']:9s} {fast['resolution']:4d}px  {fast['images_per_s']:9.1f} images/s  "
                  f"(fp32 {ref['images_per_s']:8.1f} images/s)  min cosine bf16 vs fp32 {worst:.4f}  {status}")
    if failures:
        print(f"gpu_smoke: bfloat16 features disagree with float32 for {failures}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
