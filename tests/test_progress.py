"""Progress output when stderr is not a terminal: a heartbeat line about every 30 s, one summary at close."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from revelio_svc.progress import HEARTBEAT_S, format_duration, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_heartbeat_every_interval_with_step_rate_and_eta():
    clock, out = FakeClock(), io.StringIO()
    bar = progress_bar(total=100, desc="train-sae", unit="step", heartbeat_s=30, clock=clock, stream=out)
    for _ in range(100):
        clock.t += 1.0  # one step a second
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "train-sae: 30/100 step (30%), 1 step/s, ETA 1 min 10 s, loss=0.5",
        "train-sae: 60/100 step (60%), 1 step/s, ETA 40 s, loss=0.5",
        "train-sae: 90/100 step (90%), 1 step/s, ETA 10 s, loss=0.5",
    ]
    assert lines[3] == "train-sae: 100/100 step in 100.0 s, 1.0 step/s"
    assert len(lines) == 4


def test_heartbeat_rate_counts_only_this_process_work_when_resumed():
    clock, out = FakeClock(), io.StringIO()
    bar = progress_bar(total=1000, initial=400, desc="train-sae", unit="step", heartbeat_s=30, clock=clock,
                       stream=out)
    for _ in range(60):
        clock.t += 0.5  # two steps a second
        bar.update(1)
    # resumed at 400: 60 steps in 30 s, 540 left at 2 step/s
    assert out.getvalue().splitlines()[0] == "train-sae: 460/1000 step (46%), 2 step/s, ETA 4 min 30 s"
    bar.close()


def test_no_heartbeat_when_disabled_or_interval_zero():
    for kw in ({"enabled": False, "heartbeat_s": 30}, {"heartbeat_s": 0}):
        clock, out = FakeClock(), io.StringIO()
        bar = progress_bar(total=10, desc="x", clock=clock, stream=out, **kw)
        for _ in range(10):
            clock.t += 100
            bar.update(1)
        bar.close()
        assert "ETA" not in out.getvalue()


def test_default_interval_is_about_30_seconds(monkeypatch):
    from revelio_svc.progress import HEARTBEAT_ENV, heartbeat_interval

    assert HEARTBEAT_S == 30.0
    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    assert heartbeat_interval() == 30.0
    monkeypatch.setenv(HEARTBEAT_ENV, "5")
    assert heartbeat_interval() == 5.0


def test_format_duration():
    assert (format_duration(45), format_duration(200), format_duration(7500)) == ("45 s", "3 min 20 s", "2 h 05 min")


def test_a_piped_stage_prints_heartbeat_lines(tiny_unet_dir, tmp_path):
    """`revelio extract` with stderr piped (not a terminal): heartbeat lines while it runs."""
    env = {**os.environ, "REVELIO_HEARTBEAT_S": "0.001", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("TQDM_DISABLE", None)
    p = subprocess.run(
        [sys.executable, "-m", "revelio_svc.cli", "extract", "--no-mlflow",
         "--set", "data.n_images=24", "--set", "data.image_size=16", "--set", f"backbone.id={tiny_unet_dir}",
         "--set", "extract.hook_points=[mid_block]", "--set", "extract.timesteps=[10,200]",
         "--set", "extract.pooling=[mean]", "--set", "extract.token_hook_points=[]",
         "--set", "extract.batch_size=4", "--set", "extract.shard_size=8",
         "--set", f"output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    beats = [ln for ln in p.stderr.splitlines()
             if re.fullmatch(r"extract: \d+/48 img·t \(\d+%\), [\d.e+]+ img·t/s, ETA .+", ln)]
    assert len(beats) >= 2, p.stderr
    assert "\r" not in p.stderr  # no bar redrawn into the pipe
