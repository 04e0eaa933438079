"""`revelio train-probe`: train the configured probe, run the few-shot protocol and the controls, log it all.

Called inside an active MLflow run (the CLI opens it with `tracking.stage_run`); without one it still trains,
saves and returns everything, and only skips the logging.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..config import Config, ConfigError, config_hash, to_dict
from ..features.store import FeatureSet, FeatureStore, open_store
from .controls import (
    aligned_features,
    dataset_for_store,
    pixel_control,
    pool_tokens,
    random_init_store,
    random_relu_expansion,
)
from .diffc import train_diffc
from .fewshot import FewShotResult, run_few_shot
from .linear import _json_default, fit_linear_probe
from .metrics import chance_accuracy, classification_metrics, confusion_figure, log_metrics

DEFAULT_DEPTH = 3


# --------------------------------------------------------------------------- SAE access
# Thin seams around revelio_svc.sae so the stage imports without it and tests can stand in for it.
def _load_sae(path: str):
    if Path(path).exists():
        from ..sae import load_sae
    else:  # NAME@alias, models:/…, runs:/… : the registry resolves those
        from ..registry import load_sae
    return load_sae(path)


def _image_latents(sae, feats: np.ndarray, pooling: str):
    from ..sae.latents import image_latents

    return image_latents(sae, feats, pooling=pooling)


def sae_config(sae) -> dict[str, Any]:
    """The SAE's config as a dict, whether it is a dataclass, a mapping or a plain object."""
    c = sae.config
    if dataclasses.is_dataclass(c):
        return dataclasses.asdict(c)
    if isinstance(c, dict):
        return dict(c)
    return {k: v for k, v in vars(c).items() if not k.startswith("_")}


def sae_latents(sae, fs: FeatureSet, pooling: str) -> sp.csr_matrix:
    """Image-level SAE latents of every row, shard by shard, kept sparse (CSR) throughout."""
    parts = []
    for _, feats in fs.iter_shards():
        z = _image_latents(sae, feats.astype(np.float32, copy=False), pooling)
        parts.append(sp.csr_matrix(z, dtype=np.float32))
    if not parts:
        raise ValueError(f"the feature set {fs.key} has no rows")
    return sp.vstack(parts).tocsr()


def default_sae_dir(cfg: Config) -> Path:
    """Where `train-sae` writes for this config (sae.output, else the trainer's own hashed directory)."""
    from ..sae.trainer import sae_output_dir

    return sae_output_dir(cfg)


def resolve_sae_dir(cfg: Config) -> str:
    if cfg.probe.sae:
        return cfg.probe.sae
    d = default_sae_dir(cfg)
    if not d.exists():
        raise ConfigError(f"probe.sae: probe.input=sae needs an SAE; none was given and {d} (where train-sae "
                          "writes for this config) does not exist. Set probe.sae to the SAE directory or "
                          "registry URI, or run `revelio train-sae` first.")
    return str(d)


# --------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class ProbeInputs:
    X: Any  # np.ndarray (n, d) / (n, H, W, C), or CSR (n, n_latents)
    hook_point: str
    timestep: int
    pooling: str  # pooled set used, "tokens" for Diff-C, or the SAE's latent pooling
    sae: Any = None
    sae_ref: dict[str, Any] | None = None
    source_feats: Any = None  # for SAE input: the features the SAE reads (for the controls)


def main_inputs(cfg: Config, store: FeatureStore) -> ProbeInputs:
    pc = cfg.probe
    if pc.input == "features":
        pooling = "tokens" if pc.kind == "diffc" else pc.pooling
        X = store.feature_set(pc.hook_point, pc.timestep, pooling).load()
        return ProbeInputs(X, pc.hook_point, pc.timestep, pooling)
    if pc.kind == "diffc":
        raise ConfigError("probe.input: Diff-C runs on spatial feature maps; SAE latents are image vectors. "
                          "Use probe.kind=linear with probe.input=sae, or probe.input=features with Diff-C.")
    sae_dir = resolve_sae_dir(cfg)
    sae = _load_sae(sae_dir)
    sc = sae_config(sae)
    hp = sc.get("hook_point", pc.hook_point)
    t = int(sc.get("timestep", pc.timestep))
    if (hp, t) != (pc.hook_point, pc.timestep):
        print(f"note: the SAE at {sae_dir} reads {hp} t={t}; probing there instead of probe.hook_point="
              f"{pc.hook_point} t={pc.timestep}")
    sae_input = sc.get("input", "pooled")
    latent_pooling = sc.get("latent_pooling", "max")
    set_pooling = "tokens" if sae_input == "tokens" else sc.get("pooling", pc.pooling)
    fs = store.feature_set(hp, t, set_pooling)
    X = sae_latents(sae, fs, latent_pooling)
    ref = {"path": str(sae_dir), "hook_point": hp, "timestep": t, "input": sae_input,
           "latent_pooling": latent_pooling, "pooling": set_pooling, "n_latents": int(X.shape[1])}
    return ProbeInputs(X, hp, t, latent_pooling if sae_input == "tokens" else set_pooling, sae, ref, fs)


