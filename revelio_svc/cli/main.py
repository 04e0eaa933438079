"""`revelio` command line: one sub-command per stage of the flow.

Every option comes from the config dataclasses (revelio_svc.config): each command takes `--config FILE`,
repeatable `--set section.key=value`, and one `--section.key VALUE` option per field of the sections it
reads (type, default and allowed values from the dataclass). The order of precedence is defaults <
config file < --set < --section.key. `revelio config` prints the effective configuration.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args, get_origin

from ..config import Config, ConfigError, load_config, to_dict

ALL = ("data", "backbone", "extract", "pretrain", "sae", "probe", "tune", "tracking", "registry", "demo", "pipeline",
       "evaluate")

# command → (help, description, the config sections it reads)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pretrain": ("Train the default pixel-space diffusion backbone on procedural shapes (CPU, resumable).",
                 "Logs the loss curve and sample grids to MLflow and registers the result as revelio-backbone.",
                 ("pretrain", "data", "tracking")),
    "extract": ("Capture hook-point activations at chosen timesteps into a resumable feature store.",
                "One forward per (batch, t) captures every hook point; pooling mean, max or tokens.",
                ("data", "backbone", "extract", "tracking")),
    "plan": ("Before extracting: shapes and bytes per hook point, exact store size, peak memory and run time.",
             "Store size is exact (every file); memory is an estimate from a forward on fake tensors of the model "
             "built without weights (meta device); --time adds a timed real forward. Warns when the peak-memory "
             "estimate exceeds the machine's memory; exits 1 when the store would not fit the destination's free "
             "space.", ("data", "backbone", "extract")),
    "train-sae": ("Train a k-sparse autoencoder (TopK or BatchTopK) on one (hook point, timestep) of a store.",
                  "Streams shards, checkpoints and resumes, logs fvu/l0/dead_frac to MLflow.",
                  ("data", "backbone", "extract", "sae", "probe", "tracking")),
    "train-probe": ("Train a linear probe or Diff-C head on features or SAE latents, with controls.",
                    "Few-shot protocol over seeds; controls: pixels, random-init backbone, random expansion.",
                    ("data", "backbone", "extract", "sae", "probe", "tracking")),
    "tune": ("Tune the SAE or probe with Optuna (one nested MLflow run per trial).",
             "Storage from tune.storage: SQLite by default, any Optuna RDB URL for many workers.", ALL),
    "sweep": ("Probe every (hook point, timestep) pair and plot heatmaps over blocks × timesteps.", "",
              ("data", "backbone", "extract", "probe", "tracking")),
    "eval": ("Evaluate an SAE: spliced into the model (denoising loss recovered), SCR, TPP, dictionary health.",
             "Reads only the store, the backbone and the SAE (evaluate.sae: a directory or registry URI); writes "
             "eval/summary.csv and a report, tags a registered SAE version with the headline numbers.",
             ("data", "backbone", "extract", "sae", "probe", "evaluate", "tracking")),
    "eval-frontier": ("Train short SAEs at each k of evaluate.frontier_ks and plot fidelity, sparse probing and SCR "
                      "against L0, beside the controls.", "",
                      ("data", "backbone", "extract", "sae", "probe", "evaluate", "tracking")),
    "run": ("The whole chain: extract → train-sae → train-probe → register (what `mlflow run .` calls).", "", ALL),
    "registry": ("List, pull, promote, export or import registered models (revelio-sae, revelio-probe, "
                 "revelio-classifier).", "export/import: SAEs to and from SAELens, sparsify and published layouts.",
                 ("tracking", "registry")),
    "demo": ("Launch the Gradio app on a registered classifier.",
             "Login: set REVELIO_DEMO_USER and REVELIO_DEMO_PASSWORD (both or neither).", ("demo", "tracking")),
    "config": ("Print the effective configuration (defaults < --config < --set < options) as YAML.", "", ALL),
}


# --------------------------------------------------------------------------- options from the dataclasses
def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "{" + ",".join(map(str, get_args(tp))) + "}"
    if get_origin(tp) is tuple:
        return f"LIST[{_type_name(get_args(tp)[0]) if get_args(tp) else ''}]"
    return getattr(tp, "__name__", str(tp)).upper()


def _add_section(p: argparse.ArgumentParser, section: str) -> None:
    cls = typing.get_type_hints(Config)[section]
    hints = typing.get_type_hints(cls)
    group = p.add_argument_group(f"{section} options", f"the `{section}:` section of the config")
    for f in dataclasses.fields(cls):
        default = to_dict(getattr(cls(), f.name))
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        group.add_argument(f"--{section}.{f.name}", dest=f"opt:{section}.{f.name}", default=None,
                           metavar=_type_name(hints[f.name]), help=f"(default: {shown!r})")


def _add_common(p: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    p.add_argument("--config", "-c", default=None,
                   help="YAML config (default: the built-in defaults, which are mlproject/configs/default.yaml)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sae.k=32 --set extract.timesteps=[10,100] (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true", help="more log output (MLflow's own INFO lines)")
    for s in sections:
        _add_section(p, s)


def option_overrides(args: argparse.Namespace) -> list[str]:
    """`--section.key VALUE` options as `section.key=VALUE` overrides (they win over --set)."""
    return [f"{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("opt:") and v is not None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revelio",
        description="Interpret diffusion models with sparse autoencoders. Flow: dataset → backbone + hooks → "
                    "feature store → k-SAE → probe → registry → Gradio app; every stage is an MLflow run.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, desc, sections) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=f"{help_} {desc}".strip())
        if name == "registry":
            p.add_argument("action", choices=["list", "pull", "promote", "export", "import"], help="what to do")
            p.add_argument("uri", nargs="?", default=None,
                           help="NAME@alias, NAME/version or models:/... URI (import: the folder to import)")
            p.add_argument("--dest", default=None, help="pull: directory to write the model to")
            p.add_argument("--alias", default="champion", help="promote: alias to set (default champion)")
            from .transfer import add_arguments  # export / import (SAELens, sparsify, published layouts)
            add_arguments(p)
        if name == "extract":
            p.add_argument("--no-mlflow", action="store_true", help="do not open an MLflow run")
        if name == "plan":
            p.add_argument("--time", action="store_true",
                           help="also time a real forward (loads the weights) for a run-time estimate and a check "
                                "of the shapes; without it the model is built on the meta device, no weights")
            p.add_argument("--no-probe", action="store_true", help=argparse.SUPPRESS)  # the default now
            p.add_argument("--json", action="store_true", help="print the plan as JSON")
        if name == "demo":  # short names for the options everyone types
            for short in ("model", "host", "port"):
                p.add_argument(f"--{short}", dest=f"opt:demo.{short}", default=None, help=f"= --demo.{short}")
        _add_common(p, sections)
    return parser


class UnknownOptionError(ConfigError):
    """A `--section.key` option the command does not have; the message names the known keys."""


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown `--section.key` option fails like `--set section.key=…` does
    (naming the known keys) instead of with argparse's top-level usage."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    dotted = [x for x in extras if x.startswith("--") and "." in x.split("=", 1)[0]]
    if not dotted or not getattr(args, "command", None):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    key = dotted[0][2:].split("=", 1)[0]
    from ..config import apply_overrides

    apply_overrides({}, [f"{key}=0"])  # an unknown key: ConfigError with the known keys
    sections = COMMANDS[args.command][2]
    raise UnknownOptionError(f"--{key} is not an option of `revelio {args.command}`, which reads the "
                             f"sections {', '.join(sections)}")


def _handler(name: str) -> Callable[[Config, argparse.Namespace], int]:
    # the command modules pull in torch and MLflow: only after the arguments parsed (fast --help)
    from . import models, stages

    return {"registry": models.registry, "demo": models.demo, "config": models.show_config,
            "eval": stages.evaluate}.get(name) \
        or getattr(stages, name.replace("-", "_"))


def load(args: argparse.Namespace) -> Config:
    return load_config(args.config, list(args.overrides) + option_overrides(args))


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can fix (a server down, a model or store missing): one line, exit code 1.

    Imported here, not at the top: the modules behind them load torch and MLflow, and --help should not.
    """
    from ..backbones import ModelUnavailableError
    from ..data import DatasetUnavailableError
    from ..features import StoreError
    from ..registry import RegistryError
    from ..tracking import TrackingUnavailableError

    return (TrackingUnavailableError, RegistryError, StoreError, ModelUnavailableError, DatasetUnavailableError,
            FileExistsError)


