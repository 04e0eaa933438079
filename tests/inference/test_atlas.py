"""How well a map carries a concept: kNN accuracy in the code space and in the 2-D layout."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from revelio_svc.inference import atlas


def planted_codes(n_per=40, n_classes=4, width=64, seed=0):
    """Sparse codes in which each class fires its own block of latents (plus noise latents)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per)
    Z = np.zeros((len(y), width), np.float32)
    block = width // (2 * n_classes)
    for i, c in enumerate(y):
        Z[i, rng.choice(np.arange(c * block, (c + 1) * block), 3, replace=False)] = rng.random(3) + 1
        Z[i, rng.choice(np.arange(width // 2, width), 2, replace=False)] = rng.random(2) * 0.3
    return Z, y


def test_codes_that_separate_the_classes_score_one_and_shuffled_labels_score_near_chance():
    Z, y = planted_codes()
    assert atlas.knn_accuracy(Z, y, metric="cosine") == 1.0
    assert atlas.knn_accuracy(sp.csr_matrix(Z), y, metric="cosine") == 1.0  # sparse codes, as the app holds them
    shuffled = np.random.default_rng(1).permutation(y)
    assert atlas.knn_accuracy(Z, shuffled, metric="cosine") < 0.45  # chance: 0.25
    xy = atlas.image_atlas(Z, "pca")
    rep = atlas.layout_report(Z, xy, y)
    assert rep["knn_codes"] == 1.0 and rep["chance"] == 0.25 and rep["k"] == 5
    assert rep["knn_layout"] > 0.9  # the first two components already part the four blocks well


def test_a_layout_that_mixes_the_classes_scores_low_even_when_the_codes_separate_them():
    Z, y = planted_codes()
    xy = np.random.default_rng(2).random((len(y), 2))
    rep = atlas.layout_report(Z, xy, y)
    assert rep["knn_codes"] == 1.0 and rep["knn_layout"] < 0.45
