"""What MLproject's entry points run: `python -m mlproject.entry STAGE --config C --overrides "a=b c=d"`.

MLflow passes parameters as strings; overrides are whitespace-separated `key=value` items and become
repeated `--set` options of the `revelio` CLI.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from revelio_svc.cli import main as revelio_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mlproject.entry")
    p.add_argument("stage")
    p.add_argument("--config", required=True)
    p.add_argument("--overrides", default="")
    a = p.parse_args(argv)
    args = [a.stage, "--config", a.config]
    for item in shlex.split(a.overrides or ""):
        args += ["--set", item]
    return revelio_main(args)


if __name__ == "__main__":
    sys.exit(main())
