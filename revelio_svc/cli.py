"""`revelio` command line: one sub-command per stage of the flow, all taking --config and --set."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .config import Config, ConfigError, load_config

COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("Train the default pixel-space diffusion backbone on procedural shapes (CPU, resumable).",
                 "Logs the loss curve and sample grids to MLflow and registers the result as revelio-backbone."),
    "extract": ("Capture hook-point activations at chosen timesteps into a resumable feature store.",
                "One forward per (batch, t) captures every hook point; pooling mean, max or tokens."),
    "plan": ("Before extracting: shapes and bytes per hook point, exact store size, peak memory and run time.",
             "Store size is exact (every file); memory and time are estimates (fake-tensor forward, timed probe). "
             "Exits 1 when the store would not fit the destination's free space."),
    "train-sae": ("Train a k-sparse autoencoder (TopK or BatchTopK) on one (hook point, timestep) of a store.",
                  "Streams shards, checkpoints and resumes, logs fvu/l0/dead_frac to MLflow."),
    "train-probe": ("Train a linear probe or Diff-C head on features or SAE latents, with controls.",
                    "Few-shot protocol over seeds; controls: pixels, random-init backbone, random expansion."),
    "tune": ("Tune the SAE or probe with Optuna (one nested MLflow run per trial).",
             "Storage from tune.storage: SQLite by default, any Optuna RDB URL for many workers."),
    "sweep": ("Probe every (hook point, timestep) pair and plot heatmaps over blocks × timesteps.", ""),
    "run": ("The whole chain: extract → train-sae → train-probe → register (what `mlflow run .` calls).", ""),
    "registry": ("List, pull or promote registered models (revelio-sae, revelio-probe, revelio-classifier).", ""),
    "demo": ("Launch the Gradio app on a registered classifier.", ""),
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sae.k=32 --set extract.timesteps=[10,100] (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revelio",
        description="Interpret diffusion models with sparse autoencoders. Flow: dataset → backbone + hooks → "
                    "feature store → k-SAE → probe → registry → Gradio app; every stage is an MLflow run.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, desc) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=f"{help_} {desc}".strip())
        _add_common(p)
        if name == "registry":
            p.add_argument("action", choices=["list", "pull", "promote"], help="what to do")
            p.add_argument("uri", nargs="?", default=None, help="NAME@alias, NAME/version or models:/... URI")
            p.add_argument("--dest", default=None, help="pull: directory to write the model to")
            p.add_argument("--alias", default="champion", help="promote: alias to set (default champion)")
        if name == "demo":
            p.add_argument("--model", default=None, help="registry URI or pulled directory (default "
                                                         "revelio-classifier@champion)")
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=7860)
            p.add_argument("--share", action="store_true", help=argparse.SUPPRESS)
            p.add_argument("--max-pixels", type=int, default=None, help="largest accepted upload (pixels)")
            p.add_argument("--concurrency", type=int, default=None, help="requests served at once (default 2)")
            p.add_argument("--no-register", action="store_true", help="hide the few-shot 'register' button")
        if name == "extract":
            p.add_argument("--no-mlflow", action="store_true", help="do not open an MLflow run")
        if name == "plan":
            p.add_argument("--no-probe", action="store_true", help="no timed forward (no run-time estimate)")
            p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def _handler(name: str) -> Callable[[Config, argparse.Namespace], int]:
    from . import commands
    fn = getattr(commands, name.replace("-", "_"), None)
    if fn is None:
        def not_yet(cfg: Config, args: argparse.Namespace) -> int:
            print(f"revelio {name}: not yet available in this version", file=sys.stderr)
            return 3
        return not_yet
    return fn


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__
        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 1
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"revelio {args.command}: invalid configuration: {e}", file=sys.stderr)
        return 2
    try:
        return int(_handler(args.command)(cfg, args) or 0)
    except ConfigError as e:
        print(f"revelio {args.command}: invalid configuration: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"revelio {args.command}: interrupted; completed work is kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
