"""An SAE against its matched controls, on held-out images: the numbers every report of latents carries.

One definition of "how much do these latents mean, beyond what the encoder's mechanics give for free",
used by the SAE stage, the tuning objective, `benchmarks/science.py` and the app:

- **units** compared: the SAE's latents; the matched random dictionary (`controls.matched_random`: the
  SAE's width, k, variant, centring, normalisation and pooling, random directions) over several seeds,
  reported as mean ± sd; the SAE's own initialisation (`controls.sae_init`: what training added); and the
  raw channels (ReLU(x_c), same pooling).
- **rows**: the store's test rows (held out from everything that chose anything); sparse probing ranks
  its units on the train rows only.
- **label purity** per concept (`purity.purity_report`): share of units whose top-20 test images are
  > 60 % one class, the same with near-duplicate units counted once, the classes that have a pure unit;
- **σ_label** (`purity.sigma_label`, numbering-free);
- **k-sparse probing** of the primary concept, k = 1 … 64 (`sparse_probe.sparse_probe_curve`);
- **dissection** (`dissection.dissect`) where the dataset has per-pixel masks and the SAE reads tokens:
  detectors of the primary concept's classes (and their parts) and the number of distinct concepts.

`gap.*` metrics say how the SAE compares with the random control: ratios for counts and shares
(SAE / mean of the seeds), differences in points for accuracies (SAE − mean). `gap.score` folds the three
headline gaps into one tuning objective: each as the fraction of its target it reaches (purity share
1.5×, detectors 2×, 16-sparse probe +5 points; 0 = a tie with the control, 1 = the target), and the
worst of them, so a search cannot buy one at the cost of another.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..sae import SparseAutoencoder, image_latents
from .controls import control_sae, mean_sd
from .dissection import Dissection, concept_masks, dissect
from .purity import direction_activations, label_purity, purity_report, sigma_label
from .sparse_probe import KS, sparse_probe_curve

CONTROL_SEEDS = (1, 2, 3)
TOP_N = 20  # top test images per unit for purity and σ_label (half the test rows when there are fewer than 40)
HEADLINE_K = 16  # the sparse-probe size the headline compares
# the targets gap.score measures against: ratio for purity share and detectors, accuracy points for the probe
TARGETS = {"purity": 1.5, "detectors": 2.0, "sparse_probe": 0.05}
DISSECTION_IMAGES = 256  # test images dissected (token maps of every unit)
TRAIN_ROWS = 1000  # train rows the sparse probes are ranked and fitted on (every test row is scored)


@dataclass(frozen=True)
class UnitScores:
    """What one set of units scores on the test rows."""

    purity: Mapping[str, Mapping[str, float]]  # concept → purity_report
    unit_purity: Mapping[str, np.ndarray]  # concept → per-unit purity (NaN for units too rarely active)
    sigma_label: Mapping[str, float]  # concept → σ_label
    sparse_probe: Mapping[int, float]  # k → test accuracy (primary concept)
    dissection: Dissection | None = None

    def flat(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c, rep in self.purity.items():
            out[f"label_purity_share.{c}"] = rep["share_above"]
            out[f"label_purity_share_dedup.{c}"] = rep["share_above_dedup"]
            out[f"classes_with_pure_unit.{c}"] = rep["classes_with_pure_unit"]
            out[f"label_purity_mean.{c}"] = rep["mean"]
        for c, v in self.sigma_label.items():
            out[f"sigma_label.{c}"] = v
        for k, v in self.sparse_probe.items():
            out[f"sparse_probe.k{k}"] = v
        if self.dissection is not None:
            s = self.dissection.summary()
            out["dissection.detectors"] = s["n_detectors"]
            out["dissection.unique_concepts"] = s["unique_concepts"]
            out["dissection.mean_best_iou"] = s["mean_best_iou"]
        return {k: float(v) for k, v in out.items()}


@dataclass(frozen=True)
class ControlReport:
    """The SAE, each control, and the comparison (see the module docstring)."""

    primary: str
    sae: UnitScores
    controls: Mapping[str, list[UnitScores]]  # "random" (one per seed), "sae_init", "channels"
    seeds: tuple[int, ...]
    n_test: int
    dissection_note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metrics: the SAE's, `control.<name>.<metric>` (random: mean and `_sd` over seeds), `gap.*`."""
        out = dict(self.sae.flat())
        for name, runs in self.controls.items():
            flats = [r.flat() for r in runs]
            for key in flats[0]:
                m, sd = mean_sd([f.get(key, float("nan")) for f in flats])
                out[f"control.{name}.{key}"] = m
                if len(flats) > 1:
                    out[f"control.{name}_sd.{key}"] = sd
        for key, v in self.sae.flat().items():
            ref = out.get(f"control.random.{key}")
            if ref is None or not np.isfinite(ref):
                continue
            if key.startswith("sparse_probe."):
                out[f"gap.{key}"] = v - ref
            elif key.startswith(("label_purity_share", "dissection.detectors", "classes_with_pure_unit")):
                out[f"gap.{key}"] = v / ref if ref > 0 else (float("inf") if v > 0 else 1.0)
        score = gap_score(out, self.primary)
        if score is not None:
            out["gap.score"] = score
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def headline(self) -> dict[str, float]:
        """The three numbers issue-level targets are stated in, SAE / control side by side."""
        m = self.metrics()
        c = self.primary
        keys = (f"label_purity_share.{c}", f"label_purity_share_dedup.{c}", f"sparse_probe.k{HEADLINE_K}",
                "dissection.detectors")
        return {k: m[k] for key in keys for k in (key, f"control.random.{key}", f"control.random_sd.{key}",
                                                   f"gap.{key}") if k in m}


