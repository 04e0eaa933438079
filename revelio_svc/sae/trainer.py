"""SAE training: exact sparse gradients, Adam, AuxK, checkpoints that resume bit for bit.

The training step (`SparseStep`) computes the gradient of

    L = ‖x̂ − x_n‖² / ‖x_n − mean(x_n)‖²                                    (batch FVU, normalised space)
      + auxk_coef · ‖ê − r‖² / ‖r − mean(r)‖²,   r = x_n − x̂ (no gradient)   (AuxK, dead latents only)

by hand instead of by autograd, and it is the exact gradient (`loss_autograd` computes the same
objective with autograd; tests compare the two). It is cheap because TopK makes it sparse:

- the decoder reads only the selected rows (`embedding_bag` with per-sample weights);
- ∂L/∂W_dec and ∂L/∂W_enc are non-zero only in the rows of selected latents, and each of those rows is
  a sum over the samples that selected it: each is one sparse (CSR, k entries per sample) × dense product
  written into a gradient buffer kept across steps, never the dense (n_latents × B) · (B × d_in) products
  autograd would run, and no n_latents × d_in tensor is allocated per step;
- ∂L/∂(selected activation) is one dot product per kept entry;
- ∂L/∂b_pre through the encoder is −(∂L/∂b_enc) · W_enc, one vector-matrix product;
- the pre-activations are computed into a reused buffer and never kept for a backward pass;
- at large sizes on CPUs with bfloat16 matrix units, TopK's candidates come from a bfloat16 encoder
  product (5–7× faster than float32 there) and only the 2k candidates per row are recomputed in float32;
  a row whose float32 k-th value does not clear the rounding margin is recomputed in full
  (`select_topk_bf16`), so the selection and the values are float32's.

The optimiser is plain Adam (torch's fused CPU/GPU kernel) over every parameter: untouched rows still
get their momentum update, so the result is the same as dense Adam — no lazy/approximate update.
After each step the decoder rows are renormalised to unit norm; before it, each decoder row's gradient
loses its component parallel to the row (the component's size comes from the inner products the
activation gradients already needed, so it costs one pass instead of three).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..config import Config, ConfigError, SAEConfig, to_dict
from ..contracts import MetricsCallback
from ..features.extract import store_uri_for
from ..features.store import FeatureStore, diff_configs, open_store
from ..identity import Paths, digest
from ..progress import progress_bar
from .base import SparseAutoencoder
from .batchtopk import BatchTopKSAEConfig
from .data import (
    ActivationStream,
    NonFiniteInputError,
    eval_vectors,
    feature_set_for,
    plan_split,
)
from .io import build_sae, read_sae
from .metrics import ReconstructionStats, dead_frac, normalized_mse
from .topk import TopKSAEConfig

TRAINER_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"


class TrainingError(RuntimeError):
    """Training stopped; the message names the step and the cause."""


# --------------------------------------------------------------------------- schedule
def default_lr(n_latents: int) -> float:
    """2e-4 at 16384 latents, scaled by 1/sqrt(n_latents / 16384) (Gao et al. 2024)."""
    return 2e-4 / math.sqrt(n_latents / 16384)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, decay_frac: float = 0.2) -> float:
    """Linear warm-up over `warmup_steps`, constant, then linear decay to 0 over the last `decay_frac`."""
    w = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    start = int(total_steps * (1.0 - decay_frac))
    d = 1.0 if step < start or decay_frac <= 0 else max(0.0, (total_steps - step) / max(1, total_steps - start))
    return base_lr * w * d


# --------------------------------------------------------------------------- sparse kernels
def offsets_from_rows(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Start of each row's entries in a COO list whose rows are non-decreasing."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def gather_dot(G: torch.Tensor, rows: torch.Tensor, W: torch.Tensor, cols: torch.Tensor,
               offsets: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
    """out[e] = ⟨G[rows[e]], W[cols[e]]⟩ for every kept entry e (rows non-decreasing)."""
    if cols.numel() == 0:
        return torch.zeros(0, dtype=G.dtype)
    if offsets is not None and W.device.type == "cpu":
        try:  # the kernel embedding_bag's own backward uses for per_sample_weights
            return torch.ops.aten._embedding_bag_per_sample_weights_backward(G, W, cols, offsets, rows, 0, -1)
        except (RuntimeError, AttributeError):  # pragma: no cover - other torch builds
            pass
    out = torch.empty(cols.numel(), dtype=G.dtype)
    for s in range(0, cols.numel(), chunk):
        c, r = cols[s:s + chunk], rows[s:s + chunk]
        out[s:s + chunk] = (W.index_select(0, c) * G.index_select(0, r)).sum(1)
    return out


def csr_order(cols: torch.Tensor, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, crow): the entries grouped by output row (stable sort) and each row's start (CSR row pointers)."""
    order = torch.argsort(cols, stable=True)
    crow = torch.zeros(n_out + 1, dtype=torch.int64, device=cols.device)
    torch.cumsum(torch.bincount(cols, minlength=n_out), 0, out=crow[1:])
    return order, crow


