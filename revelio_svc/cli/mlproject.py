"""The MLproject file, derived from the command table: one entry point per stage command.

Entry points take `config` (a YAML file) and `overrides` (whitespace-separated `section.key=value`,
validated by the config dataclasses like `--set`). `python -m revelio_svc.cli.mlproject > MLproject`
rewrites the file; a test checks that it is current.
"""
from __future__ import annotations

import sys

from .main import COMMANDS

# MLproject entry point → revelio command (MLflow's own convention: `main` is what `mlflow run .` runs)
ENTRY_POINTS = {"main": "run", "pretrain": "pretrain", "extract": "extract", "train_sae": "train-sae",
                "train_probe": "train-probe", "tune": "tune", "sweep": "sweep", "evaluate": "eval",
                "eval_frontier": "eval-frontier"}
DEFAULT_CONFIG = "mlproject/configs/default.yaml"


def render() -> str:
    lines = ["# Generated from revelio_svc/cli/main.py by `python -m revelio_svc.cli.mlproject > MLproject`.",
             "name: revelio", "", "python_env: mlproject/python_env.yaml", "", "entry_points:"]
    for entry, command in ENTRY_POINTS.items():
        assert command in COMMANDS, command
        lines += [f"  {entry}:",
                  f"    # {COMMANDS[command][0]}",
                  "    parameters:",
                  f"      config: {{type: string, default: {DEFAULT_CONFIG}}}",
                  "      overrides: {type: string, default: \"\"}",
                  f"    command: \"python -m mlproject.entry {command} --config {{config}} --overrides {{overrides}}\""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
