"""Dataset latents read from the classifier's own feature store equal those of a backbone pass."""
from __future__ import annotations

import copy

import numpy as np

from revelio_svc.inference import latent_stats
from revelio_svc.inference.classifier import Classifier
from revelio_svc.inference.latent_stats import compute_dataset_latents

pytest_plugins = ("tests.registry.fixtures",)


def test_dataset_latents_from_the_feature_store_equal_a_backbone_pass(classifier_dir):
    clf = Classifier.load(classifier_dir)
    n = len(clf.dataset())
    idx = np.arange(n)
    read = latent_stats.stored_tokens(clf, idx)
    assert read is not None  # the classifier's own store is here and matches
    ds = clf.dataset()
    _, tok, _ = clf.tokens(ds.images(range(6)), ds.ids()[:6])
    assert np.allclose(read(idx[:6]), tok, atol=1e-5)
    from_store = compute_dataset_latents(clf, 0, batch=16)
    no_store = copy.copy(clf)
    no_store.meta = {k: v for k, v in clf.meta.items() if k != "store_uri"}
    assert latent_stats.stored_tokens(no_store, idx) is None
    computed = compute_dataset_latents(no_store, 0, batch=16)
    assert from_store.Z.shape == computed.Z.shape == (n, clf.n_latents)
    assert np.allclose(from_store.Z.toarray(), computed.Z.toarray(), atol=1e-5)
    ctrl = (lambda c: c.toarray() if hasattr(c, "toarray") else np.asarray(c))
    assert np.allclose(ctrl(from_store.control), ctrl(computed.control), atol=1e-5)
    # another store (its config hash differs) is never read in place of the classifier's
    other = copy.copy(clf)
    other.meta = {**clf.meta, "store_config_hash": "0" * 16}
    assert latent_stats.stored_tokens(other, idx) is None
    # images the store does not hold: computed, not half read
    assert latent_stats.stored_tokens(clf, np.arange(n + 5)) is None