def scatter_rows(cols: torch.Tensor, weights: torch.Tensor, src: torch.Tensor, rows: torch.Tensor,
                 n_out: int, *, out: torch.Tensor | None = None,
                 grouped: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """out (n_out, d) with out[j] = Σ_{e: cols[e]=j} weights[e] · src[rows[e]] (`out` is overwritten).

    The entries are grouped by output row (`grouped`, from `csr_order`, can be shared by calls with the same
    `cols`). On the CPU they form a CSR matrix S (n_out × len(src)) and out = S·src is one sparse-dense
    product written straight into `out` (no (entries × d) temporary, no fresh n_out × d allocation when a
    buffer is passed: at 20k latents × 1280 that allocation alone cost as much as the product). Elsewhere,
    or where the sparse product is unavailable, `embedding_bag` sums one bag per output row.
    """
    order, crow = grouped if grouped is not None else csr_order(cols, n_out)
    if src.device.type == "cpu":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                S = torch.sparse_csr_tensor(crow, rows[order], weights[order], (n_out, src.shape[0]),
                                            check_invariants=False)
            if out is None:
                out = torch.empty(n_out, src.shape[1], dtype=src.dtype)
            return torch.addmm(out, S, src, beta=0.0, out=out)
        except (RuntimeError, NotImplementedError):  # pragma: no cover - torch builds without sparse BLAS
            pass
    res = F.embedding_bag(rows[order], src, crow[:-1], mode="sum", per_sample_weights=weights[order])
    return res if out is None else out.copy_(res)


# --------------------------------------------------------------------------- TopK selection in bfloat16
BF16_SELECT_MIN_MACS = 1 << 30  # below this encoder product (batch × latents × d_in) float32 is fast enough
_BF16_UNIT = 2.0 ** -8  # unit round-off of bfloat16 (8 significant bits)
_FAST_BF16: bool | None = None  # fast_bf16_matmul's answer, asked once per process


def fast_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX, through oneDNN); oneDNN's
    own bfloat16 flag also holds on plain AVX-512, where the product is emulated and no faster."""
    global _FAST_BF16
    if _FAST_BF16 is None:
        try:
            native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
            _FAST_BF16 = bool(native and torch.backends.mkldnn.is_available()
                              and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover - other torch builds
            _FAST_BF16 = False
    return _FAST_BF16



def bf16_width(d: int) -> int:
    """Columns of the bfloat16 encoder: d inputs, the bias, zero padding to a multiple of 16."""
    return (d + 1 + 15) // 16 * 16


def bf16_encoder(W: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """[W | b | 0] in bfloat16, (n_latents, bf16_width(d_in)), written into `out` when given."""
    n, d = W.shape
    if out is None:
        out = torch.zeros(n, bf16_width(d), dtype=torch.bfloat16)
    out[:, :d].copy_(W)
    out[:, d].copy_(b)
    return out


def max_row_norm4(W: torch.Tensor, chunk: int = 2048) -> float:
    """max_j ‖W_j‖₄, by chunks through one small buffer (vector_norm(ord=4) takes its slow generic path and
    W * W would allocate a copy of W)."""
    buf = torch.empty(min(chunk, W.shape[0]), W.shape[1], dtype=W.dtype)
    best = 0.0
    for s in range(0, W.shape[0], chunk):
        w = W[s:s + chunk]
        sq = torch.mul(w, w, out=buf[:w.shape[0]])
        best = max(best, float(torch.linalg.vector_norm(sq, dim=1).max()))
    return math.sqrt(best)


RowsCache = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def select_topk_bf16(xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, *,
                     w_bf16: torch.Tensor | None = None, candidates: int = 0, rows_cache: RowsCache | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """TopK of the pre-activations p = xc Wᵀ + b per row, in COO form (rows, cols, float32 values), plus the
    number of rows that had to be recomputed in float32.

    The full product runs in bfloat16 (on CPUs with matrix units 5–7× faster than float32) and only
    proposes `candidates` (default 2k) latents per row; their values are recomputed exactly in float32 and
    the k largest kept. Each row is then checked: a latent outside the candidates has a bfloat16 value at
    most c_r (the smallest candidate's), so its float32 value is at most c_r + 2u(|c_r| + max|b|) + 10·σ_r,
    where σ_r = u·√(2/3)·‖xc_r‖₄·max_j‖W_j‖₄ bounds the standard deviation of the input-rounding error of
    each dot product under the standard probabilistic model of rounding (independent, mean-zero errors of
    size ≤ u = 2⁻⁸ per operand; Higham & Mary 2019); 10σ is about 4× the largest error measured over 21M
    pre-activations at d = 1280. (The worst-case bound, (3u + d·2⁻²³)·‖xc_r‖₂‖W_j‖₂, is 25× the measured
    error and would reject every row.) A row whose k-th float32 value does not exceed that bound is
    recomputed in float32 over all latents. The selected set is float32 TopK's except with the
    probability of a 10σ rounding error, and every returned value is a float32 dot product.
    """
    B, d = xc.shape
    n = W.shape[0]
    m = min(n, candidates or 2 * k)
    # the bias rides in the product as one more input column (an addmm's bias pass cost a third of the
    # bfloat16 product), padded with zeros to a multiple of 16 columns for the matrix units
    dp = bf16_width(d)
    wb = bf16_encoder(W, b) if w_bf16 is None else w_bf16
    xb = torch.zeros(B, dp, dtype=torch.bfloat16)
    xb[:, :d].copy_(xc)
    xb[:, d] = 1.0
    pb = torch.mm(xb, wb.t())
    cv, ci = pb.topk(m, dim=1, sorted=False)
    del pb
    fixed = rows_cache or (lambda r, c: (torch.arange(r).repeat_interleave(c), torch.arange(0, r * c, c)))
    rows_m, offs_m = fixed(B, m)
    ci = ci.reshape(-1)
    exact = gather_dot(xc, rows_m, W, ci, offs_m).add_(b.index_select(0, ci)).view(B, m)
    v, j = exact.topk(k, dim=1, sorted=False)
    idx = ci.view(B, m).gather(1, j)
    u = _BF16_UNIT
    wmax4 = max_row_norm4(W)
    bmax = float(b.abs().max()) if b.numel() else 0.0
    floor = cv.float().amin(1)
    sigma = torch.linalg.vector_norm(xc, ord=4, dim=1).mul_(u * math.sqrt(2.0 / 3.0) * wmax4)
    bound = floor + 2 * u * (floor.abs() + bmax) + 10.0 * sigma
    kth = v.amin(1)
    bad = torch.nonzero(~(kth > bound)).squeeze(1)
    n_bad = int(bad.numel())
    if n_bad:
        vb, ib = torch.addmm(b, xc.index_select(0, bad), W.t()).topk(k, dim=1, sorted=False)
        v.index_copy_(0, bad, vb)
        idx.index_copy_(0, bad, ib)
    rows = fixed(B, k)[0]
    return rows, idx.reshape(-1), v.reshape(-1), n_bad


# --------------------------------------------------------------------------- the step
@dataclass
class StepStats:
    loss: float
    auxk_loss: float
    l0: float
    n_dead: int


class NonFiniteLossError(ArithmeticError):
    pass


class SparseStep:
    """One exact optimisation step of an SAE on a normalised batch (see the module docstring)."""

    def __init__(self, sae: SparseAutoencoder, lr: float, *, auxk_coef: float = 1.0 / 32, k_aux: int = 0,
                 dead_window: int = 400_000, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool = True, reduce: Callable[..., torch.Tensor] | None = None,
                 bf16_select: bool | None = None):
        """`reduce(t, op="sum")`: an in-place all-reduce over the ranks (distributed.all_reduce) when each
        rank holds a disjoint part of the global batch; None for one process. Every rank then sees the
        same gradients, dead-latent statistics and decoder, so the parameters never drift apart.

        `bf16_select`: find TopK's candidates with a bfloat16 encoder product (`select_topk_bf16`; the
        selection and every value stay those of float32). None: where it pays, i.e. a TopK SAE on a CPU
        with native bfloat16 matrix units and a large enough encoder product."""
        self.sae = sae
        self.bf16_select = bf16_select
        self.bf16_fallback_rows = 0  # rows whose candidates could not be certified (recomputed in float32)
        self.reduce = reduce
        self.auxk_coef = float(auxk_coef)
        self.k_aux = int(k_aux) if k_aux > 0 else max(1, sae.d_in // 2)
        self.dead_window = int(dead_window)
        self.params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre]
        try:
            self.opt = torch.optim.Adam(self.params, lr=lr, betas=betas, eps=eps, fused=fused)
        except (RuntimeError, ValueError):  # pragma: no cover - builds without the fused kernel
            self.opt = torch.optim.Adam(self.params, lr=lr, betas=betas, eps=eps)
        self.since_fired = torch.zeros(sae.n_latents, dtype=torch.int64)
        self.samples_seen = 0
        self._pre = torch.empty(0)
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._grads: dict[int, torch.Tensor] = {}
        self._wb: torch.Tensor | None = None

    # ------------------------------------------------------------------ state
    def dead_mask(self) -> torch.Tensor:
        """Latents that have not fired in the last `dead_window` training samples."""
        return self.since_fired >= self.dead_window

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "since_fired": self.since_fired.clone(),
                "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.since_fired.copy_(state["since_fired"])
        self.samples_seen = int(state["samples_seen"])

    def _grad_buffer(self, p: torch.Tensor) -> torch.Tensor | None:
        """A gradient tensor reused across steps (CPU): the scatter writes into it instead of allocating."""
        if p.device.type != "cpu":
            return None
        buf = self._grads.get(id(p))
        if buf is None or buf.shape != p.shape:
            buf = self._grads[id(p)] = torch.zeros_like(p)
        return buf

    def _use_bf16(self, batch: int) -> bool:
        sae = self.sae
        if sae.config.variant != "topk" or sae.W_enc.device.type != "cpu" or sae.W_enc.dtype != torch.float32:
            return False
        if 2 * sae.k >= sae.n_latents:
            return False
        if self.bf16_select is not None:
            return bool(self.bf16_select)
        return batch * sae.n_latents * sae.d_in >= BF16_SELECT_MIN_MACS and fast_bf16_matmul()

    def _select_bf16(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sae = self.sae
        shape = (sae.n_latents, bf16_width(sae.d_in))
        if self._wb is None or self._wb.shape != shape:
            self._wb = torch.zeros(shape, dtype=torch.bfloat16)
        bf16_encoder(sae.W_enc, sae.b_enc, out=self._wb)  # Adam moved every row: one conversion per step
        rows, cols, v, n_bad = select_topk_bf16(xc, sae.W_enc, sae.b_enc, sae.k, w_bf16=self._wb,
                                                rows_cache=self._fixed)
        self.bf16_fallback_rows += n_bad
        return rows, cols, v

    def _fixed(self, n_rows: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n_rows, k)
        if key not in self._cache:
            self._cache[key] = (torch.arange(n_rows).repeat_interleave(k), torch.arange(0, n_rows * k, k))
        return self._cache[key]

    # ------------------------------------------------------------------ gradients
    @torch.no_grad()
    def compute_grads(self, xn: torch.Tensor, den: torch.Tensor | None = None) -> tuple[float, float, torch.Tensor,
                                                                                        torch.Tensor]:
        """Fill every parameter's .grad with ∂L/∂p (decoder gradient already projected); returns
        (loss, auxk_loss, fired latent ids, kept activations)."""
        sae = self.sae
        relu = sae.config.relu
        B = xn.shape[0]
        W_enc, b_enc, W_dec, b_pre = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre
        xc = xn - b_pre
        if self._use_bf16(B):
            pre = None
            rows, cols, v = self._select_bf16(xc)
        else:
            if self._pre.shape != (B, sae.n_latents):
                self._pre = torch.empty(B, sae.n_latents)
            pre = torch.addmm(b_enc, xc, W_enc.t(), out=self._pre)
            rows, cols, v = sae.select_train(pre)
        a = sae.activation(v)
        if rows.numel() == B * sae.k and sae.config.variant == "topk":
            offsets = self._fixed(B, sae.k)[1]
        else:
            offsets = offsets_from_rows(rows, B)
        xhat = F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=a) + b_pre
        e = xhat - xn
        den = self._centred_ss(xn) if den is None else den
        loss = (e * e).sum() / den
        G = e * (2.0 / den)  # ∂L/∂x̂

        ga = gather_dot(G, rows, W_dec, cols, offsets)
        gv = ga * (v > 0) if relu else ga
        dec_rows, dec_w, dec_src, dec_ga = [rows], [a], [G], [ga]
        enc_rows, enc_cols, enc_g = [rows], [cols], [gv]

        aux = torch.zeros(())
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if self.auxk_coef > 0 and n_dead > 0:
            dead_idx = torch.nonzero(dead).squeeze(1)
            ka = min(self.k_aux, n_dead)
            pre_dead = (pre.index_select(1, dead_idx) if pre is not None else  # bf16 selection: exact, dead only
                        torch.addmm(b_enc.index_select(0, dead_idx), xc, W_enc.index_select(0, dead_idx).t()))
            va, ia = pre_dead.topk(ka, dim=1)
            rows_a, offs_a = self._fixed(B, ka)
            cols_a = dead_idx[ia].reshape(-1)
            va = va.reshape(-1)
            aa = sae.activation(va)
            ehat = F.embedding_bag(cols_a, W_dec, offs_a, mode="sum", per_sample_weights=aa)
            r = e.neg_()  # x_n − x̂ (e is not needed any more)
            den_a = self._centred_ss(r)
            diff = ehat.sub_(r)
            aux = (diff * diff).sum() / den_a
            Ga = diff.mul_(2.0 * self.auxk_coef / den_a)
            ga_a = gather_dot(Ga, rows_a, W_dec, cols_a, offs_a)
            gv_a = ga_a * (va > 0) if relu else ga_a
            dec_rows.append(rows_a + B)  # rows of Ga, stacked under G
            dec_w.append(aa)
            dec_src.append(Ga)
            dec_ga.append(ga_a)
            enc_rows.append(rows_a)
            enc_cols.append(cols_a)
            enc_g.append(gv_a)

        def cat(parts: list[torch.Tensor]) -> torch.Tensor:
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        n = sae.n_latents
        ec, eg = cat(enc_cols), cat(enc_g)  # the decoder's entries are the same (latent, row) pairs
        grouped = csr_order(ec, n)
        W_dec.grad = scatter_rows(ec, cat(dec_w), cat(dec_src), cat(dec_rows), n, out=self._grad_buffer(W_dec),
                                  grouped=grouped)
        W_enc.grad = scatter_rows(ec, eg, xc, cat(enc_rows), n, out=self._grad_buffer(W_enc), grouped=grouped)
        # each decoder row's gradient loses its component along the row: ⟨∂L/∂w_j, w_j⟩ = Σ_e a_e·⟨G_row(e), w_j⟩
        # and the inner products are ga (already computed), so no pass over the rows is needed to find it;
        # the projection is linear, so doing it before the sum over ranks gives the same result as after
        dot = torch.zeros(n, dtype=W_dec.dtype, device=W_dec.device).index_add_(0, ec, cat(dec_w) * cat(dec_ga))
        W_dec.grad.addcmul_(W_dec, dot.unsqueeze(1), value=-1.0)
        b_enc.grad = torch.zeros(n).index_add_(0, ec, eg)
        b_pre.grad = G.sum(0) - torch.mv(W_enc.t(), b_enc.grad)
        fired = cols[a != 0]
        self._batch = B
        self._active = fired.numel()
        if self.reduce is not None:
            loss, aux, fired = self._reduce_grads(loss, aux, fired)
        return float(loss), float(aux), fired, a

    def _centred_ss(self, x: torch.Tensor) -> torch.Tensor:
        """Σ‖x_i − mean(x)‖² over the global batch (the FVU denominator)."""
        if self.reduce is None:
            return ((x - x.mean(0)) ** 2).sum().clamp_min(1e-30)
        # from per-rank moments in float64 (one small all-reduce): Σ‖x‖² − ‖Σx‖²/n
        xd = x.double()
        m = torch.cat([xd.sum(0), (xd * xd).sum().reshape(1), torch.tensor([float(x.shape[0])], dtype=torch.float64)])
        self.reduce(m)
        n = m[-1].clamp_min(1.0)
        return (m[-2] - (m[:-2] ** 2).sum() / n).float().clamp_min(1e-30)

    def _reduce_grads(self, loss: torch.Tensor, aux: torch.Tensor, fired: torch.Tensor):
        """Sum the ranks' gradients, losses, batch sizes and latent firings in one flat all-reduce.

        Each rank's loss terms are already divided by the global denominators, so the sum is the
        gradient of the global-batch loss (what one process computes on the whole batch)."""
        n = self.sae.n_latents
        grads = [p.grad for p in self.params]
        fired_counts = torch.bincount(fired, minlength=n).float()
        tail = torch.stack([loss.float().reshape(()), aux.float().reshape(()), torch.tensor(float(self._batch)),
                            torch.tensor(float(self._active))])
        flat = torch.cat([g.reshape(-1) for g in grads] + [fired_counts, tail])
        self.reduce(flat)
        pos = 0
        for g in grads:
            g.copy_(flat[pos:pos + g.numel()].view_as(g))
            pos += g.numel()
        fired_all = torch.nonzero(flat[pos:pos + n] > 0).squeeze(1)
        loss, aux, batch, active = flat[pos + n:].tolist()
        self._batch, self._active = int(round(batch)), int(round(active))
        return torch.tensor(loss), torch.tensor(aux), fired_all

    def _observed(self, kept: torch.Tensor) -> torch.Tensor:
        """What the SAE's training statistics hook sees: with several ranks, the global smallest kept
        activation (the only statistic a variant reads: BatchTopK's threshold), so ranks agree."""
        if self.reduce is None or type(self.sae).observe_training_batch is SparseAutoencoder.observe_training_batch:
            return kept
        k = kept[kept > 0] if self.sae.config.relu else kept
        m = torch.tensor([float(k.min()) if k.numel() else float("inf")])
        self.reduce(m, op="min")
        return m if math.isfinite(float(m)) else m[:0]

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, xn: torch.Tensor, lr: float, den: torch.Tensor | None = None) -> StepStats:
        """`den`: the FVU denominator of the global batch when `xn` is this rank's part of it (computed
        by every rank from the whole batch, which saves a collective per step)."""
        loss, aux, fired, kept = self.compute_grads(xn, den)
        B = self._batch  # the global batch when distributed
        if not (math.isfinite(loss) and math.isfinite(aux)):
            raise NonFiniteLossError(f"the loss is {loss} (auxk_loss {aux})")
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.sae.normalize_decoder_()
        self.since_fired.add_(B)
        self.since_fired[fired] = 0
        self.samples_seen += B
        self.sae.observe_training_batch(self._observed(kept))
        n_dead = int(self.dead_mask().sum())
        return StepStats(loss, aux, self._active / B, n_dead)


