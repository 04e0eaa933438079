"""Every full-size architecture through `revelio extract` on the CPU (marker `fullsize`; minutes, ~9 GB RAM).

Each case runs `python -m tests.fullsize.extract_and_measure` (the CLI in a child process that reports its
peak RSS; method in that module's docstring) on 2 procedural images, 2 hook points, 1 timestep, mean and
tokens pooling, float16 store, and checks:

- the store's per-image shapes are the docs/models.md table's (SDXL at 512 px: H and W halved);
- the plan the command printed first gives the store's size exactly (every file, bytes on disk);
- the plan's peak-memory estimate is within 25 % of the measured peak resident memory of the run.

SDXL runs at 512 px in bfloat16, the others at native resolution in float32 (docs/models.md says why).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from revelio_svc.features import open_store
from tests.backbones.test_arch import docs_shapes

pytestmark = pytest.mark.fullsize
ROOT = Path(__file__).resolve().parents[2]

# arch id, kind, dtype, resolution (0 = native), hook points
CASES = {
    "sd15": ("arch:sd15", "sd", "float32", 0, ["down_blocks.0", "down_blocks.1"]),
    "sd21": ("arch:sd21", "sd", "float32", 0, ["down_blocks.0", "down_blocks.1"]),
    # reduced resolution for time, not memory: one fp32 VAE encode at 1024 px takes ~1.5 min on 2 cores
    "sdxl-base": ("arch:sdxl-base", "sdxl", "bfloat16", 512, ["down_blocks.0", "down_blocks.1"]),
    "dit-xl-2-256": ("arch:dit-xl-2-256", "dit", "float32", 0, ["transformer_blocks.13", "transformer_blocks.27"]),
}
NATIVE = {"arch:sd15": 512, "arch:sd21": 768, "arch:sdxl-base": 1024, "arch:dit-xl-2-256": 256}
TIMESTEP = 100


def _run(tmp_path: Path, arch: str, kind: str, dtype: str, res: int, hooks: list[str]) -> dict:
    image = res or NATIVE[arch]
    sets = ["data.source=shapes", "data.n_images=2", f"data.image_size={image}", f"backbone.kind={kind}",
            f"backbone.id={arch}", "backbone.init=random", "backbone.device=cpu", f"backbone.dtype={dtype}",
            f"backbone.resolution={res}", f"extract.hook_points=[{', '.join(hooks)}]",
            f"extract.timesteps=[{TIMESTEP}]", "extract.pooling=[mean, tokens]", "extract.token_hook_points=[]",
            "extract.token_timesteps=[]", "extract.dtype=float16",
            "extract.batch_size=2", f"output_dir={tmp_path / 'out'}"]
    args = [sys.executable, "-m", "tests.fullsize.extract_and_measure", "--no-mlflow"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "REVELIO_TEST_THREADS": "2"}
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["process_wall_s"] = time.perf_counter() - t0
    rec["stdout"] = out.stdout
    return rec


@pytest.mark.parametrize("name", list(CASES))
def test_full_size_extract(tmp_path, name):
    arch, kind, dtype, res, hooks = CASES[name]
    rec = _run(tmp_path, arch, kind, dtype, res, hooks)
    assert rec["rc"] == 0
    plan = rec["plan"]
    assert plan is not None and plan["shapes_verified"]
    assert "store size (exact, every file)" in rec["stdout"]  # the plan is printed before extracting

    store_dir = Path(plan["store_uri"])
    store = open_store(store_dir, verify=True)
    assert store.complete and store.n_rows == 2

    # shapes: the docs table, at the run's resolution
    scale = (res or NATIVE[arch]) / NATIVE[arch]
    table = docs_shapes(arch)
    for h in hooks:
        c, hh, ww = table[h]
        hh, ww = int(hh * scale), int(ww * scale)
        assert store.feature_set(h, TIMESTEP, "mean").shape == (c,)
        assert store.feature_set(h, TIMESTEP, "tokens").shape == (hh, ww, c)
        tok = store.feature_set(h, TIMESTEP, "tokens").load()
        assert tok.shape == (2, hh, ww, c)

    # bytes: exact
    on_disk = sum(p.stat().st_size for p in store_dir.rglob("*") if p.is_file())
    assert plan["store"]["total"] == on_disk

    # memory: estimate within 25 % of the measured peak
    est, measured = plan["memory"]["peak"], rec["peak_above_baseline"]
    ratio = est / measured
    print(f"\n{name}: wall {rec['process_wall_s']:.1f} s (extract command {rec['wall_s']:.1f} s); memory estimate "
          f"{est / 2**30:.2f} GiB, measured peak {measured / 2**30:.2f} GiB (ratio {ratio:.3f}); planned time "
          f"{plan['time']['total_s']:.1f} s")
    assert 0.75 <= ratio <= 1.25, f"memory estimate {est:,} vs measured peak {measured:,} (ratio {ratio:.3f})"
