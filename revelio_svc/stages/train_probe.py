"""The `train_probe` stage: train the configured probe, run the few-shot protocol and the controls."""
from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import Config, ConfigError, replace, to_dict
from ..contracts import EVALUATION_FILE, Artifact, Evaluation, StageResult, flat_metrics
from ..features.extract import store_uri_for
from ..features.store import FeatureSet, FeatureStore, open_store
from ..identity import Paths, digest
from ..jsonmeta import json_default
from ..parallel import thread_map
from ..probe.controls import (
    aligned_features,
    dataset_for_store,
    pixel_control,
    pool_tokens,
    random_init_store,
    random_relu_expansion,
)
from ..probe.diffc import train_diffc
from ..probe.select import raw_inputs_available, raw_probe
from ..probe.fewshot import FewShotResult, run_few_shot
from ..probe.linear import fit_linear_probe, fit_warnings
from ..probe.metrics import chance_accuracy, classification_metrics, confusion_figure
from ..probe.sparse import (
    fit_sparse_probe,
    smallest_within,
    sparsity_curve,
    sparsity_figure,
    validation_split,
)
from ..sae import SparseAutoencoder, image_latents, read_sae
from ..sae.io import sae_identity
from ..sae.trainer import sae_output_dir

DEFAULT_DEPTH = 3


# --------------------------------------------------------------------------- SAE access
def _load_sae(path: str) -> SparseAutoencoder:
    """The SAE directory the probe reads; registry URIs are resolved to directories by the caller."""
    if not Path(path).is_dir():
        raise ConfigError(f"probe.sae: {path!r} is not an SAE directory (registry URIs such as "
                          "revelio-sae@champion are resolved by `revelio train-probe` and `revelio run`)")
    return read_sae(path)


def sae_latents(sae, fs: FeatureSet, pooling: str) -> sp.csr_matrix:
    """Image-level SAE latents of every row, shard by shard, kept sparse (CSR) throughout."""
    parts = []
    for _, feats in fs.iter_shards():
        z = image_latents(sae, feats.astype(np.float32, copy=False), pooling=pooling)
        parts.append(sp.csr_matrix(z, dtype=np.float32))
    if not parts:
        raise ValueError(f"the feature set {fs.key} has no rows")
    return sp.vstack(parts).tocsr()


def resolve_sae_dir(cfg: Config) -> str:
    if cfg.probe.sae:
        return cfg.probe.sae
    d = sae_output_dir(cfg)
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
    sc = sae.config
    hp, t = sc.hook_point or pc.hook_point, sc.timestep if sc.timestep >= 0 else pc.timestep
    if (hp, t) != (pc.hook_point, pc.timestep):
        print(f"note: the SAE at {sae_dir} reads {hp} t={t}; probing there instead of probe.hook_point="
              f"{pc.hook_point} t={pc.timestep}")
    sae_input, latent_pooling = sc.input, sc.latent_pooling
    set_pooling = "tokens" if sae_input == "tokens" else (sc.pooling or pc.pooling)
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
                   if pooled_key in store.manifest.feature_sets else pool_tokens(tokens, main.pooling))
            out["raw_features"] = raw
            out["random_relu"] = random_relu_expansion(tokens, ref["n_latents"], train_rows, main.pooling)
            del tokens
        else:
            raw = main.source_feats.load()
            out["raw_features"] = raw
            out["random_relu"] = random_relu_expansion(raw, ref["n_latents"], train_rows, main.pooling)
    # a top<q> pooling is not stored: the control's token maps are pooled here the same way
    stored = main.pooling if main.pooling in ("mean", "max") else "tokens"
    rstore = random_init_store(cfg, [main.hook_point], [main.timestep], [stored], fingerprint, ds, progress,
                               model_backbone=store.config.get("backbone"))
    Xr = aligned_features(rstore, main.hook_point, main.timestep, stored, store.index())
    out["random_init"] = Xr if stored == main.pooling else pool_tokens(Xr, main.pooling)
    return out


