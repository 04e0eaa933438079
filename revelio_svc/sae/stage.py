"""The `train-sae` stage: train (or resume) the SAE, log it to MLflow, interpret its latents.

The CLI calls `train_sae_stage(cfg)` inside `tracking.stage_run(cfg, "train_sae", ...)`; without an
active MLflow run the stage runs the same and only skips the logging.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..config import Config
from ..features.store import FeatureStore, open_store
from .base import CONFIG_FILE, WEIGHTS_FILE
from .trainer import METRICS_FILE, resolve_store_uri, train_sae


def _active_mlflow():
    if "mlflow" not in sys.modules:
        return None
    import mlflow
    return mlflow if mlflow.active_run() is not None else None


def _log_params_once(mlflow, params: dict[str, Any]) -> None:
    """Log params the run does not have yet (MLflow refuses to change a logged param)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    new = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
    if new:
        mlflow.log_params(new)


def _image_source(cfg: Config, store: FeatureStore, dataset=None):
    """(image_fn, note): the dataset's images for the grids, or None and why not."""
    if dataset is None:
        try:
            from ..data import load_dataset

            dataset = load_dataset(cfg.data)
        except Exception as e:  # noqa: BLE001 - grids are optional; the metrics do not need images
            return None, f"could not load the dataset {cfg.data.source}:{cfg.data.id} ({type(e).__name__}: {e})"
    want = str((store.config.get("dataset") or {}).get("fingerprint", ""))
    fp = getattr(dataset, "fingerprint", None)
    got = str(fp()) if callable(fp) else ""
    if want and got and want != got:
        return None, (f"the configured dataset (fingerprint {got}) is not the one the store was extracted from "
                      f"(fingerprint {want}); its images would not match the rows")
    return dataset.image, ""


def train_sae_stage(cfg: Config, *, store: FeatureStore | str | None = None, dataset=None, interpret: bool = True,
                    progress: bool = True) -> dict[str, Any]:
    """Train the SAE of `cfg.sae`, log it, interpret it. Returns output dir, metrics and artifact paths.

    `dataset` (an ImageDataset) supplies images for the grids; default `load_dataset(cfg.data)`.
    """
    if store is None:
        store = resolve_store_uri(cfg)
    if not isinstance(store, FeatureStore):
        store = open_store(store)
    res = train_sae(cfg, store=store, progress=progress)
    out = Path(res.output_dir)
    sae_cfg = res.sae.config
    metrics = dict(res.metrics)
    result: dict[str, Any] = {"output_dir": str(out), "store_uri": res.store_uri, "feature_set": res.feature_set,
                              "lr": res.lr, "steps": res.steps, "resumed_from": res.resumed_from,
                              "skipped_training": res.skipped, "sae_config": sae_cfg.to_dict(),
                              "artifacts": [str(out / WEIGHTS_FILE), str(out / CONFIG_FILE), str(out / METRICS_FILE)]}
    mlflow = _active_mlflow()
    if mlflow is not None:
        _log_params_once(mlflow, {
            "store_uri": res.store_uri, "feature_set": res.feature_set, "sae_dir": str(out),
            "d_in": sae_cfg.d_in, "n_latents": sae_cfg.n_latents, "lr_effective": res.lr,
            "n_train_vectors": res.n_train_vectors, "n_eval_vectors": res.n_eval_vectors,
            "dataset_fingerprint": sae_cfg.dataset_fingerprint, "store_config_hash": sae_cfg.store_config_hash})
        mlflow.set_tags({"sae_dir": str(out), "store_uri": res.store_uri, "sae_variant": sae_cfg.variant})
        if res.skipped:  # a fresh run logged its metrics while training
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=res.steps)
        for f in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE):
            mlflow.log_artifact(str(out / f), "sae")

    if interpret:
        from ..interpret import interpret_sae

        idir = out / "interpret"
        summary_path = idir / "summary.json"
        if res.skipped and summary_path.is_file() and not cfg.force:
            summary = json.loads(summary_path.read_text())
            imetrics = {k: (float("nan") if v is None else v) for k, v in summary.get("metrics", {}).items()}
            artifacts = [str(p) for p in idir.rglob("*") if p.is_file()]
        else:
            image_fn, note = _image_source(cfg, store, dataset)
            primary = cfg.probe.concept if cfg.probe.concept in store.label_names else None
            ir = interpret_sae(res.sae, store, idir, image_fn=image_fn, primary_concept=primary,
                               seed=cfg.sae.seed, grids_note=note)
            imetrics, summary, artifacts = ir.metrics, ir.summary, ir.artifacts
        metrics.update(imetrics)
        result["interpret_dir"] = str(idir)
        result["interpret_summary"] = summary
        result["artifacts"] += artifacts
        if mlflow is not None:
            mlflow.log_metrics({k: float(v) for k, v in imetrics.items()}, step=res.steps)
            mlflow.log_artifacts(str(idir), "interpret")
            if str(summary.get("grids", "")).startswith("skipped"):
                mlflow.set_tag("interpret.grids", str(summary["grids"])[:500])
    result["metrics"] = metrics
    return result
