"""The stage commands: pretrain, extract, train-sae, train-probe, sweep, eval, eval-frontier, run, tune.

Each opens the stage's MLflow run, calls the stage (a plain function, revelio_svc.stages), hands the
typed result to the tracking adapter, and prints a one-line summary; failures a user can fix are
reported by cli.main. Imports sit inside the commands so that `revelio --help` does not load torch.
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import distributed
from ..config import Config, replace


def pretrain(cfg: Config, args: argparse.Namespace) -> int:
    from ..backbones.pretrain import pretrain as run_pretrain
    from ..registry.backbone import register_backbone
    from ..tracking import log_result, stage_run, step_logger

    with stage_run(cfg, "pretrain", tags={"dataset": "shapes"}) as run:
        res = run_pretrain(cfg, on_metrics=step_logger())
        log_result(res)
        version = register_backbone(run.info.run_id) if cfg.tracking.register else None
    print(f"backbone written to {res.backbone_dir}"
          + (f"; registered as revelio-backbone version {version}" if version else ""))
    return 0


def extract(cfg: Config, args: argparse.Namespace) -> int:
    from ..features.extract import extract as run_extract
    from ..features.plan import preflight
    from ..tracking import log_json, log_result, stage_run

    # the plan first: its figures, and a refusal (nothing written) when the store would not fit
    pl, kw = preflight(cfg)
    if getattr(args, "no_mlflow", False) or not distributed.is_main():
        res = run_extract(cfg, **kw)
        if not distributed.is_main():
            return 0
    else:
        with stage_run(cfg, "extract"):
            log_json(pl.to_dict(), "plan.json", "feature_store")
            res = run_extract(cfg, **kw)
            log_result(res)
    print(f"feature store: {res.store_uri} ({res.n_rows} rows, {len(res.skipped)} skipped, "
          f"{res.images_per_s:.0f} images·t/s)")
    return 0


def plan(cfg: Config, args: argparse.Namespace) -> int:
    from ..features.plan import format_plan
    from ..features.plan import plan as make_plan

    p = make_plan(cfg, probe=args.time and not args.no_probe)
    print(json.dumps(p.to_dict(), indent=1) if args.json else format_plan(p))
    for w in p.warnings:
        print(f"revelio plan: warning: {w}", file=sys.stderr)
    p.ensure_fits()  # InsufficientSpaceError: reported by cli.main, exit code 1
    return 0


def train_sae(cfg: Config, args: argparse.Namespace) -> int:
    from ..stages import train_sae_stage
    from ..tracking import log_result, stage_run, step_logger

    if not distributed.is_main():
        # this rank's share of every batch; rank 0 evaluates, interprets, writes and logs
        from ..sae.trainer import train_sae as train_only

        train_only(cfg, progress=False)
        return 0
    with stage_run(cfg, "train_sae"):
        res = train_sae_stage(cfg, on_eval=step_logger())
        log_result(res, step=res.steps, skip_existing_metrics=not res.skipped_training)
    m = res.metrics
    print(f"SAE written to {res.sae_dir}: " + ", ".join(f"{k}={m[k]:.4g}" for k in ("fvu", "l0", "dead_frac")
                                                           if k in m))
    return 0


def _local_sae(cfg: Config) -> Config:
    """probe.sae may name a registered SAE (revelio-sae@champion): the stage reads a local directory."""
    from ..registry import materialize, parse_uri

    if cfg.probe.input != "sae" or not cfg.probe.sae or parse_uri(cfg.probe.sae).kind == "local":
        return cfg
    return replace(cfg, **{"probe.sae": str(materialize(cfg.probe.sae, "sae"))})


def train_probe(cfg: Config, args: argparse.Namespace) -> int:
    from ..stages import train_probe_stage
    from ..tracking import log_result, stage_run

    with stage_run(cfg, "train_probe"):
        res = train_probe_stage(_local_sae(cfg))
        log_result(res)
    print(res.table.to_string(index=False))
    m = res.metrics
    print(f"probe written to {res.probe_dir}: held-out accuracy {m.get('accuracy', float('nan')):.3f} "
          f"(chance {m.get('chance', float('nan')):.3f})")
    return 0


def sweep(cfg: Config, args: argparse.Namespace) -> int:
    from ..features.extract import extract as run_extract
    from ..stages import sweep_stage
    from ..tracking import log_result, stage_run

    with stage_run(cfg, "sweep"):
        if not cfg.probe.store:
            # the sweep needs the store of this config: extract it (resumes; instant when complete)
            run_extract(cfg)
        res = sweep_stage(cfg)
        log_result(res)
    print(f"sweep written to {res.output_dir} (summary: {res.summary})")
    return 0


def evaluate(cfg: Config, args: argparse.Namespace) -> int:
    from ..registry import local_copy, parse_uri, payload_dir
    from ..stages.evaluate import evaluate_stage
    from ..tracking import log_result, stage_run
    from ..tracking.versions import tag_model_version

    version = None
    try:
        registered = bool(cfg.evaluate.sae) and parse_uri(cfg.evaluate.sae).kind == "registry"
    except ValueError:  # not a reference: a directory, which the stage checks (and names if missing)
        registered = False
    if registered:
        d, info = local_copy(cfg.evaluate.sae)
        version = (info["name"], info["version"])
        cfg = replace(cfg, **{"evaluate.sae": str(payload_dir(d, "sae"))})
    with stage_run(cfg, "evaluate"):
        res = evaluate_stage(cfg, progress=True)
        log_result(res)
    if version is not None:  # the registered version carries what its evaluation found
        tag_model_version(*version, res.headline, prefix="eval.")
    print((res.output_dir / "report.md").read_text())
    print(f"evaluation written to {res.output_dir}"
          + (f"; {version[0]} version {version[1]} tagged with its headline numbers" if version else ""))
    return 0


def eval_frontier(cfg: Config, args: argparse.Namespace) -> int:
    from ..stages.frontier import frontier_stage
    from ..tracking import log_result, stage_run

    with stage_run(cfg, "eval_frontier"):
        res = frontier_stage(cfg, progress=True)
        log_result(res)
    print(res.table.to_string(index=False))
    print(f"frontier written to {res.output_dir}")
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    from ..pipeline import run as run_pipeline

    res = run_pipeline(cfg)
    if not distributed.is_main():
        return 0
    print(f"pipeline finished in {res.seconds:.0f} s; parent run {res.parent_run_id}")
    for o in res.stages.values():
        print(f"  {o.stage:<12} run {o.run_id}" + (f" (reused from {o.reused_from})" if o.reused_from else ""))
    for r in res.registrations.values():
        print(f"  {r.name} version {r.version}: {'champion' if r.champion else 'challenger'} — {r.reason}")
    print(f"  in the MLflow UI: {_ui_link(res.parent_run_id)}")
    return 0


def _ui_link(run_id: str) -> str:
    import mlflow

    from ..tracking import ui_link

    uri = mlflow.get_tracking_uri()
    link = ui_link(uri, mlflow.get_run(run_id).info.experiment_id, run_id)
    return link if uri.startswith("http") else f"{link} (after `mlflow ui --backend-store-uri {uri}`)"


def tune(cfg: Config, args: argparse.Namespace) -> int:
    from ..tune import tune as run_tune

    res = run_tune(cfg)
    print(f"study {res.study_name} ({res.storage}): {res.n_trials_run} trial(s) run here; parent run "
          f"{res.parent_run_id}")
    if res.best_value is not None:
        print(f"  best {cfg.tune.metric} = {res.best_value:.5g} with {json.dumps(res.best_params)}")
    if res.registration:
        print(f"  registered {res.registration['name']} version {res.registration['version']}")
    return 0

