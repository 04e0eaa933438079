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


def test_the_lock_file_sits_beside_the_database_and_a_read_only_folder_opens_unlocked(tmp_path):
    import os

    from revelio_svc.sqlite_uri import sqlite_file
    from revelio_svc.tracking.setup import store_lock

    assert sqlite_file("sqlite:///mlflow.db").as_posix() == "mlflow.db"
    assert sqlite_file(f"sqlite:///{tmp_path}/x%20y.db") == tmp_path / "x y.db"
    assert sqlite_file("sqlite:///:memory:") is None and sqlite_file("http://host:5000") is None
    with store_lock(f"sqlite:///{tmp_path / 'a.db'}"):
        assert (tmp_path / "a.db.lock").is_file()
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # running as a user who can write anyway (root): nothing to check
            return
        with store_lock(f"sqlite:///{ro / 'b.db'}"):
            pass
        assert not (ro / "b.db.lock").exists()
    finally:
        os.chmod(ro, 0o700)