# the commands that run as one rank each under torchrun (docs/distributed.md)
DISTRIBUTED = ("extract", "train-sae", "run")


def _join_group(command: str) -> bool:
    """Under torchrun: join the process group (distributed commands) or refuse; True when joined."""
    from .. import distributed

    if not distributed.launched():
        return False
    if command not in DISTRIBUTED:
        raise ConfigError(f"`revelio {command}` does not run under torchrun (WORLD_SIZE > 1); only "
                          f"{', '.join(DISTRIBUTED)} do. Run it as one process.")
    distributed.init()
    return True


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, torchrun stopping a rank): raised like Ctrl+C so that the code unwinds,
    finished work stays and the MLflow runs end KILLED (tracking/status.py) instead of staying RUNNING."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    # Only the main thread may set handlers. Under torchrun the launcher stops the other ranks with SIGTERM
    # when one fails, and a rank blocked in a collective would not run a Python handler until the launcher's
    # SIGKILL: ranks keep the default action (die at once).
    from .. import distributed

    if threading.current_thread() is not threading.main_thread() or distributed.launched():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run(args: argparse.Namespace) -> int:
    with _sigterm_raises():
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    where = ""
    try:
        cfg = load(args)
        joined = _join_group(args.command)
        if joined:
            from .. import distributed

            where = f" (rank {distributed.context().rank} of {distributed.context().world_size})"
        code = int(_handler(args.command)(cfg, args) or 0)
        if joined:
            distributed.shutdown()
        return code
    except ConfigError as e:
        print(f"revelio {args.command}{where}: invalid configuration: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"revelio {args.command}{where}: {why}; completed work is kept, run the same command to resume",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except _expected_errors() as e:
        print(f"revelio {args.command}{where}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not where:
            raise
        # under torchrun the launcher stops the other ranks when this one exits; say which rank and why
        import traceback

        traceback.print_exc()
        from .. import distributed

        print(distributed.failure_message(args.command, e), file=sys.stderr, flush=True)
        return 1


def _parse_or_report(argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code after a one-line message about an unknown option."""
    try:
        return parse(build_parser(), argv)
    except ConfigError as e:
        command = next((a for a in (argv if argv is not None else sys.argv[1:]) if a in COMMANDS), "")
        print(f"revelio {command}: invalid configuration: {e}".replace("revelio :", "revelio:"), file=sys.stderr)
        return 2


def dispatch(argv: list[str]) -> int:
    """Parse `argv` and run the command (main() without the log set-up, for tests)."""
    args = _parse_or_report(argv)
    return args if isinstance(args, int) else _run(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = _parse_or_report(argv)
    if isinstance(args, int):
        return args
    if args.version:
        from .. import __version__
        print(__version__)
        return 0
    if not args.command:
        build_parser().print_help()
        return 1
    from ..logs import configure

    configure(verbose=args.verbose)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
