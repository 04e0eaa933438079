"""Launch a command under torchrun on loopback (gloo, CPU) from a test; returns the finished process."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REVELIO = str(Path(sys.executable).parent / "revelio")


def env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                                                             "MLFLOW_EXPERIMENT_NAME")}
    return {**base, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "REVELIO_DIST_TIMEOUT": "60",
            "REVELIO_DIST_BACKEND": "gloo", "MASTER_ADDR": "127.0.0.1"}


def torchrun(nproc: int, argv: list[str], *, script: bool = False, timeout: float = 180,
             cwd: Path | None = None,
             extra_env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """`torchrun --standalone --nproc-per-node N` of `revelio ARGV` (or of the Python script argv[0])."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += argv if script else ["--no-python", REVELIO, *argv]
    t0 = time.monotonic()
    out = subprocess.run(cmd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout,
                         cwd=cwd)
    return out, time.monotonic() - t0


def files(root: Path) -> dict[str, bytes]:
    """Every file of a directory tree, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
