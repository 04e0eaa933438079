"""The k-sparse autoencoder shared by every variant.

    x_n = (x - norm_mean) / norm_scale                      (input normalisation, statistics saved)
        or (x - norm_mean) @ norm_matrix                    (normalize=whiten: a spectral transform)
    z   = select(W_enc (x_n - b_pre) + b_enc)               (TopK per sample, or BatchTopK; ReLU on kept values)
    x̂   = (W_dec^T z + b_pre) * norm_scale + norm_mean      (only the active rows of W_dec are read)

Weight layout: `W_enc` and `W_dec` are both `(n_latents, d_in)`; row `j` of `W_dec` is latent `j`'s
dictionary direction (unit norm during training) and row `j` of `W_enc` its encoder direction.

A saved SAE is a directory with `sae.safetensors` (tensors: W_enc, b_enc, W_dec, b_pre, norm_mean,
norm_scale, `norm_matrix`/`norm_inverse` for normalize=whiten, plus variant buffers such as `threshold`)
and `config.json` (format, version, variant and every config field). Loading never unpickles.

Why whitening: token features of a small UNet can be dominated by one direction (at the default hook
point the first principal direction, which tracks the token norm, holds over half the variance). The
reconstruction loss then spends the dictionary on that direction and its magnitudes. `whiten` rescales
the principal directions of the training sample so their variances become λ^(1 − whiten_power)
(power 1: full ZCA whitening; 0.5: square-root compression), then scales to E‖x_n‖² = d_in like
`scalar`. It is invertible, so reconstructions are still compared in the input space.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

SAE_FORMAT = "revelio-sae"
SAE_VERSION = 1
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"

NORMALIZE = ("none", "standard", "scalar", "whiten")
INPUTS = ("pooled", "tokens")
LATENT_POOLING = ("max", "mean", "top<q>")  # top<q>: mean of the q largest positions, e.g. top8


def pooling_q(pooling: str) -> int | None:
    """q of a `top<q>` pooling (None for `max` / `mean`); anything else is an error naming the choices."""
    if pooling in ("max", "mean"):
        return None
    m = re.fullmatch(r"top([1-9][0-9]*)", str(pooling))
    if m is None:
        raise ValueError(f"pooling must be 'max', 'mean' or 'top<q>' (e.g. 'top8'), got {pooling!r}")
    return int(m.group(1))


class SAELoadError(RuntimeError):
    """A saved SAE is missing, malformed or inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class SAEConfigBase:
    """Fields every variant shares. Describes the model and where its inputs come from."""

    d_in: int
    n_latents: int
    k: int
    relu: bool = True  # ReLU on the kept pre-activations
    normalize: str = "none"  # none | standard (per-dimension mean/std) | scalar (one scale: E||x||² = d_in) | whiten
    hook_point: str = ""
    timestep: int = -1
    backbone: str = ""  # backbone id the features came from
    backbone_init: str = ""  # pretrained | random
    dataset_fingerprint: str = ""
    store_config_hash: str = ""
    input: str = "pooled"  # pooled (one vector per image) | tokens (one vector per spatial position)
    pooling: str = ""  # for input=pooled: which pooled set (mean | max) the SAE was trained on
    latent_pooling: str = "max"  # tokens: how token latents become one image vector (max | mean | top<q>)
    whiten_power: float = 1.0  # normalize=whiten: variances λ → λ^(1 − power) (1 = full whitening)

    variant: ClassVar[str] = ""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"SAE config: {msg}")

        need(isinstance(self.d_in, int) and self.d_in >= 1, f"d_in must be a positive integer, got {self.d_in!r}")
        need(isinstance(self.n_latents, int) and self.n_latents >= 1,
             f"n_latents must be a positive integer, got {self.n_latents!r}")
        need(isinstance(self.k, int) and 1 <= self.k <= self.n_latents,
             f"k must be in [1, n_latents={self.n_latents}], got {self.k!r}")
        need(self.normalize in NORMALIZE, f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        need(0.0 < self.whiten_power <= 1.0, f"whiten_power must be in (0, 1], got {self.whiten_power!r}")
        need(self.input in INPUTS, f"input must be one of {INPUTS}, got {self.input!r}")
        try:
            pooling_q(self.latent_pooling)
        except ValueError:
            need(False, f"latent_pooling must be one of {LATENT_POOLING}, got {self.latent_pooling!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, **dataclasses.asdict(self)}


# --------------------------------------------------------------------------- geometric median
def geometric_median(x: torch.Tensor, max_iter: int = 200, tol: float = 1e-6, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of `x`.

    Starts from the coordinate-wise mean; each step is the distance-weighted mean with weights
    1/max(‖x_i − m‖, eps) (the eps guard handles an iterate landing on a data point).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"geometric_median needs a non-empty (n, d) tensor, got shape {tuple(x.shape)}")
    x = x.double()
    m = x.mean(0)
    for _ in range(max_iter):
        d = torch.linalg.vector_norm(x - m, dim=1).clamp_min(eps)
        w = 1.0 / d
        new = (w[:, None] * x).sum(0) / w.sum()
        shift = torch.linalg.vector_norm(new - m)
        m = new
        if shift <= tol * (1.0 + torch.linalg.vector_norm(m)):
            break
    return m.float()


# --------------------------------------------------------------------------- whitening
def whitening_matrices(sample: torch.Tensor, power: float = 1.0, rel_eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric (M, M⁻¹) with (x − mean) M having variances λ_i^(1 − power) along the principal
    directions of `sample` (n, d), scaled so that E‖(x − mean) M‖² = d.

    Eigenvalues below rel_eps · λ_max are raised to it, so flat directions are not blown up to noise.
    """
    x = sample.double()
    xc = x - x.mean(0)
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    lam, vec = torch.linalg.eigh(cov)
    lam = lam.clamp_min(float(lam.max()) * rel_eps if float(lam.max()) > 0 else 1.0)
    g = lam ** (-power / 2)  # per-direction gain
    new_var = lam * g ** 2
    c = math.sqrt(x.shape[1] / float(new_var.sum()))
    m = (vec * (g * c)) @ vec.T
    inv = (vec / (g * c)) @ vec.T
    return m.float(), inv.float()


# --------------------------------------------------------------------------- the model
class SparseAutoencoder(nn.Module):
    """Base class: parameters, normalisation, encode/decode, save/load. Variants define the selection."""

    config_cls: ClassVar[type] = SAEConfigBase

    def __init__(self, config: SAEConfigBase, seed: int = 0):
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self._config = config
        n, d = config.n_latents, config.d_in
        self.W_enc = nn.Parameter(torch.empty(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.register_buffer("norm_mean", torch.zeros(d))
        self.register_buffer("norm_scale", torch.ones(d))
        if config.normalize == "whiten":
            self.register_buffer("norm_matrix", torch.eye(d))
            self.register_buffer("norm_inverse", torch.eye(d))
        self.reset_parameters(seed)

    # ------------------------------------------------------------------ config and init
    @property
    def config(self) -> SAEConfigBase:
        return self._config

    @property
    def d_in(self) -> int:
        return self._config.d_in

    @property
    def n_latents(self) -> int:
        return self._config.n_latents

    @property
    def k(self) -> int:
        return self._config.k

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Unit-norm random decoder rows; encoder = decoder transpose (same rows); zero biases."""
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(self.n_latents, self.d_in, generator=g)
        w /= torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w)
        self.b_enc.zero_()
        self.b_pre.zero_()

    @torch.no_grad()
    def fit_normalization(self, sample: torch.Tensor) -> None:
        """Set the input-normalisation statistics from a sample of raw input vectors (n, d_in)."""
        sample = sample.float().reshape(-1, self.d_in)
        kind = self._config.normalize
        if kind == "none":
            self.norm_mean.zero_()
            self.norm_scale.fill_(1.0)
        elif kind == "standard":
            self.norm_mean.copy_(sample.mean(0))
            std = sample.std(0, unbiased=False)
            self.norm_scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        elif kind == "scalar":
            ms = float((sample.double() ** 2).sum(1).mean())
            s = math.sqrt(ms / self.d_in) if ms > 0 else 1.0
            self.norm_mean.zero_()
            self.norm_scale.fill_(s)
        elif kind == "whiten":
            self.norm_mean.copy_(sample.mean(0))
            self.norm_scale.fill_(1.0)
            m, inv = whitening_matrices(sample, self._config.whiten_power)
            self.norm_matrix.copy_(m)
            self.norm_inverse.copy_(inv)

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, max_median_samples: int = 8192) -> None:
        """Normalisation statistics, then b_pre = geometric median of the normalised sample."""
        self.fit_normalization(sample)
        xn = self.normalize(sample.float().reshape(-1, self.d_in))[:max_median_samples]
        self.b_pre.copy_(geometric_median(xn))

    # ------------------------------------------------------------------ normalisation
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self._config.normalize == "whiten":
            return (x - self.norm_mean) @ self.norm_matrix
        return (x - self.norm_mean) / self.norm_scale

    def denormalize(self, xn: torch.Tensor) -> torch.Tensor:
        if self._config.normalize == "whiten":
            return xn @ self.norm_inverse + self.norm_mean
        return xn * self.norm_scale + self.norm_mean

    # ------------------------------------------------------------------ selection (variants)
    def pre_activations(self, xn: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """W_enc (x_n − b_pre) + b_enc for normalised rows xn (N, d_in) → (N, n_latents)."""
        return torch.addmm(self.b_enc, xn - self.b_pre, self.W_enc.t(), out=out)

    def activation(self, v: torch.Tensor) -> torch.Tensor:
        return F.relu(v) if self._config.relu else v

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference selection: (values after the activation, indices), each (N, m). Padding has value 0."""
        raise NotImplementedError

    def select_train(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training selection in COO form: (rows, cols, pre-activation values), rows non-decreasing."""
        raise NotImplementedError

    def observe_training_batch(self, kept_activations: torch.Tensor) -> None:
        """Hook for variants that estimate statistics during training (BatchTopK's threshold)."""

    # ------------------------------------------------------------------ encode / decode
    def _flat(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if not torch.is_tensor(x):
            x = torch.as_tensor(x)
        if x.shape[-1] != self.d_in:
            raise ValueError(f"SAE input has {x.shape[-1]} channels in its last dimension; this SAE takes "
                             f"d_in={self.d_in} ({self._config.hook_point or 'unknown hook point'})")
        lead = tuple(x.shape[:-1])
        return x.reshape(-1, self.d_in).to(self.W_enc.dtype), lead

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., d_in) → (values, indices), each (..., m): the active latents and their activations."""
        xf, lead = self._flat(x)
        vals, idx = self.select(self.pre_activations(self.normalize(xf)))
        return vals.reshape(*lead, vals.shape[-1]), idx.reshape(*lead, idx.shape[-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) → dense codes (..., n_latents) with zeros for inactive latents."""
        vals, idx = self.encode_sparse(x)
        z = torch.zeros(*vals.shape[:-1], self.n_latents, dtype=vals.dtype, device=vals.device)
        return z.scatter_add_(-1, idx, vals)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(values, indices) (..., m) → x̂ (..., d_in); reads only the m decoder rows of each sample."""
        lead = tuple(values.shape[:-1])
        m = values.shape[-1]
        v = values.reshape(-1, m).to(self.W_dec.dtype)
        i = indices.reshape(-1, m).long()
        if m == 0:
            out = self.b_pre.expand(v.shape[0], self.d_in)
        else:
            out = F.embedding_bag(i, self.W_dec, per_sample_weights=v, mode="sum") + self.b_pre
        return self.denormalize(out).reshape(*lead, self.d_in)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Dense codes (..., n_latents) → x̂ (..., d_in) by a dense product (use decode_sparse when you can)."""
        if z.shape[-1] != self.n_latents:
            raise ValueError(f"codes have {z.shape[-1]} latents; this SAE has {self.n_latents}")
        return self.denormalize(z.to(self.W_dec.dtype) @ self.W_dec + self.b_pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction x̂ of x (..., d_in), differentiable (autograd) for general use."""
        return self.decode_sparse(*self.encode_sparse(x))

    # ------------------------------------------------------------------ decoder constraint
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self, chunk: int = 4096) -> None:
        """Remove from each decoder row's gradient its component along the (unit) row: g −= ⟨g, w⟩ w."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec
        for s in range(0, g.shape[0], chunk):  # chunks keep the temporaries small
            gs, ws = g[s:s + chunk], w[s:s + chunk]
            gs.addcmul_(ws, (gs * ws).sum(1, keepdim=True), value=-1.0)

    # ------------------------------------------------------------------ save / load
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write sae.safetensors and config.json into `directory` (atomically, file by file)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
        save_file(self.tensors(), str(tmp), metadata={"format": SAE_FORMAT, "version": str(SAE_VERSION)})
        os.replace(tmp, d / WEIGHTS_FILE)
        meta = {"format": SAE_FORMAT, "version": SAE_VERSION, **self.config.to_dict()}
        tmpc = d / f".{CONFIG_FILE}.{os.getpid()}.tmp"
        tmpc.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmpc, d / CONFIG_FILE)
        return d

    def check_loaded(self, meta: dict[str, Any], directory: Path) -> None:
        """Variant-specific consistency checks between config.json and the loaded tensors."""
