"""Issue 7, tested for real on loopback: the whole team setup (PostgreSQL + S3 + MLflow server) driven by
the `revelio` command line in separate processes, as users and workers would run it.

1. `revelio run` (the default main job) against the tracking server, its feature store on S3;
2. two `revelio tune` workers at once on one Optuna study in PostgreSQL → one parent run, 4 nested trials;
3. the bucket holds the feature store (written directly by the workers) and the MLflow artifacts
   (written by the server: the experiment's artifact location is `mlflow-artifacts:/`, i.e. proxied);
4. the three models are registered with a champion, and `revelio-classifier@champion` loads and predicts
   in a process that has no AWS credentials at all.

Every name (experiment, study, store prefix) is unique per run, so reruns against long-lived services
(REVELIO_SERVICES_ENV) do not collide.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.registry.helpers import PY, subprocess_env, tiny_config

from .conftest import AWS_VARS

pytestmark = pytest.mark.services

NAMES = ("revelio-sae", "revelio-probe", "revelio-classifier")
STAGES = ("extract", "train_sae", "train_probe", "register")
REVELIO = str(Path(PY).parent / "revelio")
RUN_TIMEOUT_S = 420
TUNE_TIMEOUT_S = 420
LOAD_TIMEOUT_S = 240


# --------------------------------------------------------------------------- helpers
def child_env(services, tmp_path: Path, *, aws: bool) -> dict[str, str]:
    """A child's environment: the tracking server, and the S3 endpoint and keys only when `aws`.

    Nothing from the developer's AWS setup (~/.aws, instance metadata) can leak in either way."""
    env = subprocess_env()
    for k in [*AWS_VARS, "AWS_DEFAULT_REGION", "AWS_REGION"]:
        env.pop(k, None)
    for k in [k for k in env if k.startswith("MLFLOW_")]:
        env.pop(k)  # e.g. a stray MLFLOW_EXPERIMENT_ID or MLFLOW_RUN_ID of the caller's shell
    env.update({
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "MLFLOW_TRACKING_URI": services.tracking_uri,
        # a busy 2-core machine: a few retries and a patient timeout instead of the suite's 0 / 5 s
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
        "MPLBACKEND": "Agg",
    })
    if aws:
        for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            env[k] = services.env[k]
        env["REVELIO_OPTUNA_STORAGE"] = services.env["REVELIO_OPTUNA_STORAGE"]
    return env


def _tail(path_or_text: Path | str, n: int = 6000) -> str:
    text = path_or_text.read_text(errors="replace") if isinstance(path_or_text, Path) else path_or_text
    return text[-n:]


def run_checked(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float, what: str) -> str:
    """Run to completion; on a non-zero exit or a timeout fail with the command's own output."""
    log = cwd / f"{what.replace(' ', '_')}.log"
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{what} did not finish within {timeout} s; its output:\n{_tail(log)}")
    out = log.read_text(errors="replace")
    if rc != 0:
        pytest.fail(f"{what} exited with {rc} after {time.monotonic() - t0:.0f} s; its output:\n{_tail(out)}")
    print(f"{what}: {time.monotonic() - t0:.1f} s")
    return out