def loss_autograd(sae: SparseAutoencoder, xn: torch.Tensor, dead_mask: torch.Tensor | None = None,
                  auxk_coef: float = 1.0 / 32, k_aux: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective with autograd (reference for `SparseStep`): returns (loss, auxk_loss)."""
    k_aux = k_aux if k_aux > 0 else max(1, sae.d_in // 2)
    B = xn.shape[0]
    pre = sae.pre_activations(xn)
    rows, cols, _ = sae.select_train(pre.detach())
    a = sae.activation(pre[rows, cols])
    xhat = torch.zeros(B, sae.d_in).index_add(0, rows, a[:, None] * sae.W_dec[cols]) + sae.b_pre
    loss = normalized_mse(xn, xhat)
    aux = torch.zeros(())
    if dead_mask is not None and auxk_coef > 0 and bool(dead_mask.any()):
        dead_idx = torch.nonzero(dead_mask).squeeze(1)
        ka = min(k_aux, dead_idx.numel())
        va, ia = pre[:, dead_idx].topk(ka, dim=1)
        ehat = (sae.activation(va)[..., None] * sae.W_dec[dead_idx[ia]]).sum(1)
        aux = normalized_mse((xn - xhat).detach(), ehat)
    return loss + auxk_coef * aux, aux


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: np.ndarray | torch.Tensor, dead: torch.Tensor | None = None,
             k_aux: int = 0, batch: int = 4096) -> dict[str, float]:
    """Held-out metrics of the inference path: fvu, explained_variance, l0, l2_ratio (input space) and
    auxk_loss (normalised space, for the given dead-latent mask; 0 when none is dead)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    stats = ReconstructionStats(sae.d_in)
    k_aux = k_aux if k_aux > 0 else max(1, sae.d_in // 2)
    dead_idx = torch.nonzero(dead).squeeze(1) if dead is not None and bool(dead.any()) else None
    a_sse, a_n, a_s, a_s2 = 0.0, 0, torch.zeros(sae.d_in, dtype=torch.float64), 0.0
    for s in range(0, x.shape[0], batch):
        xb = x[s:s + batch]
        xn = sae.normalize(xb)
        pre = sae.pre_activations(xn)
        vals, idx = sae.select(pre)
        xhat_n = F.embedding_bag(idx, sae.W_dec, per_sample_weights=vals, mode="sum") + sae.b_pre
        stats.update(xb, sae.denormalize(xhat_n), (vals != 0).sum(1))
        if dead_idx is not None:
            ka = min(k_aux, dead_idx.numel())
            va, ia = pre.index_select(1, dead_idx).topk(ka, dim=1)
            ehat = F.embedding_bag(dead_idx[ia], sae.W_dec, per_sample_weights=sae.activation(va), mode="sum")
            r = (xn - xhat_n).double()
            a_sse += float(((ehat.double() - r) ** 2).sum())
            a_n += r.shape[0]
            a_s += r.sum(0)
            a_s2 += float((r ** 2).sum())
    out = stats.result()
    var = a_s2 - float((a_s ** 2).sum()) / max(a_n, 1)
    out["auxk_loss"] = a_sse / var if dead_idx is not None and var > 0 else 0.0
    return out


# --------------------------------------------------------------------------- the training run
@dataclass
class TrainResult:
    output_dir: str
    sae: SparseAutoencoder
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    lr: float = 0.0
    steps: int = 0
    resumed_from: int = 0
    store_uri: str = ""
    feature_set: str = ""
    n_train_vectors: int = 0
    n_eval_vectors: int = 0
    skipped: bool = False  # the output was complete already; nothing was trained
    identity: str = ""  # digest of the training key (see identity.py)


def resolve_store_uri(cfg: Config) -> str:
    if cfg.sae.store:
        return cfg.sae.store
    return store_uri_for(cfg)


def training_key(sc: SAEConfig, store: FeatureStore, buffer_vectors: int) -> dict[str, Any]:
    """Everything the trained weights depend on (not where files go, nor how often they are written)."""
    d = to_dict(sc)
    for k in ("output", "checkpoint_every", "eval_every", "num_threads", "store"):
        d.pop(k, None)
    if sc.normalize != "whiten":  # only read when whitening; keeps the keys of other runs as they were
        d.pop("whiten_power", None)
    if sc.eval_rows == "test":  # the default rows: keeps the keys of earlier runs as they were
        d.pop("eval_rows", None)
        d.pop("validation_fraction", None)
    return {"sae": d, "store_config_hash": store.config_hash,
            "buffer_vectors": int(buffer_vectors), "trainer_version": TRAINER_VERSION}


def check_trainer_config(sc: SAEConfig) -> None:
    """Options SAEConfig does not validate itself yet; a clear ConfigError instead of a crash mid-run."""
    for name, ok, what in (("checkpoint_every", sc.checkpoint_every > 0, "must be > 0"),
                           ("eval_every", sc.eval_every > 0, "must be > 0"),
                           ("dead_window", sc.dead_window > 0, "must be > 0"),
                           ("warmup_steps", sc.warmup_steps >= 0, "must be >= 0"),
                           ("k_aux", sc.k_aux >= 0, "must be >= 0 (0 = d_in // 2)"),
                           ("num_threads", sc.num_threads >= 0, "must be >= 0 (0 = torch default)")):
        if not ok:
            raise ConfigError(f"sae.{name}: {what}, got {getattr(sc, name)}")


def make_sae_config(sc: SAEConfig, d_in: int, store: FeatureStore):
    n_latents = d_in * sc.expansion
    if sc.k > n_latents:
        raise ConfigError(f"sae.k: {sc.k} is more than the {n_latents} latents "
                          f"(d_in {d_in} × expansion {sc.expansion})")
    conf = store.config or {}
    backbone = conf.get("backbone", {}) if isinstance(conf.get("backbone"), dict) else {}
    kw = {"d_in": d_in, "n_latents": n_latents, "k": sc.k, "relu": sc.relu, "normalize": sc.normalize,
          "whiten_power": sc.whiten_power,
          "hook_point": sc.hook_point, "timestep": sc.timestep, "backbone": str(backbone.get("id", "")),
          "backbone_init": str(backbone.get("init", "")),
          "dataset_fingerprint": str((conf.get("dataset") or {}).get("fingerprint", "")),
          "store_config_hash": str(store.config_hash), "input": sc.input,
          "pooling": sc.pooling if sc.input == "pooled" else "", "latent_pooling": sc.latent_pooling}
    return BatchTopKSAEConfig(**kw) if sc.variant == "batchtopk" else TopKSAEConfig(**kw)


def default_output_dir(cfg: Config, key: dict[str, Any]) -> Path:
    return Paths.under(cfg.output_dir).sae(digest(key))


def buffer_vectors_for(sc: SAEConfig, d_in: int, buffer_mb: float = 512.0) -> int:
    return max(sc.batch_size, int(buffer_mb * 2**20 / (4 * d_in)))


def sae_training_identity(cfg: Config, store: FeatureStore, buffer_mb: float = 512.0) -> str:
    """The identity of the SAE `train_sae` trains for this config on `store` (identity.py)."""
    sc = cfg.sae
    fset = feature_set_for(store, sc.hook_point, sc.timestep, sc.input, sc.pooling)
    return digest(training_key(sc, store, buffer_vectors_for(sc, fset.dim, buffer_mb)))


def sae_output_dir(cfg: Config, store: FeatureStore | str | None = None, buffer_mb: float = 512.0) -> Path:
    """Where `train_sae` writes for this config: later stages find the SAE here without being told."""
    sc = cfg.sae
    if sc.output:
        return Path(sc.output)
    if store is None:
        store = resolve_store_uri(cfg)
    if not isinstance(store, FeatureStore):
        store = open_store(store)
    fset = feature_set_for(store, sc.hook_point, sc.timestep, sc.input, sc.pooling)
    return default_output_dir(cfg, training_key(sc, store, buffer_vectors_for(sc, fset.dim, buffer_mb)))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train_sae(cfg: Config, *, store: FeatureStore | str | None = None, output: str | os.PathLike | None = None,
              buffer_mb: float = 512.0, max_eval_vectors: int = 32768, init_samples: int = 65536,
              on_step: Callable[[int, StepStats], None] | None = None, progress: bool = True,
              on_eval: MetricsCallback | None = None,
              extra_metrics: Callable[[SparseAutoencoder], Mapping[str, float]] | None = None) -> TrainResult:
    """Train the SAE `cfg.sae` describes on its feature store; resumes from a checkpoint in the output dir.

    Output directory: `output`, else `cfg.sae.output`, else `<cfg.output_dir>/sae/<hash of training_key>`.
    It ends up holding sae.safetensors + config.json (the model) and metrics.json (final metrics, history).
    A complete output is returned as is unless `cfg.force`.

    Every `sae.eval_every` steps the held-out metrics (plus `extra_metrics(sae)`, if given) go to
    `on_eval(step, metrics)`; `on_step(step, stats)` hears every step.
    """
    sc = cfg.sae
    check_trainer_config(sc)
    ctx = distributed.init()
    if ctx.world_size > sc.batch_size:
        raise ConfigError(f"sae.batch_size: {sc.batch_size} is smaller than the {ctx.world_size} ranks; "
                          "each rank needs a part of every batch")
    if sc.num_threads:
        torch.set_num_threads(sc.num_threads)
    if store is None:
        store = resolve_store_uri(cfg)
    if not isinstance(store, FeatureStore):
        store = open_store(store)
    try:
        fset = feature_set_for(store, sc.hook_point, sc.timestep, sc.input, sc.pooling)
    except KeyError as e:
        raise ConfigError(f"sae.hook_point/sae.timestep/sae.input: {e.args[0]}") from e
    d_in = fset.dim
    buffer_vectors = buffer_vectors_for(sc, d_in, buffer_mb)
    key = training_key(sc, store, buffer_vectors)
    out = Path(output) if output else Path(sc.output) if sc.output else default_output_dir(cfg, key)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_FILE
    metrics_path = out / METRICS_FILE

    if cfg.force and ctx.is_main:
        for f in (ckpt_path, metrics_path):
            f.unlink(missing_ok=True)
    # no rank reads the output before rank 0 cleared it (force), so they all take the same decision
    distributed.barrier()
    distributed.check_same(_output_state(metrics_path, ckpt_path), f"the SAE output directory {out}")
    if not cfg.force and metrics_path.is_file():
        done = json.loads(metrics_path.read_text())
        if done.get("complete") and done.get("training_key") == key:
            return TrainResult(str(out), read_sae(out), done["metrics"], done.get("history", []), done.get("lr", 0.0),
                               done.get("steps", sc.steps), sc.steps, store.uri, fset.key,
                               done.get("n_train_vectors", 0), done.get("n_eval_vectors", 0), skipped=True,
                               identity=digest(key))
        if done.get("complete"):
            raise TrainingError(_key_mismatch(out, done.get("training_key"), key))

    plan = plan_split(fset, sc.heldout_fraction, sc.seed, sc.eval_rows, sc.validation_fraction)
    stream = ActivationStream(fset, plan, sc.batch_size, sc.seed, buffer_vectors)
    sae = build_sae(make_sae_config(sc, d_in, store), seed=sc.seed)
    lr = sc.lr if sc.lr > 0 else default_lr(sae.n_latents)
    engine = SparseStep(sae, lr, auxk_coef=sc.auxk_coef, k_aux=sc.k_aux, dead_window=sc.dead_window,
                        reduce=distributed.all_reduce if ctx.distributed else None)
    # this rank's rows of every global batch (each rank computes on a disjoint part)
    lo, hi = ctx.rank * sc.batch_size // ctx.world_size, (ctx.rank + 1) * sc.batch_size // ctx.world_size
    step, history = 0, []
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=True)
        saved_key = json.loads(state["training_key"])
        if saved_key != key:
            raise TrainingError(_key_mismatch(out, saved_key, key))
        sae.load_state_dict(state["model"])
        engine.load_state_dict(state["engine"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        history = json.loads(state["history"])
        if ctx.is_main and progress:
            print(f"train-sae: resuming from the checkpoint at step {step} of {sc.steps} in {out} "
                  f"({sc.steps - step} steps left; force=true starts over)", flush=True)
    else:
        try:
            sample = stream.sample(init_samples)
        except NonFiniteInputError as e:
            raise TrainingError(f"step 0: training stopped: {e}") from e
        sae.init_from_data(torch.from_numpy(sample))
    resumed_from = step
    try:  # only rank 0 evaluates
        ev = eval_vectors(fset, plan, max_eval_vectors, sc.seed) if ctx.is_main else np.zeros((0, d_in), np.float32)
    except NonFiniteInputError as e:
        raise TrainingError(f"step {step}: training stopped: {e}") from e

    show = progress and ctx.is_main
    bar = progress_bar(total=sc.steps, initial=step, desc="train-sae", unit="step") if show else None
    batches = stream.batches(step * sc.batch_size)
    t_train, n_interval, aux_sum, loss_sum, n_steps_interval = 0.0, 0, 0.0, 0.0, 0
    metrics: dict[str, float] = history[-1] if history else {}
    while step < sc.steps:
        try:
            x = next(batches)
        except NonFiniteInputError as e:
            raise TrainingError(f"step {step}: training stopped: {e}") from e
        t0 = time.perf_counter()
        xn = sae.normalize(torch.from_numpy(x))
        den = None
        if ctx.distributed:
            # the whole batch's denominator, as one process computes it; then only this rank's rows
            den = ((xn - xn.mean(0)) ** 2).sum().clamp_min(1e-30)
            xn = xn[lo:hi]
        try:
            st = engine.step(xn, lr_at(step, lr, sc.warmup_steps, sc.steps), den)
        except NonFiniteLossError as e:
            raise TrainingError(
                f"step {step}: training stopped: {e}. The inputs of this batch are finite, so the optimisation "
                f"diverged: lower sae.lr (now {lr:g}) or use sae.normalize=scalar/standard "
                f"(now {sc.normalize}).") from e
        t_train += time.perf_counter() - t0
        step += 1
        n_interval += xn.shape[0]
        n_steps_interval += 1
        aux_sum += st.auxk_loss
        loss_sum += st.loss
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{st.loss:.4f}", dead=st.n_dead)
        if (step % sc.eval_every == 0 or step == sc.steps) and ctx.distributed:
            rates = distributed.gather_floats([n_interval / t_train if t_train > 0 else 0.0])
            # the ranks apply identical updates; rank 0's copy also settles any last-bit drift
            with torch.no_grad():
                for t in [*sae.parameters(), *sae.buffers()]:
                    distributed.broadcast_(t.data)
            if not ctx.is_main:
                t_train, n_interval, aux_sum, loss_sum, n_steps_interval = 0.0, 0, 0.0, 0.0, 0
        if (step % sc.eval_every == 0 or step == sc.steps) and ctx.is_main:
            metrics = evaluate(sae, ev, engine.dead_mask(), engine.k_aux)
            metrics["dead_frac"] = dead_frac(engine.since_fired, sc.dead_window, engine.samples_seen)
            metrics["samples_per_s"] = n_interval / t_train if t_train > 0 else 0.0
            if ctx.distributed:  # the group's throughput, and each rank's (a slow rank shows here)
                metrics.update({f"samples_per_s.rank{r}": v[0] for r, v in enumerate(rates)})
                metrics["samples_per_s"] = sum(v[0] for v in rates)
            metrics["train_loss"] = loss_sum / max(n_steps_interval, 1)
            metrics["train_auxk_loss"] = aux_sum / max(n_steps_interval, 1)
            if extra_metrics is not None:
                sae.eval()
                metrics.update(extra_metrics(sae))
                sae.train()
            metrics["step"] = step
            history.append(dict(metrics))
            if on_eval is not None:
                on_eval(step, {k: float(v) for k, v in metrics.items() if k != "step"})
            t_train, n_interval, aux_sum, loss_sum, n_steps_interval = 0.0, 0, 0.0, 0.0, 0
        if step % sc.checkpoint_every == 0 and step < sc.steps and ctx.is_main:
            _atomic_torch_save({"step": step, "model": sae.state_dict(), "engine": engine.state_dict(),
                                "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
                                "training_key": json.dumps(key)}, ckpt_path)
        if on_step is not None:
            on_step(step, st)
    if bar is not None:
        bar.close()

    sae.eval()
    if not ctx.is_main:  # rank 0 writes the SAE and its metrics, once
        return TrainResult(str(out), sae, {}, [], lr, sc.steps, resumed_from, store.uri, fset.key,
                           stream.n_vectors, 0, identity=digest(key))
    sae.save(out)
    final = {k: v for k, v in metrics.items() if k != "step"}
    _atomic_write_text(metrics_path, json.dumps(
        {"complete": True, "metrics": final, "history": history, "lr": lr, "steps": sc.steps,
         "training_key": key, "store_uri": store.uri, "feature_set": fset.key,
         "n_train_vectors": stream.n_vectors, "n_eval_vectors": len(ev),
         "heldout": plan.describe(sc)}, indent=2, default=float))
    ckpt_path.unlink(missing_ok=True)
    return TrainResult(str(out), sae, final, history, lr, sc.steps, resumed_from, store.uri, fset.key,
                       stream.n_vectors, len(ev), identity=digest(key))


def _output_state(metrics_path: Path, ckpt_path: Path) -> str:
    """What a rank finds in the output directory: the ranks must agree before they resume or skip."""
    if metrics_path.is_file():
        return "finished"
    if ckpt_path.is_file():
        return f"checkpoint of {ckpt_path.stat().st_size} bytes"
    return "empty"


def _key_mismatch(out: Path, saved: Any, key: dict[str, Any]) -> str:
    diffs = diff_configs(saved, key)
    return (f"the SAE output directory {out} holds a run with another training configuration "
            f"({'; '.join(diffs[:6]) or 'unknown differences'}); use another sae.output, leave it empty "
            f"(a directory named by the config hash), or set force=true to start over")