def gap_score(metrics: Mapping[str, float], primary: str) -> float | None:
    """The worst of the headline gaps as a fraction of its target (see the module docstring); None when the
    report has none of them. A ratio r counts log(r) / log(target), so halving is as bad as doubling is good."""
    parts = []
    r = metrics.get(f"gap.label_purity_share.{primary}")
    if r is not None:
        parts.append(_log_fraction(r, TARGETS["purity"]))
    r = metrics.get("gap.dissection.detectors")
    if r is not None:
        parts.append(_log_fraction(r, TARGETS["detectors"]))
    d = metrics.get(f"gap.sparse_probe.k{HEADLINE_K}")
    if d is not None and np.isfinite(d):
        parts.append(d / TARGETS["sparse_probe"])
    return float(min(parts)) if parts else None


def _log_fraction(ratio: float, target: float) -> float:
    if not np.isfinite(ratio):
        return 1.0 if ratio > 0 else -1.0  # a control with nothing at all: count the target as met
    return float(np.log(max(ratio, 1e-3)) / np.log(target))


@dataclass(frozen=True)
class ReportData:
    """What a report reads: features (n, C) or (n, H, W, C) of some store rows, their labels and split, and
    for dissection the concept masks of `mask_rows` (indices into those rows)."""

    feats: np.ndarray
    labels: Mapping[str, np.ndarray]
    is_test: np.ndarray
    primary: str
    concept_masks: Mapping[str, np.ndarray] | None = None
    mask_rows: np.ndarray | None = None
    note: str = ""

    @classmethod
    def build(cls, feats: np.ndarray, labels: Mapping[str, np.ndarray], is_test: np.ndarray, primary: str, *,
              masks: Mapping[str, np.ndarray] | None = None, mask_rows: np.ndarray | None = None,
              class_names: Sequence[str] = (), parts: Mapping[str, Sequence[str]] | None = None) -> ReportData:
        """`masks` (name → bool (m, S, S), the per-pixel ground truth of `mask_rows`) become one concept per
        class of the primary concept (`class_names`) and per part of those classes (`parts`)."""
        if primary not in labels:
            raise ValueError(f"no labels for the primary concept {primary!r}; have {', '.join(labels)}")
        note, cm = "", None
        if masks is None:
            note = "no dissection: the dataset has no per-pixel concept masks"
        elif feats.ndim != 4:
            note = "no dissection: the SAE reads pooled vectors, which have no spatial map"
        elif mask_rows is not None and len(mask_rows):
            cm = concept_masks(masks, labels[primary][mask_rows], class_names, parts)
        return cls(feats, labels, np.asarray(is_test, bool), primary, cm, mask_rows, note)

    def sample(self, n: int = 65536, seed: int = 0) -> np.ndarray:
        """Train vectors: the centre of `sae_init` and the threshold of a BatchTopK control."""
        pool = self.feats[~self.is_test].reshape(-1, self.feats.shape[-1])
        return pool[np.random.default_rng(seed).choice(len(pool), min(n, len(pool)), replace=False)]