def control_inputs(cfg: Config, store: FeatureStore, main: ProbeInputs, is_test: np.ndarray,
                   progress: bool = False) -> dict[str, Any]:
    """name → input matrix of every control, rows aligned with the model's rows."""
    pc = cfg.probe
    ds = dataset_for_store(cfg, store)
    fingerprint = store.config.get("dataset", {}).get("fingerprint")
    out: dict[str, Any] = {}
    train_rows = np.flatnonzero(~is_test)
    if pc.kind == "diffc":
        out["pixels"] = pixel_control(cfg, store, size=min(ds.image_size, 64), flatten=False, dataset=ds)
        rstore = random_init_store(cfg, [main.hook_point], [main.timestep], ["tokens"], fingerprint, ds, progress,
                                   model_backbone=store.config.get("backbone"))
        out["random_init"] = aligned_features(rstore, main.hook_point, main.timestep, "tokens", store.index())
        return out
    out["pixels"] = pixel_control(cfg, store, size=16, flatten=True, dataset=ds)
    if main.sae is not None:
        ref = main.sae_ref
        pooled_key = f"{main.hook_point}/t{main.timestep}/{main.pooling}"
        if ref["input"] == "tokens":
            tokens = main.source_feats.load()
            raw = (store.feature_set(main.hook_point, main.timestep, main.pooling).load()
                   if pooled_key in store.manifest["feature_sets"] else pool_tokens(tokens, main.pooling))
            out["raw_features"] = raw
            out["random_relu"] = random_relu_expansion(tokens, ref["n_latents"], train_rows, main.pooling)
            del tokens
        else:
            raw = main.source_feats.load()
            out["raw_features"] = raw
            out["random_relu"] = random_relu_expansion(raw, ref["n_latents"], train_rows, main.pooling)
    rstore = random_init_store(cfg, [main.hook_point], [main.timestep], [main.pooling], fingerprint, ds, progress,
                               model_backbone=store.config.get("backbone"))
    out["random_init"] = aligned_features(rstore, main.hook_point, main.timestep, main.pooling, store.index())
    return out


# --------------------------------------------------------------------------- the stage
def probe_fitter(cfg: Config, n_classes: int, meta: dict[str, Any]):
    pc = cfg.probe
    if pc.kind == "linear":
        return lambda X, y, seed: fit_linear_probe(X, y, C=pc.C, max_iter=pc.max_iter, seed=seed, meta=meta)
    depth = int(getattr(pc, "depth", DEFAULT_DEPTH))
    return lambda X, y, seed: train_diffc(X, y, n_classes, width=pc.width, depth=depth, epochs=pc.epochs, lr=pc.lr,
                                          weight_decay=pc.weight_decay, dropout=pc.dropout,
                                          batch_size=pc.batch_size, seed=seed, meta=meta)


def result_table(results: dict[str, FewShotResult], chance: float):
    """One row per (input, shots): the model first, then its controls."""
    import pandas as pd

    rows = []
    for name, res in results.items():
        for shots, s in res.summary.items():
            rows.append({"input": name, "role": "model" if name == "model" else "control", "shots": shots, **s,
                         "chance": chance})
    return pd.DataFrame(rows)


