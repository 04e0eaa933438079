from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.probe import read_probe
from revelio_svc.probe.diffc import DiffC, DiffCProbe, train_diffc
from revelio_svc.probe.metrics import accuracy


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (8, 8), (16, 16), (33, 20)])
@pytest.mark.parametrize("depth", [0, 3])
def test_forward_shapes(hw, depth):
    m = DiffC(in_channels=6, n_classes=4, width=8, depth=depth).eval()
    out = m(torch.randn(2, 6, *hw))
    assert out.shape == (2, 4)
    # the stride-2 stack: 3 halvings (rounded up) before the global pool
    n_conv = sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())
    assert n_conv == 1 + depth


def quadrant_task(n, hw=8, c=3, seed=0):
    """Class = which quadrant holds a bright blob in channel 0; the pooled mean is the same for every class,
    so only a spatial model can solve it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(4, size=n)
    X = 0.3 * rng.standard_normal((n, hw, hw, c)).astype(np.float32)
    h = hw // 2
    for i, q in enumerate(y):
        r0, c0 = (q // 2) * h, (q % 2) * h
        X[i, r0:r0 + h, c0:c0 + h, 0] += 1.5
    return X, y


def test_trains_above_chance_on_a_planted_spatial_task():
    torch.set_num_threads(1)
    X, y = quadrant_task(200)
    p = train_diffc(X[:160], y[:160], 4, width=16, depth=2, epochs=20, lr=3e-3, batch_size=32, dropout=0.0,
                    seed=0, device="cpu")
    acc = accuracy(y[160:], p.predict(X[160:]))
    assert acc > 0.7, acc  # chance 0.25
    assert p.history[-1] < p.history[0]
    proba = p.predict_proba(X[160:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    X, y = quadrant_task(40)
    p = train_diffc(X, y, 4, width=8, depth=3, epochs=1, batch_size=16, seed=0, device="cpu",
                    meta={"concept": "quadrant"})
    p.save(tmp_path / "p")
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == ["diffc.safetensors", "probe.json"]
    q = read_probe(tmp_path / "p")
    assert isinstance(q, DiffCProbe) and q.meta["concept"] == "quadrant" and q.arch == p.arch
    np.testing.assert_array_equal(q.predict_proba(X), p.predict_proba(X))


def test_training_is_seeded_and_handles_a_batch_of_one():
    X, y = quadrant_task(17)  # 17 = 16 + 1: the lone last row joins the previous batch
    a = train_diffc(X, y, 4, width=8, epochs=2, batch_size=16, seed=3, device="cpu")
    b = train_diffc(X, y, 4, width=8, epochs=2, batch_size=16, seed=3, device="cpu")
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_rejects_pooled_input():
    with pytest.raises(ValueError, match="spatial maps"):
        train_diffc(np.zeros((4, 8), np.float32), np.array([0, 1, 0, 1]), 2, device="cpu")