# --------------------------------------------------------------------------- the stage
def probe_fitter(cfg: Config, n_classes: int, meta: dict[str, Any], n_train: int | None = None):
    """fit(X, y, seed) for every shot count; `n_train` (the store's train rows) is what probe.C_l1 is stated for."""
    pc = cfg.probe
    if pc.kind == "linear" and pc.latents_per_class > 0:
        return lambda X, y, seed: fit_sparse_probe(X, y, pc.latents_per_class, C=pc.C, max_iter=pc.max_iter,
                                                   seed=seed, meta=meta)
    if pc.kind == "linear":
        return lambda X, y, seed: fit_linear_probe(X, y, C=pc.fit_C, max_iter=pc.max_iter, seed=seed, meta=meta,
                                                   penalty=pc.penalty, n_ref=n_train)
    depth = int(getattr(pc, "depth", DEFAULT_DEPTH))
    return lambda X, y, seed: train_diffc(X, y, n_classes, width=pc.width, depth=depth, epochs=pc.epochs, lr=pc.lr,
                                          weight_decay=pc.weight_decay, dropout=pc.dropout,
                                          batch_size=pc.batch_size, seed=seed, meta=meta)


# the controls a probe must beat at every shot count: a random ReLU expansion of the same width, and the
# features the latents are computed from
FLAG_CONTROLS = ("random_relu", "raw_features")


def result_table(results: dict[str, FewShotResult], chance: float):
    """One row per (input, shots): the model first, then its controls; model rows say whether they beat the
    `FLAG_CONTROLS` at that shot count (`flag_losses`)."""
    rows = []
    for name, res in results.items():
        for shots, s in res.summary.items():
            rows.append({"input": name, "role": "model" if name == "model" else "control", "shots": shots, **s,
                         "chance": chance})
    return flag_losses(pd.DataFrame(rows))


def flag_losses(table, controls=FLAG_CONTROLS):
    """`table` with two columns on the model rows: `loses_to` (the flagged controls whose mean accuracy at that
    shot count is higher than the model's, comma-separated, "" when none) and `beats_controls` (the model's mean
    accuracy is above every flagged control present at that shot count; a tie does not beat). Control rows get
    "" and NaN. A table without those controls (probe.controls=false) flags nothing."""
    table = table.copy()
    acc = {(r["input"], str(r["shots"])): r["accuracy_mean"] for _, r in table.iterrows()}
    loses, beats = [], []
    for _, r in table.iterrows():
        if r["role"] != "model":
            loses.append("")
            beats.append(np.nan)
            continue
        ref = {c: acc[(c, str(r["shots"]))] for c in controls if (c, str(r["shots"])) in acc}
        loses.append(",".join(c for c, v in ref.items() if v > r["accuracy_mean"]))
        beats.append(bool(all(r["accuracy_mean"] > v for v in ref.values())) if ref else np.nan)
    table["beats_controls"] = pd.Series(beats, index=table.index, dtype=object)
    table["loses_to"] = loses
    return table


def loss_warnings(table, what: str = "the probe") -> list[str]:
    """One warning line per shot count at which the model (`what`) loses to a flagged control."""
    out = []
    acc = {(r["input"], str(r["shots"])): r["accuracy_mean"] for _, r in table.iterrows()}
    for _, r in table[table["role"] == "model"].iterrows():
        if r["loses_to"]:
            vs = ", ".join(f"{c} {acc[(c, str(r['shots']))]:.3f}" for c in r["loses_to"].split(","))
            out.append(f"warning: {what} loses to its controls at {r['shots']} shots: "
                       f"{r['accuracy_mean']:.3f} vs {vs}")
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbeResult(StageResult):
    probe_dir: Path
    report_dir: Path
    store_uri: str
    concept: str
    class_names: tuple[str, ...]
    table: Any  # pandas DataFrame: one row per (input, shots), the model first, then its controls
    confusion: np.ndarray
    fewshot: Mapping[str, Mapping[str, float]]  # shots → accuracy/macro-F1 mean and std of the model

    def outputs(self) -> dict[str, str]:
        return {"probe_dir": str(self.probe_dir), "store_uri": self.store_uri}


def _open_checked(cfg: Config) -> FeatureStore:
    store = open_store(cfg.probe.store or store_uri_for(cfg))
    check_probe_labels(cfg, store)
    return store