def train_probe_stage(cfg: Config, progress: bool = False) -> dict[str, Any]:
    """Train, evaluate and save the probe of `cfg.probe`; returns paths and metrics.

    The saved probe (safetensors + JSON) goes to `<output_dir>/probe/<hash>`, its report (result table with
    controls, few-shot runs, metrics JSON, confusion matrix) to `<that>/report`. Both are logged as
    artifacts when an MLflow run is active.
    """
    import mlflow
    import pandas as pd

    from ..features.extract import store_uri_for

    pc = cfg.probe
    store_uri = pc.store or store_uri_for(cfg)
    store = open_store(store_uri)
    if pc.concept not in store.label_names:
        raise ConfigError(f"probe.concept: the store at {store.uri} has no labels for {pc.concept!r}; it has: "
                          f"{', '.join(store.label_names)}")
    class_names = list(store.label_names[pc.concept])
    labels = store.labels(pc.concept)
    is_test = store.is_test()
    n_classes = len(class_names)

    main = main_inputs(cfg, store)
    meta = {"concept": pc.concept, "class_names": class_names, "input": pc.input, "hook_point": main.hook_point,
            "timestep": main.timestep, "pooling": main.pooling, "store_uri": store.uri,
            "store_config_hash": store.manifest.get("config_hash"), "sae": main.sae_ref}
    fit = probe_fitter(cfg, n_classes, meta)
    shots = list(pc.shots) + ([] if "all" in pc.shots else ["all"])  # the saved probe is always the k=all one
    deterministic = pc.kind == "linear"
    results: dict[str, FewShotResult] = {
        "model": run_few_shot(fit, main.X, labels, is_test, shots, pc.seeds, n_classes, deterministic,
                              keep=[("all", 0)], index=store.index())}
    if pc.controls:
        for name, Xc in control_inputs(cfg, store, main, is_test, progress).items():
            cmeta = {**meta, "input": name, "sae": None}
            results[name] = run_few_shot(probe_fitter(cfg, n_classes, cmeta), Xc, labels, is_test,
                                         list(pc.shots), pc.seeds, n_classes, deterministic,
                                         index=store.index())

    if ("all", 0) not in results["model"].models:
        raise ValueError(f"the train split of {store.uri} holds a single class of {pc.concept!r}: nothing to probe")
    probe = results["model"].models[("all", 0)]
    if probe.meta.get("converged") is False:
        print(f"note: the probe's solver stopped at probe.max_iter={pc.max_iter} before converging; "
              "raise probe.max_iter (or lower probe.C) for a fully fitted probe")
    y_test = labels[is_test]
    pred = results["model"].predictions[("all", 0)]
    main_metrics = classification_metrics(y_test, pred, class_names)
    cm = main_metrics.pop("confusion")
    chance = chance_accuracy(labels[~is_test], y_test)
    metrics: dict[str, Any] = {**main_metrics, "chance": chance, "n_train": int((~is_test).sum())}
    metrics["fewshot"] = {k: {m: v[m] for m in ("accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std")}
                          for k, v in results["model"].summary.items()}
    for name, res in results.items():
        if name != "model":
            metrics.setdefault("control", {})[name] = {
                k: {m: v[m] for m in ("accuracy_mean", "accuracy_std")} for k, v in res.summary.items()}

    # save -----------------------------------------------------------------
    h = config_hash({"probe": to_dict(pc), "store": store.manifest.get("config_hash"), "sae": main.sae_ref})
    out = Path(cfg.output_dir) / "probe" / h
    files = probe.save(out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    table = result_table(results, chance)
    table.to_csv(report / "results.csv", index=False)
    runs = pd.DataFrame([{"input": n, **r} for n, res in results.items() for r in res.runs])
    runs.to_csv(report / "fewshot_runs.csv", index=False)
    (report / "metrics.json").write_text(json.dumps(
        {**metrics, "confusion": cm.tolist(), "class_names": class_names}, indent=2, default=_json_default))
    title = f"{pc.kind} on {'SAE latents' if pc.input == 'sae' else 'features'}: {pc.concept} " \
            f"({main.hook_point}, t={main.timestep})"
    fig = confusion_figure(cm, class_names, title)
    fig.savefig(report / "confusion.png", dpi=110)

    run_id = None
    if mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
        # tags, not params: they may legitimately change on a re-run and params may not
        mlflow.set_tags({"probe_dir": str(out), "store_uri": store.uri, "probe_kind": pc.kind,
                         "probe_input": pc.input, "probe_hook_point": main.hook_point,
                         "probe_timestep": str(main.timestep), "probe_concept": pc.concept,
                         **({"sae_path": main.sae_ref["path"]} if main.sae_ref else {})})
        log_metrics(metrics)
        mlflow.log_figure(fig, "probe_report/confusion.png")
        for p in files.values():
            mlflow.log_artifact(str(p), "probe")
        for name in ("results.csv", "fewshot_runs.csv", "metrics.json"):
            mlflow.log_artifact(str(report / name), "probe_report")
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(table.to_string(index=False))
    return {"probe_dir": str(out), "probe_files": {k: str(v) for k, v in files.items()},
            "report_dir": str(report), "table_csv": str(report / "results.csv"), "metrics": metrics,
            "confusion": cm, "table": table, "store_uri": store.uri, "run_id": run_id}
