"""CLI commands for the training stages, the pipeline, tuning and the registry (re-exported by commands.py)."""
from __future__ import annotations

import argparse
import json
import sys

from .config import Config


def _tags(cfg: Config, **extra: str) -> dict[str, str]:
    from .pipeline import run_tags

    return {k: v for k, v in run_tags(cfg, "").items() if k != "stage"} | extra


def _fail(cmd: str, e: Exception) -> int:
    print(f"revelio {cmd}: {e}", file=sys.stderr)
    return 1


def train_sae(cfg: Config, args: argparse.Namespace) -> int:
    from .sae.stage import train_sae_stage
    from .tracking import TrackingUnavailableError, stage_run

    try:
        with stage_run(cfg, "train_sae", ("data", "backbone", "sae"), tags=_tags(cfg),
                       description="Train the k-sparse autoencoder on one (hook point, timestep) of a feature store"):
            res = train_sae_stage(cfg)
    except TrackingUnavailableError as e:
        return _fail("train-sae", e)
    m = res.get("metrics") or {}
    print(f"SAE written to {res.get('output_dir') or res.get('sae_dir')}: "
          + ", ".join(f"{k}={m[k]:.4g}" for k in ("fvu", "l0", "dead_frac") if k in m))
    return 0


def train_probe(cfg: Config, args: argparse.Namespace) -> int:
    from .probe.stage import train_probe_stage
    from .tracking import TrackingUnavailableError, stage_run

    try:
        with stage_run(cfg, "train_probe", ("data", "backbone", "probe"), tags=_tags(cfg),
                       description=f"Train a {cfg.probe.kind} probe on {cfg.probe.input} for {cfg.probe.concept}"):
            res = train_probe_stage(cfg)
    except TrackingUnavailableError as e:
        return _fail("train-probe", e)
    m = res.get("metrics") or {}
    print(f"probe written to {res['probe_dir']}: held-out accuracy {m.get('accuracy', float('nan')):.3f} "
          f"(chance {m.get('chance', float('nan')):.3f})")
    return 0


def sweep(cfg: Config, args: argparse.Namespace) -> int:
    from .probe.sweep import sweep_stage
    from .tracking import TrackingUnavailableError, stage_run

    try:
        with stage_run(cfg, "sweep", ("data", "backbone", "extract", "probe"), tags=_tags(cfg),
                       description="Probe accuracy over every (hook point, timestep) with controls"):
            if not cfg.probe.store:
                # the sweep needs the store of this config: extract it (resumes; instant when complete)
                from .features.extract import extract
                extract(cfg)
            res = sweep_stage(cfg)
    except TrackingUnavailableError as e:
        return _fail("sweep", e)
    print(f"sweep written to {res['output_dir']} (summary: {res['summary']})")
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    from .pipeline import run as run_pipeline
    from .registry import RegistryError
    from .tracking import TrackingUnavailableError

    try:
        res = run_pipeline(cfg)
    except (TrackingUnavailableError, RegistryError) as e:
        return _fail("run", e)
    print(f"pipeline finished in {res.seconds:.0f} s; parent run {res.parent_run_id}")
    for o in res.stages.values():
        print(f"  {o.stage:<12} run {o.run_id}" + (f" (reused from {o.reused_from})" if o.reused_from else ""))
    for r in res.registrations.values():
        print(f"  {r['name']} version {r['version']}: {'champion' if r['champion'] else 'challenger'} — {r['reason']}")
    return 0


def tune(cfg: Config, args: argparse.Namespace) -> int:
    from .registry import RegistryError
    from .tracking import TrackingUnavailableError
    from .tune import tune as run_tune

    try:
        res = run_tune(cfg)
    except (TrackingUnavailableError, RegistryError) as e:
        return _fail("tune", e)
    print(f"study {res.study_name} ({res.storage}): {res.n_trials_run} trial(s) run here; parent run "
          f"{res.parent_run_id}")
    if res.best_value is not None:
        print(f"  best {cfg.tune.metric} = {res.best_value:.5g} with {json.dumps(res.best_params)}")
    if res.registration:
        print(f"  registered {res.registration['name']} version {res.registration['version']}")
    return 0


def registry(cfg: Config, args: argparse.Namespace) -> int:
    from .registry import RegistryError, check_server, list_models, promote, pull
    from .tracking import TrackingUnavailableError, setup, tracking_uri

    action = args.action
    try:
        check_server(tracking_uri(cfg.tracking))
        setup(cfg.tracking)
        if action == "list":
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
        if not args.uri:
            print(f"revelio registry {action}: give a model, e.g. revelio-classifier@champion", file=sys.stderr)
            return 2
        if action == "pull":
            if not args.dest:
                print("revelio registry pull: give --dest DIR (a new directory)", file=sys.stderr)
                return 2
            path = pull(args.uri, args.dest)
            print(f"pulled {args.uri} into {path}; load it with no tracking server: "
                  f"revelio_svc.registry.load_classifier({str(path)!r}) (or load_sae/load_probe)")
            return 0
        from .registry import parse_uri

        version = promote(args.uri, args.alias)
        print(f"{parse_uri(args.uri).name}: alias {args.alias} → version {version}")
        return 0
    except (RegistryError, TrackingUnavailableError, FileExistsError, ValueError) as e:
        return _fail(f"registry {action}", e)
