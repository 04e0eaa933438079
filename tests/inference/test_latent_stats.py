"""Per-latent statistics, the atlas embedding and deletion curves on the tiny classifier."""
from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

from revelio_svc.inference import atlas
from revelio_svc.inference.faithfulness import (
    deletion_curve,
    faithfulness_metrics,
    normalised_auc,
)
from revelio_svc.inference.latent_stats import (
    NOT_AVAILABLE,
    DatasetLatents,
    compute_dataset_latents,
    latent_stats,
    latent_table,
    model_key,
    useful_latent,
)
from revelio_svc.interpret.knn import ATLAS_POOLING


@pytest.fixture(scope="module")
def dl(tiny_clf):
    return compute_dataset_latents(tiny_clf, 0, batch=16)


def test_dataset_latents_match_the_classifier_and_round_trip(dl, tiny_clf, tmp_path):
    ds = tiny_clf.dataset()
    assert dl.n == len(ds) == 40 and dl.n_latents == tiny_clf.n_latents
    z = tiny_clf.latents(ds.images(range(5)), ds.ids()[:5])
    assert np.allclose(dl.Z[:5].toarray(), z, atol=1e-5)
    # the matched random dictionary: as many units as the SAE, read through the same encode and pooling
    assert dl.control.shape == (40, tiny_clf.n_latents) and (dl.control.data >= 0).all()
    from revelio_svc.interpret.controls import matched_random
    from revelio_svc.sae import image_latents

    _, tok, _ = tiny_clf.tokens(ds.images(range(5)), ds.ids()[:5])
    ctrl = matched_random(tiny_clf.sae, 1)
    assert np.allclose(dl.control[:5].toarray(), image_latents(ctrl, tok), atol=1e-5)
    # dissection: every latent against the shapes' object and part masks (tiny model: 16 px, 16×16 maps)
    assert dl.dissection_iou.shape == (tiny_clf.n_latents, len(dl.dissection_concepts))
    assert "star" in dl.dissection_concepts and "star.tips" in dl.dissection_concepts
    assert ((dl.dissection_iou >= 0) & (dl.dissection_iou <= 1)).all() and "token resolution" in dl.dissection_note
    back = DatasetLatents.load(dl.save(tmp_path / "dl.safetensors"))
    assert (back.Z != dl.Z).nnz == 0 and np.array_equal(back.indices, dl.indices)
    assert back.labels["shape"][0] == dl.labels["shape"][0] and np.array_equal(back.labels["shape"][1],
                                                                            dl.labels["shape"][1])
    assert back.key == model_key(tiny_clf, 0) and back.control_name == dl.control_name
    assert (back.control != dl.control).nnz == 0 and np.array_equal(back.dissection_iou, dl.dissection_iou)
    assert back.dissection_concepts == dl.dissection_concepts and back.dissection_note == dl.dissection_note
    # the atlas' codes: the same latents max-pooled over positions (the classifier's are top-8)
    assert tiny_clf.sae.config.latent_pooling == "top8" and ATLAS_POOLING == "max"
    assert np.allclose(dl.atlas_codes[:5].toarray(), image_latents(tiny_clf.sae, tok, "max"), atol=1e-5)
    assert (dl.atlas_codes != dl.Z).nnz > 0
    assert (back.Z_atlas != dl.Z_atlas).nnz == 0


def test_a_version_1_cache_is_not_read(dl, tmp_path):
    from safetensors.numpy import load_file, save_file

    f = dl.save(tmp_path / "dl.safetensors")
    from safetensors import safe_open

    with safe_open(str(f), "np") as h:
        meta = dict(h.metadata())
    meta["version"] = "1"
    save_file(load_file(str(f)), str(f), metadata=meta)
    with pytest.raises(ValueError, match="v2"):
        DatasetLatents.load(f)


def test_latent_record_has_every_field_and_agrees_with_the_data(dl, tiny_clf):
    table = latent_table(dl)
    j = useful_latent(table, tiny_clf)
    assert table.frequency[j] > 0  # the browser never opens on a dead latent
    st = latent_stats(dl, table, tiny_clf, j).to_dict()
    col = dl.column(j)
    assert st["n_active"] == int((col > 0).sum()) and st["frequency"] == pytest.approx((col > 0).mean())
    assert sum(st["histogram_counts"]) == st["n_active"]
    assert st["top_images"] == tiny_clf.top_images(j, 12)
    shape = next(c for c in st["concepts"] if c["concept"] == "shape")
    top = np.argsort(-col, kind="stable")[:st["top_n"]]
    counts = np.bincount(dl.labels["shape"][1][top[col[top] > 0]], minlength=6)
    assert shape["purity"] == pytest.approx(counts.max() / counts.sum())
    assert sum(shape["distribution"].values()) == counts.sum()
    assert 0 <= shape["control_purity"] <= 1 and 0 < shape["chance"] < 1
    iou = st["dissection_iou"]
    k = dl.dissection_concepts.index(next(iter(iou)))
    assert list(iou.values()) == sorted(iou.values(), reverse=True)
    assert next(iter(iou.values())) == pytest.approx(dl.dissection_iou[j].max()) == dl.dissection_iou[j, k]
    pooled_note = DatasetLatents(dl.Z, dl.indices, dl.labels, dl.control, "c", dissection_note="")
    assert NOT_AVAILABLE in latent_stats(pooled_note, table, tiny_clf, j).dissection_note
    assert set(st["probe_weights"]) == set(tiny_clf.class_names)
    for r in st["cofiring"]:
        other = dl.column(r["latent"]) > 0
        both = int((other & (col > 0)).sum())
        assert r["both"] == both and r["jaccard"] == pytest.approx(both / ((other | (col > 0)).sum()))
    with pytest.raises(ValueError, match="between 0 and 31"):
        latent_stats(dl, table, tiny_clf, 32)


