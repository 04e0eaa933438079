"""`revelio run`: the whole chain as one MLflow parent run with a child run per stage.

    main (parent; the MLflow-Projects run when MLFLOW_RUN_ID is set)
     ├─ extract      → store_uri
     ├─ train_sae    → sae_dir           (reads store_uri)
     ├─ train_probe  → probe_dir, accuracy (reads store_uri, sae_dir)
     ├─ register     → revelio-sae / revelio-probe / revelio-classifier versions
     └─ sweep        (when pipeline.sweep is configured)

Outputs pass between stages explicitly (the next stage's config gets the previous stage's store / SAE
directory) and are recorded on each child run as tags (`store_uri`, `sae_dir`, `probe_dir`, `outputs`,
`upstream.<stage>` = run id).

Stage caching: each stage has a cache key, the hash of the config it depends on (its own section minus
options that change only speed or file locations, plus the keys of the stages it reads). A stage whose key
matches a FINISHED run of the same experiment whose outputs still exist is not recomputed: its child run
gets `reused_from=<run id of the run that computed it>`, the same outputs and metrics. `--set force=true`
recomputes every stage.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, config_hash, replace, to_dict

STAGES = ("extract", "train_sae", "train_probe", "register", "sweep")
CACHE_TAG = "cache_key"
REUSED_TAG = "reused_from"
OUTPUTS_TAG = "outputs"

# options that change only speed, progress output or where files are written, never the results
_NOT_IN_KEY = {
    "extract": {"num_threads", "batch_size"},
    "sae": {"num_threads", "checkpoint_every", "eval_every", "output", "store"},
    "probe": {"store", "sae"},
}

_DESCRIPTIONS = {
    "main": "Revelio pipeline: extract → train_sae → train_probe → register (child runs, linked by run id).",
    "extract": "Capture hook-point activations of the backbone at the configured timesteps into a feature store.",
    "train_sae": "Train the k-sparse autoencoder on the (hook point, timestep) features of the store.",
    "train_probe": "Train the linear probe on SAE latents; few-shot protocol and held-out accuracy.",
    "register": "Log revelio-sae, revelio-probe and revelio-classifier as pyfunc models and register them "
                "(champion moves only on improvement).",
    "sweep": "Probe every (hook point, timestep) of the store; heatmaps over blocks × timesteps.",
}


@dataclass
class StageOutcome:
    stage: str
    run_id: str
    reused_from: str | None
    outputs: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class PipelineResult:
    parent_run_id: str
    stages: dict[str, StageOutcome]
    registrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"parent_run_id": self.parent_run_id, "seconds": self.seconds, "registrations": self.registrations,
                "stages": {k: {"run_id": v.run_id, "reused_from": v.reused_from, "outputs": v.outputs,
                               "metrics": v.metrics, "seconds": v.seconds} for k, v in self.stages.items()}}


# --------------------------------------------------------------------------- configuration helpers
def option(cfg: Config, dotted: str, default: Any) -> Any:
    """A config option that a later config version may add (e.g. pipeline.sweep); `default` until then."""
    node: Any = cfg
    for part in dotted.split("."):
        if not hasattr(node, part):
            return default
        node = getattr(node, part)
    return node


def _section(cfg: Config, name: str) -> dict[str, Any]:
    d = to_dict(getattr(cfg, name))
    for k in _NOT_IN_KEY.get(name, ()):
        d.pop(k, None)
    return d


def cache_keys(cfg: Config) -> dict[str, str]:
    """The cache key of every stage (see the module docstring)."""
    ex = config_hash({"data": to_dict(cfg.data), "backbone": to_dict(cfg.backbone), "extract": _section(cfg, "extract")})
    sae = config_hash({"extract": ex, "sae": _section(cfg, "sae")})
    probe = config_hash({"extract": ex, "sae": sae if cfg.probe.input == "sae" else None,
                         "probe": _section(cfg, "probe")})
    reg = config_hash({"sae": sae, "probe": probe, "top_n": option(cfg, "pipeline.top_images", 16)})
    sweep = config_hash({"extract": ex, "probe": _section(cfg, "probe"), "sae": sae})
    return {"extract": ex, "train_sae": sae, "train_probe": probe, "register": reg, "sweep": sweep}


def run_tags(cfg: Config, stage: str) -> dict[str, str]:
    """Tags every run of the pipeline carries."""
    return {"stage": stage, "backbone": cfg.backbone.id, "hook_point": cfg.sae.hook_point,
            "timestep": str(cfg.sae.timestep), "dataset": cfg.data.id or cfg.data.source,
            "concept": cfg.probe.concept}


# --------------------------------------------------------------------------- caching
def _outputs_exist(stage: str, outputs: dict[str, Any]) -> bool:
    try:
        if stage == "extract":
            from .features.store import open_store

            return open_store(outputs["store_uri"]).complete
        if stage == "train_sae":
            return (Path(outputs["sae_dir"]) / "sae.safetensors").is_file()
        if stage == "train_probe":
            return (Path(outputs["probe_dir"]) / "probe.json").is_file()
        if stage == "register":
            import mlflow

            client = mlflow.MlflowClient()
            for reg in outputs.get("registrations", {}).values():
                client.get_model_version(reg["name"], reg["version"])
            return True
        if stage == "sweep":
            return Path(outputs["output_dir"]).is_dir()
    except Exception:
        return False
    return False


def find_cached(experiment_id: str, stage: str, key: str) -> tuple[str, dict[str, Any], dict[str, float]] | None:
    """(origin run id, outputs, metrics) of the newest finished run of `stage` with `key` whose outputs exist."""
    import mlflow

    runs = mlflow.search_runs(experiment_ids=[experiment_id], output_format="list", max_results=20,
                              filter_string=f"tags.{CACHE_TAG} = '{key}' and tags.stage = '{stage}' "
                                            "and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    for r in runs:
        try:
            outputs = json.loads(r.data.tags.get(OUTPUTS_TAG, ""))
        except json.JSONDecodeError:
            continue
        if _outputs_exist(stage, outputs):
            origin = r.data.tags.get(REUSED_TAG) or r.info.run_id
            return origin, outputs, dict(r.data.metrics)
    return None


# --------------------------------------------------------------------------- stages
def _stage_extract(cfg: Config, progress: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    import mlflow

    from .features.extract import extract
    from .features.store import open_store
    from .tracking import log_json

    res = extract(cfg, progress=progress)
    store = open_store(res.store_uri)
    mlflow.set_tag("config_hash", res.config_hash)
    log_json(store.manifest, "manifest.json", "feature_store")
    if res.skipped:
        log_json(res.skipped, "skipped_images.json", "feature_store")
    metrics = {"images_per_s": res.images_per_s, "n_images": res.n_images, "n_rows": res.n_rows,
               "skipped_images": len(res.skipped), "shards_computed": res.shards_computed}
    mlflow.log_metrics(metrics)
    return {"store_uri": res.store_uri, "config_hash": res.config_hash}, metrics


def _train_sae_stage(cfg: Config) -> dict[str, Any]:
    from .sae.stage import train_sae_stage

    return train_sae_stage(cfg)


def _stage_sae(cfg: Config) -> tuple[dict[str, Any], dict[str, float]]:
    res = _train_sae_stage(cfg)
    sae_dir = res.get("output_dir") or res.get("sae_dir")
    if not sae_dir:
        raise RuntimeError(f"train_sae_stage returned no output directory (keys: {sorted(res)})")
    return {"sae_dir": str(sae_dir)}, _numbers(res.get("metrics") or {})


def _stage_probe(cfg: Config) -> tuple[dict[str, Any], dict[str, float]]:
    from .probe.stage import train_probe_stage

    res = train_probe_stage(cfg)
    return {"probe_dir": res["probe_dir"]}, _numbers(res.get("metrics") or {})


def _stage_sweep(cfg: Config) -> tuple[dict[str, Any], dict[str, float]]:
    from .probe.sweep import sweep_stage

    res = sweep_stage(cfg)
    return {"output_dir": res["output_dir"]}, {}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    import math

    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def version_tags(cfg: Config, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"dataset": cfg.data.id or cfg.data.source, "backbone": cfg.backbone.id,
            "hook_point": cfg.sae.hook_point, "timestep": str(cfg.sae.timestep), "concept": cfg.probe.concept,
            **(extra or {})}


def _stage_register(cfg: Config, store_uri: str, sae_dir: str, probe_dir: str, sae_metrics: dict[str, float],
                    probe_metrics: dict[str, float], lineage: dict[str, str]) -> tuple[dict[str, Any], dict[str, float]]:
    import mlflow
    import numpy as np

    from .classifier import Classifier, explanation_figure
    from .features.store import open_store
    from .registry.client import register_model

    tags = version_tags(cfg, {f"run_id.{k}": v for k, v in lineage.items()})
    store = open_store(store_uri)
    tags["store_config_hash"] = str(store.manifest.get("config_hash", ""))
    regs: dict[str, Any] = {}

    # realistic input examples: two rows of the SAE's own features, their latents, one dataset image
    sae_ex, lat_ex = None, None
    try:
        from .sae import load_sae
        from .sae.latents import image_latents

        sae = load_sae(sae_dir)
        sc = sae.config
        key = "tokens" if sc.input == "tokens" else (sc.pooling or "mean")
        feats = store.feature_set(sc.hook_point, sc.timestep, key).shard(store.shard_ids[0])[:2].astype(np.float32)
        sae_ex = feats.reshape(-1, feats.shape[-1])[:2]
        lat_ex = image_latents(sae, feats, pooling=sc.latent_pooling).astype(np.float64)
    except Exception as e:  # examples are documentation: a failure here must not stop registration
        print(f"note: input examples fall back to synthetic ones ({type(e).__name__}: {e})")

    r = register_model("sae", sae_dir, sae_metrics, tags, "fvu", higher_is_better=False, example=sae_ex)
    regs["sae"] = r.to_dict()
    r = register_model("probe", probe_dir, probe_metrics, tags, "accuracy", higher_is_better=True,
                       example=lat_ex)
    regs["probe"] = r.to_dict()

    clf = Classifier.build(cfg, sae_dir, probe_dir, store_uri, top_n=int(option(cfg, "pipeline.top_images", 16)))
    out = Path(cfg.output_dir) / "classifier" / cache_keys(cfg)["register"]
    clf.save(out)
    image = None
    try:
        ds = clf.dataset()
        test_rows = store.index()[store.is_test()]
        image = ds.image(int(test_rows[0] if len(test_rows) else store.index()[0]))
        exp = clf.explain(image, top=4)
        fig = explanation_figure(clf, exp)
        mlflow.log_figure(fig, "classifier/example_explanation.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception as e:
        print(f"note: no example explanation figure ({type(e).__name__}: {e})")
    r = register_model("classifier", out, probe_metrics, tags, "accuracy", higher_is_better=True, example=image)
    regs["classifier"] = r.to_dict()
    metrics = {f"{k}.version": float(v["version"]) for k, v in regs.items()}
    metrics.update({f"{k}.is_champion": float(v["champion"]) for k, v in regs.items()})
    mlflow.log_metrics(metrics)
    return {"registrations": regs, "classifier_dir": str(out)}, metrics


# --------------------------------------------------------------------------- the chain
class _Parent:
    """The parent run: the MLflow-Projects run (MLFLOW_RUN_ID) when there is one, else a new `main` run."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __enter__(self):
        import mlflow

        from .tracking import setup

        from .registry.client import check_server
        from .tracking import tracking_uri

        check_server(tracking_uri(self.cfg.tracking))  # seconds, not minutes of retries, for a dead server
        env_run = os.environ.pop("MLFLOW_RUN_ID", None)  # else every nested start_run would resume it
        self._env_run = env_run
        setup(self.cfg.tracking)
        tags = run_tags(self.cfg, "main")
        sysm = bool(self.cfg.tracking.system_metrics)
        if env_run:
            exp_id = mlflow.MlflowClient().get_run(env_run).info.experiment_id
            mlflow.set_experiment(experiment_id=exp_id)  # start_run refuses a run of another experiment
            self.run = mlflow.start_run(run_id=env_run, log_system_metrics=sysm)
            mlflow.set_tags(tags)
            mlflow.set_tag("mlflow.note.content", _DESCRIPTIONS["main"])
        else:
            self.run = mlflow.start_run(run_name="main", tags=tags, description=_DESCRIPTIONS["main"],
                                        nested=mlflow.active_run() is not None, log_system_metrics=sysm)
        return self.run

    def __exit__(self, et, ev, tb):
        import mlflow

        mlflow.end_run("FINISHED" if et is None else "KILLED" if et is KeyboardInterrupt else "FAILED")
        if self._env_run:
            os.environ["MLFLOW_RUN_ID"] = self._env_run
        return False


