"""`revelio tune`: Optuna over the SAE or the probe against a held-out metric, every trial an MLflow run.

    tune.target     sae (k, expansion, lr, auxk_coef) | probe (C; Diff-C: lr, width)
    tune.metric     a metric the stage reports on held-out data (sae: fvu, explained_variance, dead_frac, l0,
                    and the interpretation report's: sigma_label, label_purity, label_purity_share.<concept>,
                    sparse_probe.k<k>, dissection.detectors and their gap.* against the strongest control,
                    e.g. gap.label_purity_share.shape, or gap.score, the worst
                    of the headline gaps as a fraction of its target; probe: accuracy, macro_f1), optimised
                    in tune.direction
    tune.storage    any Optuna RDB URL; "" = sqlite:///optuna.db
    tune.search_space  per parameter: [a, b, c] (categorical), {low, high, log} (range) or a fixed value;
                    names are `k` or `sae.k` style; defaults in DEFAULT_SPACES

Several processes (or machines, with PostgreSQL) share one study: each `revelio tune` loads or creates
the study and runs tune.n_trials more trials in it (Optuna's own per-call semantics), so re-running resumes.

MLflow layout: one parent run per study, shared by every worker. The first process to create the study
creates the parent run and stores its id as the study user attribute `mlflow_parent_run_id`; the others
wait for it and nest their trials under the same parent. Each trial is one nested run holding the sampled
params, intermediate values (`intermediate.<metric>` by step), the final value (`value`) and the state
(tag `optuna.state` = complete | pruned | failed; run status FINISHED | KILLED | FAILED). The best params
and value go on the parent, and the best trial's model is registered (champion rules of the registry).

Rows: an SAE trial evaluates, interprets and is pruned on a validation split carved from the train rows
(`sae.eval_rows=validation`, `sae.validation_fraction` of the train images by a hash of their index), trains
on the other train rows, and never reads a test row: the test rows stay held out from everything that
chose the recipe. Its final value is its last evaluation's (no test-row interpretation runs in a trial).

Pruning (MedianPruner) acts on the SAE's held-out evaluations during training (every sae.eval_every steps),
for the trainer's metrics (fvu, l0, …) and for the interpretation metrics (sigma_label, label_purity), which
the SAE stage then computes at every evaluation too. The probe trains in one go, so its few-shot accuracies
(1, 5, 10, … shots) are reported as intermediate values for the record only.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
import optuna
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from .config import Config, ConfigError, replace
from .features.extract import extract, store_uri_for
from .features.store import StoreError, open_store
from .registry import MODEL_NAMES, register_model
from .stages import train_probe_stage, train_sae_stage
from .stages.train_sae import INTERPRET_METRICS, TRAINER_METRICS
from .tracking import check_server, end_status, log_result, run_tags, setup, tracking_uri

PARENT_ATTR = "mlflow_parent_run_id"
DEFAULT_STORAGE = "sqlite:///optuna.db"

DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "sae": {"sae.expansion": [4, 8, 16], "sae.k": {"low": 8, "high": 64, "log": True},
            "sae.lr": {"low": 1e-4, "high": 3e-3, "log": True}, "sae.auxk_coef": {"low": 0.0, "high": 0.25}},
    "probe": {"probe.C": {"low": 1e-3, "high": 1e2, "log": True}},
    "diffc": {"probe.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "probe.width": [16, 32, 64, 128]},
}
# families of metrics the stages report per concept or per k (label_purity_share.shape, gap.sparse_probe.k16, …)
PREFIXES = {"sae": ("gap.", "control.", "label_purity", "sigma_label.", "sparse_probe.", "dissection.",
                    "classes_with_pure_unit."),
            "probe": ("control.", "fewshot.")}
METRICS = {"sae": TRAINER_METRICS + INTERPRET_METRICS,
           "probe": ("accuracy", "macro_f1")}


@dataclass
class TuneResult:
    study_name: str
    storage: str
    parent_run_id: str
    n_trials_run: int
    best_value: float | None
    best_params: dict[str, Any]
    best_run_id: str | None
    registration: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- configuration
def storage_url(cfg: Config) -> str:
    return cfg.tune.storage or DEFAULT_STORAGE


def redact(url: str) -> str:
    """A storage URL without its password (it is logged as a param)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def search_space(cfg: Config) -> dict[str, Any]:
    """Parameter → spec, defaults for the target merged with tune.search_space (which wins)."""
    tc = cfg.tune
    base = "diffc" if tc.target == "probe" and cfg.probe.kind == "diffc" else tc.target
    section = "sae" if tc.target == "sae" else "probe"
    space = dict(DEFAULT_SPACES[base])
    if base == "probe" and cfg.probe.penalty == "l1":  # an L1 probe reads its own C
        space = {"probe.C_l1": space.pop("probe.C"), **space}
    for k, v in (tc.search_space or {}).items():
        key = k if "." in k else f"{section}.{k}"
        head, _, name = key.partition(".")
        if head != section or not hasattr(getattr(cfg, section), name):
            raise ConfigError(f"tune.search_space: {k!r} is not a {section} option; "
                              f"known: {', '.join(sorted(vars(getattr(cfg, section))))}")
        space[key] = v
    for key, spec in space.items():
        if isinstance(spec, dict):
            if "low" not in spec or "high" not in spec or spec["low"] > spec["high"]:
                raise ConfigError(f"tune.search_space.{key}: a range needs low <= high, got {spec}")
        elif isinstance(spec, (list, tuple)) and not spec:
            raise ConfigError(f"tune.search_space.{key}: an empty list of choices")
    return space


