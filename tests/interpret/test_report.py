"""The control report: an SAE whose directions are the planted concepts beats its matched random
dictionary on every headline number; one whose directions are random does not."""
from __future__ import annotations

import numpy as np
import torch

from revelio_svc.interpret.report import (
    ReportData,
    control_report,
    dissection_rows,
    gap_score,
    report_rows,
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


def test_planted_directions_beat_the_matched_random_dictionary():
    feats, y, obj, dirs = planted()
    rows = np.concatenate([dirs] * (L // N_CLASSES))  # every latent a concept direction
    m = report(sae_with(rows), feats, y, obj).metrics()
    assert m["label_purity_share.shape"] > 0.9 and m["control.random.label_purity_share.shape"] < 0.5
    assert m["gap.label_purity_share.shape"] > 1.5
    assert m["dissection.detectors"] > m["control.random.dissection.detectors"]
    # the 8 best units (each class direction fires as two tied copies) name the class
    assert m["sparse_probe.k8"] > 0.9
    assert "control.random_sd.label_purity_share.shape" in m and "control.sae_init.sparse_probe.k16" in m
    assert m["gap.score"] == gap_score(m, "shape") and m["gap.score"] > 0


def test_random_directions_do_not_beat_their_own_control():
    feats, y, obj, _ = planted()
    rows = np.random.default_rng(5).standard_normal((L, D))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    m = report(sae_with(rows), feats, y, obj).metrics()
    assert 0.5 < m["gap.label_purity_share.shape"] < 2.0 or m["control.random.label_purity_share.shape"] == 0


def test_report_rows_keep_every_test_row_and_a_fixed_train_sample():
    is_test = np.arange(100) % 5 == 0
    rows = report_rows(is_test, train_limit=30)
    assert set(np.flatnonzero(is_test)) <= set(rows) and (~is_test[rows]).sum() == 30
    assert np.array_equal(rows, np.sort(rows))


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
