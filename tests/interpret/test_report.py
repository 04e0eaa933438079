"""The control report: an SAE whose directions are the planted concepts beats its matched random
dictionary on every headline number; one whose directions are random does not; the headline gap is to the
strongest of every control, and the sparse probes see a class-stratified sample of the train rows."""
from __future__ import annotations

import numpy as np
import torch

from revelio_svc.interpret.report import (
    CONTROL_NAMES,
    ReportData,
    control_report,
    dissection_rows,
    gap_score,
    gaps_to,
    report_rows,
    split_roles,
    strongest_controls,
)
from revelio_svc.sae import TopKSAEConfig, build_sae

H = W = 4
N_CLASSES, D, L = 4, 16, 32


def planted(n=480, seed=0):
    """Token features: each image's object cells carry its class's direction; masks mark those cells."""
    rng = np.random.default_rng(seed)
    dirs = np.linalg.qr(rng.standard_normal((D, D)))[0][:N_CLASSES]
    y = rng.integers(0, N_CLASSES, n)
    obj = rng.random((n, H, W)) < 0.3
    feats = 0.2 * rng.standard_normal((n, H, W, D))
    feats[obj] += 3.0 * dirs[y][:, None, :].repeat(H * W, 1).reshape(n, H, W, D)[obj]
    return feats.astype(np.float32), y, obj, dirs


def sae_with(rows: np.ndarray) -> object:
    sae = build_sae(TopKSAEConfig(d_in=D, n_latents=L, k=2, input="tokens", latent_pooling="max"), seed=0)
    with torch.no_grad():
        w = torch.from_numpy(rows.astype(np.float32))
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w)
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    return sae.eval()


def report(sae, feats, y, obj):
    is_test = np.arange(len(y)) % 4 == 0
    rows = dissection_rows(is_test)
    data = ReportData.build(feats, {"shape": y}, is_test, "shape", masks={"object": obj[rows]}, mask_rows=rows,
                            class_names=[f"c{i}" for i in range(N_CLASSES)])
    return control_report(sae, data, seeds=(1, 2, 3))


