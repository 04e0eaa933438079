"""Two processes on loopback (gloo, CPU) under torchrun against one: the same store bytes, the same SAE
within tolerance, a killed rank resumed, a failing rank stopping the group."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from revelio_svc.config import replace, to_dict
from revelio_svc.features import open_store
from revelio_svc.features.extract import extract
from revelio_svc.features.manifest import PARTS
from revelio_svc.sae.trainer import CHECKPOINT_FILE, train_sae

from ..sae.helpers import build_store, tiny_cfg
from .launch import HERE, files, torchrun


@pytest.fixture()
def small_cfg(tiny_cfg, tmp_path):
    """40 images in 5 shards: rank 0 writes shards 0, 2, 4 and rank 1 shards 1, 3."""
    return replace(tiny_cfg, **{"extract.shard_size": 8})


def _config_file(cfg, tmp_path, store) -> str:
    d = to_dict(replace(cfg, **{"extract.store": str(store)}))
    p = tmp_path / f"{store.name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def test_two_ranks_write_the_bytes_one_process_writes(small_cfg, tmp_path):
    one = extract(replace(small_cfg, **{"extract.store": str(tmp_path / "one")}), progress=False)
    out, _ = torchrun(2, ["extract", "--no-mlflow", "--config", _config_file(small_cfg, tmp_path, tmp_path / "two")])
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(a) == sorted(b)  # no manifest part or temp file left behind
    for name in a:
        assert a[name] == b[name], name
    assert open_store(tmp_path / "two", verify=True).n_rows == one.n_rows == 40


def test_a_killed_rank_keeps_its_shards_and_a_relaunch_completes_the_same_store(small_cfg, tmp_path):
    extract(replace(small_cfg, **{"extract.store": str(tmp_path / "ref")}), progress=False)
    conf = _config_file(small_cfg, tmp_path, tmp_path / "killed")
    out, _ = torchrun(2, [str(HERE / "faults.py"), "kill-after-shard", "1", "extract", "--no-mlflow",
                          "--config", conf], script=True)
    assert out.returncode != 0
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert not manifest["complete"]
    part = json.loads((tmp_path / "killed" / PARTS / "rank-00001.json").read_text())
    assert list(part["shards"]) == ["1"]  # the shard rank 1 finished before it died is on record

    out, _ = torchrun(2, ["extract", "--no-mlflow", "--config", conf])
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = files(tmp_path / "ref"), files(tmp_path / "killed")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name


def test_one_rank_raising_stops_both_with_the_rank_named(small_cfg, tmp_path):
    conf = _config_file(small_cfg, tmp_path, tmp_path / "failing")
    out, seconds = torchrun(2, [str(HERE / "faults.py"), "raise", "1", "extract", "--no-mlflow", "--config", conf],
                            script=True, timeout=120)
    assert out.returncode != 0
    assert seconds < 60
    assert "revelio extract (rank 1 of 2): RuntimeError: injected failure" in out.stderr, out.stderr[-3000:]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    build_store(root / "store")
    return root


def _metrics(out) -> dict:
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("METRICS ")]
    assert len(line) == 1, out.stdout  # printed by rank 0 only
    return json.loads(line[0][len("METRICS "):])


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_sae_on_two_ranks_matches_one_process(planted, variant):
    one = train_sae(tiny_cfg(planted, planted / "store", steps=200, output=str(planted / f"one-{variant}"),
                             variant=variant), progress=False)
    out, _ = torchrun(2, [str(HERE / "train.py"), str(planted), "200", f"two-{variant}", variant], script=True)
    two = _metrics(out)
    assert two["fvu"] == pytest.approx(one.metrics["fvu"], rel=0.05)
    assert two["l0"] == pytest.approx(one.metrics["l0"], rel=0.1)
    assert {"samples_per_s.rank0", "samples_per_s.rank1"} <= set(two)
    written = sorted(p.name for p in (planted / f"two-{variant}").iterdir())
    assert written == ["config.json", "metrics.json", "sae.safetensors"]  # once, by rank 0; no checkpoint left


def test_sae_on_two_ranks_resumes_after_a_killed_rank(planted):
    out, _ = torchrun(2, [str(HERE / "train.py"), str(planted), "200", "ref", "topk"], script=True)
    _metrics(out)
    out, _ = torchrun(2, [str(HERE / "train.py"), str(planted), "200", "killed", "topk", "1", "130"], script=True)
    assert out.returncode != 0
    assert (planted / "killed" / CHECKPOINT_FILE).is_file()  # rank 0's checkpoint of step 100
    out, _ = torchrun(2, [str(HERE / "train.py"), str(planted), "200", "killed", "topk"], script=True)
    assert _metrics(out)["resumed_from"] == 100
    ref = load_file(str(planted / "ref" / "sae.safetensors"))
    got = load_file(str(planted / "killed" / "sae.safetensors"))
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_run_under_torchrun_tracks_and_registers_from_rank_0_only(tiny_unet_dir, tmp_path):
    from mlflow import MlflowClient

    from ..registry.helpers import tiny_overrides

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # with the probe controls: their extraction runs on rank 0 alone
    overrides = [*tiny_overrides(tiny_unet_dir, tmp_path / "out"), "probe.controls=true"]
    sets = [a for o in overrides for a in ("--set", o)]
    out, _ = torchrun(2, ["run", *sets], cwd=tmp_path, extra_env={"MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("pipeline finished") == 1  # only rank 0 reports
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("revelio")
    runs = client.search_runs([exp.experiment_id])
    stages = sorted(r.data.tags.get("stage", "") for r in runs)
    assert stages == sorted(["main", "extract", "train_sae", "train_probe", "register"])  # one run each
    by = {r.data.tags["stage"]: r for r in runs}
    for stage in ("main", "extract", "train_sae"):
        assert by[stage].data.params["world_size"] == "2" and by[stage].data.params["dist_backend"] == "gloo"
    assert {"images_per_s.rank0", "images_per_s.rank1"} <= set(by["extract"].data.metrics)
    assert {"samples_per_s.rank0", "samples_per_s.rank1"} <= set(by["train_sae"].data.metrics)
    assert [str(v.version) for v in client.search_model_versions("name='revelio-sae'")] == ["1"]