def _sample(trial, key: str, spec: Any, high_cap: int | None = None) -> Any:
    if isinstance(spec, (list, tuple)):
        return trial.suggest_categorical(key, list(spec))
    if isinstance(spec, dict):
        lo, hi = spec["low"], spec["high"]
        log = bool(spec.get("log", False))
        if spec.get("type") == "int" or (isinstance(lo, int) and isinstance(hi, int) and spec.get("type") != "float"):
            hi = min(int(hi), high_cap) if high_cap is not None else int(hi)
            return trial.suggest_int(key, int(lo), max(int(lo), hi), log=log)
        return trial.suggest_float(key, float(lo), float(hi), log=log)
    return spec  # fixed value


def sample_params(trial, space: dict[str, Any], d_in: int | None, expansion: int = 1) -> dict[str, Any]:
    """Sample every parameter; sae.k never exceeds the number of latents (d_in × expansion)."""
    params: dict[str, Any] = {}
    for key in sorted(space, key=lambda k: k == "sae.k"):  # expansion before k
        cap = None
        if key == "sae.k" and d_in:
            cap = d_in * int(params.get("sae.expansion", expansion))
        params[key] = _sample(trial, key, space[key], cap)
    return params


# --------------------------------------------------------------------------- stages
class Reporter:
    """Intermediate values: to MLflow (`intermediate.<metric>`) and to Optuna, pruning when told to."""

    def __init__(self, trial, metric: str, prune: bool = True):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.n = 0

    def report(self, step: int, value: float) -> None:
        mlflow.log_metric(f"intermediate.{self.metric}", float(value), step=int(step))
        self.trial.report(float(value), int(step))
        self.n += 1
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned at step {step}: {self.metric}={value:.5g} "
                                     "is worse than the median of earlier trials")

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """A MetricsCallback for the SAE stage: log every held-out metric, report the tuned one."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step))
        if self.metric in metrics and math.isfinite(metrics[self.metric]):
            self.report(step, metrics[self.metric])


def run_sae_trial(cfg: Config, reporter: Reporter) -> tuple[str, dict[str, float]]:
    """Train one SAE inside the active (trial) run; returns (output dir, final held-out metrics).

    The stage reports at every evaluation; for an interpretation metric it computes that metric while
    training (live_interpretation), so those trials are pruned like the others. A trial interprets its
    latents fully only when the tuned metric needs it.
    """
    interpretation = reporter.metric not in TRAINER_METRICS  # the report's metrics, computed while training
    cfg = replace(cfg, **{"sae.eval_rows": "validation"})  # never the test rows (module docstring)
    res = train_sae_stage(cfg, progress=False, on_eval=reporter.on_eval, interpret=False,
                          live_interpretation=interpretation)
    log_result(res, step=res.steps, skip_existing_metrics=not res.skipped_training)
    return str(res.sae_dir), dict(res.metrics)


def run_probe_trial(cfg: Config, reporter: Reporter) -> tuple[str, dict[str, float]]:
    res = train_probe_stage(cfg)
    log_result(res)
    key = f"{reporter.metric}_mean"
    for shots, v in sorted(((int(k), v) for k, v in res.fewshot.items() if str(k).isdigit()), key=lambda x: x[0]):
        if key in v:
            reporter.report(shots, v[key])
    return str(res.probe_dir), dict(res.metrics)


def _feature_dim(cfg: Config) -> int | None:
    """d_in of the SAE's features, to keep k within the number of latents; None if the store is not there."""
    try:
        sc = cfg.sae
        store = open_store(sc.store or store_uri_for(cfg))
        return store.feature_set(sc.hook_point, sc.timestep, "tokens" if sc.input == "tokens" else sc.pooling).dim
    except Exception:
        return None


