"""Network Dissection (Bau et al., CVPR 2017) for units with spatial maps: which concept masks they trace.

Label purity asks whether a unit's top *images* share a label; dissection asks whether the unit fires
*where* the concept is. For unit u with maps A_u (n, h, w) over a dataset:

- T_u: the `quantile` (0.995) of A_u over every position of every image (computed at the map's own
  resolution, as Bau et al. do);
- M_u = A_u > T_u, compared with each concept's masks L_c (n, H, W) either at token resolution (masks
  reduced to the map grid: a cell is in the concept when at least half its pixels are) or at image
  resolution (maps bilinearly upsampled to the masks, then thresholded at T_u);
- IoU_{u,c} = Σ_images |M_u ∩ L_c| / Σ_images |M_u ∪ L_c|;
- a unit is a detector of its best concept when that IoU exceeds `iou_threshold` (0.04 in the paper).

Concepts here are the shapes generator's ground truth: the object mask of each shape class (zero on
images of other classes) and the parts of those classes (`concept_masks`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESOLUTIONS = ("token", "image")


def downsample_masks(masks: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bool masks (n, H, W) → (n, h, w): a cell is set when at least half of its pixels are (H, W multiples of h, w)."""
    masks = np.asarray(masks, bool)
    n, H, W = masks.shape
    if H % h or W % w:
        raise ValueError(f"mask size {H}×{W} is not a multiple of the map size {h}×{w}")
    frac = masks.reshape(n, h, H // h, w, W // w).mean(axis=(2, 4))
    return frac >= 0.5


def upsample_maps(maps: np.ndarray, H: int, W: int) -> np.ndarray:
    """Maps (n, U, h, w) → (n, U, H, W), bilinear (align_corners=False), as the paper upsamples."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(maps, np.float32))
    n, u, h, w = t.shape
    if (h, w) == (H, W):
        return t.numpy()
    return F.interpolate(t.reshape(n * u, 1, h, w), size=(H, W), mode="bilinear",
                         align_corners=False).reshape(n, u, H, W).numpy()


def unit_thresholds(maps: np.ndarray, quantile: float = 0.995) -> np.ndarray:
    """Per-unit activation level T_u exceeded by a (1 − quantile) share of all positions, (U,).

    The `quantile` with numpy's "higher" rule: the element of rank ceil(q·(N − 1)), found by partition
    (linear time) rather than a full sort.
    """
    maps = np.asarray(maps)
    n, U = maps.shape[:2]
    N = maps.size // max(U, 1)
    kth = int(np.ceil(quantile * (N - 1)))
    if maps.size and maps.min() >= 0:
        # sparse non-negative maps (TopK codes): the rank-kth value is 0 unless more than N − kth positions
        # are positive, and then it is the (kth − zeros)-th of the positive values alone, far fewer to partition
        out = np.zeros(U, np.float32)
        for u in range(U):
            v = maps[:, u].reshape(-1)
            pos = v[v > 0].astype(np.float32)
            zeros = N - pos.size
            if kth >= zeros:
                out[u] = np.partition(pos, kth - zeros)[kth - zeros]
        return out
    flat = np.moveaxis(np.asarray(maps, np.float32), 1, 0).reshape(U, -1)
    return np.partition(flat, kth, axis=1)[:, kth].astype(np.float32)


def iou_table(maps: np.ndarray, masks: Mapping[str, np.ndarray], thresholds: np.ndarray,
              resolution: str = "image") -> np.ndarray:
    """IoU (U, C) of each unit's thresholded maps with each concept's masks, summed over images."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    maps = np.asarray(maps, np.float32)
    n, U, h, w = maps.shape
    names = list(masks)
    if not names:
        return np.zeros((U, 0))
    H, W = np.asarray(masks[names[0]]).shape[1:]
    if resolution == "token":
        L = np.stack([downsample_masks(masks[c], h, w) for c in names], 1)  # (n, C, h, w)
    else:
        L = np.stack([np.asarray(masks[c], bool) for c in names], 1)  # (n, C, H, W)
    Lf = L.reshape(n, len(names), -1).astype(np.float32)
    area_L = Lf.sum(axis=(0, 2))  # (C,)
    inter = np.zeros((U, len(names)))
    area_M = np.zeros(U)
    batch = max(1, (1 << 24) // max(1, U * Lf.shape[2]))
    for s in range(0, n, batch):
        m = maps[s:s + batch]
        if resolution == "image":
            m = upsample_maps(m, H, W)
        M = (m > thresholds[None, :, None, None]).reshape(m.shape[0], U, -1).astype(np.float32)
        inter += np.einsum("nup,ncp->uc", M, Lf[s:s + batch], optimize=True)
        area_M += M.sum(axis=(0, 2))
    union = area_M[:, None] + area_L[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass(frozen=True)
class Dissection:
    """IoU of every unit with every concept, and what follows from it."""

    concepts: tuple[str, ...]
    iou: np.ndarray  # (U, C)
    thresholds: np.ndarray  # (U,)
    iou_threshold: float = 0.04

    @property
    def best_concept(self) -> np.ndarray:
        return self.iou.argmax(1) if self.iou.size else np.zeros(len(self.iou), np.int64)

    @property
    def best_iou(self) -> np.ndarray:
        return self.iou.max(1) if self.iou.size else np.zeros(len(self.iou))

    @property
    def detectors(self) -> np.ndarray:
        """Bool (U,): the unit's best concept has IoU above the threshold."""
        return self.best_iou > self.iou_threshold

    def counts(self) -> dict[str, int]:
        """Detectors per concept (each unit counted for its best concept only)."""
        best, det = self.best_concept, self.detectors
        return {c: int((det & (best == j)).sum()) for j, c in enumerate(self.concepts)}

    def summary(self) -> dict[str, float]:
        counts = self.counts()
        out: dict[str, float] = {"n_units": int(len(self.iou)), "n_detectors": int(self.detectors.sum()),
                                 "unique_concepts": int(sum(v > 0 for v in counts.values())),
                                 "mean_best_iou": float(self.best_iou.mean()) if len(self.iou) else float("nan")}
        for j, c in enumerate(self.concepts):
            out[f"detectors.{c}"] = counts[c]
            out[f"max_iou.{c}"] = float(self.iou[:, j].max()) if len(self.iou) else 0.0
        return out

    @classmethod
    def concat(cls, parts: Sequence[Dissection]) -> Dissection:
        """Join dissections of disjoint unit chunks (same concepts) into one."""
        if not parts:
            raise ValueError("nothing to join")
        return cls(parts[0].concepts, np.concatenate([p.iou for p in parts]),
                   np.concatenate([p.thresholds for p in parts]), parts[0].iou_threshold)


def dissect(maps: np.ndarray, masks: Mapping[str, np.ndarray], quantile: float = 0.995,
            iou_threshold: float = 0.04, resolution: str = "image") -> Dissection:
    """Dissect units with maps (n, U, h, w) against concept masks {name: bool (n, H, W)} (module docstring)."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 4:
        raise ValueError(f"maps must be (n_images, n_units, h, w), got shape {maps.shape}")
    for c, m in masks.items():
        if np.asarray(m).shape[0] != maps.shape[0]:
            raise ValueError(f"concept {c!r} has masks for {np.asarray(m).shape[0]} images, maps for {maps.shape[0]}")
    thr = unit_thresholds(maps, quantile)
    return Dissection(tuple(masks), iou_table(maps, masks, thr, resolution), thr, iou_threshold)


def concept_masks(masks: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str],
                  parts: Mapping[str, Sequence[str]] | None = None, object_key: str = "object") -> dict[str, np.ndarray]:
    """Per-class concepts from class-agnostic masks: `<class>` = the object mask on images of that class
    (empty elsewhere); with `parts` ({class: part names}), also `<class>.<part>` the same way."""
    labels = np.asarray(labels)
    obj = np.asarray(masks[object_key], bool)
    out: dict[str, np.ndarray] = {}
    for c, name in enumerate(class_names):
        on = (labels == c)[:, None, None]
        out[name] = obj & on
    for c, name in enumerate(class_names):
        on = (labels == c)[:, None, None]
        for part in (parts or {}).get(name, ()):
            out[f"{name}.{part}"] = np.asarray(masks[part], bool) & on
    return out
