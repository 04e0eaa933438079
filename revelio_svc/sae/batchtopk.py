"""BatchTopK SAE (Bussmann et al. 2024): the k·B largest pre-activations over a whole training batch.

At training time a sample may use more or fewer than k latents, k on average. At inference the batch
is not available, so a latent is active when its pre-activation exceeds a threshold estimated during
training: the running mean of the smallest kept (positive) activation of each training batch — the
plain mean over the first 100 batches, then an exponential moving average with `threshold_decay`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .base import SAEConfigBase, SAELoadError, SparseAutoencoder


@dataclass(frozen=True)
class BatchTopKSAEConfig(SAEConfigBase):
    """BatchTopK SAE. `threshold` is the inference threshold (the live value is saved with the model)."""

    threshold: float = 0.0
    threshold_decay: float = 0.99

    variant: ClassVar[str] = "batchtopk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 <= self.threshold_decay < 1.0):
            raise ValueError(f"SAE config: threshold_decay must be in [0, 1), got {self.threshold_decay}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"SAE config: threshold must be finite, got {self.threshold}")


class BatchTopKSAE(SparseAutoencoder):
    config_cls = BatchTopKSAEConfig

    def __init__(self, config: BatchTopKSAEConfig, seed: int = 0):
        super().__init__(config, seed=seed)
        self.register_buffer("threshold", torch.tensor(float(config.threshold)))
        self.register_buffer("threshold_count", torch.tensor(0, dtype=torch.int64))

    @property
    def config(self) -> BatchTopKSAEConfig:
        return dataclasses.replace(self._config, threshold=float(self.threshold))

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents whose pre-activation exceeds the threshold; padded to the largest count with value 0."""
        mask = pre > self.threshold
        m = max(1, int(mask.sum(-1).max())) if pre.numel() else 1
        m = min(m, pre.shape[-1])
        vals, idx = pre.masked_fill(~mask, float("-inf")).topk(m, dim=-1)
        valid = torch.isfinite(vals)
        vals = torch.where(valid, self.activation(vals.masked_fill(~valid, 0.0)), torch.zeros_like(vals))
        return vals, torch.where(valid, idx, torch.zeros_like(idx))

    def select_train(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_rows, n = pre.shape
        kk = min(self.k * n_rows, pre.numel())
        vals, flat = pre.reshape(-1).topk(kk, sorted=False)
        flat, order = flat.sort()
        return flat // n, flat % n, vals[order]

    @torch.no_grad()
    def observe_training_batch(self, kept_activations: torch.Tensor) -> None:
        kept = kept_activations[kept_activations > 0] if self._config.relu else kept_activations
        if kept.numel() == 0:
            return
        self.threshold_count += 1
        c = int(self.threshold_count)
        decay = min(self._config.threshold_decay, 1.0 - 1.0 / c)
        self.threshold.mul_(decay).add_((1.0 - decay) * kept.min())

    def check_loaded(self, meta: dict[str, Any], directory: Path) -> None:
        want = float(meta.get("threshold", 0.0))
        got = float(self.threshold)
        if abs(want - got) > 1e-6 * max(1.0, abs(got)):
            raise SAELoadError(f"{directory}: config.json has threshold={want} but the weights hold {got}; "
                               "the config and the weights do not belong together")
        self._config = dataclasses.replace(self._config, threshold=got)
