"""TopK SAE (Gao et al. 2024): exactly k latents per sample, z = ReLU(TopK(W_enc (x − b_pre) + b_enc))."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import SAEConfigBase, SparseAutoencoder


@dataclass(frozen=True)
class TopKSAEConfig(SAEConfigBase):
    """TopK SAE: each sample keeps its own k largest pre-activations (after ReLU, at most k are non-zero)."""

    variant: ClassVar[str] = "topk"


class TopKSAE(SparseAutoencoder):
    config_cls = TopKSAEConfig

    def __init__(self, config: TopKSAEConfig, seed: int = 0):
        super().__init__(config, seed=seed)
        self._rows_cache: torch.Tensor | None = None

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vals, idx = pre.topk(self.k, dim=-1)
        return self.activation(vals), idx

    def select_train(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = pre.shape[0]
        # unsorted: training needs the set, not its order (sorting the k kept values costs about a fifth of the topk)
        vals, idx = pre.topk(self.k, dim=1, sorted=False)
        if self._rows_cache is None or self._rows_cache.numel() != n * self.k:
            self._rows_cache = torch.arange(n).repeat_interleave(self.k)
        return self._rows_cache, idx.reshape(-1), vals.reshape(-1)
