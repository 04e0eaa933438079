"""The `train_sae` stage: train (or reuse) the SAE of `cfg.sae` on its feature store and interpret its latents."""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..contracts import Artifact, MetricsCallback, StageResult
from ..data import ImageDataset, load_dataset
from ..features.store import FeatureStore, open_store
from ..interpret import interpret_sae
from ..interpret.report import control_report, score_controls
from ..interpret.toplatents import dataset_report_data
from ..sae import SparseAutoencoder
from ..sae.base import CONFIG_FILE, WEIGHTS_FILE, SAEConfigBase
from ..sae.data import feature_set_for
from ..sae.trainer import METRICS_FILE, resolve_store_uri, train_sae

# metrics the trainer reports at every evaluation; the rest come from interpreting the latents
TRAINER_METRICS = ("fvu", "explained_variance", "dead_frac", "l0", "l2_ratio", "auxk_loss")
INTERPRET_METRICS = ("sigma_label", "label_purity")


@dataclass(frozen=True, kw_only=True)
class SAEResult(StageResult):
    sae_dir: Path
    store_uri: str
    feature_set: str
    config: SAEConfigBase
    steps: int
    lr: float
    resumed_from: int
    skipped_training: bool
    n_train_vectors: int
    n_eval_vectors: int
    interpret_dir: Path | None = None
    interpret_summary: Mapping | None = None

    def outputs(self) -> dict[str, str]:
        return {"sae_dir": str(self.sae_dir), "store_uri": self.store_uri}


def _matching_dataset(cfg: Config, store: FeatureStore, dataset: ImageDataset | None):
    """(dataset, note): the store's own dataset (for images and masks), or None and why not."""
    if dataset is None:
        try:
            dataset = load_dataset(cfg.data)
        except Exception as e:  # noqa: BLE001 - grids and masks are optional; the metrics do not need them
            return None, f"could not load the dataset {cfg.data.source}:{cfg.data.id} ({type(e).__name__}: {e})"
    want = str((store.config.get("dataset") or {}).get("fingerprint", ""))
    got = str(dataset.fingerprint())
    if want and got and want != got:
        return None, (f"the configured dataset (fingerprint {got}) is not the one the store was extracted from "
                      f"(fingerprint {want}); its images would not match the rows")
    return dataset, ""


def live_interpreter(cfg: Config, store: FeatureStore, dataset: ImageDataset | None = None):
    """Interpretation metrics of the SAE *while it trains*, so tuning can report (and prune) on them.

    The same report as the final interpretation (interpret/report.py: σ_label, label purity, sparse
    probing, dissection, and their `control.*` and `gap.*` against the matched controls) on the same
    rows. Scoring the controls costs several SAEs' worth of report, so they are scored once, at the first
    evaluation, with the centre (`b_pre`) the SAE has then; the final report rescores them on the final
    SAE, so a run's last value can differ slightly from its last intermediate one.

    Rows: the trainer's evaluation rows (`sae.eval_rows`): the store's test rows, or for tuning the
    validation share of the train images, so what chooses a recipe never reads a test row.
    """
    sc = cfg.sae
    fset = feature_set_for(store, sc.hook_point, sc.timestep, sc.input, sc.pooling)
    concept = cfg.probe.concept if cfg.probe.concept in store.label_names else next(iter(store.label_names))
    data = dataset_report_data(fset, concept, dataset, rows=sc.eval_rows, validation_fraction=sc.validation_fraction,
                               seed=sc.seed)
    controls: dict = {}

    def metrics(sae: SparseAutoencoder) -> dict[str, float]:
        if not controls:
            controls.update(score_controls(sae, data, init_seed=sc.seed))
        m = control_report(sae, data, controls=controls).metrics()
        m.update({"label_purity": m.get(f"label_purity_mean.{concept}", float("nan")),
                  "sigma_label": m.get(f"sigma_label.{concept}", float("nan"))})
        return m

    return metrics


def train_sae_stage(cfg: Config, *, store: FeatureStore | str | None = None, dataset: ImageDataset | None = None,
                    interpret: bool = True, progress: bool = True, on_eval: MetricsCallback | None = None,
                    live_interpretation: bool = False) -> SAEResult:
    """Train the SAE of `cfg.sae` and interpret it.

    `on_eval(step, metrics)` hears the held-out metrics at every evaluation; with `live_interpretation`
    they include the interpretation metrics (see `live_interpreter`). `dataset` supplies the images
    of the latent grids (default: `load_dataset(cfg.data)`).
    """
    if store is None:
        store = resolve_store_uri(cfg)
    if not isinstance(store, FeatureStore):
        store = open_store(store)
    live = None
    if live_interpretation:
        ds, _ = _matching_dataset(cfg, store, dataset)
        live = live_interpreter(cfg, store, ds)
    res = train_sae(cfg, store=store, progress=progress, on_eval=on_eval, extra_metrics=live)
    out = Path(res.output_dir)
    metrics = dict(res.metrics)
    artifacts = [Artifact(out / f, "sae") for f in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE)]
    idir, summary = None, None
    if interpret:
        idir = out / "interpret"
        summary_path = idir / "summary.json"
        if res.skipped and summary_path.is_file() and not cfg.force:
            summary = json.loads(summary_path.read_text())
            imetrics = {k: v for k, v in summary.get("metrics", {}).items() if v is not None}
        else:
            ds, note = _matching_dataset(cfg, store, dataset)
            primary = cfg.probe.concept if cfg.probe.concept in store.label_names else None
            ir = interpret_sae(res.sae, store, idir, image_fn=ds.image if ds is not None else None,
                               primary_concept=primary, seed=cfg.sae.seed, grids_note=note,
                               masks_fn=getattr(ds, "masks_batch", None),
                               concept_parts=getattr(ds, "concept_parts", None), init_seed=cfg.sae.seed)
            imetrics, summary = ir.metrics, ir.summary
        metrics.update(imetrics)
        artifacts.append(Artifact(idir, "interpret"))
    if progress:
        print(f"SAE at {out}: " + ", ".join(f"{k}={metrics[k]:.4g}" for k in ("fvu", "l0", "dead_frac")
                                              if k in metrics), file=sys.stderr)
    c = res.sae.config
    return SAEResult(
        identity=res.identity, metrics={k: float(v) for k, v in metrics.items() if np.isfinite(v)},
        params={"d_in": str(c.d_in), "n_latents": str(c.n_latents), "lr_effective": str(res.lr),
                "n_train_vectors": str(res.n_train_vectors), "n_eval_vectors": str(res.n_eval_vectors),
                "feature_set": res.feature_set},
        artifacts=tuple(artifacts), tags={"sae_variant": c.variant, "sae_dir": str(out), "store_uri": res.store_uri},
        sae_dir=out, store_uri=res.store_uri, feature_set=res.feature_set, config=c, steps=res.steps, lr=res.lr,
        resumed_from=res.resumed_from, skipped_training=res.skipped, n_train_vectors=res.n_train_vectors,
        n_eval_vectors=res.n_eval_vectors, interpret_dir=idir, interpret_summary=summary)
