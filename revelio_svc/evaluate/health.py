"""Dictionary health: how often each latent fires, and whether the encoder and decoder agree.

- **density** of a latent: the share of vectors it is active on (held-out vectors: per position for a
  token SAE); *dead* latents never fire, *dense* ones fire on more than `dense_threshold` of the vectors
  (they act as biases, not features);
- **encoder–decoder cosine** per latent: cos(W_enc[j], W_dec[j]); a latent whose encoder reads another
  direction than its decoder writes is compensating for others;
- **maximum decoder cosine** per latent: its largest cosine with any other latent's decoder direction;
  near 1 means duplicates.

Directions are compared in the SAE's own (normalised) input space, where they are learnt.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..sae.base import SparseAutoencoder

DENSE = 0.1  # a latent active on more than this share of vectors is dense
DUPLICATE = 0.9  # decoder cosine above which two latents count as duplicates


@torch.no_grad()
def latent_density(sae: SparseAutoencoder, vectors: np.ndarray, batch: int = 16384) -> np.ndarray:
    """Share of `vectors` (n, d_in) each latent is active on (n_latents,)."""
    x = np.asarray(vectors).reshape(-1, sae.d_in)
    counts = torch.zeros(sae.n_latents, dtype=torch.float64)
    for s in range(0, len(x), batch):
        vals, idx = sae.encode_sparse(torch.from_numpy(np.ascontiguousarray(x[s:s + batch], np.float32)))
        counts.index_add_(0, idx[vals > 0].reshape(-1), torch.ones(int((vals > 0).sum()), dtype=torch.float64))
    return (counts / max(len(x), 1)).numpy()


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().double()
    return w / torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def encoder_decoder_cosine(sae: SparseAutoencoder) -> np.ndarray:
    """cos(W_enc[j], W_dec[j]) per latent."""
    return (_unit_rows(sae.W_enc) * _unit_rows(sae.W_dec)).sum(1).numpy()


@torch.no_grad()
def max_decoder_cosine(sae: SparseAutoencoder, chunk: int = 4096) -> np.ndarray:
    """Per latent, the largest cosine between its decoder row and any other latent's."""
    w = _unit_rows(sae.W_dec)
    out = torch.empty(w.shape[0], dtype=torch.float64)
    for s in range(0, w.shape[0], chunk):
        g = w[s:s + chunk] @ w.T
        g[torch.arange(g.shape[0]), torch.arange(s, s + g.shape[0])] = -2.0  # not itself
        out[s:s + chunk] = g.max(1).values
    return out.numpy()


@dataclass(frozen=True)
class Health:
    density: np.ndarray
    enc_dec_cosine: np.ndarray
    max_dec_cosine: np.ndarray
    dense_threshold: float = DENSE

    def metrics(self) -> dict[str, float]:
        d = self.density
        live = d[d > 0]
        out = {"health.dead": float((d == 0).sum()), "health.dead_frac": float((d == 0).mean()),
               "health.dense": float((d > self.dense_threshold).sum()),
               "health.density_median": float(np.median(d)),
               "health.enc_dec_cosine_mean": float(self.enc_dec_cosine.mean()),
               "health.enc_dec_cosine_min": float(self.enc_dec_cosine.min()),
               "health.max_dec_cosine_mean": float(self.max_dec_cosine.mean()),
               "health.max_dec_cosine_max": float(self.max_dec_cosine.max()),
               "health.duplicates": float((self.max_dec_cosine > DUPLICATE).sum())}
        if live.size:
            out["health.log10_density_live_mean"] = float(np.log10(live).mean())
        return out

    def figure(self, path: Path) -> Path:
        """Density histogram on a log scale (dead latents counted apart), and both cosine histograms."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        d = self.density
        live = d[d > 0]
        ax = axes[0]
        if live.size:
            lo = np.floor(np.log10(live.min()))
            ax.hist(np.log10(live), bins=np.linspace(lo, 0, 41), color="tab:blue")
        ax.axvline(np.log10(self.dense_threshold), color="tab:red", ls="--", lw=1, label="dense")
        ax.set_xlabel("log10 density (share of vectors active)")
        ax.set_ylabel("latents")
        ax.set_title(f"density: {int((d == 0).sum())} dead, {int((d > self.dense_threshold).sum())} dense",
                     fontsize=9)
        ax.legend(fontsize=7)
        axes[1].hist(self.enc_dec_cosine, bins=40, color="tab:green")
        axes[1].set_xlabel("cos(encoder row, decoder row)")
        axes[1].set_title("encoder–decoder agreement", fontsize=9)
        axes[2].hist(self.max_dec_cosine, bins=40, color="tab:orange")
        axes[2].axvline(DUPLICATE, color="tab:red", ls="--", lw=1)
        axes[2].set_xlabel("max decoder cosine with another latent")
        axes[2].set_title(f"duplicates (> {DUPLICATE}): {int((self.max_dec_cosine > DUPLICATE).sum())}",
                          fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def dictionary_health(sae: SparseAutoencoder, vectors: np.ndarray, dense_threshold: float = DENSE) -> Health:
    return Health(latent_density(sae, vectors), encoder_decoder_cosine(sae), max_decoder_cosine(sae),
                  dense_threshold)