def score_units(model: SparseAutoencoder | None, acts: np.ndarray, data: ReportData) -> UnitScores:
    """Purity, σ_label and sparse probing of `acts` (n, units); dissection of `model`'s token maps."""
    test = data.is_test
    top_n = min(TOP_N, max(1, int(test.sum()) // 2))  # a unit's top images: 20, fewer on tiny test splits
    purity, unit_purity, sig = {}, {}, {}
    for c, y in data.labels.items():
        purity[c] = purity_report(acts[test], y[test], top_n=top_n, threshold=0.6)
        unit_purity[c] = label_purity(acts[test], y[test], top_n)
        sig[c] = sigma_label(acts[test], y[test], top_n)
    curve = sparse_probe_curve(acts, data.labels[data.primary], test, ks=KS)
    diss = None
    if model is not None and data.concept_masks:
        # token resolution: a unit's map thresholded on its own grid, masks reduced to that grid (cheap,
        # and what the field reports for 16×16 maps); image resolution: dissect(..., resolution="image")
        diss = dissect(_token_maps(model, data.feats[data.mask_rows]), data.concept_masks, resolution="token")
    return UnitScores(purity, unit_purity, sig, curve, diss)


@torch.no_grad()
def _token_maps(sae: SparseAutoencoder, tokens: np.ndarray, batch: int = 32) -> np.ndarray:
    """Every unit's map over token features (n, H, W, C) → (n, n_latents, H, W), float16 to bound memory."""
    n, H, W, _ = tokens.shape
    out = np.zeros((n, sae.n_latents, H, W), np.float16)
    for s in range(0, n, batch):
        x = torch.from_numpy(np.ascontiguousarray(tokens[s:s + batch], np.float32))
        vals, idx = sae.encode_sparse(x.reshape(-1, sae.d_in))
        dense = torch.zeros(vals.shape[0], sae.n_latents).scatter_(1, idx, vals)
        out[s:s + len(x)] = dense.reshape(len(x), H, W, -1).permute(0, 3, 1, 2).numpy()
    return out


def score_controls(sae: SparseAutoencoder, data: ReportData, seeds: Sequence[int] = CONTROL_SEEDS,
                   init_seed: int = 0) -> dict[str, list[UnitScores]]:
    """The matched random dictionary (one per seed), the SAE's initialisation and the raw channels.

    They depend on the SAE only through its config and normalisation, which are fixed before training:
    scored once, they serve every evaluation of a training run.
    """
    sample = data.sample()
    out: dict[str, list[UnitScores]] = {"random": [], "sae_init": [], "channels": []}
    for s in seeds:
        ctrl = control_sae(sae, "random", s, sample)
        out["random"].append(score_units(ctrl, image_latents(ctrl, data.feats), data))
    init = control_sae(sae, "sae_init", init_seed, sample)
    out["sae_init"].append(score_units(init, image_latents(init, data.feats), data))
    channels = direction_activations(data.feats, None, sae.config.latent_pooling)
    out["channels"].append(score_units(None, channels, data))
    return out


def control_report(sae: SparseAutoencoder, data: ReportData, *, seeds: Sequence[int] = CONTROL_SEEDS,
                   init_seed: int = 0, sae_acts: np.ndarray | None = None,
                   controls: Mapping[str, list[UnitScores]] | None = None) -> ControlReport:
    """Score the SAE and its controls on the test rows of `data` (see the module docstring).

    `init_seed`: the seed training started from (sae.seed); `sae_acts`: the SAE's image activations of
    `data.feats` if already computed; `controls`: `score_controls` of this SAE, if already scored.
    """
    acts = sae_acts if sae_acts is not None else image_latents(sae, data.feats)
    ctrl = controls if controls is not None else score_controls(sae, data, seeds, init_seed)
    return ControlReport(data.primary, score_units(sae, acts, data), ctrl, tuple(seeds), int(data.is_test.sum()),
                         data.note)


def report_rows(is_test: np.ndarray, train_limit: int = TRAIN_ROWS) -> np.ndarray:
    """The store rows a report reads: every test row and the first `train_limit` train rows (fixed)."""
    test = np.asarray(is_test, bool)
    return np.sort(np.concatenate([np.flatnonzero(test), np.flatnonzero(~test)[:train_limit]]))


def dissection_rows(is_test: np.ndarray, limit: int = DISSECTION_IMAGES) -> np.ndarray:
    """The test rows dissection uses: the first `limit` (rows are in dataset order, so this is fixed)."""
    return np.flatnonzero(np.asarray(is_test, bool))[:limit]