def test_atlas_places_every_point_in_the_unit_square(dl, tiny_clf):
    xy = atlas.image_atlas(dl.Z, "tsne")
    assert xy.shape == (40, 2) and xy.min() >= 0 and xy.max() <= 1
    lat = atlas.latent_atlas(tiny_clf.sae, "pca")
    assert lat.shape == (tiny_clf.n_latents, 2)
    i = atlas.nearest_point(xy, *xy[7])
    assert np.allclose(xy[i], xy[7])
    assert atlas.nearest_point(xy, 5.0, 5.0) is None


def test_atlas_scales_to_50k_images_by_landmarks():
    """50k sparse codes: t-SNE on the landmarks, the rest placed by nearest landmarks (see atlas.py)."""
    Z = sp.random(50_000, 256, density=0.05, format="csr", random_state=0, dtype=np.float32)
    t = time.perf_counter()
    xy = atlas.embed(Z, "tsne", max_landmarks=500)
    assert xy.shape == (50_000, 2) and np.isfinite(xy).all()
    assert time.perf_counter() - t < 120


def test_deletion_curve_removes_the_top_contributors_first(tiny_clf):
    ds = tiny_clf.dataset()
    z = tiny_clf.latents([ds.image(3)], [ds.ids()[3]])[0]
    cur = deletion_curve(tiny_clf, z, n_max=5)
    probs = tiny_clf.predict_latents(z[None])[0]
    assert cur.prob[0] == pytest.approx(probs.max()) and cur.label == tiny_clf.class_names[int(probs.argmax())]
    contrib, _, _, _ = tiny_clf.attribution(z, "contrastive")  # the order the explanation shows
    assert cur.removed == [int(j) for j in np.argsort(-np.where(z > 0, contrib, -np.inf))[:len(cur.removed)]]
    plain = deletion_curve(tiny_clf, z, n_max=5, attribution="logit")
    contrib = tiny_clf.contributions(z, cur.label_index)
    assert plain.removed == [int(j) for j in np.argsort(-np.where(z > 0, contrib, -np.inf))[:len(plain.removed)]]
    zz = z.copy()
    zz[cur.removed[:2]] = 0
    assert cur.prob[2] == pytest.approx(tiny_clf.predict_latents(zz[None])[0, cur.label_index])
    assert cur.auc == pytest.approx(normalised_auc(cur.prob)) and len(cur.prob_random) == len(cur.prob)
    assert normalised_auc([1, 1, 1]) == 1.0 and normalised_auc([1, 0]) == 0.5


def test_faithfulness_metrics_average_held_out_images(tiny_clf):
    m = faithfulness_metrics(tiny_clf, n_images=8, n_max=4)
    assert m["deletion_n_images"] >= 1 and 0 <= m["deletion_auc"] <= 1
    assert m["deletion_auc_gap"] == pytest.approx(m["deletion_auc_random"] - m["deletion_auc"])


def test_faithfulness_is_logged_on_the_registered_versions_run(mlflow_tmp, tiny_model_dir):
    import mlflow

    from revelio_svc.registry import register_model
    from revelio_svc.registry.faithfulness import log_faithfulness

    with mlflow.start_run() as run:
        reg = register_model("classifier", tiny_model_dir, {"accuracy": 0.5})
    out = log_faithfulness(f"{reg.name}/{reg.version}", n_images=8, n_max=4)
    assert out["run_id"] == run.info.run_id
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged["faithfulness.deletion_auc"] == pytest.approx(out["metrics"]["faithfulness.deletion_auc"])
    tags = mlflow.MlflowClient().get_model_version(reg.name, reg.version).tags
    assert "metric.faithfulness.deletion_auc" in tags


def test_all_latent_maps_agree_with_the_sae_maps_of_a_few(tiny_clf):
    from revelio_svc.inference.latent_stats import all_latent_maps
    from revelio_svc.sae import latent_maps

    ds = tiny_clf.dataset()
    _, tok, _ = tiny_clf.tokens(ds.images(range(3)), ds.ids()[:3])
    every = all_latent_maps(tiny_clf.sae, tok, chunk=2)
    assert every.shape == (3, tiny_clf.n_latents, *tok.shape[1:3])
    assert np.allclose(every[:, [0, 5, 31]], latent_maps(tiny_clf.sae, tok, [0, 5, 31]), atol=1e-6)
