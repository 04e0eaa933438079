"""`revelio demo`: load a registered (or pulled) classifier and serve the Gradio app on it.

    revelio demo                                   revelio-classifier@champion from the configured registry
    revelio demo --model revelio-classifier/3      any registry URI (NAME@alias, NAME/version, models:/, runs:/)
    revelio demo --model DIR                       a directory written by `revelio registry pull` (offline)
    revelio demo --host 0.0.0.0 --port 8080        binds 127.0.0.1:7860 unless told otherwise

Settings beyond the CLI flags, read from `args` when the CLI defines them, else from the environment:

    --max-pixels / REVELIO_DEMO_MAX_PIXELS     largest upload, in pixels (default 16,000,000)
    --concurrency / REVELIO_DEMO_CONCURRENCY   events processed at once; the rest queue (default 2)
    --no-register / REVELIO_DEMO_NO_REGISTER=1 hide the few-shot tab's "Register in MLflow"
    REVELIO_DEMO_USER + REVELIO_DEMO_PASSWORD  require a login (both or neither)
    REVELIO_DEMO_MODEL                         the model when --model is not given
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from .config import Config

DEFAULT_MODEL = "revelio-classifier@champion"
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_CONCURRENCY = 2


class DemoStartError(RuntimeError):
    """The demo cannot start; the message says what was tried and how to fix it."""


def _setting(args: argparse.Namespace, attr: str, env: str, default: Any, kind=int) -> Any:
    v = getattr(args, attr, None)
    if v is None or v == "":
        raw = os.environ.get(env, "")
        if raw == "":
            return default
        try:
            return kind(raw)
        except ValueError as e:
            raise DemoStartError(f"{env}={raw!r} is not a valid {kind.__name__}") from e
    return kind(v)


def model_uri(cfg: Config, args: argparse.Namespace) -> str:
    """--model, else a `demo.model` config value (if the config has that section), else the environment."""
    if getattr(args, "model", None):
        return str(args.model)
    section = getattr(cfg, "demo", None)
    if section is not None and getattr(section, "model", ""):
        return str(section.model)
    return os.environ.get("REVELIO_DEMO_MODEL", "") or DEFAULT_MODEL


def offline_hint(uri: str) -> str:
    return (f"To serve a model without the registry: where the registry is reachable run "
            f"`revelio registry pull {uri} --dest DIR`, copy DIR here if needed, then `revelio demo --model DIR`.")


def load_for_demo(uri: str, cfg: Config):
    """The classifier `uri` names, with its backbone loaded, or a DemoStartError saying why not."""
    from .registry import RegistryError, load_classifier, parse_uri
    from .tracking import TrackingUnavailableError, tracking_uri

    try:
        ref = parse_uri(uri)
    except ValueError as e:
        raise DemoStartError(f"--model {uri!r}: {e}") from e
    where = ""
    if ref.kind != "local":
        import mlflow

        turi = tracking_uri(cfg.tracking)
        if turi.startswith("http"):
            # a dead server otherwise retries for minutes before the user hears anything
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        mlflow.set_tracking_uri(turi)
        if cfg.tracking.registry_uri:
            mlflow.set_registry_uri(cfg.tracking.registry_uri)
        where = f" from the MLflow registry at {cfg.tracking.registry_uri or turi}"
    try:
        clf = load_classifier(uri)
    except TrackingUnavailableError as e:
        raise DemoStartError(f"cannot load {uri}{where}: the tracking server is unreachable ({e}). "
                             + offline_hint(uri)) from e
    except RegistryError as e:
        raise DemoStartError(f"cannot load {uri}{where}: {e}. " + offline_hint(uri)) from e
    except (OSError, ValueError, RuntimeError) as e:
        # ConnectionError, MlflowException (a RuntimeError?) and format errors of a pulled directory
        raise DemoStartError(f"cannot load {uri}{where}: {type(e).__name__}: {str(e).splitlines()[0][:400]}. "
                             + (offline_hint(uri) if ref.kind != "local" else
                                "Is it a directory written by `revelio registry pull`?")) from e
    except Exception as e:  # noqa: BLE001 - MlflowException is not a subclass of the above in every version
        raise DemoStartError(f"cannot load {uri}{where}: {type(e).__name__}: {str(e).splitlines()[0][:400]}. "
                             + offline_hint(uri)) from e
    try:
        _ = clf.adapter  # load the backbone now: a missing backbone should stop start-up, not the first request
    except Exception as e:  # noqa: BLE001 - ModelUnavailableError, ConfigError, OSError ...
        raise DemoStartError(f"{uri} loaded, but its backbone {clf.backbone_cfg.id!r} did not: "
                             f"{str(e).splitlines()[0][:400]}") from e
    return clf


def import_app():
    """The `app` package: installed, or next to `revelio_svc` in a source checkout."""
    try:
        return importlib.import_module("app.main")
    except ModuleNotFoundError as e:
        if e.name not in ("app", "app.main"):
            raise
        # an editable install maps only revelio_svc; the app lives beside it in the repository
        root = Path(__file__).resolve().parent.parent
        if not (root / "app" / "main.py").is_file():
            raise DemoStartError("the demo app (package `app`) is not installed; reinstall revelio-svc from a "
                                 "source checkout (`pip install -e .`)") from e
        sys.path.insert(0, str(root))
        return importlib.import_module("app.main")


def describe(clf) -> str:
    src = dict(getattr(clf, "source", {}) or {})
    name = src.get("name") or src.get("uri") or "local classifier"
    ver = f" version {src['version']}" if src.get("version") else ""
    return (f"{name}{ver} · backbone {clf.backbone_cfg.id} · hook point {clf.hook_point} · t={clf.timestep} · "
            f"{len(clf.class_names)} classes of {clf.concept or 'label'}")


def demo(cfg: Config, args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted. Exit codes: 0 stopped, 1 could not start, 2 bad settings."""
    try:
        max_pixels = _setting(args, "max_pixels", "REVELIO_DEMO_MAX_PIXELS", DEFAULT_MAX_PIXELS)
        concurrency = _setting(args, "concurrency", "REVELIO_DEMO_CONCURRENCY", DEFAULT_CONCURRENCY)
        no_register = bool(getattr(args, "no_register", False)) or os.environ.get(
            "REVELIO_DEMO_NO_REGISTER", "") not in ("", "0", "false", "False")
        if max_pixels <= 0 or concurrency <= 0:
            raise DemoStartError(f"max pixels ({max_pixels}) and concurrency ({concurrency}) must be > 0")
        host = getattr(args, "host", None) or "127.0.0.1"
        port = int(getattr(args, "port", None) or 7860)
        app_main = import_app()
        try:
            auth = app_main.auth_from_env()
        except ValueError as e:
            raise DemoStartError(str(e)) from e
    except DemoStartError as e:
        print(f"revelio demo: {e}", file=sys.stderr)
        return 2

    uri = model_uri(cfg, args)
    print(f"revelio demo: loading {uri} ...", file=sys.stderr)
    try:
        clf = load_for_demo(uri, cfg)
    except DemoStartError as e:
        print(f"revelio demo: {e}", file=sys.stderr)
        return 1
    print(f"revelio demo: serving {describe(clf)}", file=sys.stderr)
    print(f"revelio demo: http://{host}:{port}  (login {'required' if auth else 'off'}, {concurrency} requests at "
          "a time, Ctrl+C stops)", file=sys.stderr)
    try:
        app_main.launch(clf, host=host, port=port, auth=auth, concurrency=concurrency, max_pixels=max_pixels,
                        fewshot_dir=Path(cfg.output_dir) / "fewshot", allow_register=not no_register,
                        experiment=cfg.tracking.experiment, warm=True)
    except OSError as e:  # the port is taken, the address cannot be bound
        print(f"revelio demo: cannot serve on {host}:{port}: {e}. Pick another --port.", file=sys.stderr)
        return 1
    return 0