def run(cfg: Config, stages: tuple[str, ...] | None = None, progress: bool = True) -> PipelineResult:
    """Run the chain (see the module docstring); returns run ids, outputs, metrics and registrations."""
    import mlflow

    from .tracking import flat_params, stage_run

    t_all = time.perf_counter()
    wanted = stages or tuple(s for s in STAGES if s != "sweep" or option(cfg, "pipeline.sweep", False))
    if not cfg.tracking.register:
        wanted = tuple(s for s in wanted if s != "register")
    keys = cache_keys(cfg)
    say = print if progress else (lambda *a, **k: None)
    outcomes: dict[str, StageOutcome] = {}
    with _Parent(cfg) as parent:
        exp = mlflow.MlflowClient().get_experiment(parent.info.experiment_id)
        # children land in the parent's experiment (stage_run sets the experiment by name)
        ccfg = replace(cfg, **{"tracking.experiment": exp.name})
        existing = set(mlflow.MlflowClient().get_run(parent.info.run_id).data.params)
        params = {k: v[:6000] for k, v in flat_params(to_dict(cfg)).items() if k not in existing}
        items = list(params.items())
        for i in range(0, len(items), 90):
            mlflow.log_params(dict(items[i:i + 90]))
        mlflow.set_tags({f"cache_key.{k}": v for k, v in keys.items()})
        _log_config(cfg)

        state: dict[str, Any] = {}

        def do(stage: str, sections: tuple[str, ...], fn, stage_cfg: Config, upstream: dict[str, str]):
            t0 = time.perf_counter()
            cached = None if cfg.force else find_cached(parent.info.experiment_id, stage, keys[stage])
            tags = {**run_tags(cfg, stage), CACHE_TAG: keys[stage], "parent_run": parent.info.run_id,
                    **{f"upstream.{k}": v for k, v in upstream.items()}}
            with stage_run(stage_cfg, stage, sections, tags=tags, description=_DESCRIPTIONS[stage]) as r:
                if cached is not None:
                    origin, outputs, metrics = cached
                    mlflow.set_tag(REUSED_TAG, origin)
                    say(f"[{stage}] reused from run {origin} (unchanged config {keys[stage]}; force=true recomputes)")
                else:
                    say(f"[{stage}] running")
                    outputs, metrics = fn(stage_cfg)
                mlflow.set_tag(OUTPUTS_TAG, json.dumps(outputs, default=str)[:7900])
                for k in ("store_uri", "sae_dir", "probe_dir", "classifier_dir"):
                    if k in outputs:
                        mlflow.set_tag(k, str(outputs[k]))
                # stages log their own metrics; add what is missing (all of them on a reused run)
                have = mlflow.MlflowClient().get_run(r.info.run_id).data.metrics
                missing = {k: v for k, v in metrics.items() if k not in have}
                if missing:
                    mlflow.log_metrics(missing)
                out = StageOutcome(stage, r.info.run_id, cached[0] if cached else None, outputs, metrics,
                                   time.perf_counter() - t0)
            mlflow.set_tag(f"run_id.{stage}", out.run_id)
            outcomes[stage] = out
            say(f"[{stage}] done in {out.seconds:.1f} s (run {out.run_id})")
            return out

        if "extract" in wanted or any(s in wanted for s in ("train_sae", "train_probe", "register", "sweep")):
            ex = do("extract", ("data", "backbone", "extract"), lambda c: _stage_extract(c, progress), ccfg, {})
            state["store_uri"] = ex.outputs["store_uri"]
        store = state["store_uri"]
        if any(s in wanted for s in ("train_sae", "train_probe", "register")):
            scfg = replace(ccfg, **{"sae.store": store})
            sae = do("train_sae", ("sae",), _stage_sae, scfg, {"extract": outcomes["extract"].run_id})
            state["sae_dir"] = sae.outputs["sae_dir"]
        if any(s in wanted for s in ("train_probe", "register")):
            pcfg = replace(ccfg, **{"probe.store": store, "probe.sae": state["sae_dir"] if cfg.probe.input == "sae"
                                    else cfg.probe.sae})
            up = {"extract": outcomes["extract"].run_id, "train_sae": outcomes["train_sae"].run_id}
            pr = do("train_probe", ("probe",), _stage_probe, pcfg, up)
            state["probe_dir"] = pr.outputs["probe_dir"]
        if "register" in wanted:
            if cfg.probe.input != "sae" or cfg.probe.kind != "linear":
                say("[register] skipped: the classifier needs a linear probe on SAE latents "
                    "(probe.kind=linear, probe.input=sae)")
            else:
                lineage = {s: outcomes[s].reused_from or outcomes[s].run_id
                           for s in ("extract", "train_sae", "train_probe")}

                def reg(c: Config):
                    return _stage_register(c, store, state["sae_dir"], state["probe_dir"],
                                           outcomes["train_sae"].metrics, outcomes["train_probe"].metrics, lineage)

                do("register", ("tracking",), reg, ccfg, {s: outcomes[s].run_id for s in lineage})
        if "sweep" in wanted:
            wcfg = replace(ccfg, **{"probe.store": store})
            do("sweep", ("probe",), _stage_sweep, wcfg, {"extract": outcomes["extract"].run_id})

        summary = {}
        if "train_sae" in outcomes:
            summary.update({f"sae.{k}": v for k, v in outcomes["train_sae"].metrics.items()})
        if "train_probe" in outcomes:
            summary.update({f"probe.{k}": v for k, v in outcomes["train_probe"].metrics.items()})
        if summary:
            mlflow.log_metrics(summary)
        result = PipelineResult(parent.info.run_id, outcomes,
                                outcomes["register"].outputs.get("registrations", {}) if "register" in outcomes else {},
                                time.perf_counter() - t_all)
        mlflow.log_metric("pipeline_seconds", result.seconds)
        mlflow.log_dict(result.to_dict(), "pipeline.json")
        _summary_figure(outcomes)
    return result


def _log_config(cfg: Config) -> None:
    import mlflow
    import yaml

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.yaml"
        p.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        mlflow.log_artifact(str(p))


def _summary_figure(outcomes: dict[str, StageOutcome]) -> None:
    """Where the time went and which stages were reused: one bar per stage."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import mlflow

    names = list(outcomes)
    secs = [outcomes[n].seconds for n in names]
    colours = ["tab:grey" if outcomes[n].reused_from else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.barh(names, secs, color=colours)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (grey: reused from an earlier run)")
    fig.tight_layout()
    mlflow.log_figure(fig, "pipeline_stages.png")
    plt.close(fig)
