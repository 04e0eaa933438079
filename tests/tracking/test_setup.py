"""tracking.setup on a fresh local SQLite store, from several processes at once."""
from __future__ import annotations

import subprocess
import sys

import mlflow

SCRIPT = """
import sys
from revelio_svc.config import TrackingConfig
from revelio_svc.tracking.setup import setup
setup(TrackingConfig(tracking_uri=sys.argv[1], experiment="shared"))
print("ok")
"""


def test_processes_opening_a_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    # without the lock, two processes both migrate the new schema and one fails half-way
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.strip().endswith("ok")
    exps = mlflow.MlflowClient(tracking_uri=uri).search_experiments(filter_string="name = 'shared'")
    assert len(exps) == 1
