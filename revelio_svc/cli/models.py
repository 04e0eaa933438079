"""Commands on trained models: `revelio registry list|pull|promote|export|import`, `revelio demo`, and `revelio config`."""
from __future__ import annotations

import argparse
import sys

from ..config import Config, ConfigError, to_dict


def _list() -> int:
    from ..registry import list_models

    models = list_models()
    if not models:
        print("no registered models (run `revelio run` to train and register them)")
    for m in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(m["aliases"].items())) or "no aliases"
        print(f"{m['name']}  ({aliases})")
        for v in m["versions"][:10]:
            mets = ", ".join(f"{k}={float(x):.4g}" for k, x in sorted(v["metrics"].items())[:4])
            print(f"  v{v['version']:<4} {','.join(v['aliases']):<22} {v['tags'].get('dataset', ''):<10} "
                  f"{v['tags'].get('hook_point', '')} t={v['tags'].get('timestep', '')}  {mets}")
    return 0


def registry(cfg: Config, args: argparse.Namespace) -> int:
    from ..registry import parse_uri, promote, pull
    from ..tracking import setup

    setup(cfg.tracking)
    if args.action == "list":
        return _list()
    if args.action in ("export", "import"):
        from .transfer import run_transfer

        return run_transfer(args)
    if not args.uri:
        print(f"revelio registry {args.action}: give a model, e.g. revelio-classifier@champion", file=sys.stderr)
        return 2
    try:
        ref = parse_uri(args.uri)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.action == "pull":
        if not args.dest:
            print("revelio registry pull: give --dest DIR (a new directory)", file=sys.stderr)
            return 2
        path = pull(args.uri, args.dest)
        print(f"pulled {args.uri} into {path}; load it with no tracking server: "
              f"revelio_svc.registry.load_classifier({str(path)!r}) (or load_sae/load_probe)")
        return 0
    version = promote(args.uri, args.alias)
    print(f"{ref.name}: alias {args.alias} → version {version}")
    return 0


def demo(cfg: Config, args: argparse.Namespace) -> int:
    from ..app.serve import demo as run_demo

    return run_demo(cfg, args)


def show_config(cfg: Config, args: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