def _ensure_store(cfg: Config) -> None:
    """Tuning needs the feature store; extract it (no MLflow run) when it is missing or incomplete."""
    uri = (cfg.sae.store if cfg.tune.target == "sae" else cfg.probe.store) or store_uri_for(cfg)
    try:
        if open_store(uri).complete:
            return
    except StoreError:
        pass
    print(f"tune: the feature store {uri} is missing or incomplete; extracting it first")
    extract(cfg, progress=False)


# --------------------------------------------------------------------------- study and parent run
def open_study(cfg: Config, storage: str):
    """(study, created_by_this_process). Creation is atomic in the storage, so exactly one worker is the creator."""
    tc = cfg.tune
    kw: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        # several processes on one SQLite file: wait for the write lock instead of failing at once
        kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    # heartbeats let a resumed study mark the trials of a crashed worker FAIL instead of RUNNING forever
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
                rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120, **kw)
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.ProgrammingError) as e:
            # workers starting together on a new database race to create its tables (PostgreSQL says
            # DuplicateTable, SQLite is locked or unique-violated); the loser retries
            if attempt == 5 or (isinstance(e, sqlalchemy.exc.ProgrammingError) and "already exists" not in str(e)):
                raise
            time.sleep(0.5 * (attempt + 1))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0, interval_steps=1)
              if tc.pruner == "median" else optuna.pruners.NopPruner())
    try:
        study = optuna.create_study(study_name=tc.study_name, storage=rdb, direction=tc.direction, pruner=pruner,
                                    load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.create_study(study_name=tc.study_name, storage=rdb, direction=tc.direction, pruner=pruner,
                                    load_if_exists=True)
        created = False
    want = optuna.study.StudyDirection.MAXIMIZE if tc.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
    if study.direction != want:
        raise ConfigError(f"tune.direction: study {tc.study_name!r} in {redact(storage)} was created to "
                          f"{study.direction.name.lower()}, not {tc.direction}; use another tune.study_name")
    if created:
        study.set_user_attr("target", tc.target)
        study.set_user_attr("metric", tc.metric)
    else:
        for k, v in (("target", tc.target), ("metric", tc.metric)):
            have = study.user_attrs.get(k)
            if have is not None and have != v:
                raise ConfigError(f"tune.{k}: study {tc.study_name!r} tunes {k}={have!r}, this worker asks for "
                                  f"{v!r}; use another tune.study_name")
    return study, created


def _usable_run(run_id: str | None, experiment_id: str) -> bool:
    if not run_id:
        return False
    try:
        r = mlflow.MlflowClient().get_run(run_id)
    except Exception:
        return False
    return r.info.lifecycle_stage == "active" and r.info.experiment_id == experiment_id


def parent_run_id(study, created: bool, cfg: Config, experiment_id: str, env_run: str | None,
                  wait_s: float = 30.0) -> str:
    """The study's parent run id: stored on the study, created by the study's creator (or a later worker
    when the stored one is gone), waited for by the other workers."""
    pid = study.user_attrs.get(PARENT_ATTR)
    if not created and not pid:
        t0 = time.monotonic()
        while not pid and time.monotonic() - t0 < wait_s:
            time.sleep(0.5)
            pid = study.user_attrs.get(PARENT_ATTR)  # read from the storage at every access
    if _usable_run(pid, experiment_id):
        return pid
    if env_run and _usable_run(env_run, experiment_id):
        pid = env_run
    else:
        tags = {"stage": "tune", "optuna.study": cfg.tune.study_name, "tune.target": cfg.tune.target,
                "backbone": cfg.backbone.id, "hook_point": cfg.sae.hook_point, "timestep": str(cfg.sae.timestep),
                "dataset": cfg.data.id or cfg.data.source,
                "mlflow.note.content": f"Optuna study {cfg.tune.study_name}: {cfg.tune.target} against held-out "
                                       f"{cfg.tune.metric} ({cfg.tune.direction}); one nested run per trial."}
        pid = mlflow.MlflowClient().create_run(experiment_id, run_name=f"tune-{cfg.tune.study_name}",
                                               tags=tags).info.run_id
    study.set_user_attr(PARENT_ATTR, pid)
    return pid


# --------------------------------------------------------------------------- the study
def tune(cfg: Config, n_trials: int | None = None, enqueue: list[dict[str, Any]] | None = None) -> TuneResult:
    """Run n_trials (default tune.n_trials) more trials of the study; `enqueue`: param sets to try first."""
    tc = cfg.tune
    if tc.metric not in METRICS[tc.target] and not tc.metric.startswith(PREFIXES[tc.target]):
        raise ConfigError(f"tune.metric: {tc.metric!r} is not a held-out metric of the {tc.target} stage; "
                          f"use one of {', '.join(METRICS[tc.target])}")
    space = search_space(cfg)
    storage = storage_url(cfg)
    n_trials = int(n_trials or tc.n_trials)

    check_server(tracking_uri(cfg.tracking))  # seconds, not minutes of retries, for a dead server
    setup(cfg.tracking)
    env_run = os.environ.pop("MLFLOW_RUN_ID", None)  # else nested start_run calls would resume it
    try:
        if env_run:
            exp_id = mlflow.MlflowClient().get_run(env_run).info.experiment_id
            mlflow.set_experiment(experiment_id=exp_id)
        exp_id = mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id if not env_run else exp_id
        _ensure_store(cfg)
        d_in = _feature_dim(cfg) if tc.target == "sae" else None
        study, created = open_study(cfg, storage)
        before = {t.number for t in study.get_trials(deepcopy=False)}
        pid = parent_run_id(study, created, cfg, exp_id, env_run)
        for params in enqueue or []:
            study.enqueue_trial(params, skip_if_exists=True)
        outer = None
        if env_run and env_run != pid:
            outer = mlflow.start_run(run_id=env_run)
            mlflow.set_tag("optuna.parent_run_id", pid)
        mlflow.start_run(run_id=pid, nested=outer is not None)
        stopped: BaseException | None = None
        try:
            _log_parent_params(cfg, storage, space)
            objective = _objective(cfg, space, d_in, pid)
            study.optimize(objective, n_trials=n_trials, timeout=tc.timeout_s or None, catch=(Exception,),
                           gc_after_trial=True)
            result = _finish(cfg, study, storage, pid, before)
        except BaseException as e:
            stopped = e
            raise
        finally:
            mlflow.end_run(end_status(stopped))  # KILLED when stopped (Ctrl+C, SIGTERM), FAILED when broken
            if outer is not None:
                mlflow.end_run(end_status(stopped))
    finally:
        if env_run:
            os.environ["MLFLOW_RUN_ID"] = env_run
    return result


def _log_parent_params(cfg: Config, storage: str, space: dict[str, Any]) -> None:
    tc = cfg.tune
    params = {"tune.target": tc.target, "tune.metric": tc.metric, "tune.direction": tc.direction,
              "tune.study_name": tc.study_name, "tune.storage": redact(storage), "tune.pruner": tc.pruner,
              "tune.search_space": json.dumps(space, sort_keys=True)[:6000]}
    run_id = mlflow.active_run().info.run_id

    def log_missing() -> None:
        # every worker logs the same values; a param may not be logged twice with different values
        have = mlflow.MlflowClient().get_run(run_id).data.params
        missing = {k: v for k, v in params.items() if k not in have}
        if missing:
            mlflow.log_params(missing)

    _retry_clash(log_missing)


def _objective(cfg: Config, space: dict[str, Any], d_in: int | None, pid: str):
    tc = cfg.tune
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        params = sample_params(trial, space, d_in, cfg.sae.expansion)
        tcfg = replace(cfg, **params)
        run = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags={
            "stage": "tune_trial", "optuna.study": tc.study_name, "optuna.trial": str(trial.number),
            "optuna.worker": worker, "tune.target": tc.target, "backbone": cfg.backbone.id,
            "hook_point": cfg.sae.hook_point, "timestep": str(cfg.sae.timestep),
            "dataset": cfg.data.id or cfg.data.source})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        state = "failed"
        try:
            mlflow.log_params({k: str(v) for k, v in params.items()})
            rep = Reporter(trial, tc.metric, prune=tc.target == "sae")
            out_dir, metrics = (run_sae_trial if tc.target == "sae" else run_probe_trial)(tcfg, rep)
            flat = _flat(metrics)
            if tc.metric not in flat:
                raise KeyError(f"the {tc.target} stage reported no {tc.metric!r}; it reported: {', '.join(sorted(flat))}")
            value = float(flat[tc.metric])
            mlflow.log_metric("value", value)
            trial.set_user_attr("output_dir", out_dir)
            trial.set_user_attr("metrics", {k: v for k, v in flat.items() if "." not in k})
            state = "complete"
            return value
        except optuna.TrialPruned:
            state = "pruned"
            raise
        except KeyboardInterrupt:  # Ctrl+C or SIGTERM (cli/main.py): the trial was stopped, not broken
            state = "stopped"
            raise
        finally:
            mlflow.set_tag("optuna.state", state)
            mlflow.end_run({"complete": "FINISHED", "pruned": "KILLED", "stopped": "KILLED",
                            "failed": "FAILED"}[state])

    return objective


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _is_clash(e: BaseException) -> bool:
    """A unique-key clash of two workers writing the same row: the database's IntegrityError, seen in-process
    as the cause of MLflow's exception; a tracking server returns only its text (UniqueViolation)."""
    chain = [e, e.__cause__, e.__context__]
    if any(isinstance(x, sqlalchemy.exc.IntegrityError) for x in chain):
        return True
    return isinstance(e, MlflowException) and any(
        m in str(e) for m in ("UNIQUE constraint", "UniqueViolation", "duplicate key", "IntegrityError"))