def run_concurrently(argss: list[list[str]], *, env: dict[str, str], cwd: Path, timeout: float,
                     what: str) -> list[str]:
    """Start every command at once, wait for all (one shared deadline), fail with each one's output."""
    t0 = time.monotonic()
    logs = [cwd / f"{what.replace(' ', '_')}-{i}.log" for i in range(len(argss))]
    procs = []
    try:
        for args, log in zip(argss, logs):
            with open(log, "w") as f:
                procs.append(subprocess.Popen(args, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                              text=True, stdin=subprocess.DEVNULL))
        deadline = t0 + timeout
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {timeout} s; their output:\n"
                    + "\n".join(f"---- {what} {i}:\n{_tail(log, 3000)}" for i, log in enumerate(logs)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = [log.read_text(errors="replace") for log in logs]
    bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if bad:
        pytest.fail(f"{what}: exit codes {[p.returncode for p in procs]}; output:\n"
                    + "\n".join(f"---- {what} {i} (exit {rc}):\n{_tail(outs[i], 4000)}" for i, rc in bad))
    print(f"{what}: {time.monotonic() - t0:.1f} s")
    return outs


def s3_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def artifact_key(uri: str) -> str:
    """`mlflow-artifacts:/3/abc/artifacts` (or with a host) → `3/abc/artifacts`, the key below the server's
    --artifacts-destination."""
    assert uri.startswith("mlflow-artifacts:"), f"{uri} is not a proxied (mlflow-artifacts:) location"
    return urlparse(uri).path.lstrip("/")


# --------------------------------------------------------------------------- the test
def test_team_setup_end_to_end_on_loopback(services, tiny_unet_dir, tmp_path, monkeypatch):
    import optuna
    import yaml
    from mlflow import MlflowClient

    from revelio_svc.config import replace
    from revelio_svc.tune import PARENT_ATTR

    t_start = time.monotonic()
    # this process talks to the server too: patient, as for the children
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")

    tag = f"it-{uuid.uuid4().hex[:10]}"
    bucket = services.bucket
    store_prefix = f"features/{tag}"
    storage = services.env["REVELIO_OPTUNA_STORAGE"]
    cfg = tiny_config(tiny_unet_dir, tmp_path / "out",
                      f"extract.store=s3://{bucket}/{store_prefix}",
                      f"tracking.experiment={tag}", f"tune.storage={storage}", f"tune.study_name={tag}",
                      "tune.n_trials=2", "tune.pruner=none")
    # the tuning workers search the learning rate only: a few seconds per trial
    cfg = replace(cfg, **{"tune.search_space": {"expansion": 4, "k": 4, "auxk_coef": 0.0,
                                                "lr": {"low": 1e-3, "high": 5e-3, "log": True}}})
    config = tmp_path / "team.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    worker_env = child_env(services, tmp_path, aws=True)
    client = MlflowClient(services.tracking_uri)

    # ---------------------------------------------------------------- 1. the main job through the server
    work = tmp_path / "run"
    work.mkdir()
    run_log = run_checked([REVELIO, "run", "--config", str(config)], env=worker_env, cwd=work,
                          timeout=RUN_TIMEOUT_S, what="revelio run")
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists(), "the run did not use the server"
    exp = client.get_experiment_by_name(tag)
    assert exp is not None, f"no experiment {tag} on {services.tracking_uri}; revelio run said:\n{_tail(run_log)}"
    assert exp.artifact_location.startswith("mlflow-artifacts:/"), exp.artifact_location  # proxied artifacts
    (main,) = client.search_runs([exp.experiment_id], "tags.stage = 'main'")
    assert main.info.status == "FINISHED"
    children = {r.data.tags["stage"]: r for r in
                client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{main.info.run_id}'")}
    assert set(children) == set(STAGES), sorted(children)
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert children["extract"].data.tags["store_uri"] == f"s3://{bucket}/{store_prefix}"
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in [main, *children.values()])
    pipeline = json.loads(Path(client.download_artifacts(main.info.run_id, "pipeline.json",
                                                         str(tmp_path))).read_text())
    regs = {r["name"]: r for r in pipeline["registrations"].values()}
    assert set(regs) == set(NAMES), pipeline["registrations"]

    # ---------------------------------------------------------------- 2. two tuning workers, one study
    tune_dir = tmp_path / "tune"
    tune_dir.mkdir()
    tune_args = [REVELIO, "tune", "--config", str(config), "--set", "tracking.register=false"]
    outs = run_concurrently([tune_args, tune_args], env=worker_env, cwd=tune_dir, timeout=TUNE_TIMEOUT_S,
                            what="revelio tune")
    assert not (tune_dir / "optuna.db").exists(), "a worker used a local SQLite study instead of PostgreSQL"
    study = optuna.load_study(study_name=tag, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4, [(t.number, t.state.name) for t in trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), \
        [(t.number, t.state.name) for t in trials] + [_tail(o, 2000) for o in outs]
    parent_id = study.user_attrs[PARENT_ATTR]
    tune_parents = client.search_runs([exp.experiment_id], "tags.stage = 'tune'")
    assert [r.info.run_id for r in tune_parents] == [parent_id]  # one parent run, shared by both workers
    nested = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(nested) == 4 and all(r.data.tags["stage"] == "tune_trial" for r in nested)
    assert all(r.info.status == "FINISHED" for r in nested)
    assert {r.info.run_id for r in nested} == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert sorted(int(r.data.tags["optuna.trial"]) for r in nested) == [0, 1, 2, 3]
    per_worker = Counter(r.data.tags["optuna.worker"] for r in nested)
    assert sorted(per_worker.values()) == [2, 2], per_worker  # both workers, two trials each
    tune_parent = client.get_run(parent_id)
    assert tune_parent.data.params["tune.study_name"] == tag
    assert "***" in tune_parent.data.params["tune.storage"]  # the password is not logged
    assert tune_parent.data.metrics["best_value"] == pytest.approx(min(t.value for t in trials))

    # ---------------------------------------------------------------- 3. what is in the bucket
    s3 = services.s3_client()
    store_keys = set(s3_keys(s3, bucket, store_prefix + "/"))
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{store_prefix}/manifest.json")["Body"].read())
    assert manifest["complete"] and manifest["n_shards"] == 2 and manifest["n_images"] == 48
    want = {f"{store_prefix}/manifest.json"}
    for i in range(manifest["n_shards"]):
        want.add(f"{store_prefix}/rows/shard-{i:05d}.safetensors")
        for key in manifest["feature_sets"]:
            want.add(f"{store_prefix}/{key}/shard-{i:05d}.safetensors")
    assert {"up_blocks.1/t10/mean", "up_blocks.1/t10/tokens"} <= set(manifest["feature_sets"])
    assert want <= store_keys, f"missing from the bucket: {sorted(want - store_keys)}"

    # MLflow artifacts: put into the bucket by the server, under --artifacts-destination s3://BUCKET/mlartifacts
    art_keys = set(s3_keys(s3, bucket, f"mlartifacts/{artifact_key(exp.artifact_location)}/"))
    expected = {
        (main.info.run_id, "pipeline.json"), (main.info.run_id, "config.yaml"),
        (main.info.run_id, "pipeline_stages.png"),
        (children["extract"].info.run_id, "feature_store/manifest.json"),
        (children["register"].info.run_id, "classifier/example_explanation.png"),
        (parent_id, "study/trials.json"), (parent_id, "best_params.json"),
    }
    for run_id, path in expected:
        key = f"mlartifacts/{artifact_key(client.get_run(run_id).info.artifact_uri)}/{path}"
        assert key in art_keys, f"{path} of run {run_id} is not in s3://{bucket}/{key}"
    # the bucket's copy is the one the server serves
    key = f"mlartifacts/{artifact_key(main.info.artifact_uri)}/pipeline.json"
    assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) == pipeline

    # ---------------------------------------------------------------- 4. registry and a credential-less consumer
    for name in NAMES:
        mv = client.get_model_version(name, regs[name]["version"])  # this run's version ...
        assert mv.status == "READY" and mv.run_id == children["register"].info.run_id
        assert mv.tags["run_id.train_sae"] == children["train_sae"].info.run_id
        # ... its files went to the bucket through the server
        logged = client.get_logged_model(mv.model_id) if getattr(mv, "model_id", None) else None
        if logged is not None:
            mkey = f"mlartifacts/{artifact_key(logged.artifact_location)}/MLmodel"
            assert s3.head_object(Bucket=bucket, Key=mkey)["ContentLength"] > 0, mkey
        champion = client.get_model_version_by_alias(name, "champion")  # ... and there is a champion
        assert champion.status == "READY"
        if regs[name]["champion"]:
            assert str(champion.version) == str(regs[name]["version"])

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    code = """
import json, boto3
assert boto3.session.Session().get_credentials() is None, "this process must hold no AWS credentials"
from revelio_svc.registry import list_models, load_classifier
from revelio_svc.data import load_dataset
models = {m["name"]: m["aliases"] for m in list_models()}
clf = load_classifier("revelio-classifier@champion")
img = load_dataset(clf.data).image(3)
p = clf.predict([img])[0]
print("RESULT " + json.dumps({"models": models, "classes": list(clf.class_names), "p": [float(x) for x in p],
                              "version": clf.source.get("version")}))
"""
    out = run_checked([PY, "-c", code], env=child_env(services, tmp_path, aws=False), cwd=consumer,
                      timeout=LOAD_TIMEOUT_S, what="load classifier without AWS credentials")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no RESULT line in the consumer's output:\n{_tail(out)}"
    got = json.loads(lines[-1][len("RESULT "):])
    for name in NAMES:
        assert "champion" in got["models"].get(name, {}), got["models"]
    assert got["version"] == str(got["models"]["revelio-classifier"]["champion"])
    assert len(got["p"]) == len(got["classes"]) >= 2
    assert all(0.0 <= x <= 1.0 for x in got["p"]) and sum(got["p"]) == pytest.approx(1.0, abs=1e-5)
    print(f"whole scenario: {time.monotonic() - t_start:.1f} s (services started in {services.started_in_s:.1f} s)")
