"""The tracking adapter: MLflow runs for stages, and stage results turned into params, metrics, artifacts,
tags and inputs. The only module that knows how a `StageResult` looks in MLflow.

What a user sees first in the MLflow UI is decided here:
- runs are named after their stage and subject (`train_sae · up_blocks.1 t=10 k=32`);
- params are the options a user compares (the stage's config sections without file locations, thread
  counts and checkpoint intervals); paths and URIs are tags;
- the dataset and the feature store a stage read are run inputs (Datasets column) with their digests.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

from .. import distributed
from ..backbones.pretrain import PretrainResult
from ..config import Config, to_dict
from ..contracts import MetricsCallback, StageResult
from ..features.extract import ExtractResult
from ..features.store import StoreError, open_store
from ..identity import digest
from .setup import setup
from .status import closing_run

# options that change only where files go, speed or progress output: never params
NOT_PARAMS: dict[str, set[str]] = {
    "extract": {"store", "num_threads", "batch_size"},
    "sae": {"store", "output", "num_threads", "checkpoint_every", "eval_every"},
    "probe": {"store", "sae"},
    "pretrain": {"output", "num_threads", "checkpoint_every", "sample_every"},
    "tracking": {"tracking_uri", "registry_uri", "artifact_location"},
    "evaluate": {"sae", "store", "batch_size"},
}
SECTIONS: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain", "data"),
    "extract": ("data", "backbone", "extract"),
    "train_sae": ("sae",),
    "train_probe": ("probe",),
    "sweep": ("probe",),
    "register": ("pipeline",),
    "evaluate": ("evaluate",),
    "eval_frontier": ("evaluate", "sae"),
    "main": ("data", "backbone", "extract", "sae", "probe", "pipeline"),
}
DESCRIPTIONS = {
    "main": "Revelio pipeline: extract → train_sae → train_probe → register (child runs, linked by run id).",
    "pretrain": "Train the default pixel-space UNet2DModel on procedural shapes.",
    "extract": "Capture hook-point activations of the backbone at the configured timesteps into a feature store.",
    "train_sae": "Train the k-sparse autoencoder on the (hook point, timestep) features of the store.",
    "train_probe": "Train the probe on features or SAE latents; few-shot protocol, controls, held-out accuracy.",
    "register": "Log revelio-sae, revelio-probe and revelio-classifier as pyfunc models and register them.",
    "sweep": "Probe every (hook point, timestep) of the store; heatmaps over blocks × timesteps.",
    "evaluate": "The SAE spliced into the model (denoising loss recovered), SCR, TPP and dictionary health.",
    "eval_frontier": "SAEs at several k against the controls: fidelity, sparse probing and SCR against L0.",
}


def dataset_name(cfg: Config) -> str:
    return cfg.data.id or cfg.data.source


def subject(cfg: Config, stage: str) -> str:
    """What a stage's run is about, for its name."""
    backbone = cfg.backbone.id.removeprefix("builtin:").rstrip("/").rsplit("/", 1)[-1]
    sc, pc = cfg.sae, cfg.probe
    return {
        "pretrain": f"shapes {cfg.data.image_size}px · {cfg.pretrain.steps} steps",
        "extract": f"{dataset_name(cfg)} · {backbone}",
        "train_sae": f"{sc.hook_point} t={sc.timestep} · {sc.variant} k={sc.k} ×{sc.expansion}",
        "train_probe": f"{pc.concept} · {pc.kind} on {pc.input}",
        "sweep": f"{dataset_name(cfg)} · {pc.pooling}-pooled",
        "register": f"{pc.concept} · {sc.hook_point} t={sc.timestep}",
        "evaluate": f"{pc.concept} · {sc.hook_point} t={sc.timestep}",
        "eval_frontier": f"{sc.hook_point} t={sc.timestep} · k={','.join(map(str, cfg.evaluate.frontier_ks))}",
        "main": f"{dataset_name(cfg)} · {sc.hook_point} t={sc.timestep}",
    }.get(stage, dataset_name(cfg))


# the parent run of the whole chain is named after the command that makes it (`revelio run`)
RUN_LABELS = {"main": "run"}


def run_name(cfg: Config, stage: str) -> str:
    return f"{RUN_LABELS.get(stage, stage)} · {subject(cfg, stage)}"


def run_tags(cfg: Config, stage: str) -> dict[str, str]:
    """Tags every run of the flow carries (what the registry's version tags repeat)."""
    return {"stage": stage, "backbone": cfg.backbone.id, "hook_point": cfg.sae.hook_point,
            "timestep": str(cfg.sae.timestep), "dataset": dataset_name(cfg), "concept": cfg.probe.concept}


def flat_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = str(v)
    return out


RUN_NAME_TAG = "mlflow.runName"