def _retry_clash(fn, attempts: int = 5) -> None:
    """Run a write to the shared parent run. Workers write the same keys at the same moment, and an
    insert-or-update is not atomic across processes (SQLite, PostgreSQL): a unique-key clash is retried,
    and the retry then finds the row and updates it (or skips an identical param)."""
    for i in range(attempts):
        try:
            fn()
            return
        except (MlflowException, sqlalchemy.exc.IntegrityError) as e:
            if not _is_clash(e) or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))


def _set_parent_tags(tags: dict[str, str]) -> None:
    _retry_clash(lambda: mlflow.set_tags(tags))


def _finish(cfg: Config, study, storage: str, pid: str, before: set[int]) -> TuneResult:
    tc = cfg.tune
    trials = study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.number not in before]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    mlflow.log_metrics({f"trials.{k}": float(v) for k, v in counts.items() if v})
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params,
             "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for t in trials]
    mlflow.log_dict(rows, "study/trials.json")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    result = TuneResult(tc.study_name, redact(storage), pid, len(mine), None, {}, None, None, rows)
    if not complete:
        print(f"tune: no trial of study {tc.study_name} completed; see the failed trials' runs under {pid}")
        return result
    best = study.best_trial
    result.best_value, result.best_params = float(best.value), dict(best.params)
    result.best_run_id = best.user_attrs.get("mlflow_run_id")
    mlflow.log_metric("best_value", result.best_value)
    mlflow.log_metric("best_trial", float(best.number))
    # tags, not params: the best moves as workers add trials, and a param may not change
    tags = {f"best.{k}": str(v) for k, v in best.params.items()}
    tags["best_run_id"] = result.best_run_id or ""
    _set_parent_tags(tags)
    mlflow.log_dict({"value": result.best_value, "params": result.best_params, "trial": best.number,
                     "run_id": result.best_run_id, "metric": tc.metric, "direction": tc.direction},
                    "best_params.json")
    if cfg.tracking.register and result.best_run_id:
        result.registration = _register_best(cfg, best)
    print(f"tune: best {tc.metric}={result.best_value:.5g} (trial {best.number}) with {result.best_params}")
    return result


