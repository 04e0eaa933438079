"""Log output of the command line: what a user reads, without the libraries' chatter.

At default verbosity MLflow, diffusers and transformers log warnings only, and MLflow's artifact
download bars are off (a registry load would otherwise print one per file); `-v` shows their INFO lines.
Progress bars of our own stages are in progress.py.
"""
from __future__ import annotations

import logging
import os


def configure(verbose: bool = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    for name in ("mlflow", "alembic", "diffusers", "transformers", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        # MLflow sets its own logger's level when it is first imported (after this runs): it reads this
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
