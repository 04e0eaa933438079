"""The Classifier: predictions agree with the probe on stored features, explanations add up, files round-trip."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from revelio_svc.features.store import open_store
from revelio_svc.inference.classifier import (
    Classifier,
    ClassifierFormatError,
    upload_id,
)
from revelio_svc.probe import read_probe
from revelio_svc.sae import read_sae
from revelio_svc.sae.latents import image_latents
from tests.registry.helpers import dataset_images

pytest_plugins = ("tests.registry.fixtures",)


@pytest.fixture(scope="module")
def clf(classifier_dir):
    return Classifier.load(classifier_dir)


def test_predict_with_dataset_ids_reproduces_the_probe_on_stored_features(clf, trained):
    cfg, store_uri, sae_dir, probe_dir, _, _ = trained
    store = open_store(store_uri)
    rows = np.arange(5)
    idx = store.index()[rows]
    feats = store.feature_set("up_blocks.1", 10, "tokens").load()[rows]
    sae, probe = read_sae(sae_dir), read_probe(probe_dir)
    want = probe.predict_proba(sp.csr_matrix(image_latents(sae, feats, pooling="max")))

    from revelio_svc.data import load_dataset

    all_ids = load_dataset(cfg.data).ids()
    ds_ids = [all_ids[i] for i in idx]
    got = clf.predict(dataset_images(cfg, idx), ids=ds_ids)
    assert got.shape == (5, len(clf.class_names))
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-9)
    # same pixels, same noise id, float16-rounded features as in the store → the probe's own answer
    np.testing.assert_allclose(got[:, probe.classes], want, atol=2e-3)


def test_uploaded_image_noise_is_seeded_by_its_pixels(clf, trained):
    cfg = trained[0]
    img = dataset_images(cfg, [3])[0]
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    # array, PIL and encoded bytes of the same pixels are one image: one id, one noise, one answer
    a = clf.predict([img])
    b = clf.predict([Image.fromarray(img), png.getvalue()])
    np.testing.assert_allclose(b, np.vstack([a, a]), atol=1e-5)  # batch size 1 vs 2: float rounding only
    # the noise does depend on the id: another id gives another answer
    assert np.abs(clf.predict([img], ids=["somewhere-else:0"]) - a).max() > 1e-3
    other = img.copy()
    other[0, 0] = 255 - other[0, 0]
    assert upload_id(other) != upload_id(img)


def test_explain_contributions_add_up_to_the_logit(clf, trained):
    cfg = trained[0]
    img = dataset_images(cfg, [7])[0]
    exp = clf.explain(img, top=3, attribution="logit")
    assert exp["label"] == clf.class_names[int(np.argmax(clf.predict([img])[0]))]
    assert exp["label"] == max(exp["probs"], key=exp["probs"].get)
    contrib = [r["contribution"] for r in exp["contributions"]]
    assert 1 <= len(contrib) <= 3 and contrib == sorted(contrib, reverse=True)
    z = clf.latents([img])[0]
    full = clf.contributions(z, exp["label_index"])
    # the probe's logit for the predicted class is exactly the sum of per-latent contributions + intercept
    logit = clf.probe.decision_function(z[None])[0][list(clf.probe.classes).index(exp["label_index"])]
    assert full.sum() + exp["intercept"] == pytest.approx(logit, abs=1e-6)
    assert contrib[0] == pytest.approx(full[z > 0].max())
    for r in exp["contributions"]:
        assert r["activation"] > 0
        assert r["contribution"] == pytest.approx(r["activation"] / clf.probe.scaler_scale[r["latent"]] * r["weight"])
        assert all(0 <= i < cfg.data.n_images for i in r["top_images"])
    assert exp["heatmaps"].shape == (len(contrib), 16, 16)
    # a latent's heatmap is where it fires: its image activation is the max over positions (latent_pooling=max)
    for r, h in zip(exp["contributions"], exp["heatmaps"]):
        assert h.max() == pytest.approx(r["activation"], rel=1e-4)


def test_contrastive_explanation_splits_the_margin_over_the_runner_up(clf, trained):
    cfg = trained[0]
    img = dataset_images(cfg, [7])[0]
    exp = clf.explain(img, top=clf.n_latents)  # contrastive is the default
    assert exp["attribution"] == "contrastive"
    z = clf.latents([img])[0]
    logits = clf.probe.decision_function(z[None])[0]
    classes = list(clf.probe.classes)
    c, r = classes.index(exp["label_index"]), classes.index(clf.class_names.index(exp["runner_up"]))
    assert logits[c] == logits.max() and logits[r] == np.sort(logits)[-2]
    assert exp["margin"] == pytest.approx(logits[c] - logits[r])
    # every active latent is listed: their shares add up to the margin less the intercepts' difference
    total = sum(row["contribution"] for row in exp["contributions"])
    b = np.asarray(clf.probe.intercept)
    assert total == pytest.approx(exp["margin"] - (b[c] - b[r]), abs=1e-6)
    w = np.asarray(clf.probe.coef)
    for row in exp["contributions"]:
        j = row["latent"]
        assert row["weight"] == pytest.approx(w[c, j] - w[r, j])
        assert 0 <= row["density"] <= 1 and row["dense"] == (row["density"] > 0.5)
        if row["top_images"]:
            assert 0 <= row["selectivity"] <= 1
    with pytest.raises(ValueError, match="attribution must be one of"):
        clf.explain(img, attribution="shap")


def test_density_and_selectivity_come_from_the_store(clf, trained):
    _, store_uri, sae_dir, *_ = trained
    store = open_store(store_uri)
    z = image_latents(read_sae(sae_dir), store.feature_set("up_blocks.1", 10, "tokens").load(), pooling="max")
    np.testing.assert_allclose(clf.frequency, (z > 0).mean(0), atol=1e-6)
    labels = dict(zip(store.index().tolist(), store.labels(clf.concept).tolist()))
    j = int(np.argmax(z.max(0)))
    tops = clf.top_images(j, n=clf.top_indices.shape[1])
    want = np.mean([labels[i] == 0 for i in tops])
    assert clf.selectivity(j, 0) == pytest.approx(want)
    # hiding dense latents leaves none of them in the explanation
    img = dataset_images(trained[0], [7])[0]
    exp = clf.explain(img, top=clf.n_latents, hide_dense=True)
    assert all(not r["dense"] for r in exp["contributions"])
    zi = clf.latents([img])[0]
    assert exp["hidden_dense"] == int(((zi > 0) & (clf.frequency > 0.5)).sum())
    shown = clf.explain(img, top=clf.n_latents)
    assert len(shown["contributions"]) == len(exp["contributions"]) + exp["hidden_dense"]


def test_top_images_are_where_the_latent_fires_most(clf, trained):
    _, store_uri, sae_dir, *_ = trained
    store = open_store(store_uri)
    z = image_latents(read_sae(sae_dir), store.feature_set("up_blocks.1", 10, "tokens").load(), pooling="max")
    lat = int(np.argmax(z.max(0)))
    best = store.index()[np.argsort(-z[:, lat], kind="stable")[: clf.top_indices.shape[1]]]
    assert clf.top_images(lat, n=3) == [int(i) for i in best[:3]]
    silent = np.flatnonzero(z.max(0) <= 0)
    for j in silent:  # a latent that never fires has no top images
        assert clf.top_images(int(j)) == []


def test_save_load_round_trip_and_bundled_backbone(classifier_dir, clf, trained, tmp_path):
    meta = json.loads((classifier_dir / "classifier.json").read_text())
    # the tiny backbone is a small local directory: copied in, so a pulled classifier runs anywhere
    assert meta["backbone_bundled"] and (classifier_dir / "backbone" / "config.json").is_file()
    assert not any(p.suffix in (".bin", ".pkl", ".pt") for p in classifier_dir.rglob("*"))
    again = Classifier.load(classifier_dir)
    imgs = dataset_images(trained[0], [1, 2])
    np.testing.assert_allclose(again.predict(imgs), clf.predict(imgs), atol=1e-12)


def test_config_disagreeing_with_weights_is_refused(classifier_dir, tmp_path):
    import shutil

    d = tmp_path / "clf"
    shutil.copytree(classifier_dir, d)
    meta = json.loads((d / "classifier.json").read_text())
    meta["sae"]["n_latents"] += 1
    (d / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ClassifierFormatError, match="n_latents"):
        Classifier.load(d)
    shutil.rmtree(d / "probe")
    with pytest.raises(ClassifierFormatError, match="probe is missing"):
        Classifier.load(d)


def test_a_fetched_classifier_saves_a_self_contained_copy(classifier_dir, trained, tmp_path):
    import shutil

    # loaded from a temporary copy (as load_classifier does with a registry download) that is then deleted
    tmp_copy = tmp_path / "download"
    shutil.copytree(classifier_dir, tmp_copy)
    clf = Classifier.load(tmp_copy)
    img = dataset_images(trained[0], [2])
    want = clf.predict(img)
    shutil.rmtree(tmp_copy)
    # the backbone is written from memory; the reference stays the original id, not the deleted path
    again = clf.with_probe(clf.probe, clf.class_names, clf.concept, {"note": "same probe"})
    again.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "classifier.json").read_text())
    assert meta["backbone_bundled"] and meta["backbone"]["id"] == str(trained[0].backbone.id)
    assert meta["note"] == "same probe"
    np.testing.assert_allclose(Classifier.load(tmp_path / "saved").predict(img), want, atol=1e-6)


def test_classifier_stage_records_explanation_precision_against_its_controls(trained, tmp_path):
    from revelio_svc.config import replace
    from revelio_svc.inference.precision import classifier_precision
    from revelio_svc.stages.classifier import build_classifier_stage

    cfg, store_uri, sae_dir, probe_dir, _, _ = trained
    res = build_classifier_stage(replace(cfg, output_dir=str(tmp_path)), sae_dir, probe_dir, store_uri)
    m = res.metrics
    for k in ("explanation_precision", "explanation_precision_random", "explanation_precision_channels",
              "explanation_precision_chance", "explanation_precision_logit"):
        assert 0 <= m[k] <= 1, k
    assert m["explanation_precision_ratio_random"] == pytest.approx(
        m["explanation_precision"] / m["explanation_precision_random"])
    # kept with the classifier (the demo shows them) and the same as recomputing them
    loaded = Classifier.load(res.classifier_dir)
    assert loaded.meta["metrics"]["explanation_precision"] == m["explanation_precision"]
    again = classifier_precision(loaded, open_store(store_uri))
    assert again["explanation_precision"] == pytest.approx(m["explanation_precision"])
    assert loaded.frequency is not None and loaded.top_labels is not None
