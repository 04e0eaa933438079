"""Run `revelio extract ARGS` in this process; print one JSON line: exit code, the plan it printed, and
the peak resident memory the extraction added.

Method: every library the run uses is imported first; then writing "5" to /proc/self/clear_refs resets the
kernel's peak-RSS counter (VmHWM) to the current RSS, which is the baseline. After the command, VmHWM is
the peak resident set of the whole run (model load, plan, probe, every batch, store writes): what the
extraction added is VmHWM - baseline. Linux only (/proc).

    python -m tests.fullsize.extract_and_measure --no-mlflow --set backbone.id=arch:sd15 ...
"""
from __future__ import annotations

import json
import os
import sys
import time


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import safetensors.numpy  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: F401

    import revelio_svc.backbones.arch  # noqa: F401
    import revelio_svc.backbones.dit  # noqa: F401
    import revelio_svc.backbones.sd  # noqa: F401
    import revelio_svc.cli.stages  # noqa: F401
    import revelio_svc.features.extract  # noqa: F401
    from revelio_svc.cli import main as cli_main
    from revelio_svc.features import plan as plan_mod

    torch.set_num_threads(int(os.environ.get("REVELIO_TEST_THREADS", "2")))
    captured = {}
    real_preflight = plan_mod.preflight

    def preflight(*a, **kw):
        p, rest = real_preflight(*a, **kw)
        captured["plan"] = p.to_dict()
        return p, rest

    plan_mod.preflight = preflight
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    t0 = time.perf_counter()
    rc = cli_main(["extract", *argv])
    wall = time.perf_counter() - t0
    peak = _status("VmHWM")
    print(json.dumps({"rc": rc, "wall_s": wall, "baseline_rss": base, "peak_rss": peak,
                      "peak_above_baseline": peak - base, "plan": captured.get("plan")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
