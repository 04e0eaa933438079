"""Network Dissection on planted maps: a unit equal to a mask scores IoU 1, a random unit near chance."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.interpret.dissection import (
    Dissection,
    concept_masks,
    dissect,
    downsample_masks,
    iou_table,
    unit_thresholds,
)


def blob_masks(n: int = 200, size: int = 32, seed: int = 0):
    """Two concepts: random squares (`a`) and random discs (`b`), each on about half the images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    a = np.zeros((n, size, size), bool)
    b = np.zeros((n, size, size), bool)
    for i in range(n):
        x0, y0 = rng.integers(0, size - 8, 2) // 2 * 2  # aligned to the 16×16 grid
        if rng.random() < 0.5:
            a[i, y0:y0 + 8, x0:x0 + 8] = True
        cx, cy = rng.uniform(6, size - 6, 2)
        if rng.random() < 0.5:
            b[i] = (xx - cx) ** 2 + (yy - cy) ** 2 < 16
    return {"a": a, "b": b}


def test_a_unit_equal_to_a_mask_scores_iou_one_at_both_resolutions():
    masks = blob_masks()
    rng = np.random.default_rng(1)
    # token resolution: unit 0 is concept a on the 16×16 grid (1 inside, 0 outside); concept a covers
    # ~3 % of positions, so the 0.9 quantile is 0 and the thresholded map is the planted mask
    token_a = downsample_masks(masks["a"], 16, 16)
    maps = np.stack([token_a.astype(np.float32), rng.random(token_a.shape).astype(np.float32)], 1)
    d = dissect(maps, masks, quantile=0.9, resolution="token")
    assert d.iou[0, 0] == pytest.approx(1.0)
    assert d.best_concept[0] == 0 and d.detectors[0]
    assert d.iou[0, 1] < 0.1
    # image resolution: a unit whose map is the image-resolution mask of concept b
    maps_img = np.stack([masks["b"].astype(np.float32), rng.random(masks["b"].shape).astype(np.float32)], 1)
    d_img = dissect(maps_img, masks, quantile=0.9, resolution="image")
    assert d_img.iou[0, 1] == pytest.approx(1.0) and d_img.best_concept[0] == 1
    # a token map upsampled to image resolution still traces its (grid-aligned) square closely
    assert dissect(maps, masks, quantile=0.9, resolution="image").iou[0, 0] > 0.6


def test_a_random_unit_scores_near_chance_and_is_no_detector():
    masks = blob_masks()
    rng = np.random.default_rng(2)
    maps = rng.random((200, 8, 16, 16)).astype(np.float32)
    d = dissect(maps, masks, quantile=0.995, resolution="image")
    # 0.5 % of positions at random: IoU ≈ |M||L|/N / (|M| + |L|) — far below the 0.04 threshold
    assert d.iou.max() < 0.02
    assert not d.detectors.any() and d.summary()["n_detectors"] == 0


def test_thresholds_are_the_top_quantile_over_all_positions():
    rng = np.random.default_rng(3)
    maps = rng.random((50, 3, 4, 4)).astype(np.float32)
    thr = unit_thresholds(maps, 0.99)
    for u in range(3):
        share = (maps[:, u] > thr[u]).mean()
        assert 0.005 <= share <= 0.01


def test_iou_table_counts_by_hand():
    masks = {"c": np.array([[[1, 0], [0, 0]], [[1, 1], [0, 0]]], bool)}
    maps = np.array([[[[1.0, 1.0], [0, 0]]], [[[0, 0], [0, 0]]]], np.float32)  # (2 images, 1 unit, 2, 2)
    # M = image 0 top row; L = image 0 (0,0) and image 1 top row → ∩ = 1, ∪ = 2 + 3 − 1 = 4
    assert iou_table(maps, masks, np.array([0.5]), resolution="token")[0, 0] == pytest.approx(0.25)


def test_summary_counts_each_unit_for_its_best_concept_and_concat_joins_chunks():
    d1 = Dissection(("x", "y"), np.array([[0.5, 0.1], [0.01, 0.02]]), np.zeros(2))
    d2 = Dissection(("x", "y"), np.array([[0.05, 0.3]]), np.zeros(1))
    d = Dissection.concat([d1, d2])
    s = d.summary()
    assert s["n_detectors"] == 2 and s["unique_concepts"] == 2
    assert s["detectors.x"] == 1 and s["detectors.y"] == 1 and s["max_iou.x"] == 0.5


def test_concept_masks_split_the_object_by_class_and_add_parts():
    obj = np.ones((3, 2, 2), bool)
    tips = np.zeros((3, 2, 2), bool)
    tips[:, 0, 0] = True
    got = concept_masks({"object": obj, "tips": tips}, np.array([0, 1, 1]), ["circle", "star"],
                        parts={"star": ["tips"]})
    assert list(got) == ["circle", "star", "star.tips"]
    assert got["circle"][0].all() and not got["circle"][1:].any()
    assert got["star.tips"].sum() == 2 and not got["star.tips"][0].any()


@pytest.mark.parametrize("density", [0.001, 0.004, 0.02, 0.3, 1.0])
def test_sparse_thresholds_equal_numpys_quantile_rule(density):
    # TopK maps are mostly zero: the fast path must give exactly numpy's "higher" quantile of all positions
    rng = np.random.default_rng(4)
    maps = (rng.random((40, 6, 8, 8)) * (rng.random((40, 6, 8, 8)) < density)).astype(np.float16)
    maps[:, 0] = 0  # a dead unit
    want = np.quantile(np.moveaxis(maps.astype(np.float32), 1, 0).reshape(6, -1), 0.995, axis=1, method="higher")
    assert np.array_equal(unit_thresholds(maps, 0.995), want.astype(np.float32))
    signed = maps.astype(np.float32) - 0.5  # signed maps take the general path
    want = np.quantile(np.moveaxis(signed, 1, 0).reshape(6, -1), 0.995, axis=1, method="higher")
    assert np.array_equal(unit_thresholds(signed, 0.995), want.astype(np.float32))
