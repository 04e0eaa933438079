"""A stopped run reads KILLED and a broken one FAILED, never RUNNING for ever: in process (Ctrl+C, an
exception) and for a `revelio run` process sent SIGTERM half-way."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import mlflow
import pytest

from revelio_svc.config import load_config
from revelio_svc.tracking import stage_run
from tests.registry.helpers import PY, subprocess_env, tiny_overrides

pytest_plugins = ("tests.registry.fixtures",)


@pytest.mark.parametrize("raised,status", [(None, "FINISHED"), (ValueError("boom"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_a_stage_run_ends_with_what_ended_it(fresh_mlflow, tmp_path, raised, status):
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"])
    ids = []
    with pytest.raises(type(raised)) if raised is not None else contextlib.nullcontext():
        with stage_run(cfg, "train_sae") as run:
            ids.append(run.info.run_id)
            if raised is not None:
                raise raised
    assert mlflow.active_run() is None
    assert mlflow.MlflowClient().get_run(ids[0]).info.status == status


def _runs(client, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id]):
        out.setdefault(r.data.tags.get("stage", "?"), []).append(r)
    return out


def test_sigterm_during_revelio_run_marks_its_runs_killed(fresh_mlflow, tiny_unet_dir, tmp_path):
    client = mlflow.MlflowClient()
    # a long SAE: the process is stopped while it trains
    sets = tiny_overrides(tiny_unet_dir, tmp_path / "out") + ["sae.steps=200000", "sae.eval_every=100000",
                                                              "tracking.register=false"]
    cmd = [PY, "-m", "revelio_svc.cli", "run"]
    for s in sets:
        cmd += ["--set", s]
    env = subprocess_env(MLFLOW_TRACKING_URI=fresh_mlflow, PYTHONUNBUFFERED="1")
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if "[train_sae] running" in (tmp_path / "log.txt").read_text():
                break
            time.sleep(1)
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
        assert "[train_sae] running" in (tmp_path / "log.txt").read_text(), "train_sae never started"
        time.sleep(2)  # inside the training loop
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "log.txt").read_text()
    assert rc == 143, out[-3000:]
    assert "revelio run: terminated (SIGTERM); completed work is kept" in out and "Traceback" not in out
    runs = _runs(client, "revelio")
    status = {stage: [r.info.status for r in rs] for stage, rs in runs.items()}
    assert status["main"] == ["KILLED"] and status["train_sae"] == ["KILLED"], status
    assert status["extract"] == ["FINISHED"], status  # what was done stays done
    assert "RUNNING" not in [s for ss in status.values() for s in ss]
