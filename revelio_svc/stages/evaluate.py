"""The `evaluate` stage (`revelio eval`): an SAE judged inside its model and by what ablating its latents does.

Reads only the feature store (rows, labels, features; its config names the backbone and the dataset whose
images it holds), the backbone and the SAE, so it evaluates any SAE saved in the project's format,
including ones imported from other tools. Writes into `<output_dir>/eval/<identity>/`:

    summary.csv     every number: units (sae | control.random | control.channels), metric, value
    report.md       the headline numbers and what they mean
    metrics.json    the flat metrics (what the MLflow run shows)
    fidelity.png    denoising loss recovered per timestep, against the zero- and mean-ablation floors
    scr_tpp.png     SCR and TPP against the number of ablated latents, beside the controls
    health.png      latent density (log scale), encoder–decoder and maximum decoder cosines
    samples.png     DDIM samples of the same seeds, clean (top) and with the SAE spliced (bottom)

What each number means: evaluate/fidelity.py (loss recovered, sampling), evaluate/concepts.py (SCR, TPP),
evaluate/health.py (density, cosines).
"""
from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import load_backbone
from ..config import Config, ConfigError, replace, to_dict
from ..data import load_dataset
from ..contracts import Artifact, StageResult
from ..evaluate import concepts, fidelity, health
from ..features.extract import store_uri_for
from ..features.store import FeatureStore, open_store
from ..identity import digest
from ..interpret.controls import control_sae
from ..interpret.purity import direction_activations
from ..interpret.report import report_rows
from ..interpret.toplatents import read_rows
from ..sae import image_latents, read_sae
from ..sae.data import feature_set_for
from ..sae.io import sae_identity
from ..sae.trainer import sae_output_dir

HEADLINE_N = 10  # the number of ablated latents the headline SCR / TPP numbers are read at
CONTROL_SEED = 1  # the matched random dictionary's seed (interpret/report.py's first control seed)


@dataclass(frozen=True, kw_only=True)
class EvalResult(StageResult):
    output_dir: Path
    sae_dir: Path
    store_uri: str
    headline: Mapping[str, float]
    notes: tuple[str, ...] = ()

    def outputs(self) -> dict[str, str]:
        return {"output_dir": str(self.output_dir), "sae_dir": str(self.sae_dir)}


# --------------------------------------------------------------------------- inputs
def resolve_inputs(cfg: Config) -> tuple[Path, str]:
    """(SAE directory, store URI) of `cfg.evaluate`: the given ones, else what train-sae wrote for `cfg`."""
    store_uri = cfg.evaluate.store or cfg.sae.store or store_uri_for(cfg)
    sae_dir = Path(cfg.evaluate.sae) if cfg.evaluate.sae else sae_output_dir(cfg, store_uri)
    if not (sae_dir / "sae.safetensors").is_file():
        raise ConfigError(f"evaluate.sae: no SAE at {sae_dir}; train one with `revelio train-sae` or name a "
                          "directory or registry URI (revelio-sae@champion)")
    return sae_dir, store_uri


def store_dataset(cfg: Config, store: FeatureStore):
    """The images of the store's rows: `cfg.data`, checked to be the dataset the store was extracted from."""
    ds = load_dataset(cfg.data)
    want = (store.config.get("dataset") or {}).get("fingerprint")
    if want is not None and want != ds.fingerprint():
        raise ConfigError(f"data: the store at {store.uri} was extracted from another dataset (fingerprint {want}, "
                          f"data.* gives {ds.fingerprint()}); pass the data section of its extraction")
    return ds


def backbone_for_store(cfg: Config, store: FeatureStore):
    """The backbone the store was extracted from (its config says which), on `cfg.backbone`'s device."""
    b = dict(store.config.get("backbone") or {})
    changes: dict[str, Any] = {f"backbone.{k}": b[k] for k in ("kind", "id", "revision", "init") if b.get(k)}
    if b.get("init_seed") is not None:
        changes["backbone.init_seed"] = int(b["init_seed"])
    if store.config.get("prompt_mode"):
        changes["backbone.prompt_mode"] = store.config["prompt_mode"]
    changes["backbone.resolution"] = int(store.config.get("resolution") or 0)
    return load_backbone(replace(cfg, **changes).backbone)


