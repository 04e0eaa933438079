"""Command implementations behind the CLI; each takes the loaded config and parsed args."""
from __future__ import annotations

import argparse

from .config import Config


def pretrain(cfg: Config, args: argparse.Namespace) -> int:
    from .backbones.pretrain import pretrain as run_pretrain
    from .tracking import stage_run

    with stage_run(cfg, "pretrain", ("pretrain", "data"), tags={"backbone": "unet2d", "dataset": "shapes"},
                   description="Train the default pixel-space UNet2DModel on procedural shapes") as run:
        path = run_pretrain(cfg)
        version = register_backbone(run.info.run_id) if cfg.tracking.register else None
    print(f"backbone written to {path}" + (f"; registered as revelio-backbone version {version}" if version else ""))
    return 0


def register_backbone(run_id: str, name: str = "revelio-backbone") -> str:
    """Register the run's `backbone/` directory (a diffusers model folder, not an MLflow model).

    The version is `challenger`; it becomes `champion` when there is none yet (a backbone has no single
    held-out metric to compare on: promote with `revelio registry promote`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Diffusion backbones trained by `revelio pretrain` "
                                                         "(diffusers UNet2DModel folder: config + safetensors)")
    source = mlflow.get_artifact_uri("backbone")
    mv = client.create_model_version(name, source=source, run_id=run_id,
                                     tags={"stage": "pretrain", "dataset": "shapes"})
    client.set_registered_model_alias(name, "challenger", mv.version)
    aliases = client.get_registered_model(name).aliases or {}
    if "champion" not in aliases:
        client.set_registered_model_alias(name, "champion", mv.version)
    return str(mv.version)


def extract(cfg: Config, args: argparse.Namespace) -> int:
    import sys

    from .features.extract import extract as run_extract
    from .features.plan import InsufficientSpaceError, preflight
    from .tracking import log_json, stage_run

    try:  # the plan first: its figures, and a refusal (nothing written) when the store would not fit
        pl, kw = preflight(cfg)
    except InsufficientSpaceError as e:
        print(f"revelio extract: {e}", file=sys.stderr)
        return 1
    if getattr(args, "no_mlflow", False):
        res = run_extract(cfg, **kw)
    else:
        import mlflow

        tags = {"backbone": cfg.backbone.id, "dataset": cfg.data.id or cfg.data.source,
                "hook_points": ",".join(cfg.extract.hook_points),
                "timesteps": ",".join(map(str, cfg.extract.timesteps))}
        with stage_run(cfg, "extract", ("data", "backbone", "extract"), tags=tags,
                       description="Capture hook-point activations into a feature store"):
            log_json(pl.to_dict(), "plan.json", "feature_store")
            res = run_extract(cfg, **kw)
            from .features.store import open_store
            store = open_store(res.store_uri)
            mlflow.set_tag("store_uri", res.store_uri)
            mlflow.set_tag("config_hash", res.config_hash)
            mlflow.log_param("dataset_fingerprint", store.config["dataset"]["fingerprint"])
            mlflow.log_metrics({"images_per_s": res.images_per_s, "n_images": res.n_images,
                                "n_rows": res.n_rows, "skipped_images": len(res.skipped)})
            log_json(store.manifest, "manifest.json", "feature_store")
            if res.skipped:
                log_json(res.skipped, "skipped_images.json", "feature_store")
    print(f"feature store: {res.store_uri} ({res.n_rows} rows, {len(res.skipped)} skipped, "
          f"{res.images_per_s:.0f} images·t/s)")
    return 0


def plan(cfg: Config, args: argparse.Namespace) -> int:
    import json
    import sys

    from .features.plan import InsufficientSpaceError, format_plan
    from .features.plan import plan as make_plan

    p = make_plan(cfg, probe=not getattr(args, "no_probe", False))
    print(json.dumps(p.to_dict(), indent=1) if getattr(args, "json", False) else format_plan(p))
    try:
        p.ensure_fits()
    except InsufficientSpaceError as e:
        print(f"revelio plan: {e}", file=sys.stderr)
        return 1
    return 0


def demo(cfg: Config, args: argparse.Namespace) -> int:
    from .demo import demo as run_demo

    return run_demo(cfg, args)
from .commands_registry import registry, run, sweep, train_probe, train_sae, tune  # noqa: E402,F401