def _register_best(cfg: Config, best) -> dict[str, Any] | None:
    """Register the best trial's model once (another worker may have registered the same trial already)."""
    tc = cfg.tune
    kind = "sae" if tc.target == "sae" else "probe"
    marker = f"{tc.study_name}:{best.number}"
    client = mlflow.MlflowClient()
    try:
        existing = client.search_model_versions(f"name='{MODEL_NAMES[kind]}'")
    except Exception as e:  # no such model yet, or a store without search: register (a duplicate is harmless)
        print(f"tune: could not look for an earlier registration of trial {marker} ({type(e).__name__}); registering")
        existing = []
    for mv in existing:
        if (mv.tags or {}).get("optuna.trial") == marker:
            return {"name": mv.name, "version": str(mv.version), "already_registered": True}
    out_dir = best.user_attrs.get("output_dir")
    metrics = best.user_attrs.get("metrics") or {}
    tags = {k: v for k, v in run_tags(cfg, "tune").items() if k != "stage"} | {
        "optuna.trial": marker, "optuna.study": tc.study_name, **{f"param.{k}": str(v) for k, v in best.params.items()}}
    with mlflow.start_run(run_id=best.user_attrs["mlflow_run_id"], nested=True):
        reg = register_model(kind, out_dir, metrics, tags, tc.metric)
    _retry_clash(lambda: mlflow.set_tag("registered", f"{reg.name}/{reg.version}"))
    return reg.to_dict()