def eval_identity(cfg: Config, sae_dir: str | Path, store: FeatureStore) -> str:
    """What the evaluation depends on: the SAE, the store, the options that change numbers, the concept."""
    concept, _ = pick_concepts(cfg, store, [])
    opts = {k: v for k, v in to_dict(cfg.evaluate).items()
            if k not in ("sae", "store", "batch_size", "frontier_ks", "frontier_steps")}
    return digest({"sae": sae_identity(sae_dir), "store": store.config_hash, "evaluate": opts, "concept": concept,
                   "C": cfg.probe.C})


# --------------------------------------------------------------------------- figures
def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def fidelity_figure(res: fidelity.FidelityResult, path: Path) -> Path:
    plt = pyplot()
    ts = sorted(res.losses)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    w = 0.38
    for i, floor in enumerate(("zero", "mean")):
        vals = [res.recovered(t, floor) for t in ts]
        ax.bar(np.arange(len(ts)) + (i - 0.5) * w, vals, w, label=f"{floor}-ablation floor")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(ts)), [f"t={t}" for t in ts])
    ax.set_ylabel("denoising loss recovered")
    ax.set_title("SAE spliced into the model (1 = no loss)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def scr_tpp_figure(results: Mapping[str, tuple[concepts.SCRResult | None, concepts.TPPResult | None]],
                   path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, (s, t) in results.items():
        if s is not None:
            ns = sorted(s.accuracy)
            axes[0].plot(ns, [s.share(n) for n in ns], marker="o", label=name)
        if t is not None:
            ns = sorted(t.drops)
            axes[1].plot(ns, [t.score(n) for n in ns], marker="o", label=name)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("latents ablated (most spurious first)")
    axes[0].set_ylabel("biased probe accuracy / unbiased")
    axes[0].set_title("SCR: spurious-correlation removal", fontsize=9)
    axes[1].axhline(0.0, color="grey", lw=0.8, ls="--")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("latents ablated (per class)")
    axes[1].set_ylabel("intended − unintended accuracy drop")
    axes[1].set_title("TPP: targeted probe perturbation", fontsize=9)
    ns = sorted({int(n) for s, t in results.values() for r in (s.accuracy if s else {}, t.drops if t else {})
                 for n in r})
    for ax in axes:
        finish_axis(ax, ns)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def finish_axis(ax, ticks) -> None:
    """Plain numbers at the measured x values (not powers of ten) and a legend where there are labels."""
    if ticks:
        ax.set_xticks(ticks, [str(v) for v in ticks])
        ax.minorticks_off()
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def samples_figure(res: fidelity.SamplingResult, path: Path) -> Path:
    plt = pyplot()
    n = len(res.clean)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.6, 2.9), squeeze=False)
    for j in range(n):
        for i, (row, name) in enumerate(((res.clean, "clean"), (res.spliced, "SAE spliced"))):
            axes[i, j].imshow(row[j])
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(name, fontsize=8)
        axes[0, j].set_title(f"seed {res.seeds[j]}", fontsize=7)
    fig.suptitle(f"DDIM, {res.steps} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- outputs
def write_summary(path: Path, metrics_by_units: Mapping[str, Mapping[str, float]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["units", "metric", "value"])
        for units, m in metrics_by_units.items():
            for k in sorted(m):
                w.writerow([units, k, repr(float(m[k]))])
    return path


def _fmt(v: float | None) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.3f}"


def write_report(path: Path, *, sae_dir: Path, store_uri: str, sae_t: int, concept: str, spurious: str | None,
                 metrics: Mapping[str, Mapping[str, float]], n: int, notes: list[str], seconds: float) -> Path:
    m = metrics["sae"]
    lines = [f"# Evaluation of the SAE at `{sae_dir.name}`", "",
             f"Store `{store_uri}`; concept `{concept}`" + (f", spurious concept `{spurious}`" if spurious else "")
             + f"; {seconds:.0f} s.", "",
             "## Inside the model", "",
             "| timestep | loss clean | loss spliced | recovered (zero floor) | recovered (mean floor) |",
             "|---|---|---|---|---|"]
    for key in sorted(k for k in m if k.startswith("loss.clean.t")):
        t = key.rsplit(".t", 1)[1]
        lines.append(f"| {t}{' (SAE)' if int(t) == sae_t else ''} | {_fmt(m.get(key))} | "
                     f"{_fmt(m.get(f'loss.spliced.t{t}'))} | {_fmt(m.get(f'loss_recovered.zero.t{t}'))} | "
                     f"{_fmt(m.get(f'loss_recovered.mean.t{t}'))} |")
    if "sampling.pixel_mae" in m:
        lines += ["", f"DDIM samples with the SAE spliced at every step differ from the clean ones by "
                      f"{_fmt(m['sampling.pixel_mae'])} grey levels on average (clean samples of different seeds: "
                      f"{_fmt(m.get('sampling.pixel_mae_between_seeds'))})."]
    lines += ["", f"## Ablating latents (N = {n} for the headline)", "",
              "| units | SCR share | SCR shift | TPP | TPP intended | TPP unintended |", "|---|---|---|---|---|---|"]
    for units, um in metrics.items():
        lines.append(f"| {units} | {_fmt(um.get(f'scr.share.n{n}'))} | {_fmt(um.get(f'scr.shift.n{n}'))} | "
                     f"{_fmt(um.get(f'tpp.n{n}'))} | {_fmt(um.get(f'tpp.intended.n{n}'))} | "
                     f"{_fmt(um.get(f'tpp.unintended.n{n}'))} |")
    if "scr.base_accuracy" in m:
        lines += ["", f"The biased probe gets {_fmt(m['scr.base_accuracy'])} on the balanced test rows, an unbiased "
                      f"one {_fmt(m['scr.oracle_accuracy'])}."]
    lines += ["", "## Dictionary health", "",
              f"{int(m.get('health.dead', 0))} dead and {int(m.get('health.dense', 0))} dense latents; "
              f"encoder–decoder cosine {_fmt(m.get('health.enc_dec_cosine_mean'))} on average; "
              f"{int(m.get('health.duplicates', 0))} latents have a near-duplicate decoder direction "
              f"(max cosine {_fmt(m.get('health.max_dec_cosine_max'))})."]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {x}" for x in notes]
    path.write_text("\n".join(lines) + "\n")
    return path


def headline(m: Mapping[str, float], ns: tuple[int, ...]) -> dict[str, float]:
    """The numbers registered SAE versions carry as tags."""
    n = headline_n(ns)
    keys = ("loss_recovered.mean", "loss_recovered.zero", f"scr.share.n{n}", f"scr.shift.n{n}", f"tpp.n{n}",
            "health.dead", "health.dense", "health.duplicates", "sampling.pixel_mae")
    return {k: float(m[k]) for k in keys if k in m}


def headline_n(ns: tuple[int, ...]) -> int:
    return HEADLINE_N if HEADLINE_N in ns else int(sorted(ns)[min(len(ns) - 1, len(ns) // 2)])


# --------------------------------------------------------------------------- the stage
def concept_scores(acts: np.ndarray, labels: Mapping[str, np.ndarray], is_test: np.ndarray, concept: str,
                   spurious: str | None, cfg: Config, notes: list[str] | None = None
                   ) -> tuple[concepts.SCRResult | None, concepts.TPPResult | None]:
    """SCR (when there is a spurious concept) and TPP of one set of units; a failure becomes a note."""
    ec = cfg.evaluate
    s_res = t_res = None
    if spurious is not None:
        try:
            s_res = concepts.scr(acts, labels[concept], labels[spurious], is_test, ns=ec.ablate,
                                 correlation=ec.correlation, draws=ec.scr_draws, seed=ec.seed, C=cfg.probe.C)
        except ValueError as e:
            if notes is not None:
                notes.append(f"no SCR: {e}")
    try:
        t_res = concepts.tpp(acts, labels[concept], is_test, ns=ec.ablate, seed=ec.seed, C=cfg.probe.C)
    except ValueError as e:
        if notes is not None:
            notes.append(f"no TPP: {e}")
    return s_res, t_res


def pick_concepts(cfg: Config, store: FeatureStore, notes: list[str]) -> tuple[str, str | None]:
    names = list(store.label_names)
    concept = cfg.probe.concept if cfg.probe.concept in names else names[0]
    if concept != cfg.probe.concept:
        notes.append(f"the store has no {cfg.probe.concept!r} labels; the concept is {concept!r}")
    spurious = cfg.evaluate.spurious
    if spurious not in names or spurious == concept:
        notes.append(f"no SCR: the store has no second concept {spurious!r} (evaluate.spurious) besides {concept!r}")
        return concept, None
    return concept, spurious


def evaluate_stage(cfg: Config, *, sae_dir: str | Path | None = None, store: FeatureStore | str | None = None,
                   adapter=None, dataset=None, progress: bool = False) -> EvalResult:
    """Evaluate one SAE (see the module docstring); `sae_dir`/`store` default to `resolve_inputs(cfg)`."""
    t0 = time.perf_counter()
    ec = cfg.evaluate
    say = (lambda msg: print(f"[evaluate] {msg}", file=sys.stderr)) if progress else (lambda msg: None)
    if sae_dir is None or store is None:
        d, s = resolve_inputs(cfg)
        sae_dir, store = sae_dir or d, store or s
    sae_dir = Path(sae_dir)
    store = store if isinstance(store, FeatureStore) else open_store(store)
    sae = read_sae(sae_dir)
    sc = sae.config
    notes: list[str] = []
    if sc.store_config_hash and sc.store_config_hash != store.config_hash:
        notes.append(f"the SAE was trained on store {sc.store_config_hash}, evaluated on {store.config_hash}")
    concept, spurious = pick_concepts(cfg, store, notes)
    identity = eval_identity(cfg, sae_dir, store)
    out = Path(cfg.output_dir) / "eval" / identity
    out.mkdir(parents=True, exist_ok=True)

    # 1. fidelity inside the model, on held-out images
    ds = dataset if dataset is not None else store_dataset(cfg, store)
    adapter = adapter if adapter is not None else backbone_for_store(cfg, store)
    adapter.validate_hook_points([sc.hook_point])
    index, test = store.index(), store.is_test()
    ids = ds.ids()
    test_idx = index[test][:ec.n_images] if test.any() else index[:ec.n_images]
    mean_idx = index[~test][:ec.mean_images] if (~test).any() else index[:ec.mean_images]
    noise_seed = int(store.config.get("noise_seed", 0))
    timesteps = list(dict.fromkeys([int(sc.timestep)] + [int(t) for t in ec.timesteps]))
    say(f"denoising loss on {len(test_idx)} test images at t={timesteps}")
    means = fidelity.mean_maps(adapter, sc.hook_point, np.stack([ds.image(int(i)) for i in mean_idx]),
                               [ids[int(i)] for i in mean_idx], timesteps, noise_seed, ec.batch_size)
    fid = fidelity.denoising_losses(adapter, sae, sc.hook_point, np.stack([ds.image(int(i)) for i in test_idx]),
                                    [ids[int(i)] for i in test_idx], timesteps, means, noise_seed, ec.batch_size)
    metrics = {"sae": dict(fid.metrics(int(sc.timestep)))}
    fidelity_figure(fid, out / "fidelity.png")
    clock = {"seconds.fidelity": time.perf_counter() - t0}
    if ec.samples:
        say(f"{ec.samples} DDIM samples, {ec.sample_steps} steps")
        samp = fidelity.sample_with_splice(adapter, sae, sc.hook_point, range(ec.samples), ec.sample_steps)
        metrics["sae"].update(samp.metrics())
        samples_figure(samp, out / "samples.png")
    clock["seconds.sampling"] = time.perf_counter() - t0 - sum(clock.values())

    # 2. latents of the report rows (every test row, a fixed train sample), as the classifier pools them
    fset = feature_set_for(store, sc.hook_point, sc.timestep, sc.input, sc.pooling or "mean")
    rows = report_rows(test, ec.train_rows)
    feats = read_rows(fset, rows)
    is_test = test[rows]
    labels = {c: store.labels(c)[rows] for c in store.label_names}
    say(f"latents of {len(rows)} rows; SCR and TPP")
    units = {"sae": image_latents(sae, feats),
             "control.random": image_latents(control_sae(sae, "random", CONTROL_SEED,
                                                         train_sample(feats, is_test)), feats),
             "control.channels": direction_activations(feats, None, sc.latent_pooling)}
    clock["seconds.latents"] = time.perf_counter() - t0 - sum(clock.values())
    results = {}
    for name, acts in units.items():
        s_res, t_res = concept_scores(acts, labels, is_test, concept, spurious, cfg, notes if name == "sae" else None)
        results[name] = (s_res, t_res)
        m = metrics.setdefault(name, {})
        if s_res is not None:
            m.update(s_res.metrics())
        if t_res is not None:
            m.update(t_res.metrics())
    scr_tpp_figure(results, out / "scr_tpp.png")
    clock["seconds.scr_tpp"] = time.perf_counter() - t0 - sum(clock.values())

    # 3. dictionary health on the held-out vectors
    hv = feats[is_test] if is_test.any() else feats
    h = health.dictionary_health(sae, hv.reshape(-1, sae.d_in))
    metrics["sae"].update(h.metrics())
    h.figure(out / "health.png")
    clock["seconds.health"] = time.perf_counter() - t0 - sum(clock.values())

    seconds = time.perf_counter() - t0
    metrics["sae"].update(clock, seconds=seconds)
    n = headline_n(tuple(ec.ablate))
    write_summary(out / "summary.csv", metrics)
    write_report(out / "report.md", sae_dir=sae_dir, store_uri=store.uri, sae_t=int(sc.timestep), concept=concept,
                 spurious=spurious, metrics=metrics, n=n, notes=notes, seconds=seconds)
    flat = dict(metrics["sae"])
    for units_name, m in metrics.items():
        if units_name != "sae":
            flat.update({f"{units_name}.{k}": v for k, v in m.items()})
    flat = {k: float(v) for k, v in flat.items() if np.isfinite(v)}
    (out / "metrics.json").write_text(json.dumps({"metrics": flat, "notes": notes, "sae_dir": str(sae_dir),
                                                  "store_uri": store.uri}, indent=1, sort_keys=True))
    say(f"done in {seconds:.0f} s: {out}")
    return EvalResult(identity=identity, metrics=flat, artifacts=(Artifact(out, "eval"),),
                      tags={"sae_dir": str(sae_dir), "store_uri": store.uri, "eval_dir": str(out)},
                      params={"eval.concept": concept, "eval.spurious": spurious or "",
                              "eval.timesteps": ",".join(map(str, timesteps)), "eval.test_images": str(len(test_idx))},
                      output_dir=out, sae_dir=sae_dir, store_uri=store.uri, headline=headline(flat, tuple(ec.ablate)),
                      notes=tuple(notes))


def train_sample(feats: np.ndarray, is_test: np.ndarray, n: int = 65536, seed: int = 0) -> np.ndarray:
    """Train vectors that centre or calibrate a control (interpret/report.py's ReportData.sample)."""
    pool = feats[~is_test].reshape(-1, feats.shape[-1]) if (~is_test).any() else feats.reshape(-1, feats.shape[-1])
    return pool[np.random.default_rng(seed).choice(len(pool), min(n, len(pool)), replace=False)]