def check_probe_labels(cfg: Config, store: FeatureStore) -> None:
    """The store has labels for probe.concept, of at least two classes among its train rows (a probe has
    nothing to tell apart otherwise); checked before any training, by `train-probe` and by `revelio run`."""
    concept = cfg.probe.concept
    if concept not in store.label_names:
        raise ConfigError(f"probe.concept: the store at {store.uri} has no labels for {concept!r}; it "
                          f"has: {', '.join(store.label_names)}")
    names = list(store.label_names[concept])
    present = sorted({int(v) for v in store.labels(concept)[~store.is_test()]})
    if len(present) < 2:
        found = ", ".join(repr(names[i]) if 0 <= i < len(names) else str(i) for i in present) or "none"
        folder = (" (an image folder needs one sub-folder per class, and at least two of them)"
                  if store.config.get("dataset", {}).get("name") == "imagefolder" else "")
        raise ConfigError(f"probe.concept: the train rows of the store at {store.uri} hold {len(present)} class "
                          f"of {concept!r} ({found}); a probe needs at least two classes to tell apart{folder}")


def _run_protocol(cfg: Config, store: FeatureStore, meta: dict[str, Any], labels: np.ndarray,
                  inputs: dict[str, Any]) -> dict[str, FewShotResult]:
    """The few-shot runs of `inputs`: the model's ("model", keeping the all-shots probe) and every control's."""
    pc = cfg.probe
    n_classes, is_test = len(meta["class_names"]), store.is_test()
    shots = list(pc.shots) + ([] if "all" in pc.shots else ["all"])  # the saved probe is always the k=all one
    deterministic = pc.kind == "linear"
    n_train = int((~np.asarray(is_test, bool)).sum())
    index = store.index()

    def protocol(name: str) -> FewShotResult:  # the model keeps its all-shots probe; controls keep nothing
        model = name == "model"
        fit = probe_fitter(cfg, n_classes, meta if model else {**meta, "input": name, "sae": None}, n_train)
        return run_few_shot(fit, inputs[name], labels, is_test, shots if model else list(pc.shots), pc.seeds,
                            n_classes, deterministic, keep=[("all", 0)] if model else (), index=index)

    # linear probes (one scikit-learn fit each) run side by side; Diff-C heads seed torch's global generator,
    # so they train one after another
    names = list(inputs)
    results = dict(zip(names, thread_map(protocol, names, workers=None if deterministic else 1,
                                             quiet=fit_warnings())))
    if ("all", 0) not in results["model"].models:
        raise ValueError(f"the train split of {store.uri} holds a single class of {pc.concept!r}: nothing to probe")
    return results


