"""Diff-C: the paper's light convolutional head on spatial feature maps.

BatchNorm2d(affine=False) → 3×3 conv to width W → `depth` × (3×3 stride-2 conv, BN, ReLU, Dropout) →
global average pool → linear. Trained with AdamW and a cosine schedule. Inputs are `tokens` feature sets,
(n, H, W, C) channels-last as the store keeps them, permuted to NCHW one batch at a time so the whole set
is never copied. Saved as safetensors (state dict) + JSON (architecture and provenance).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..jsonmeta import json_default
from .linear import FORMAT, META, VERSION, ProbeFormatError, read_meta

WEIGHTS = "diffc.safetensors"


class DiffC(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, width: int = 64, depth: int = 3, dropout: float = 0.1):
        super().__init__()
        if in_channels < 1 or n_classes < 2 or width < 1 or depth < 0:
            raise ValueError(f"Diff-C needs in_channels >= 1, n_classes >= 2, width >= 1, depth >= 0; got "
                             f"{in_channels}, {n_classes}, {width}, {depth}")
        # no affine: the input norm only whitens channels whose scales differ by orders of magnitude
        self.norm = nn.BatchNorm2d(in_channels, affine=False)
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, n_classes) logits; any H, W ≥ 1 (a 1×1 map stays 1×1 under stride 2)."""
        x = self.body(self.stem(self.norm(x)))
        return self.head(x.mean(dim=(2, 3)))


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """(n, H, W, C) numpy (any float dtype) → float32 NCHW tensor."""
    if x.ndim != 4:
        raise ValueError(f"Diff-C takes spatial maps (n, H, W, C); got shape {x.shape} "
                         "(use a `tokens` feature set, not a pooled one)")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(0, 3, 1, 2)


def _batches(n: int, batch_size: int, order: np.ndarray) -> list[np.ndarray]:
    """Mini-batches of `order`; a trailing batch of one row is merged into the previous one, because
    BatchNorm in training mode cannot normalise a single 1×1 sample."""
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class DiffCProbe:
    model: DiffC
    arch: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # mean training loss per epoch

    kind = "diffc"

    @property
    def classes(self) -> np.ndarray:
        return np.arange(self.arch["n_classes"], dtype=np.int64)

    @torch.no_grad()
    def predict_proba(self, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
        self.model.eval()
        dev = next(self.model.parameters()).device
        if X.ndim != 4 or X.shape[-1] != self.arch["in_channels"]:
            raise ValueError(f"this Diff-C takes (n, H, W, {self.arch['in_channels']}) maps; got {X.shape}")
        out = [F.softmax(self.model(to_nchw(X[i:i + batch_size]).to(dev)), dim=1).cpu().numpy()
               for i in range(0, len(X), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.arch["n_classes"]), np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)

    def save(self, directory: str | Path) -> dict[str, Path]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(d / WEIGHTS))
        meta = {"format": FORMAT, "version": VERSION, "kind": self.kind, "arch": self.arch,
                "classes": self.classes.tolist(), "history": self.history, **self.meta}
        (d / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=json_default))
        return {"weights": d / WEIGHTS, "meta": d / META}

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> DiffCProbe:
        d = Path(directory)
        meta = read_meta(d, "diffc")
        arch = meta.pop("arch")
        history = meta.pop("history", [])
        for k in ("format", "version", "kind", "classes"):
            meta.pop(k, None)
        model = DiffC(arch["in_channels"], arch["n_classes"], arch["width"], arch["depth"], arch["dropout"])
        try:
            model.load_state_dict(load_file(str(d / WEIGHTS)))
        except (RuntimeError, FileNotFoundError) as e:
            raise ProbeFormatError(f"{d / WEIGHTS} does not match the architecture in {d / META}: {e}") from e
        return cls(model.to(resolve_device(device)).eval(), arch, meta, history)


def train_diffc(X: np.ndarray, y: np.ndarray, n_classes: int, *, width: int = 64, depth: int = 3, epochs: int = 30,
                lr: float = 1e-3, weight_decay: float = 1e-4, dropout: float = 0.1, batch_size: int = 64,
                seed: int = 0, device: str = "auto", meta: dict[str, Any] | None = None) -> DiffCProbe:
    """Train Diff-C on (n, H, W, C) maps with labels in [0, n_classes)."""
    y = np.asarray(y, np.int64)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    if len(y) < 2:
        raise ValueError("Diff-C needs at least two training rows (BatchNorm statistics)")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes})")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1; got {epochs}, {batch_size}")
    dev = resolve_device(device)
    torch.manual_seed(seed)  # weights and dropout masks
    rng = np.random.default_rng(seed)  # batch order
    arch = {"in_channels": int(X.shape[-1]), "n_classes": int(n_classes), "width": int(width), "depth": int(depth),
            "dropout": float(dropout), "input_hw": [int(X.shape[1]), int(X.shape[2])] if X.ndim == 4 else None}
    to_nchw(X[:1])  # shape check with a clear message before building anything
    model = DiffC(arch["in_channels"], n_classes, width, depth, dropout).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(_batches(len(y), batch_size, np.arange(len(y))))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    yt = torch.from_numpy(y)
    history: list[float] = []
    model.train()
    for _ in range(epochs):
        losses = []
        for idx in _batches(len(y), batch_size, rng.permutation(len(y))):
            idx = np.sort(idx)  # sorted reads are faster on memory-mapped or float16 arrays; order is irrelevant
            xb = to_nchw(X[idx]).to(dev)
            loss = F.cross_entropy(model(xb), yt[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    model.eval()
    info = {"epochs": int(epochs), "lr": float(lr), "weight_decay": float(weight_decay),
            "batch_size": int(batch_size), "seed": int(seed), "n_train": len(y), **(meta or {})}
    return DiffCProbe(model, arch, info, history)
