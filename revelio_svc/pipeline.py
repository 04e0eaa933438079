"""`revelio run`: the whole chain as one MLflow parent run with a child run per stage.

    main (parent; the MLflow-Projects run when MLFLOW_RUN_ID is set and it is in the configured experiment)
     ├─ extract      → store_uri                    (stages: features.extract)
     ├─ train_sae    → sae_dir                      (reads the store)
     ├─ train_probe  → probe_dir, accuracy          (reads the store and the SAE)
     ├─ register     → revelio-sae / -probe / -classifier versions, moved to champion together or not at all
     ├─ evaluate     (when pipeline.evaluate is set) → eval dir; the registered SAE version gets `eval.*` tags
     └─ sweep        (when pipeline.sweep is set)

Outputs pass between stages explicitly (the next stage's config gets the previous stage's store / SAE
directory) and are recorded on each child run as tags (`store_uri`, `sae_dir`, `probe_dir`, `outputs`,
`upstream.<stage>` = run id).

Stage caching: a stage is keyed by its identity (identity.py: the digest of what its output depends on,
the same digest that names its output directory). A stage whose identity matches a FINISHED run of the same
experiment whose outputs still exist is not recomputed: its child run gets `reused_from=<run id of the run
that computed it>`, the same outputs and metrics. `--set force=true` recomputes every stage.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import yaml

from . import distributed
from .config import Config, replace, to_dict
from .contracts import StageResult
from .features.extract import extract, store_identity
from .features.store import StoreError, open_store
from .identity import digest
from .inference import Classifier
from .inference.steering_eval import (
    EXEMPLAR_BUDGET,
    EXEMPLAR_PREFIX,
    PIPELINE_BUDGET,
    PREFIX,
    JudgedSteering,
)
from .registry import Registration, register_set
from .registry.faithfulness import faithfulness_for_classifier
from .sae.io import sae_identity
from .sae.trainer import sae_training_identity, train_sae
from .stages import (
    build_classifier_stage,
    sweep_stage,
    train_probe_stage,
    train_sae_stage,
)
from .stages.evaluate import eval_identity, evaluate_stage
from .stages.evaluate import headline as eval_headline
from .stages.sweep import sweep_identity
from .stages.train_probe import check_probe_labels, probe_identity
from .tracking import (
    DESCRIPTIONS,
    RUN_NAME_TAG,
    closing_run,
    distributed_params,
    end_status,
    log_params_once,
    log_result,
    log_stage_inputs,
    run_name,
    run_tags,
    setup,
    stage_params,
    step_logger,
)
from .tracking.versions import tag_model_version

STAGES = ("extract", "train_sae", "train_probe", "register", "evaluate", "sweep")
# under torchrun these run on every rank; the others on rank 0 only (docs/distributed.md)
DISTRIBUTED_STAGES = ("extract", "train_sae")
CACHE_TAG = "cache_key"
REUSED_TAG = "reused_from"
OUTPUTS_TAG = "outputs"
# MLflow caps a tag value at 8000 characters; outputs longer than that (a register stage's registrations with
# all their metrics) live in this artifact and the tag points at it, so the cache never reads cut JSON
OUTPUTS_ARTIFACT = "stage_outputs.json"
_TAG_LIMIT = 7900


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    run_id: str
    reused_from: str | None
    outputs: Mapping[str, Any]
    metrics: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class PipelineResult:
    parent_run_id: str
    stages: Mapping[str, StageOutcome]
    registrations: Mapping[str, Registration] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"parent_run_id": self.parent_run_id, "seconds": self.seconds,
                "registrations": {k: r.to_dict() for k, r in self.registrations.items()},
                "stages": {k: {"run_id": v.run_id, "reused_from": v.reused_from, "outputs": dict(v.outputs),
                               "metrics": dict(v.metrics), "seconds": v.seconds} for k, v in self.stages.items()}}


# --------------------------------------------------------------------------- caching
def _outputs_exist(stage: str, outputs: Mapping[str, Any]) -> bool:
    if stage == "extract":
        try:
            return open_store(outputs["store_uri"]).complete
        except (StoreError, KeyError):
            return False
    if stage == "register":
        client = mlflow.MlflowClient()
        try:
            for reg in outputs.get("registrations", {}).values():
                client.get_model_version(reg["name"], reg["version"])
        except mlflow.exceptions.MlflowException:
            return False
        return True
    key = {"train_sae": "sae_dir", "train_probe": "probe_dir", "sweep": "output_dir", "evaluate": "output_dir"}[stage]
    return key in outputs and Path(outputs[key]).is_dir()


def find_cached(experiment_id: str, stage: str, key: str) -> tuple[str, dict[str, Any], dict[str, float]] | None:
    """(origin run id, outputs, metrics) of the newest finished run of `stage` with `key` whose outputs exist."""
    runs = mlflow.search_runs(experiment_ids=[experiment_id], output_format="list", max_results=20,
                              filter_string=f"tags.{CACHE_TAG} = '{key}' and tags.stage = '{stage}' "
                                            "and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    for r in runs:
        outputs = _read_outputs(r)
        if outputs is None:
            continue
        if _outputs_exist(stage, outputs):
            return r.data.tags.get(REUSED_TAG) or r.info.run_id, outputs, dict(r.data.metrics)
    return None


def _write_outputs(outputs: dict[str, Any]) -> None:
    text = json.dumps(outputs, default=str)
    if len(text) > _TAG_LIMIT:
        mlflow.log_text(text, OUTPUTS_ARTIFACT)
        text = json.dumps({"artifact": OUTPUTS_ARTIFACT})
    mlflow.set_tag(OUTPUTS_TAG, text)


def _read_outputs(r: mlflow.entities.Run) -> dict[str, Any] | None:
    """A cached run's outputs, from its tag or the artifact the tag points at; None when unreadable."""
    try:
        outputs = json.loads(r.data.tags.get(OUTPUTS_TAG, ""))
        if set(outputs) == {"artifact"}:
            outputs = json.loads(mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/{outputs['artifact']}"))
    except (json.JSONDecodeError, mlflow.exceptions.MlflowException, OSError):
        return None
    return outputs if isinstance(outputs, dict) else None


# --------------------------------------------------------------------------- the parent run
class _Parent:
    """The parent run: the MLflow-Projects run (MLFLOW_RUN_ID) when it lives in the configured experiment,
    else a new `main` run there (the Projects run then points at it: `mlflow run .` without
    --experiment-name puts its run in `Default`, and the pipeline's runs belong in the configured one)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __enter__(self):
        setup(self.cfg.tracking)
        exp_id = mlflow.get_experiment_by_name(self.cfg.tracking.experiment).experiment_id
        self._env_run = os.environ.pop("MLFLOW_RUN_ID", None)  # else every nested start_run would resume it
        tags = {**run_tags(self.cfg, "main"), "mlflow.note.content": DESCRIPTIONS["main"]}
        client = mlflow.MlflowClient()
        if self._env_run and client.get_run(self._env_run).info.experiment_id == exp_id:
            self.run = mlflow.start_run(run_id=self._env_run, log_system_metrics=self.cfg.tracking.system_metrics)
            # the MLflow-Projects run has a random name: as the parent, it is named like one
            mlflow.set_tags({**tags, RUN_NAME_TAG: run_name(self.cfg, "main")})
        else:
            self.run = mlflow.start_run(run_name=run_name(self.cfg, "main"), tags=tags,
                                        nested=mlflow.active_run() is not None,
                                        log_system_metrics=self.cfg.tracking.system_metrics)
            if self._env_run:
                where = f"run {self.run.info.run_id} of experiment {self.cfg.tracking.experiment!r}"
                client.set_tag(self._env_run, "revelio.pipeline_run", self.run.info.run_id)
                client.set_tag(self._env_run, "mlflow.note.content", f"The pipeline ran as {where}.")
        return self.run

    def __exit__(self, et, ev, tb):
        mlflow.end_run(end_status(ev))  # KILLED when stopped (Ctrl+C, SIGTERM), FAILED when broken
        if self._env_run:
            os.environ["MLFLOW_RUN_ID"] = self._env_run
        return False


# --------------------------------------------------------------------------- one stage
@dataclass
class _Chain:
    cfg: Config
    parent_id: str
    experiment_id: str
    say: Callable[..., None]
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)
    registrations: dict[str, Registration] = field(default_factory=dict)

    def do(self, stage: str, key: str, fn: Callable[[], StageResult], upstream: Mapping[str, str] = (),
           extra_outputs: Callable[[StageResult], dict[str, Any]] | None = None) -> StageOutcome:
        """Run `fn` as the child run of `stage` (or reuse the run that computed `key` before)."""
        t0 = time.perf_counter()
        cached = None if self.cfg.force else find_cached(self.experiment_id, stage, key)
        if stage in DISTRIBUTED_STAGES:
            distributed.share_flag(cached is None)  # the other ranks join the stage only when it runs
        tags = {**run_tags(self.cfg, stage), CACHE_TAG: key, "parent_run": self.parent_id,
                **{f"upstream.{k}": v for k, v in dict(upstream).items()}}
        with closing_run(mlflow.start_run(run_name=run_name(self.cfg, stage), nested=True, tags=tags,
                                          description=DESCRIPTIONS[stage])) as r:
            mlflow.set_tag("mlflow.note.content", DESCRIPTIONS[stage])
            log_params_once({**stage_params(self.cfg, stage), **distributed_params()})
            if cached is not None:
                origin, outputs, metrics = cached
                mlflow.set_tag(REUSED_TAG, origin)
                mlflow.log_metrics(metrics)
                log_stage_inputs(outputs)  # a fresh run logs them in log_result
                self.say(f"[{stage}] reused from run {origin} (unchanged identity {key}; force=true recomputes)")
            else:
                self.say(f"[{stage}] running")
                with contextlib.nullcontext() if stage in DISTRIBUTED_STAGES else distributed.alone():
                    res = fn()
                log_result(res, skip_existing_metrics=True)
                outputs = {**res.outputs(), **(extra_outputs(res) if extra_outputs else {})}
                metrics = dict(res.metrics)
            _write_outputs(outputs)
            for k in ("store_uri", "sae_dir", "probe_dir", "classifier_dir"):
                if k in outputs:
                    mlflow.set_tag(k, str(outputs[k]))
            out = StageOutcome(stage, r.info.run_id, cached[0] if cached else None, outputs, metrics,
                               time.perf_counter() - t0)
        mlflow.set_tag(f"run_id.{stage}", out.run_id)
        self.outcomes[stage] = out
        self.say(f"[{stage}] done in {out.seconds:.1f} s (run {out.run_id})")
        return out


# --------------------------------------------------------------------------- the chain
def _register(cfg: Config, chain: _Chain, store_uri: str) -> Callable[[], StageResult]:
    o = chain.outcomes

    def fn() -> StageResult:
        clf = build_classifier_stage(cfg, o["train_sae"].outputs["sae_dir"], o["train_probe"].outputs["probe_dir"],
                                     store_uri)
        lineage = {s: o[s].reused_from or o[s].run_id for s in ("extract", "train_sae", "train_probe")}
        tags = {k: v for k, v in run_tags(cfg, "register").items() if k != "stage"}
        tags.update({f"run_id.{k}": v for k, v in lineage.items()}, store_config_hash=open_store(store_uri).config_hash)
        metrics_by_kind = {"sae": o["train_sae"].metrics, "probe": o["train_probe"].metrics,
                           "classifier": {**o["train_probe"].metrics, **clf.metrics}}
        regs = register_set({"sae": clf.sae_dir, "probe": clf.probe_dir, "classifier": clf.classifier_dir},
                            metrics_by_kind, tags, alpha=cfg.registry.promotion_alpha,
                            examples={"sae": clf.sae_example, "probe": clf.probe_example,
                                      "classifier": clf.image_example})
        chain.registrations = regs
        metrics = {f"{k}.version": float(r.version) for k, r in regs.items()}
        metrics.update({f"{k}.is_champion": float(r.champion) for k, r in regs.items()})
        # logged on this run, the registered versions' run: explanations' faithfulness per model version
        metrics.update(_faithfulness(clf.classifier_dir))
        metrics.update(clf.metrics)  # explanation precision against its controls (inference.precision)
        metrics.update(_steering(cfg, clf.sae_dir, store_uri))
        return _Registered(identity=clf.identity, metrics=metrics, artifacts=clf.artifacts,
                           tags={"classifier_dir": str(clf.classifier_dir), "store_uri": store_uri},
                           classifier_dir=clf.classifier_dir,
                           registrations=regs)

    return fn


def _faithfulness(classifier_dir: Path) -> dict[str, float]:
    """Deletion-curve metrics of the new classifier (registry.faithfulness); never a reason to fail."""
    try:
        return faithfulness_for_classifier(Classifier.load(classifier_dir))
    except Exception as e:  # noqa: BLE001 - e.g. the dataset is not readable here
        print(f"note: no faithfulness metrics ({type(e).__name__}: {e})")
        return {}


def _steering(cfg: Config, sae_dir: Path, store_uri: str) -> dict[str, float]:
    """Steering flip rates of the new SAE against random directions (inference.steering_eval), judged by the
    shape judge on a small budget; only for a pixel-space backbone on the procedural shapes (the judge reads
    pixels of those shapes; sampling a latent model on the CPU would not be small), and never a reason to fail."""
    if cfg.data.source != "shapes" or cfg.backbone.kind != "unet2d":
        return {}
    try:
        judged = JudgedSteering.open(cfg.backbone, sae_dir, store_uri)
    except Exception as e:  # noqa: BLE001 - e.g. a backbone that cannot be loaded here
        print(f"note: no steering metrics ({type(e).__name__}: {e})")
        return {}
    out: dict[str, float] = {}
    for budget, prefix in ((PIPELINE_BUDGET, PREFIX), (EXEMPLAR_BUDGET, EXEMPLAR_PREFIX)):
        try:
            out.update(judged.run(**budget).metrics(prefix))
        except Exception as e:  # noqa: BLE001 - e.g. a backbone that cannot sample here, a pooled SAE
            print(f"note: no {prefix.rstrip('.')} metrics ({type(e).__name__}: {e})")
    return out


@dataclass(frozen=True, kw_only=True)
class _Registered(StageResult):
    classifier_dir: Path
    registrations: Mapping[str, Registration]

    def outputs(self) -> dict[str, Any]:
        return {"classifier_dir": str(self.classifier_dir), "store_uri": self.tags.get("store_uri", ""),
                "registrations": {k: r.to_dict() for k, r in self.registrations.items()}}


def _wanted(cfg: Config, stages: tuple[str, ...] | None) -> tuple[str, ...]:
    wanted = stages or tuple(s for s in STAGES if (s != "sweep" or cfg.pipeline.sweep)
                             and (s != "evaluate" or cfg.pipeline.evaluate))
    if not cfg.tracking.register:
        wanted = tuple(s for s in wanted if s != "register")
    return wanted


def run(cfg: Config, stages: tuple[str, ...] | None = None, progress: bool = True) -> PipelineResult:
    """Run the chain (see the module docstring); returns run ids, outputs, metrics and registrations."""
    t_all = time.perf_counter()
    wanted = _wanted(cfg, stages)
    if not distributed.context().is_main:
        _follow(cfg, wanted)
        return PipelineResult("", {}, {}, time.perf_counter() - t_all)
    say = print if progress else (lambda *a, **k: None)
    with _Parent(cfg) as parent:
        ccfg = replace(cfg, **{"tracking.experiment": mlflow.get_experiment(parent.info.experiment_id).name})
        log_params_once({**stage_params(cfg, "main"), **distributed_params()})
        _log_config(cfg)
        chain = _Chain(ccfg, parent.info.run_id, parent.info.experiment_id, say)
        _run_stages(ccfg, chain, wanted, progress)
        o = chain.outcomes
        if "extract" in o:  # what the whole chain read, on the parent too
            log_stage_inputs(o["extract"].outputs)
        summary = {f"sae.{k}": v for k, v in (o["train_sae"].metrics if "train_sae" in o else {}).items()}
        summary.update({f"probe.{k}": v for k, v in (o["train_probe"].metrics if "train_probe" in o else {}).items()})
        if "register" in o and not chain.registrations:  # reused: the registrations of the run that made them
            chain.registrations = {k: Registration(**{**r, "metrics": r.get("metrics", {})})
                                   for k, r in o["register"].outputs.get("registrations", {}).items()}
        result = PipelineResult(parent.info.run_id, dict(o), chain.registrations, time.perf_counter() - t_all)
        if summary:
            mlflow.log_metrics(summary)
        mlflow.log_metric("pipeline_seconds", result.seconds)
        mlflow.log_dict(result.to_dict(), "pipeline.json")
        _summary_figure(o)
    return result


def _run_stages(cfg: Config, chain: _Chain, wanted: tuple[str, ...], progress: bool) -> None:
    o = chain.outcomes
    ex = chain.do("extract", store_identity(cfg), lambda: extract(cfg, progress=progress))
    store_uri = ex.outputs["store_uri"]
    if not any(s in wanted for s in ("train_sae", "train_probe", "register", "evaluate", "sweep")):
        return
    store = open_store(store_uri)
    if any(s in wanted for s in ("train_probe", "register")):
        check_probe_labels(cfg, store)  # a probe that cannot be trained is refused before the SAE trains
    if any(s in wanted for s in ("train_sae", "train_probe", "register", "evaluate")):
        distributed.share_text(store_uri)  # a reused store may live elsewhere than this config's default
        scfg = replace(cfg, **{"sae.store": store_uri})
        chain.do("train_sae", sae_training_identity(scfg, store),
                 lambda: train_sae_stage(scfg, store=store, progress=progress, on_eval=step_logger()),
                 {"extract": ex.run_id})
    if any(s in wanted for s in ("train_probe", "register")):
        sae_dir = o["train_sae"].outputs["sae_dir"] if cfg.probe.input == "sae" else None
        pcfg = replace(cfg, **{"probe.store": store_uri, "probe.sae": sae_dir or cfg.probe.sae})
        chain.do("train_probe", probe_identity(pcfg, store.config_hash, sae_identity(pcfg.probe.sae)
                                               if pcfg.probe.input == "sae" else None),
                 lambda: train_probe_stage(pcfg), {"extract": ex.run_id, "train_sae": o["train_sae"].run_id})
    if "register" in wanted:
        if cfg.probe.input != "sae" or cfg.probe.kind != "linear":
            chain.say("[register] skipped: the classifier needs a linear probe on SAE latents "
                      "(probe.kind=linear, probe.input=sae)")
        else:
            key = digest({"sae": sae_identity(o["train_sae"].outputs["sae_dir"]),
                          "probe": Path(o["train_probe"].outputs["probe_dir"]).name,
                          "top_images": cfg.pipeline.top_images})
            chain.do("register", key, _register(cfg, chain, store_uri),
                     {s: o[s].run_id for s in ("extract", "train_sae", "train_probe")})
    if "evaluate" in wanted:
        _evaluate(cfg, chain, store, progress)
    if "sweep" in wanted:
        wcfg = replace(cfg, **{"probe.store": store_uri})
        chain.do("sweep", sweep_identity(wcfg, store), lambda: sweep_stage(wcfg), {"extract": ex.run_id})


def _evaluate(cfg: Config, chain: _Chain, store, progress: bool) -> None:
    """The evaluate stage on this chain's SAE; the SAE version registered by this chain gets its headline."""
    sae_dir = chain.outcomes["train_sae"].outputs["sae_dir"]
    ecfg = replace(cfg, **{"evaluate.sae": sae_dir, "evaluate.store": store.uri})
    out = chain.do("evaluate", eval_identity(ecfg, sae_dir, store),
                   lambda: evaluate_stage(ecfg, sae_dir=sae_dir, store=store, progress=progress),
                   {"train_sae": chain.outcomes["train_sae"].run_id})
    reg = chain.registrations.get("sae")
    if reg is not None:
        tag_model_version(reg.name, reg.version, eval_headline(out.metrics, cfg.evaluate.ablate), prefix="eval.")


def _follow(cfg: Config, wanted: tuple[str, ...]) -> None:
    """A rank other than 0: its share of each distributed stage rank 0 runs (not reuses), in the same
    order; never the tracking server or the registry."""
    if distributed.share_flag(False):
        extract(cfg, progress=False)
    if not any(s in wanted for s in ("train_sae", "train_probe", "register", "evaluate", "sweep")):
        return
    if any(s in wanted for s in ("train_sae", "train_probe", "register", "evaluate")):
        store_uri = distributed.share_text("")
        if distributed.share_flag(False):
            train_sae(replace(cfg, **{"sae.store": store_uri}), store=open_store(store_uri), progress=False)


def _log_config(cfg: Config) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.yaml"
        p.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        mlflow.log_artifact(str(p))


def _summary_figure(outcomes: Mapping[str, StageOutcome]) -> None:
    """Where the time went and which stages were reused: one bar per stage."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

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
