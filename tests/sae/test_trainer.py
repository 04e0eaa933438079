"""Training on tiny planted feature stores: quality, data order, resume, errors, saving, MLflow."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from revelio_svc.features.store import open_store
from revelio_svc.sae import SAELoadError, read_sae
from revelio_svc.sae.data import (
    ActivationStream,
    NonFiniteInputError,
    eval_vectors,
    feature_set_for,
    plan_split,
)
from revelio_svc.sae.trainer import CHECKPOINT_FILE, TrainingError, train_sae

from .helpers import build_store, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pooled_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("pooled") / "store")


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("tokens") / "store", n_images=200, shard_size=50, hw=4)


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out) / "sae.safetensors"))


# --------------------------------------------------------------------------- quality
def test_token_sae_reaches_low_fvu_on_planted_sparse_data(tmp_path, token_store):
    cfg = tiny_cfg(tmp_path, token_store, input="tokens", expansion=2, k=3, steps=300, lr=1e-2, eval_every=100)
    res = train_sae(cfg, progress=False)
    m = res.metrics
    assert m["fvu"] < 0.08, res.history
    assert m["explained_variance"] == pytest.approx(1 - m["fvu"])
    assert m["l0"] <= 3.0 and m["l0"] > 2.0
    assert 0.8 < m["l2_ratio"] < 1.1
    assert {"dead_frac", "auxk_loss", "samples_per_s"} <= set(m)
    assert res.history[0]["fvu"] > m["fvu"]  # it learned
    # every position of every train image is a training vector; test images are held out
    assert res.n_train_vectors == 150 * 16 and res.n_eval_vectors == 50 * 16
    sae = read_sae(res.output_dir)
    c = sae.config
    assert (c.variant, c.input, c.hook_point, c.timestep) == ("topk", "tokens", "up_blocks.1", 10)
    assert (c.d_in, c.n_latents) == (16, 32)
    assert c.dataset_fingerprint == "planted0" and c.backbone == "planted" and c.store_config_hash


def test_whitened_token_sae_trains_and_reports_input_space_fvu(tmp_path, token_store):
    from revelio_svc.sae.trainer import training_key

    cfg = tiny_cfg(tmp_path, token_store, input="tokens", expansion=2, k=3, steps=300, lr=1e-2, eval_every=100,
                   normalize="whiten", whiten_power=0.5)
    res = train_sae(cfg, progress=False)
    assert res.metrics["fvu"] < 0.15 and res.history[0]["fvu"] > res.metrics["fvu"]
    sae = read_sae(res.output_dir)
    assert sae.config.normalize == "whiten" and sae.config.whiten_power == 0.5
    assert {"norm_matrix", "norm_inverse"} <= set(weights(res.output_dir))
    store = open_store(token_store)
    assert training_key(cfg.sae, store, 1)["sae"]["whiten_power"] == 0.5
    # the power is part of a whitened run's key only, so other runs keep their output directories
    plain = tiny_cfg(tmp_path, token_store, input="tokens")
    assert "whiten_power" not in training_key(plain.sae, store, 1)["sae"]


def test_batchtopk_pooled_trains_and_saves_threshold(tmp_path, pooled_store):
    cfg = tiny_cfg(tmp_path, pooled_store, variant="batchtopk", steps=150)
    res = train_sae(cfg, progress=False)
    assert res.metrics["fvu"] < 0.5
    sae = read_sae(res.output_dir)
    assert sae.config.variant == "batchtopk" and sae.config.threshold > 0
    saved = json.loads((Path(res.output_dir) / "config.json").read_text())
    assert saved["threshold"] == pytest.approx(sae.config.threshold)
    assert 1.0 < res.metrics["l0"] < 8.0  # k=4 on average, via the threshold at inference


# --------------------------------------------------------------------------- data
def test_stream_visits_each_train_vector_once_per_epoch_in_bounded_groups(pooled_store):
    store = open_store(pooled_store)
    fset = feature_set_for(store, "up_blocks.1", 10, "pooled", "mean")
    plan = plan_split(fset)
    s = ActivationStream(fset, plan, batch_size=30, seed=3, buffer_vectors=120)
    assert s.n_vectors == 300  # 400 images, every 4th is a test row
    assert all(sum(s.counts[i] for i in g) < 120 + 75 for g in s.groups(0))  # a group: ≥ buffer, + < one shard
    assert s.groups(0) != s.groups(1)  # the shard order changes every epoch
    it = s.batches(0)
    epoch = np.concatenate([next(it) for _ in range(10)])
    train = fset.load()[~store.is_test()]
    assert sorted(map(tuple, epoch.round(6))) == sorted(map(tuple, train.round(6)))
    # resuming from a position continues the same stream
    again = s.batches(0)
    first = [next(again) for _ in range(17)]
    resumed = s.batches(13 * 30)
    assert all(np.array_equal(first[13 + j], next(resumed)) for j in range(4))
    ev = eval_vectors(fset, plan)
    assert np.allclose(np.sort(ev, 0), np.sort(fset.load()[store.is_test()], 0))


def test_validation_rows_are_carved_from_the_train_rows_and_test_rows_are_unused(pooled_store):
    store = open_store(pooled_store)
    fset = feature_set_for(store, "up_blocks.1", 10, "pooled", "mean")
    plan = plan_split(fset, eval_rows="validation", validation_fraction=0.25, seed=0)
    assert plan.validation and 40 < plan.n_eval < 110 and plan.n_train + plan.n_eval == 300  # 100 test rows unused
    for i, r in store.manifest.shards.items():
        test = set(np.flatnonzero(store.rows(i)["split"].astype(bool)))
        assert not test & (set(plan.train_rows[i]) | set(plan.eval_rows[i]))
        assert not set(plan.train_rows[i]) & set(plan.eval_rows[i])


def test_store_without_test_rows_holds_out_a_fraction(tmp_path):
    store = build_store(tmp_path / "store", no_test=True)
    fset = feature_set_for(open_store(store), "up_blocks.1", 10, "pooled", "mean")
    plan = plan_split(fset, heldout_fraction=0.2, seed=0)
    assert plan.heldout_fallback
    assert 50 < plan.n_eval < 110 and plan.n_train + plan.n_eval == 400
    for i in plan.train_rows:
        assert not set(plan.train_rows[i]) & set(plan.eval_rows[i])


# --------------------------------------------------------------------------- resume
def test_resume_after_injected_stop_ends_at_the_same_weights(tmp_path, pooled_store):
    kw = {"steps": 70, "checkpoint_every": 20, "eval_every": 35, "dead_window": 256}
    ref = train_sae(tiny_cfg(tmp_path, pooled_store, output=str(tmp_path / "ref"), **kw), progress=False)

    class Stop(Exception):
        pass

    def stop_at_47(step, _):
        if step == 47:  # past the checkpoint at 40: steps 41–47 are lost and redone
            raise Stop

    out = tmp_path / "interrupted"
    cfg = tiny_cfg(tmp_path, pooled_store, output=str(out), **kw)
    with pytest.raises(Stop):
        train_sae(cfg, on_step=stop_at_47, progress=False)
    assert (out / CHECKPOINT_FILE).is_file() and not (out / "sae.safetensors").exists()
    res = train_sae(cfg, progress=False)
    assert res.resumed_from == 40
    a, b = weights(ref.output_dir), weights(res.output_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in res.history] == [35, 70]
    assert [h["fvu"] for h in res.history] == [h["fvu"] for h in ref.history]
    assert not (out / CHECKPOINT_FILE).exists()
    # a complete output is returned as is
    again = train_sae(cfg, progress=False)
    assert again.skipped and again.metrics == res.metrics


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, pooled_store):
    kw = {"steps": 60, "checkpoint_every": 20, "eval_every": 30, "dead_window": 256}
    ref = train_sae(tiny_cfg(tmp_path, pooled_store, output=str(tmp_path / "ref"), **kw), progress=False)
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        torch.set_num_threads(1)
        from tests.sae.helpers import tiny_cfg
        from revelio_svc.sae.trainer import train_sae
        from pathlib import Path
        cfg = tiny_cfg(Path({str(tmp_path)!r}), Path({str(pooled_store)!r}), output={str(out)!r}, **{kw!r})
        def kill(step, _):
            if step == 27:
                os.kill(os.getpid(), signal.SIGKILL)
        train_sae(cfg, on_step=kill, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / CHECKPOINT_FILE).is_file()
    res = train_sae(tiny_cfg(tmp_path, pooled_store, output=str(out), **kw), progress=False)
    assert res.resumed_from == 20
    a, b = weights(ref.output_dir), weights(res.output_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_config_is_refused(tmp_path, pooled_store):
    out = tmp_path / "sae"
    train_sae(tiny_cfg(tmp_path, pooled_store, output=str(out), steps=20), progress=False)
    with pytest.raises(TrainingError, match="another training configuration.*sae.k"):
        train_sae(tiny_cfg(tmp_path, pooled_store, output=str(out), steps=20, k=2), progress=False)


def test_default_output_dir_is_named_by_the_config_hash(tmp_path, pooled_store):
    a = train_sae(tiny_cfg(tmp_path, pooled_store, steps=10), progress=False)
    b = train_sae(tiny_cfg(tmp_path, pooled_store, steps=10, k=2), progress=False)
    assert Path(a.output_dir).parent == Path(b.output_dir).parent == tmp_path / "out" / "sae"
    assert a.output_dir != b.output_dir


# --------------------------------------------------------------------------- errors
def test_nan_inputs_are_reported_by_shard_and_step(tmp_path):
    store = build_store(tmp_path / "store", nan_shard=2)
    with pytest.raises(TrainingError) as e:
        train_sae(tiny_cfg(tmp_path, store, steps=30, batch_size=100), progress=False)
    msg = str(e.value)
    assert msg.startswith("step 0: training stopped: non-finite input features (NaN/inf) in the training rows")
    # row 2 of shard 2 = dataset index 202 (a train row); the inf of row 7 (index 207) is a test row
    assert "shard 2: 1 row(s)" in msg and "202" in msg and "shard 0" not in msg and "shard 1" not in msg
    fset = feature_set_for(open_store(store), "up_blocks.1", 10, "pooled", "mean")
    with pytest.raises(
            NonFiniteInputError, match=r"held-out rows.*shard 2: 1 row\(s\) with NaN/inf \(dataset indices 207\)"):
        eval_vectors(fset, plan_split(fset))


def test_diverging_loss_stops_with_step_and_cause(tmp_path, pooled_store):
    cfg = tiny_cfg(tmp_path, pooled_store, steps=50, lr=1e38, warmup_steps=0, normalize="none")
    with pytest.raises(TrainingError, match=r"^step \d+: training stopped: the loss is (nan|inf).*lower sae.lr"):
        train_sae(cfg, progress=False)


def test_load_errors_are_clear(tmp_path, pooled_store):
    res = train_sae(tiny_cfg(tmp_path, pooled_store, steps=5), progress=False)
    d = Path(res.output_dir)
    assert sorted(p.suffix for p in d.iterdir() if p.is_file()) == [".json", ".json", ".safetensors"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((d / "config.json").read_text().replace('"d_in": 16', '"d_in": 12'))
    save_file(load_file(str(d / "sae.safetensors")), str(bad / "sae.safetensors"))
    with pytest.raises(SAELoadError, match="W_enc has shape.*d_in=12"):
        read_sae(bad)
    with pytest.raises(SAELoadError, match="sae.safetensors is missing"):
        (bad / "sae.safetensors").unlink()
        read_sae(bad)
    (bad / "sae.safetensors").write_bytes((d / "sae.safetensors").read_bytes())
    (bad / "config.json").write_text((d / "config.json").read_text().replace('"topk"', '"jumprelu"'))
    with pytest.raises(SAELoadError, match="unknown SAE variant 'jumprelu'"):
        read_sae(bad)
    with pytest.raises(SAELoadError, match="does not exist"):
        read_sae(tmp_path / "nowhere")


def test_save_load_round_trip_keeps_codes_and_normalisation(tmp_path, pooled_store):
    res = train_sae(tiny_cfg(tmp_path, pooled_store, steps=20, normalize="standard"), progress=False)
    sae = res.sae
    loaded = read_sae(Path(res.output_dir) / "config.json")
    assert loaded.config == sae.config
    x = torch.from_numpy(open_store(pooled_store).feature_set("up_blocks.1", 10, "mean").load()[:50])
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))
    assert torch.equal(loaded.norm_scale, sae.norm_scale) and not torch.all(loaded.norm_scale == 1)


def test_invalid_trainer_options_fail_before_training(tmp_path, pooled_store):
    from revelio_svc.config import ConfigError

    with pytest.raises(ConfigError, match="sae.eval_every: must be > 0"):
        train_sae(tiny_cfg(tmp_path, pooled_store, eval_every=0), progress=False)
    with pytest.raises(ConfigError, match="sae.k: 100 is more than the 64 latents"):
        train_sae(tiny_cfg(tmp_path, pooled_store, k=100), progress=False)
    with pytest.raises(ConfigError, match="no features for up_blocks.1/t10/tokens"):
        train_sae(tiny_cfg(tmp_path, pooled_store, input="tokens"), progress=False)
