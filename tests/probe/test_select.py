"""Choosing a probe's inputs and C by cross-validation on training rows."""
import numpy as np
import pytest

from revelio_svc.probe.select import choose_probe, cv_accuracy


def _planted(n=300, d=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    signal = rng.normal(size=(n, d))
    signal[np.arange(n), y] += 4.0  # one informative feature per class
    noise = rng.normal(size=(n, d))
    return y, signal, noise


def test_the_informative_inputs_win_and_every_candidate_is_reported():
    y, signal, noise = _planted()
    ch = choose_probe({"noise": noise, "signal": signal}, y, Cs=(0.1, 1.0), folds=3)
    assert ch.inputs == "signal" and ch.cv_accuracy > 0.9
    assert [(r[0], r[1]) for r in ch.table] == [("noise", 0.1), ("noise", 1.0), ("signal", 0.1), ("signal", 1.0)]
    assert max(r[2] for r in ch.table if r[0] == "noise") < 0.6  # chance is 1/3


def test_cv_accuracy_is_high_on_separable_rows_and_near_chance_on_shuffled_labels():
    y, signal, _ = _planted(seed=1)
    assert cv_accuracy(signal, y, 1.0, folds=3) > 0.9
    shuffled = np.random.default_rng(2).permutation(y)
    assert cv_accuracy(signal, shuffled, 1.0, folds=3) < 0.5


def test_bad_input_names_the_problem():
    y, signal, _ = _planted()
    with pytest.raises(ValueError, match="at least one candidate"):
        choose_probe({}, y)
    with pytest.raises(ValueError, match="Cs must be positive"):
        choose_probe({"s": signal}, y, Cs=(0.0,))
    with pytest.raises(ValueError, match="'s' has 299 rows"):
        choose_probe({"s": signal[:-1]}, y)
    rare = y.copy()
    rare[:298] = 0
    rare[298:] = 1
    with pytest.raises(ValueError, match="rarest class has 2"):
        cv_accuracy(signal, rare, 1.0, folds=3)


def test_raw_probe_reads_the_planted_hook_point_and_never_hands_a_test_row_to_the_choice(tmp_path, monkeypatch):
    from revelio_svc.features.store import open_store
    from revelio_svc.probe import select

    from .conftest import write_planted_store

    store = open_store(write_planted_store(tmp_path / "s", n=240, tokens_hw=(2, 2)))
    seen = []
    real = select.choose_probe
    monkeypatch.setattr(select, "choose_probe", lambda cand, y, **kw: seen.append((cand, y)) or real(cand, y, **kw))
    planted = select.raw_probe(store, "up_blocks.1", 10, "shape", Cs=(0.3, 1.0))
    noise = select.raw_probe(store, "down_blocks.1", 10, "shape", Cs=(0.3, 1.0))
    assert planted.test_accuracy > 0.9 and noise.test_accuracy < 0.6  # 3 shapes: chance about 1/3
    test = store.is_test()
    assert planted.n_test == int(test.sum()) == 60 and planted.n_train == 180
    for cand, y in seen:  # only train rows were ever handed to the choice
        assert set(cand) == {"mean", "top8"} and all(v.shape[0] == 180 for v in cand.values())
        np.testing.assert_array_equal(y, store.labels("shape")[~test])
    assert set(planted.metrics()) == {"raw_probe.accuracy", "raw_probe.cv_accuracy", "raw_probe.C"}


def test_raw_inputs_take_what_the_caller_already_pooled_instead_of_reading_the_tokens_again(tmp_path, monkeypatch):
    from revelio_svc.features.store import open_store
    from revelio_svc.probe import select
    from revelio_svc.probe.controls import pool_tokens

    from .conftest import write_planted_store

    store = open_store(write_planted_store(tmp_path / "s", n=120, tokens_hw=(2, 2)))
    top8 = pool_tokens(store.feature_set("up_blocks.1", 10, "tokens").load(), "top8")
    fresh = select.raw_inputs(store, "up_blocks.1", 10)
    read = type(store).feature_set

    def no_tokens(self, h, t, pooling):
        assert pooling != "tokens", "the token maps were read again"
        return read(self, h, t, pooling)

    monkeypatch.setattr(type(store), "feature_set", no_tokens)
    reused = select.raw_inputs(store, "up_blocks.1", 10, known={"top8": top8})
    assert list(reused) == list(fresh) == ["mean", "top8"]
    for k in fresh:
        np.testing.assert_array_equal(reused[k], fresh[k])
