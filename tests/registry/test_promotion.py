"""Promotion is a decision with evidence, for a consistent set: the paired test, and two pipelines after a first."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from revelio_svc.contracts import Evaluation
from revelio_svc.pipeline import run
from revelio_svc.registry import (
    load_classifier,
    load_probe,
    load_sae,
    promotion_decision,
)
from tests.registry.helpers import tiny_config

pytest_plugins = ("tests.registry.fixtures",)

NAMES = ("revelio-sae", "revelio-probe", "revelio-classifier")


def ev(correct: list[int], index: list[int] | None = None, dataset: str = "d") -> Evaluation:
    return Evaluation(dataset, tuple(index or range(len(correct))), tuple(bool(c) for c in correct))


def test_two_images_of_524_are_no_evidence_and_a_clear_gain_is():
    rng = np.random.default_rng(0)
    champ = rng.random(524) < 0.65
    marginal = champ.copy()
    marginal[np.flatnonzero(~champ)[:2]] = True  # two more images right: 0.6489 → 0.6527
    d = promotion_decision(ev(marginal.tolist()), ev(champ.tolist()), 0.05, "1")
    assert not d.promote and d.delta == pytest.approx(2 / 524) and d.p_value > 0.4 and d.n_paired == 524
    assert "does not clearly beat champion version 1" in d.reason
    clear = champ.copy()
    clear[np.flatnonzero(~champ)[:40]] = True
    d = promotion_decision(ev(clear.tolist()), ev(champ.tolist()), 0.05, "1")
    assert d.promote and d.p_value < 1e-6 and d.tags()["compared_version"] == "1"


def test_only_the_same_images_are_compared():
    assert promotion_decision(ev([1, 1, 1]), None, 0.05, None).promote  # no champion yet
    other = promotion_decision(ev([1] * 50, dataset="x"), ev([0] * 50, dataset="y"), 0.05, "3")
    assert not other.promote and "other images" in other.reason
    # pairs are matched by image, not by position
    d = promotion_decision(ev([1, 0] * 20, index=list(range(40))), ev([0, 1] * 20, index=list(range(1, 41))),
                           0.05, "1")
    assert d.n_paired == 39 and d.delta == pytest.approx(0) and not d.promote
    # worse is never promoted, however significant
    assert not promotion_decision(ev([0] * 40), ev([1] * 40), 0.05, "1").promote


def aliases(name: str) -> dict[str, str]:
    return {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


@pytest.mark.slow
def test_champions_move_together_and_only_on_evidence(fresh_mlflow, tiny_unet_dir, tmp_path):
    # 200 images: 50 held out, enough for a paired test to tell a real gain from noise
    base = ["data.n_images=200", "probe.penalty=l2", "probe.C=0.0001"]  # a nearly constant probe: close to chance
    weak = run(tiny_config(tiny_unet_dir, tmp_path / "o", *base), progress=False)
    assert all(r.champion for r in weak.registrations.values())

    # the same recipe with another SAE seed: about as good, so nothing moves
    marginal = run(tiny_config(tiny_unet_dir, tmp_path / "o", *base, "sae.seed=1"), progress=False)
    assert not any(r.champion for r in marginal.registrations.values())
    for name in NAMES:
        assert aliases(name) == {"champion": "1", "challenger": "2"}
        tags = MlflowClient().get_model_version(name, "2").tags
        assert tags["compared_version"] == "1" and float(tags["p_value"]) >= 0.05 and tags["promoted"] == "false"
        assert tags["set"] == "revelio-sae/2,revelio-probe/2,revelio-classifier/2"

    # a real probe: clearly better on the same 50 images, and the whole set moves
    clear = run(tiny_config(tiny_unet_dir, tmp_path / "o", "data.n_images=200", "probe.penalty=l2", "sae.seed=1"),
                progress=False)
    assert all(r.champion for r in clear.registrations.values())
    for name in NAMES:
        assert aliases(name) == {"champion": "3", "challenger": "3"}
        tags = MlflowClient().get_model_version(name, "3").tags
        assert float(tags["p_value"]) < 0.05 and float(tags["delta_accuracy"]) > 0
    # the champion classifier wraps exactly the champion SAE and probe
    clf, sae, probe = (load_classifier("revelio-classifier@champion"), load_sae("revelio-sae@champion"),
                       load_probe("revelio-probe@champion"))
    for k, v in sae.state_dict().items():
        torch.testing.assert_close(clf.sae.state_dict()[k], v)
    np.testing.assert_array_equal(clf.probe.coef, probe.coef)