def test_planted_directions_beat_the_random_controls_and_the_gap_is_to_the_strongest_control():
    feats, y, obj, dirs = planted()
    rows = np.concatenate([dirs] * (L // N_CLASSES))  # every latent a concept direction
    rep = report(sae_with(rows), feats, y, obj)
    m = rep.metrics()
    assert set(rep.controls) == set(CONTROL_NAMES)
    for name in CONTROL_NAMES:  # every control is scored, dissected included
        assert f"control.{name}.label_purity_share.shape" in m and f"control.{name}.dissection.detectors" in m
    assert m["label_purity_share.shape"] > 0.9 and m["control.random.label_purity_share.shape"] < 0.5
    assert gaps_to(m, "label_purity_share.shape", "random", "g")["g"] > 1.5
    assert gaps_to(m, "label_purity_share.shape", "random_raw", "g")["g"] > 1.5
    assert m["dissection.detectors"] > m["control.random.dissection.detectors"]
    # the 8 best units (each class direction fires as two tied copies) name the class
    assert m["sparse_probe.k8"] > 0.9
    assert "control.random_sd.label_purity_share.shape" in m and "control.sae_init.sparse_probe.k16" in m
    # the raw channels of these features are purer than any random dictionary: the headline gap is to them
    best = rep.strongest()
    assert best["label_purity_share.shape"] == "channels"
    purities = {n: m[f"control.{n}.label_purity_share.shape"] for n in CONTROL_NAMES}
    assert m["gap.label_purity_share.shape"] == m["label_purity_share.shape"] / max(purities.values())
    for key in ("sparse_probe.k16", "dissection.detectors"):
        assert m[f"gap.{key}"] == gaps_to(m, key, best[key], "g")["g"]
    assert m["gap.score"] == gap_score(m, "shape")
    table = rep.table()
    assert [r["units"] for r in table] == ["sae", *rep.controls]
    assert "label_purity_share.shape" in next(r for r in table if r["units"] == "channels")["strongest_for"]


def test_strongest_control_is_the_best_mean_per_metric_and_detectors_compare_as_shares():
    m = {"sparse_probe.k16": 0.6, "control.a.sparse_probe.k16": 0.7, "control.b.sparse_probe.k16": 0.65,
         "label_purity_share.shape": 0.2, "control.a.label_purity_share.shape": 0.05,
         "control.b.label_purity_share.shape": 0.1,
         # b has fewer detectors than a but a larger share of its (fewer) units
         "dissection.detectors": 70, "dissection.detector_share": 0.07,
         "control.a.dissection.detectors": 60, "control.a.dissection.detector_share": 0.06,
         "control.b.dissection.detectors": 20, "control.b.dissection.detector_share": 0.16}
    best = strongest_controls(m, ["a", "b"])
    assert best == {"sparse_probe.k16": "a", "label_purity_share.shape": "b", "dissection.detectors": "b"}
    assert np.isclose(gaps_to(m, "sparse_probe.k16", "a", "g")["g"], -0.1)  # the SAE loses by 10 points
    assert np.isclose(gaps_to(m, "label_purity_share.shape", "b", "g")["g"], 2.0)
    assert np.isclose(gaps_to(m, "dissection.detectors", "b", "g")["g"], 0.07 / 0.16)


def test_random_directions_do_not_beat_their_own_control():
    feats, y, obj, _ = planted()
    rows = np.random.default_rng(5).standard_normal((L, D))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    m = report(sae_with(rows), feats, y, obj).metrics()
    vs_random = gaps_to(m, "label_purity_share.shape", "random", "g")["g"]
    assert 0.5 < vs_random < 2.0 or m["control.random.label_purity_share.shape"] == 0
    assert m["gap.label_purity_share.shape"] <= vs_random and m["gap.score"] < 0  # the strongest beats it


def test_report_rows_keep_every_test_row_and_a_fixed_train_sample():
    is_test = np.arange(100) % 5 == 0
    rows = report_rows(is_test, train_limit=30)
    assert set(np.flatnonzero(is_test)) <= set(rows) and (~is_test[rows]).sum() == 30
    assert np.array_equal(rows, np.sort(rows)) and np.array_equal(rows, report_rows(is_test, train_limit=30))


def test_a_store_written_class_by_class_gets_a_class_balanced_probe_sample():
    # an image folder: 10 classes of 300 images each, stored one class after the other, every 4th row test
    y = np.repeat(np.arange(10), 300)
    is_test = np.arange(len(y)) % 4 == 0
    rows = report_rows(is_test, train_limit=1000, labels=y, seed=0)
    train = rows[~is_test[rows]]
    counts = np.bincount(y[train], minlength=10)
    assert len(train) == 1000 and counts.min() == counts.max() == 100  # the first 1000 rows held 4 classes
    assert set(np.flatnonzero(is_test)) <= set(rows)
    # seeded: another seed draws other rows of the same classes
    other = report_rows(is_test, train_limit=1000, labels=y, seed=1)
    assert not np.array_equal(other, rows) and np.bincount(y[other[~is_test[other]]], minlength=10).min() == 100


def test_validation_roles_never_touch_the_test_rows():
    is_test = np.arange(400) % 4 == 0
    index = np.arange(400) + 1000
    scored, fitted = split_roles(is_test, index, "validation", 0.25, seed=0)
    assert not (scored & is_test).any() and not (fitted & is_test).any() and not (scored & fitted).any()
    assert 0.15 < scored.sum() / (~is_test).sum() < 0.35 and (scored | fitted).sum() == (~is_test).sum()
    # decided by the dataset index alone: the same images whatever the store order
    perm = np.random.default_rng(0).permutation(400)
    assert np.array_equal(split_roles(is_test[perm], index[perm], "validation", 0.25)[0], scored[perm])
    assert np.array_equal(split_roles(is_test, index, "test")[0], is_test)


def test_gap_score_is_the_worst_headline_gap_as_a_fraction_of_its_target():
    at_target = {"gap.label_purity_share.shape": 1.5, "gap.dissection.detectors": 2.0, "gap.sparse_probe.k16": 0.05}
    assert gap_score(at_target, "shape") == 1.0
    # a tie on one number pins the score at 0 however good the others are
    assert gap_score({**at_target, "gap.dissection.detectors": 1.0}, "shape") == 0.0
    # halving purity is as bad as reaching the 1.5x target is good; losing on the probe goes negative
    assert np.isclose(gap_score({**at_target, "gap.label_purity_share.shape": 1 / 1.5}, "shape"), -1.0)
    assert np.isclose(gap_score({**at_target, "gap.sparse_probe.k16": -0.05}, "shape"), -1.0)
    # only what the report has counts (no masks: no detectors)
    assert gap_score({"gap.sparse_probe.k16": 0.025}, "shape") == 0.5 and gap_score({}, "shape") is None


def test_controls_scored_side_by_side_equal_the_serial_scores(monkeypatch):
    feats, y, obj, dirs = planted(n=240, seed=2)
    sae = sae_with(np.concatenate([dirs] * (L // N_CLASSES)))
    monkeypatch.setenv("REVELIO_FIT_WORKERS", "1")
    serial = report(sae, feats, y, obj).metrics()
    monkeypatch.setenv("REVELIO_FIT_WORKERS", "3")
    threaded = report(sae, feats, y, obj).metrics()
    assert threaded.keys() == serial.keys()
    assert all(threaded[k] == serial[k] or (np.isnan(threaded[k]) and np.isnan(serial[k])) for k in serial)
