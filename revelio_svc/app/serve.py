"""`revelio demo`: load a registered (or pulled) classifier and serve the Gradio app on it.

    revelio demo                                   revelio-classifier@champion from the configured registry
    revelio demo --model revelio-classifier/3      any registry URI (NAME@alias, NAME/version, models:/, runs:/)
    revelio demo --model DIR                       a directory written by `revelio registry pull` (offline)
    revelio demo --host 0.0.0.0 --port 8080        binds 127.0.0.1:7860 unless told otherwise

Every setting is in the `demo:` config section (`--demo.max_pixels`, `--demo.concurrency`,
`--demo.allow_register true` to offer registering few-shot classifiers, off by default, ...; `--model/--host/--port` are short for `--demo.model/host/port`).
Credentials are not config: REVELIO_DEMO_USER + REVELIO_DEMO_PASSWORD in the environment require a login.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from ..config import Config


class DemoStartError(RuntimeError):
    """The demo cannot start; the message says what was tried and how to fix it."""


def offline_hint(uri: str) -> str:
    return (f"To serve a model without the registry: where the registry is reachable run "
            f"`revelio registry pull {uri} --dest DIR`, copy DIR here if needed, then `revelio demo --model DIR`.")


def load_for_demo(uri: str, cfg: Config):
    """The classifier `uri` names, with its backbone loaded, or a DemoStartError saying why not."""
    from ..registry import RegistryError, load_classifier, parse_uri
    from ..tracking import TrackingUnavailableError, tracking_uri

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


def port_problem(host: str, port: int) -> OSError | None:
    """Why `host:port` cannot be served on (taken, not an address here), or None. Checked before the model
    loads: a failed start then has nothing running to tear down (a background computation at exit aborts
    the interpreter: exit code 134 instead of 1) and does not first wait for the model."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return e
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            s.bind(address)
        except OSError as e:
            return e
    return None


def import_app():
    """The Gradio app module; imported only when serving, because importing gradio takes seconds."""
    from . import main

    return main


def describe(clf) -> str:
    src = dict(getattr(clf, "source", {}) or {})
    name = src.get("name") or src.get("uri") or "local classifier"
    ver = f" version {src['version']}" if src.get("version") else ""
    return (f"{name}{ver} · backbone {clf.backbone_cfg.id} · hook point {clf.hook_point} · t={clf.timestep} · "
            f"{len(clf.class_names)} classes of {clf.concept or 'label'}")


def demo(cfg: Config, args: argparse.Namespace | None = None) -> int:
    """Load the model and serve until interrupted. Exit codes: 0 stopped, 1 could not start, 2 bad settings."""
    dc = cfg.demo
    app_main = import_app()
    try:
        auth = app_main.auth_from_env()
    except ValueError as e:
        print(f"revelio demo: {e}", file=sys.stderr)
        return 2
    busy = port_problem(dc.host, dc.port)
    if busy is not None:
        print(f"revelio demo: cannot serve on {dc.host}:{dc.port}: {busy}. Pick another --port.", file=sys.stderr)
        return 1
    print(f"revelio demo: loading {dc.model} ...", file=sys.stderr)
    try:
        clf = load_for_demo(dc.model, cfg)
    except DemoStartError as e:
        print(f"revelio demo: {e}", file=sys.stderr)
        return 1
    print(f"revelio demo: serving {describe(clf)}", file=sys.stderr)
    print(f"revelio demo: http://{dc.host}:{dc.port}  (login {'required' if auth else 'off'}, {dc.concurrency} "
          "requests at a time, Ctrl+C stops)", file=sys.stderr)
    try:
        app_main.launch(clf, host=dc.host, port=dc.port, auth=auth, concurrency=dc.concurrency,
                        max_pixels=dc.max_pixels, fewshot_dir=Path(cfg.output_dir) / "fewshot",
                        allow_register=dc.allow_register, experiment=cfg.tracking.experiment, warm=True,
                        cache_dir=Path(cfg.output_dir) / "demo-cache", browse_images=dc.browse_images,
                        # the address is printed above; gradio's own lines (set share=True) are not for CLI users
                        quiet=True)
    except OSError as e:  # the port is taken, the address cannot be bound
        print(f"revelio demo: cannot serve on {dc.host}:{dc.port}: {e}. Pick another --port.", file=sys.stderr)
        return 1
    return 0