def stage_params(cfg: Config, stage: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for section in SECTIONS.get(stage, ()):
        d = {k: v for k, v in to_dict(getattr(cfg, section)).items() if k not in NOT_PARAMS.get(section, ())}
        params.update(flat_params(d, section + "."))
    return {k: v[:6000] for k, v in params.items()}


def distributed_params() -> dict[str, str]:
    """`world_size` and `dist_backend` of a run under torchrun; nothing for one process."""
    ctx = distributed.context()
    return {"world_size": str(ctx.world_size), "dist_backend": ctx.backend} if ctx.distributed else {}


def log_params_once(params: Mapping[str, Any]) -> None:
    """Log the params the active run does not have yet (MLflow refuses to change a logged param)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    items = [(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for i in range(0, len(items), 90):
        mlflow.log_params(dict(items[i:i + 90]))


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, *, tags: Mapping[str, str] | None = None,
              params: bool = True) -> Iterator[Any]:
    """An MLflow run for one stage, named after it, with its options logged as params.

    Inside `mlflow run` the entry point's run is active already (MLFLOW_RUN_ID): it is reused. A stage
    started while another run is active becomes its child.
    """
    setup(cfg.tracking)
    active = mlflow.active_run()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    all_tags = {**run_tags(cfg, stage), **(tags or {})}
    if env_run and active is None:
        run_cm = mlflow.start_run(run_id=env_run)
        # the MLflow-Projects run has a random name: it is this stage's run, so it gets the stage's name
        all_tags[RUN_NAME_TAG] = run_name(cfg, stage)
    else:
        run_cm = mlflow.start_run(run_name=run_name(cfg, stage), nested=active is not None, tags=all_tags,
                                  description=DESCRIPTIONS.get(stage))
    with closing_run(run_cm) as run:  # KILLED when stopped, FAILED when broken (status.py)
        mlflow.set_tags({**all_tags, "mlflow.note.content": DESCRIPTIONS.get(stage, "")})
        if params:
            log_params_once(stage_params(cfg, stage))
        log_params_once(distributed_params())
        yield run


def step_logger() -> MetricsCallback:
    """A MetricsCallback that logs to the run active when it is called."""

    def log(step: int, metrics: Mapping[str, float]) -> None:
        if mlflow.active_run() is not None:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step))

    return log


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    items = list(metrics.items())
    for i in range(0, len(items), 500):  # one batch request holds at most 1000 metrics
        mlflow.log_metrics(dict(items[i:i + 500]), step=step)


def _dataset_input(description: Mapping[str, Any], name: str) -> MetaDataset:
    """The dataset a store was extracted from, as an MLflow dataset (its fingerprint is the digest)."""
    source = CodeDatasetSource(tags={k: str(v) for k, v in description.items() if k != "fingerprint"})
    return MetaDataset(source=source, name=name, digest=str(description.get("fingerprint", ""))[:36] or None)


def _store_input(store_uri: str, config_hash: str) -> MetaDataset:
    try:
        with warnings.catch_warnings():  # a local path matches two equivalent source kinds; either is right
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(store_uri)
    except MlflowException:
        source = CodeDatasetSource(tags={"uri": store_uri})
    return MetaDataset(source=source, name=f"features-{config_hash[:8]}", digest=config_hash[:36])


def log_store_inputs(store_uri: str, config_hash: str, dataset: Mapping[str, Any] | None, name: str) -> None:
    """The dataset and the feature store a stage read, in the run's Datasets column."""
    if dataset:
        mlflow.log_input(_dataset_input(dataset, name), context="images")
    mlflow.log_input(_store_input(store_uri, config_hash), context="features")


def log_stage_inputs(outputs: Mapping[str, Any]) -> None:
    """The dataset and the feature store behind a stage's outputs (its `store_uri`), in the active run's
    Datasets column: every stage that reads a store shows what it read, not only extract."""
    uri = outputs.get("store_uri")
    if not uri:
        return
    try:
        store = open_store(str(uri))
    except StoreError:
        return  # a store that is gone: the run still records its URI as a tag
    dataset = dict(store.config.get("dataset") or {})
    log_store_inputs(str(uri), store.config_hash, dataset, str(dataset.get("name", "dataset")))


def _pretrain_input(result: PretrainResult) -> None:
    """The procedural images a backbone was pretrained on (source, seed, size: they define the stream)."""
    try:
        data = json.loads((Path(result.backbone_dir) / "training.json").read_text())["data"]
    except (OSError, ValueError, KeyError):
        return
    mlflow.log_input(_dataset_input({**data, "fingerprint": digest(data, 16)}, str(data.get("source", "shapes"))),
                     context="training")


def log_result(result: StageResult, *, step: int | None = None, skip_existing_metrics: bool = False) -> None:
    """Everything a stage result carries, into the active run.

    `skip_existing_metrics`: leave out metrics the run already shows with this value (logged during
    training); a final value that differs from the last one logged (e.g. an interpretation metric whose
    controls were rescored on the final SAE) is logged, so the run shows what the result says."""
    metrics = dict(result.metrics)
    if skip_existing_metrics:
        have = mlflow.get_run(mlflow.active_run().info.run_id).data.metrics
        metrics = {k: v for k, v in metrics.items() if k not in have or not math.isclose(have[k], v, rel_tol=1e-9)}
    if metrics:
        log_metrics(metrics, step)
    if result.params:
        log_params_once(result.params)
    tags = {**result.tags, "identity": result.identity}
    mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()})
    for a in result.artifacts:
        if not a.local.exists():
            continue
        if a.local.is_dir():
            mlflow.log_artifacts(str(a.local), a.path or a.local.name)
        else:
            mlflow.log_artifact(str(a.local), a.path or None)
    if isinstance(result, ExtractResult):
        log_store_inputs(result.store_uri, result.config_hash, result.dataset,
                         str(result.dataset.get("name", "dataset")))
        log_json(open_store(result.store_uri).manifest.to_dict(), "manifest.json", "feature_store")
        if result.skipped:
            log_json(list(result.skipped), "skipped_images.json", "feature_store")
    elif isinstance(result, PretrainResult):
        _pretrain_input(result)
    else:
        log_stage_inputs({"store_uri": result.outputs().get("store_uri") or result.tags.get("store_uri", "")})


def log_json(obj: Any, name: str, artifact_path: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_text(json.dumps(obj, indent=2, default=str))
        mlflow.log_artifact(str(p), artifact_path)