def _metrics(results: dict[str, FewShotResult], labels: np.ndarray, is_test: np.ndarray,
             class_names: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    y_test = labels[is_test]
    main_metrics = classification_metrics(y_test, results["model"].predictions[("all", 0)], class_names)
    cm = main_metrics.pop("confusion")
    metrics: dict[str, Any] = {**main_metrics, "chance": chance_accuracy(labels[~is_test], y_test),
                               "n_train": int((~is_test).sum())}
    metrics["fewshot"] = {k: {m: v[m] for m in ("accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std")}
                          for k, v in results["model"].summary.items()}
    for name, res in results.items():
        if name != "model":
            metrics.setdefault("control", {})[name] = {
                k: {m: v[m] for m in ("accuracy_mean", "accuracy_std")} for k, v in res.summary.items()}
    return metrics, cm


def _write_report(report: Path, results: dict[str, FewShotResult], metrics: dict[str, Any], cm: np.ndarray,
                  class_names: list[str], title: str):
    import matplotlib.pyplot as plt  # deferred: pyplot picks a backend on import; figures here are files

    report.mkdir(parents=True, exist_ok=True)
    table = result_table(results, metrics["chance"])
    table.to_csv(report / "results.csv", index=False)
    runs = pd.DataFrame([{"input": n, **r} for n, res in results.items() for r in res.runs])
    runs.to_csv(report / "fewshot_runs.csv", index=False)
    (report / "metrics.json").write_text(json.dumps(
        {**metrics, "confusion": cm.tolist(), "class_names": class_names}, indent=2, default=json_default))
    fig = confusion_figure(cm, class_names, title)
    fig.savefig(report / "confusion.png", dpi=110)
    plt.close(fig)
    return table


SPARSITY_TOLERANCE = 0.02  # the fewest latents per class within 2 points of the dense probe


def _sparsity(cfg: Config, main: ProbeInputs, labels: np.ndarray, is_test: np.ndarray, report: Path,
              title: str) -> tuple[dict[str, float], list[Artifact]]:
    """Accuracy against latents per class on a validation split of the train rows (never the test rows): the
    curve, the fewest latents per class within SPARSITY_TOLERANCE of the dense probe, and its figure."""
    import matplotlib.pyplot as plt  # deferred: pyplot picks a backend on import; figures here are files

    train = np.flatnonzero(~is_test)
    held = validation_split(labels[train], 0.2, seed=cfg.data.seed)
    curve = sparsity_curve(main.X[train], labels[train], held, C=cfg.probe.C, max_iter=cfg.probe.max_iter)
    chosen = smallest_within(curve, SPARSITY_TOLERANCE)
    metrics = {f"sparsity.val.{k}": v for k, v in curve.items()}
    metrics["sparsity.chosen_latents_per_class"] = float(chosen) if chosen is not None else float("nan")
    fig = sparsity_figure({"validation": curve}, chosen, f"{title}: accuracy against latents per class")
    report.mkdir(parents=True, exist_ok=True)
    fig.savefig(report / "sparsity.png", dpi=110)
    plt.close(fig)
    (report / "sparsity.json").write_text(json.dumps({"validation": curve, "chosen": chosen,
                                                      "tolerance": SPARSITY_TOLERANCE}, indent=2))
    return metrics, [Artifact(report / n, "probe_report") for n in ("sparsity.png", "sparsity.json")]


def _latents_per_class(setting: int, sparsity: Mapping[str, float], penalty: str = "l2") -> int:
    """probe.latents_per_class as a number: -1 (auto) becomes the fewest latents per class within
    SPARSITY_TOLERANCE of the dense probe on the validation split, or 0 (every latent) when none is."""
    if setting >= 0 or penalty == "l1":  # an L1 probe is sparse by itself (and its config refuses m > 0)
        return max(int(setting), 0)
    chosen = sparsity.get("sparsity.chosen_latents_per_class", float("nan"))
    return int(chosen) if np.isfinite(chosen) else 0


def probe_identity(cfg: Config, store_hash: str, sae_id: str | None) -> str:
    """See identity.py: the probe's options (not where its inputs live), the store and the SAE."""
    options = {k: v for k, v in to_dict(cfg.probe).items() if k not in ("store", "sae")}
    return digest({"probe": options, "store": store_hash, "sae": sae_id})


def _raw_probe(store: FeatureStore, main: ProbeInputs, concept: str, report: Path,
               inputs: dict[str, Any]) -> tuple[dict, list[Artifact]]:
    """`raw_probe.*` metrics and `raw_probe.csv` (every candidate's cross-validated accuracy): what the raw
    features at the probe's hook point say of the concept; nothing when the store holds none there. The
    `raw_features` control, when it ran, is those features already pooled the probe's way: reused."""
    if not raw_inputs_available(store, main.hook_point, main.timestep):
        return {}, []
    known = {main.pooling: inputs["raw_features"]} if "raw_features" in inputs else None
    try:
        rp = raw_probe(store, main.hook_point, main.timestep, concept, known=known)
    except ValueError as e:  # too few rows to cross-validate: the probe itself still stands
        print(f"note: no raw_probe.* figures: {e}", file=sys.stderr)
        return {}, []
    report.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rp.choice.table, columns=["inputs", "C", "cv_accuracy"])
    table["chosen"] = (table["inputs"] == rp.choice.inputs) & (table["C"] == rp.choice.C)
    table.to_csv(report / "raw_probe.csv", index=False)
    print(f"raw features at {main.hook_point} t={main.timestep}: a linear probe reads {concept} at "
          f"{rp.test_accuracy:.3f} on the test rows ({rp.choice.inputs}, C={rp.choice.C:g}, chosen on the train rows)")
    return rp.metrics(), [Artifact(report / "raw_probe.csv", "probe_report")]


