"""The SAE model: selection, sparsity, decoding, constraints, initialisation, exact sparse gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.sae import (
    BatchTopKSAE,
    BatchTopKSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    geometric_median,
    image_latents,
    latent_maps,
    read_sae,
)
from revelio_svc.sae.latents import image_latents_pooled
from revelio_svc.sae.trainer import (
    SparseStep,
    default_lr,
    gather_dot,
    loss_autograd,
    lr_at,
    scatter_rows,
)

from .helpers import planted_atoms, planted_vectors


def make(variant="topk", d=8, n=32, k=3, **kw):
    if variant == "topk":
        return TopKSAE(TopKSAEConfig(d_in=d, n_latents=n, k=k, **kw), seed=0)
    return BatchTopKSAE(BatchTopKSAEConfig(d_in=d, n_latents=n, k=k, **kw), seed=0)


def data(n=64, d=8, seed=0):
    x, _ = planted_vectors(n, planted_atoms(d, 12, seed), seed=seed + 1)
    return torch.from_numpy(x)


# --------------------------------------------------------------------------- selection and sparsity
def test_topk_exactly_k_active_per_sample():
    sae = make(relu=False)
    x = data()
    vals, idx = sae.encode_sparse(x)
    assert vals.shape == idx.shape == (64, 3)
    z = sae.encode(x)
    assert z.shape == (64, 32)
    assert ((z != 0).sum(1) == 3).all()
    assert all(len(set(r.tolist())) == 3 for r in idx)
    # leading dimensions are kept
    assert sae.encode(x.reshape(4, 16, 8)).shape == (4, 16, 32)


def test_topk_relu_keeps_at_most_k_and_no_negatives():
    sae = make(relu=True)
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # many pre-activations negative
    z = sae.encode(data())
    assert (z >= 0).all()
    assert ((z != 0).sum(1) <= 3).all()
    assert ((z != 0).sum(1) < 3).any()


def test_batchtopk_keeps_k_times_batch_over_the_whole_batch():
    sae = make("batchtopk", relu=False)
    x = data(50)
    x[:10] *= 6.0  # loud samples take more than k latents, quiet ones fewer
    pre = sae.pre_activations(sae.normalize(x))
    rows, _, vals = sae.select_train(pre)
    assert rows.numel() == 3 * 50
    assert (rows[1:] >= rows[:-1]).all()
    per_sample = torch.bincount(rows, minlength=50)
    assert per_sample[:10].float().mean() > 3 > per_sample[10:].float().mean()
    # the kept entries are the k·B largest of the batch
    assert torch.allclose(vals.sort().values, pre.reshape(-1).topk(150).values.sort().values)


def test_batchtopk_threshold_running_mean_and_inference():
    sae = make("batchtopk")
    sae.observe_training_batch(torch.tensor([0.0, 2.0, 3.0]))
    assert float(sae.threshold) == pytest.approx(2.0)  # first batch: its minimum positive activation
    sae.observe_training_batch(torch.tensor([1.0, 5.0]))
    assert float(sae.threshold) == pytest.approx(1.5)  # plain mean while few batches were seen
    assert sae.config.threshold == pytest.approx(1.5)
    x = data()
    pre = sae.pre_activations(sae.normalize(x))
    z = sae.encode(x)
    assert torch.equal(z != 0, pre > 1.5)
    assert torch.allclose(z[z != 0], pre[pre > 1.5])


# --------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_sparse_decode_equals_dense_decode(variant):
    sae = make(variant, normalize="standard")
    x = data() * 3 + 1
    sae.init_from_data(x)
    vals, idx = sae.encode_sparse(x)
    sparse = sae.decode_sparse(vals, idx)
    dense = sae.decode(sae.encode(x))
    assert torch.allclose(sparse, dense, atol=1e-5)
    assert torch.allclose(sae(x), dense, atol=1e-5)


# --------------------------------------------------------------------------- initialisation
def test_init_unit_decoder_and_encoder_is_its_transpose():
    sae = make(n=64)
    assert torch.allclose(torch.linalg.vector_norm(sae.W_dec, dim=1), torch.ones(64), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec)  # both (n_latents, d_in): encoder rows = decoder rows
    assert not torch.equal(make(n=64).W_dec, TopKSAE(TopKSAEConfig(d_in=8, n_latents=64, k=3), seed=1).W_dec)


def test_geometric_median_brute_force_2d():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 1, (15, 2)), [[30, 30], [40, -25], [-35, 20]]])
    grid = np.stack(np.meshgrid(np.linspace(-3, 3, 601), np.linspace(-3, 3, 601)), -1).reshape(-1, 2)
    cost = np.linalg.norm(grid[:, None, :] - pts[None], axis=2).sum(1)
    best = grid[cost.argmin()]
    m = geometric_median(torch.tensor(pts, dtype=torch.float32)).numpy()
    assert np.linalg.norm(m - best) < 0.02
    assert np.linalg.norm(pts - m, axis=1).sum() <= cost.min() + 1e-3


def test_geometric_median_ignores_outliers_and_sets_b_pre():
    rng = np.random.default_rng(1)
    c = np.arange(8, dtype=np.float32)
    inliers = c + 0.05 * rng.standard_normal((90, 8))
    outliers = c + 500.0 + rng.standard_normal((10, 8))
    x = torch.tensor(np.concatenate([inliers, outliers]), dtype=torch.float32)
    sae = make()
    sae.init_from_data(x)
    assert torch.linalg.vector_norm(sae.b_pre - torch.from_numpy(c)) < 0.1
    assert torch.linalg.vector_norm(x.mean(0) - torch.from_numpy(c)) > 100  # the mean is dragged away


@pytest.mark.parametrize("kind", ["scalar", "standard", "none"])
def test_input_normalisation(kind):
    x = data(256) * 7 + 3
    sae = make(normalize=kind)
    sae.init_from_data(x)
    xn = sae.normalize(x)
    if kind == "scalar":
        assert float((xn ** 2).sum(1).mean()) == pytest.approx(8.0, rel=1e-4)
    elif kind == "standard":
        assert torch.allclose(xn.mean(0), torch.zeros(8), atol=1e-4)
        assert torch.allclose(xn.std(0, unbiased=False), torch.ones(8), atol=1e-4)
    else:
        assert torch.equal(xn, x)
    assert torch.allclose(sae.denormalize(xn), x, atol=1e-4)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_whitening_flattens_the_spectrum_and_inverts(power, tmp_path):
    rng = np.random.default_rng(0)
    # one dominant direction with 100× the variance of the rest, as at the default hook point
    x = rng.standard_normal((4000, 8)) * np.r_[10.0, np.ones(7)] @ np.linalg.qr(rng.standard_normal((8, 8)))[0]
    x = torch.from_numpy((x + 5.0).astype(np.float32))
    sae = make(normalize="whiten", whiten_power=power)
    sae.init_from_data(x)
    xn = sae.normalize(x)
    lam = torch.linalg.eigvalsh(torch.cov(xn.T.double()))
    assert float((xn.double() ** 2).sum(1).mean()) == pytest.approx(8.0, rel=1e-2)
    if power == 1.0:
        assert torch.allclose(lam, torch.ones(8, dtype=torch.float64), rtol=0.05)
    else:  # variances λ^(1/2): the dominant direction keeps a 10× ratio instead of 100×
        assert float(lam.max() / lam.min()) == pytest.approx(10.0, rel=0.3)
    assert torch.allclose(sae.denormalize(xn), x, atol=1e-3)
    # the matrices are saved and loaded with the model
    sae.save(tmp_path / "w")
    back = read_sae(tmp_path / "w")
    assert torch.allclose(back.normalize(x), xn, atol=1e-5)
    with pytest.raises(ValueError, match="whiten_power"):
        make(normalize="whiten", whiten_power=0.0)


# --------------------------------------------------------------------------- gradients and constraints
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
@pytest.mark.parametrize("relu", [True, False])
def test_sparse_gradients_equal_autograd(variant, relu):
    sae = make(variant, relu=relu, normalize="scalar")
    x = data(40)
    sae.init_from_data(x)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.2, 0.2)
    eng = SparseStep(sae, 1e-3, k_aux=4, dead_window=5)
    eng.since_fired[::3] = 100  # a third of the latents dead: the AuxK term is active
    xn = sae.normalize(x)
    loss, aux, _, _ = eng.compute_grads(xn)
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    ref_loss, _ = loss_autograd(sae, xn, eng.dead_mask(), auxk_coef=1 / 32, k_aux=4)
    ref_loss.backward()
    sae.remove_parallel_decoder_grad_()
    assert aux > 0
    assert loss + aux / 32 == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    for n, p in sae.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_parallel_gradient_component_is_removed():
    sae = make(normalize="scalar")
    x = data()
    sae.init_from_data(x)
    g = torch.randn_like(sae.W_dec)
    sae.W_dec.grad = g.clone()
    sae.remove_parallel_decoder_grad_()
    w = sae.W_dec.detach()
    assert (sae.W_dec.grad * w).sum(1).abs().max() < 1e-5
    expected = g - (g * w).sum(1, keepdim=True) * w
    assert torch.allclose(sae.W_dec.grad, expected, atol=1e-6)


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_decoder_rows_stay_unit_norm_and_loss_falls(variant):
    sae = make(variant, d=8, n=32, k=3, normalize="scalar")
    x = data(256)
    sae.init_from_data(x)
    eng = SparseStep(sae, 1e-2)
    xn = sae.normalize(x)
    first = eng.step(xn, 1e-2).loss
    for _ in range(60):
        last = eng.step(xn, 1e-2).loss
    assert torch.allclose(torch.linalg.vector_norm(sae.W_dec, dim=1), torch.ones(32), atol=1e-5)
    assert last < 0.5 * first


def test_auxk_revives_a_planted_dead_latent():
    def run(coef):
        torch.manual_seed(0)
        sae = make(d=8, n=16, k=2, normalize="scalar")
        x = data(256)
        sae.init_from_data(x)
        with torch.no_grad():  # latent 5: a weak copy of the mean direction — always loses the TopK
            u = sae.normalize(x).mean(0) - sae.b_pre
            sae.W_enc[5] = 0.05 * u / u.norm()
            sae.b_enc[5] = 0.0
        eng = SparseStep(sae, 5e-3, auxk_coef=coef, k_aux=4, dead_window=256)
        xn = sae.normalize(x)
        fired, dead = [], []
        for _ in range(150):
            eng.step(xn, 5e-3)
            fired.append(bool(eng.since_fired[5] == 0))
            dead.append(bool(eng.dead_mask()[5]))
        return fired, dead

    fired_without, dead_without = run(0.0)
    assert not any(fired_without) and all(dead_without)
    fired_with, dead_with = run(1.0)
    assert dead_with[0]  # dead after the first batch, like without AuxK ...
    assert sum(fired_with) >= 20  # ... then revived: it wins the TopK on many later steps


# --------------------------------------------------------------------------- kernels and schedule
def test_sparse_kernels_match_dense_formulas():
    g = torch.Generator().manual_seed(0)
    G, W = torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 5])
    cols = torch.tensor([2, 8, 2, 0, 4, 7, 8])
    w = torch.randn(7, generator=g)
    offsets = torch.tensor([0, 2, 3, 3, 6, 6])
    ref_dot = (G[rows] * W[cols]).sum(1)
    assert torch.allclose(gather_dot(G, rows, W, cols, offsets), ref_dot, atol=1e-6)
    assert torch.allclose(gather_dot(G, rows, W, cols), ref_dot, atol=1e-6)
    dense = torch.zeros(6, 9)
    dense[rows, cols] = w
    assert torch.allclose(scatter_rows(cols, w, G, rows, 9), dense.T @ G, atol=1e-6)


def test_learning_rate_defaults_and_schedule():
    assert default_lr(16384) == pytest.approx(2e-4)
    assert default_lr(4096) == pytest.approx(4e-4)
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(50, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(90, 1.0, 10, 100) == pytest.approx(0.5)


# --------------------------------------------------------------------------- latents per image
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_image_latents_pool_token_codes(variant):
    sae = make(variant)
    if variant == "batchtopk":
        sae.observe_training_batch(torch.tensor([0.2]))
    tokens = data(5 * 9).reshape(5, 3, 3, 8)
    with torch.no_grad():
        dense = sae.encode(tokens)  # (5, 3, 3, n)
    flat = dense.reshape(5, 9, -1)
    top3 = flat.sort(dim=1, descending=True).values[:, :3].mean(1)  # mean of each latent's 3 largest positions
    for pooling, ref in (("max", dense.amax(dim=(1, 2))), ("mean", dense.mean(dim=(1, 2))), ("top3", top3),
                         ("top1", dense.amax(dim=(1, 2))), ("top9", dense.mean(dim=(1, 2))),
                         ("top20", flat.sum(1) / 20)):
        got = image_latents(sae, tokens.numpy(), pooling, batch=2)
        assert got.shape == (5, 32)
        assert np.allclose(got, ref.numpy(), atol=1e-6)
    pooled = data(7)
    assert np.allclose(image_latents(sae, pooled.numpy()), sae.encode(pooled).detach().numpy(), atol=1e-6)
    maps = latent_maps(sae, tokens.numpy(), [0, 5, 31])
    assert maps.shape == (5, 3, 3, 3)
    assert np.allclose(maps, dense[..., [0, 5, 31]].permute(0, 3, 1, 2).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="d_in=8"):
        image_latents(sae, np.zeros((2, 7), np.float32))
    for bad in ("top0", "median", "top"):
        with pytest.raises(ValueError, match="top<q>"):
            image_latents(sae, tokens.numpy(), bad)
    # one encoding, several poolings: the same as pooling one at a time
    many = image_latents_pooled(sae, tokens.numpy(), ("max", "mean", "top3"), batch=2)
    for p in ("max", "mean", "top3"):
        assert np.allclose(many[p], image_latents(sae, tokens.numpy(), p), atol=1e-6)


def test_sparse_top_q_pooling_equals_the_dense_form():
    from revelio_svc.sae.latents import pool_positions, top_q_sparse

    g = torch.Generator().manual_seed(6)
    b, P, m, L = 5, 40, 6, 64
    idx = torch.stack([torch.randperm(L, generator=g)[:m] for _ in range(b * P)]).view(b, P, m)
    vals = torch.rand(b, P, m, generator=g).mul(3).round().div(3)  # ties and zeros (ReLU'd codes)
    dense = torch.zeros(b, P, L).scatter_add_(2, idx, vals)
    for q in (1, 3, 8, 50):  # 50 > positions: zeros fill up, the sum is still divided by q
        ref = pool_positions(dense, f"top{q}")
        got = top_q_sparse(vals.view(b, -1), idx.view(b, -1), L, q)
        assert torch.allclose(got, ref, atol=1e-6), q
