"""How a run ends: FINISHED, KILLED when it was stopped, FAILED when it broke.

MLflow's own `with mlflow.start_run()` marks every exception FAILED, a Ctrl+C included, and a process ended
by SIGTERM (the default action: no Python code runs) leaves its runs RUNNING for ever. `revelio` turns
SIGTERM into `Terminated`, a KeyboardInterrupt (cli/main.py), and every run it opens ends through
`closing_run`, so a stopped run reads KILLED in the MLflow UI and a broken one FAILED.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import mlflow


def end_status(exc: BaseException | None) -> str:
    """FINISHED without an exception, KILLED for an interrupt (Ctrl+C, SIGTERM), FAILED for anything else."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


@contextlib.contextmanager
def closing_run(active_run: Any) -> Iterator[Any]:
    """`with closing_run(mlflow.start_run(...)) as run:` — the run ends with `end_status` of what left the block."""
    with active_run as run:
        try:
            yield run
        except BaseException as e:
            top = mlflow.active_run()
            if top is not None and top.info.run_id == run.info.run_id:
                mlflow.end_run(end_status(e))  # before MLflow's exit, which would say FAILED
            raise