def train_probe_stage(cfg: Config, progress: bool = False) -> ProbeResult:
    """Train, evaluate and save the probe of `cfg.probe`, with the few-shot protocol and the controls.

    The saved probe (safetensors + JSON) goes to `<output_dir>/probe/<identity>`, its report (result table
    with controls, few-shot runs, metrics JSON, confusion matrix) to `<that>/report`.
    """
    pc = cfg.probe
    store = _open_checked(cfg)
    class_names = list(store.label_names[pc.concept])
    labels, is_test = store.labels(pc.concept), store.is_test()
    main = main_inputs(cfg, store)
    meta = {"concept": pc.concept, "class_names": class_names, "input": pc.input, "hook_point": main.hook_point,
            "timestep": main.timestep, "pooling": main.pooling, "store_uri": store.uri,
            "store_config_hash": store.config_hash, "sae": main.sae_ref}
    identity = probe_identity(cfg, store.config_hash, sae_identity(main.sae_ref["path"]) if main.sae_ref else None)
    out = Paths.under(cfg.output_dir).probe(identity)
    title = (f"{pc.kind} on {'SAE latents' if pc.input == 'sae' else 'features'}: {pc.concept} "
             f"({main.hook_point}, t={main.timestep})")
    sparsity: dict[str, float] = {}
    extra: list[Artifact] = []
    if pc.kind == "linear" and main.sae is not None and pc.penalty == "l2":  # the top-m curve chooses m; L1 needs none
        sparsity, extra = _sparsity(cfg, main, labels, is_test, out / "report", title)
    m = _latents_per_class(pc.latents_per_class, sparsity, pc.penalty)
    if pc.kind == "linear":
        sparsity["sparsity.latents_per_class"] = float(m)
        cfg = replace(cfg, **{"probe.latents_per_class": m})
    inputs = {"model": main.X, **(control_inputs(cfg, store, main, is_test, progress) if pc.controls else {})}
    results = _run_protocol(cfg, store, meta, labels, inputs)
    raw, raw_files = _raw_probe(store, main, pc.concept, out / "report", inputs) if pc.raw_probe else ({}, [])
    probe = results["model"].models[("all", 0)]
    if pc.kind == "linear":  # how many latents an explanation can draw on, whichever way the probe was made sparse
        sparsity["sparsity.latents_used_per_class"] = float(np.mean((np.abs(probe.coef) > 0).sum(1)))
    if probe.meta.get("converged") is False:
        print(f"note: the probe's solver stopped at probe.max_iter={pc.max_iter} before converging; "
              "raise probe.max_iter (or lower probe.C) for a fully fitted probe", file=sys.stderr)
    metrics, cm = _metrics(results, labels, is_test, class_names)
    files = probe.save(out)
    flagged = result_table(results, metrics["chance"])
    for line in loss_warnings(flagged, f"the probe on {'SAE latents' if pc.input == 'sae' else 'features'}"):
        print(line, file=sys.stderr)
    model_rows = flagged[flagged["role"] == "model"]
    if model_rows["beats_controls"].notna().any():  # only when the flagged controls ran
        metrics["shots_losing_to_controls"] = int((model_rows["loses_to"] != "").sum())
    table = _write_report(out / "report", results, metrics, cm, class_names, title)
    metrics.update(sparsity)
    metrics.update(raw)
    evaluation = Evaluation(str(store.config.get("dataset", {}).get("fingerprint", store.config_hash)),
                            tuple(int(i) for i in store.index()[is_test]),
                            tuple(bool(c) for c in results["model"].predictions[("all", 0)] == labels[is_test]))
    evaluation.write(out / EVALUATION_FILE)
    tags = {"probe_dir": str(out), "store_uri": store.uri, "probe_kind": pc.kind, "probe_input": pc.input,
            "probe_hook_point": main.hook_point, "probe_timestep": str(main.timestep), "probe_concept": pc.concept,
            **({"sae_path": main.sae_ref["path"]} if main.sae_ref else {})}
    artifacts = tuple(Artifact(p, "probe") for p in (*files.values(), out / EVALUATION_FILE)) + tuple(
        Artifact(out / "report" / n, "probe_report")
        for n in ("results.csv", "fewshot_runs.csv", "metrics.json", "confusion.png")) + tuple(extra) + tuple(raw_files)
    return ProbeResult(identity=identity, metrics=flat_metrics(metrics), artifacts=artifacts, tags=tags,
                       probe_dir=out, report_dir=out / "report", store_uri=store.uri, concept=pc.concept,
                       class_names=tuple(class_names), table=table, confusion=cm, fewshot=metrics["fewshot"])
