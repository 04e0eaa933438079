"""The training step's sparse decoder and its hand-written backward against the dense textbook formulation.

The reference forms the dense codes z (batch × n_latents), decodes with a dense matmul and lets autograd
differentiate everything; the step decodes the k selected rows with `embedding_bag`, builds the weight
gradients as CSR products into reused buffers and finds the decoder-parallel component from the activation
gradients. Both must give the same reconstruction, loss and gradients.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from revelio_svc.sae import TopKSAE, TopKSAEConfig
from revelio_svc.sae.trainer import SparseStep, csr_order, scatter_rows


def _sae(d=12, n=48, k=4, seed=0):
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d, n_latents=n, k=k, normalize="scalar"), seed=seed)
    x = torch.randn(96, d) @ torch.randn(d, d)
    sae.init_from_data(x)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.3, 0.3)
        sae.b_pre.normal_(0, 0.1)
    return sae, sae.normalize(x)


def _dense_reference(sae, xn):
    """x̂, loss and gradients (decoder gradient projected) of the dense formulation, by autograd."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in
              (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec), ("b_pre", sae.b_pre))}
    pre = (xn - params["b_pre"]) @ params["W_enc"].t() + params["b_enc"]
    v, idx = pre.topk(sae.k, dim=1)
    z = torch.zeros_like(pre).scatter(1, idx, F.relu(v))
    xhat = z @ params["W_dec"] + params["b_pre"]
    loss = ((xhat - xn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    loss.backward()
    g, w = params["W_dec"].grad, params["W_dec"].detach()
    grads = {n: p.grad for n, p in params.items()}
    grads["W_dec"] = g - (g * w).sum(1, keepdim=True) * w
    return xhat.detach(), float(loss.detach()), grads


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_decoder_forward_and_gradients_equal_the_dense_reference(seed):
    sae, xn = _sae(seed=seed)
    ref_xhat, ref_loss, ref_grads = _dense_reference(sae, xn)
    eng = SparseStep(sae, 1e-3, auxk_coef=0.0)
    loss, _, _, _ = eng.compute_grads(xn)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    with torch.no_grad():  # the step's decoder: embedding_bag over the k selected rows of each sample
        _, cols, v = sae.select_train(sae.pre_activations(xn))
        xhat = F.embedding_bag(cols.view(len(xn), sae.k), sae.W_dec, mode="sum",
                               per_sample_weights=sae.activation(v).view(len(xn), sae.k)) + sae.b_pre
    assert torch.allclose(xhat, ref_xhat, atol=1e-5)
    for name, p in (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec), ("b_pre", sae.b_pre)):
        assert torch.allclose(p.grad, ref_grads[name], atol=1e-6, rtol=1e-4), name
    # the projection really happened: no decoder row's gradient has a component along the row
    assert (sae.W_dec.grad * sae.W_dec.detach()).sum(1).abs().max() < 1e-6


def test_gradient_buffers_are_reused_and_fully_overwritten():
    sae, xn = _sae()
    eng = SparseStep(sae, 1e-3, auxk_coef=0.0)
    eng.compute_grads(xn[:48])
    buf = sae.W_enc.grad
    buf_dec = sae.W_dec.grad
    _, _, ref = _dense_reference(sae, xn[48:])
    eng.compute_grads(xn[48:])  # another batch selects other latents: stale rows must not survive
    assert sae.W_enc.grad is buf and sae.W_dec.grad is buf_dec
    assert torch.allclose(sae.W_enc.grad, ref["W_enc"], atol=1e-6, rtol=1e-4)
    assert torch.allclose(sae.W_dec.grad, ref["W_dec"], atol=1e-6, rtol=1e-4)


def test_csr_scatter_overwrites_its_buffer_and_matches_embedding_bag():
    g = torch.Generator().manual_seed(3)
    src = torch.randn(7, 5, generator=g)
    rows = torch.tensor([0, 0, 1, 2, 4, 4, 6, 6, 6])
    cols = torch.tensor([3, 1, 3, 0, 1, 9, 3, 2, 9])
    w = torch.randn(9, generator=g)
    dense = torch.zeros(7, 10)
    dense.index_put_((rows, cols), w, accumulate=True)
    out = torch.full((10, 5), float("nan"))  # stale contents, even NaN, must not leak into the result
    res = scatter_rows(cols, w, src, rows, 10, out=out, grouped=csr_order(cols, 10))
    assert res.data_ptr() == out.data_ptr()
    assert torch.allclose(res, dense.T @ src, atol=1e-6)
    order, crow = csr_order(cols, 10)
    bag = F.embedding_bag(rows[order], src, crow[:-1], mode="sum", per_sample_weights=w[order])
    assert torch.allclose(res, bag, atol=1e-6)


# --------------------------------------------------------------------------- TopK candidates from a bfloat16 product
def _enc_problem(B=96, d=40, n=640, seed=0):
    g = torch.Generator().manual_seed(seed)
    xc = torch.randn(B, d, generator=g) * 3
    W = torch.randn(n, d, generator=g)
    W /= W.norm(dim=1, keepdim=True)
    b = torch.randn(n, generator=g) * 0.2
    return xc, W, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_candidates_give_float32_topk(seed):
    from revelio_svc.sae.trainer import select_topk_bf16

    xc, W, b = _enc_problem(seed=seed)
    k = 8
    rows, cols, v, n_bad = select_topk_bf16(xc, W, b, k)
    ref_v, ref_i = torch.addmm(b, xc, W.t()).topk(k, dim=1)
    assert torch.equal(rows, torch.arange(len(xc)).repeat_interleave(k))
    assert torch.equal(cols.view(-1, k).sort(1).values, ref_i.sort(1).values)
    # the values are float32 dot products, not the bfloat16 ones (those are off by ~1e-2 here)
    assert torch.allclose(v.view(-1, k).sort(1).values, ref_v.sort(1).values, atol=1e-5, rtol=0)
    assert n_bad < len(xc) // 4  # most rows are certified from their 2k candidates


def test_bf16_rows_that_cannot_be_certified_are_recomputed_in_float32():
    from revelio_svc.sae.trainer import select_topk_bf16

    xc, W, b = _enc_problem(seed=3)
    k = 8
    # with only k candidates the k-th exact value never clears the rounding margin: every row falls back
    rows, cols, v, n_bad = select_topk_bf16(xc, W, b, k, candidates=k)
    assert n_bad == len(xc)
    ref_v, ref_i = torch.addmm(b, xc, W.t()).topk(k, dim=1)
    assert torch.equal(cols.view(-1, k).sort(1).values, ref_i.sort(1).values)
    assert torch.equal(v.view(-1, k).sort(1).values, ref_v.sort(1).values)


@pytest.mark.parametrize("dead", [0, 200])
def test_step_with_bf16_selection_matches_the_float32_step(dead):
    torch.manual_seed(0)
    x = torch.randn(128, 40) @ torch.randn(40, 40)
    grads = {}
    for bf16 in (False, True):
        sae = TopKSAE(TopKSAEConfig(d_in=40, n_latents=640, k=8, normalize="scalar"), seed=0)
        sae.init_from_data(x)
        eng = SparseStep(sae, 1e-3, k_aux=16, dead_window=10, bf16_select=bf16)
        eng.since_fired[:dead] = 10  # these latents count as dead: AuxK reads their exact pre-activations
        loss, aux, _, _ = eng.compute_grads(sae.normalize(x))
        assert eng._use_bf16(len(x)) is bf16
        assert (aux > 0) is (dead > 0)
        grads[bf16] = (loss, aux, {n: p.grad.clone() for n, p in sae.named_parameters()})
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-5)
    assert grads[True][1] == pytest.approx(grads[False][1], rel=1e-5)
    for name, g in grads[False][2].items():
        assert torch.allclose(grads[True][2][name], g, atol=1e-6, rtol=1e-4), name


def test_bf16_selection_is_automatic_only_for_large_topk_products_on_bf16_cpus(monkeypatch):
    from revelio_svc.sae import trainer
    from revelio_svc.sae.batchtopk import BatchTopKSAE, BatchTopKSAEConfig

    sae, _ = _sae()
    eng = SparseStep(sae, 1e-3)
    assert not eng._use_bf16(96)  # 96 × 48 × 12 multiply-adds: float32
    monkeypatch.setattr(trainer, "BF16_SELECT_MIN_MACS", 0)
    monkeypatch.setattr(trainer, "_FAST_BF16", True)
    assert eng._use_bf16(96)
    monkeypatch.setattr(trainer, "_FAST_BF16", False)  # no bfloat16 units: never
    assert not eng._use_bf16(96)
    monkeypatch.setattr(trainer, "_FAST_BF16", True)
    batch = BatchTopKSAE(BatchTopKSAEConfig(d_in=12, n_latents=48, k=4), seed=0)
    assert not SparseStep(batch, 1e-3)._use_bf16(96)  # the batch-level selection stays float32
