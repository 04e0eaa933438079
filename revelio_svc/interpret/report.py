"""An SAE against its matched controls, on held-out images: the numbers every report of latents carries.

One definition of "how much do these latents mean, beyond what the encoder's mechanics give for free",
used by the SAE stage, the tuning objective, `benchmarks/science.py` and the app:

- **units** compared: the SAE's latents against every control at once (`CONTROL_NAMES`): the matched random
  dictionary on the SAE's own input (`controls.matched_random`: the SAE's width, k, variant, centring,
  normalisation and pooling, random directions) and on the raw centred features (`dictionaries.random_raw`),
  random training vectors as rows (`token_rows`), ± PCA directions with the same TopK (`pca`), spherical
  k-means centroids read 1-sparse (`kmeans`), the SAE's own initialisation (`controls.sae_init`: what
  training added) and the raw channels (ReLU(x_c), same pooling). Seeded controls run over several seeds,
  reported as mean ± sd. Every control is pooled and dissected by the code that reads the SAE.
- **rows**: the store's test rows (held out from everything that chose anything), or, for tuning, a
  validation split carved from the train rows (`store_report_data(..., rows="validation")`); sparse
  probing ranks and fits its units on a class-stratified seeded sample of the other train rows.
- **label purity** per concept (`purity.purity_report`): share of units whose top-20 test images are
  > 60 % one class, the same with near-duplicate units counted once, the classes that have a pure unit;
- **σ_label** (`purity.sigma_label`, numbering-free);
- **k-sparse probing** of the primary concept, k = 1 … 64 (`sparse_probe.sparse_probe_curve`);
- **dissection** (`dissection.dissect`) where the dataset has per-pixel masks and the SAE reads tokens:
  detectors of the primary concept's classes (and their parts) and the number of distinct concepts.
  Controls of another width (channels: C units, PCA: 2·C) are compared by their share of detector units.

`gap.*` metrics say how the SAE compares with the *strongest* control of each metric (`strongest`): ratios
for shares and counts (SAE / the control's mean over seeds; detectors as shares of units), differences in
points for accuracies (SAE − mean). Which control was strongest is in `ControlReport.strongest()` (and
controls.json). `gap.score` folds the three headline gaps into one tuning objective: each as the fraction of
its target it reaches (purity share 1.5×, detectors 2×, 16-sparse probe +5 points; 0 = a tie with the
strongest control, 1 = the target), and the worst of them, so a search cannot buy one at the cost of another.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.splits import stratified_sample, validation_mask
from ..parallel import thread_map
from ..sae import SparseAutoencoder, image_latents
from . import dictionaries
from .controls import control_sae, mean_sd
from .dissection import Dissection, concept_masks, dissect
from .purity import label_purity, purity_report, sigma_label
from .sparse_probe import KS, sparse_probe_curve

CONTROL_SEEDS = (1, 2, 3)
# every control the SAE is scored against (module docstring); the first three run once per seed
CONTROL_NAMES = ("random", "random_raw", "token_rows", "pca", "kmeans", "sae_init", "channels")
TOP_N = 20  # top test images per unit for purity and σ_label (half the test rows when there are fewer than 40)
HEADLINE_K = 16  # the sparse-probe size the headline compares
# the targets gap.score measures against: ratio for purity share and detectors, accuracy points for the probe
TARGETS = {"purity": 1.5, "detectors": 2.0, "sparse_probe": 0.05}
DISSECTION_IMAGES = 256  # test images dissected (token maps of every unit)
TRAIN_ROWS = 1000  # train rows the sparse probes are ranked and fitted on (class-stratified; every test row is scored)
VALIDATION_FRACTION = 0.2  # share of the train images a tuning study scores on instead of the test rows


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
            # controls of another width (channels, PCA) are compared by the share of their units that detect
            out["dissection.detector_share"] = s["n_detectors"] / max(s["n_units"], 1)
            out["dissection.unique_concepts"] = s["unique_concepts"]
            out["dissection.mean_best_iou"] = s["mean_best_iou"]
        return {k: float(v) for k, v in out.items()}


@dataclass(frozen=True)
class ControlReport:
    """The SAE, each control, and the comparison (see the module docstring)."""

    primary: str
    sae: UnitScores
    controls: Mapping[str, list[UnitScores]]  # CONTROL_NAMES → one UnitScores per seed (seeded) or one
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
        for key, name in strongest_controls(out, self.controls).items():
            out.update(gaps_to(out, key, name, f"gap.{key}"))
        score = gap_score(out, self.primary)
        if score is not None:
            out["gap.score"] = score
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def strongest(self) -> dict[str, str]:
        """Metric → the name of the control the SAE's gap on it is measured against."""
        return strongest_controls(self.metrics(), self.controls)

    def headline(self) -> dict[str, float]:
        """The numbers issue-level targets are stated in: the SAE, every control, and the gap to the strongest."""
        m = self.metrics()
        out = {}
        for key in headline_keys(self.primary):
            cmp = compared_metric(key)
            names = [key, cmp, *(f"control.{n}{sd}.{x}" for n in self.controls for sd in ("", "_sd")
                                 for x in dict.fromkeys((key, cmp))), f"gap.{key}"]
            out.update({k: m[k] for k in names if k in m})
        return out

    def table(self) -> list[dict[str, object]]:
        """One row per unit set (the SAE first) with its headline numbers; `strongest_for` lists the headline
        metrics whose gap is measured against that control."""
        m, best = self.metrics(), self.strongest()
        rows = []
        for name in ("sae", *self.controls):
            pre = "" if name == "sae" else f"control.{name}."
            row: dict[str, object] = {"units": name}
            for key in headline_keys(self.primary):
                row[key] = m.get(pre + key, float("nan"))
            row["strongest_for"] = ", ".join(k for k, n in best.items() if n == name and k in headline_keys(self.primary))
            rows.append(row)
        return rows

    def text(self) -> str:
        """The SAE and every control as a plain-text table (seeded controls: mean ± sd), the strongest control
        of each headline metric starred, then the gaps to it."""
        m, best = self.metrics(), self.strongest()
        keys = headline_keys(self.primary)
        heads = ["purity share", "purity dedup", f"{HEADLINE_K}-sparse", "detectors", "detector share"]
        cols = [*keys, "dissection.detector_share"]
        lines = [f"{'units':<12}" + "".join(f"{h:>20}" for h in heads)]
        for name in ("sae", *self.controls):
            cells = []
            for key in cols:
                pre = "" if name == "sae" else f"control.{name}."
                v, sd = m.get(pre + key), m.get(f"control.{name}_sd.{key}")
                star = "*" if best.get(key if key != "dissection.detector_share" else "dissection.detectors") == name \
                    and key != "dissection.detectors" else " "
                cell = "–" if v is None else f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
                cells.append(f"{cell + star:>20}")
            lines.append(f"{name:<12}" + "".join(cells))
        lines.append("gap to the strongest control (*): " + "; ".join(
            f"{k}: {m[f'gap.{k}']:+.3f} vs {best[k]}" if k.startswith("sparse_probe.")
            else f"{k}: {m[f'gap.{k}']:.2f}× vs {best[k]}" for k in keys if f"gap.{k}" in m)
            + (f"; gap.score {m['gap.score']:+.2f}" if "gap.score" in m else ""))
        return "\n".join(lines)


def headline_keys(primary: str) -> tuple[str, ...]:
    """The metrics the headline gaps are stated in, for primary concept `primary`."""
    return (f"label_purity_share.{primary}", f"label_purity_share_dedup.{primary}", f"sparse_probe.k{HEADLINE_K}",
            "dissection.detectors")


def _gap_kind(key: str) -> str | None:
    """How a metric's gap is measured: "diff" (accuracy points), "ratio" (shares and counts), or not at all."""
    if key.startswith("sparse_probe."):
        return "diff"
    if key.startswith(("label_purity_share", "classes_with_pure_unit")) or key == "dissection.detectors":
        return "ratio"
    return None


def compared_metric(key: str) -> str:
    """The metric two unit sets are compared on for `key` (detectors: as a share of units, widths differ)."""
    return "dissection.detector_share" if key == "dissection.detectors" else key


def strongest_controls(metrics: Mapping[str, float], names) -> dict[str, str]:
    """For every SAE metric that has a gap: the control whose (mean) value on it is highest; ties go to the
    control named first. `metrics` holds the SAE's metrics and `control.<name>.<metric>` means."""
    out: dict[str, str] = {}
    for key in list(metrics):
        if key.startswith(("control.", "gap.")) or _gap_kind(key) is None:
            continue
        cmp = compared_metric(key)
        vals = {n: metrics.get(f"control.{n}.{cmp}") for n in names}
        vals = {n: float(v) for n, v in vals.items() if v is not None and np.isfinite(v)}
        if vals and cmp in metrics:
            out[key] = max(vals, key=vals.get)
    return out


def gaps_to(metrics: Mapping[str, float], key: str, name: str, out_key: str) -> dict[str, float]:
    """{out_key: the SAE's gap on `key` to control `name`} (see the module docstring), or {} when missing."""
    cmp = compared_metric(key)
    v, ref = metrics.get(cmp), metrics.get(f"control.{name}.{cmp}")
    if v is None or ref is None or not np.isfinite(ref):
        return {}
    if _gap_kind(key) == "diff":
        return {out_key: v - ref}
    return {out_key: v / ref if ref > 0 else (float("inf") if v > 0 else 1.0)}


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
    rows: np.ndarray | None = None  # the store rows these are, when read from a store

    @classmethod
    def build(cls, feats: np.ndarray, labels: Mapping[str, np.ndarray], is_test: np.ndarray, primary: str, *,
              masks: Mapping[str, np.ndarray] | None = None, mask_rows: np.ndarray | None = None,
              class_names: Sequence[str] = (), parts: Mapping[str, Sequence[str]] | None = None,
              rows: np.ndarray | None = None) -> ReportData:
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
        return cls(feats, labels, np.asarray(is_test, bool), primary, cm, mask_rows, note, rows)

    def sample(self, n: int = 65536, seed: int = 0) -> np.ndarray:
        """Train vectors: the centre of `sae_init` and the threshold of a BatchTopK control."""
        pool = self.feats[~self.is_test].reshape(-1, self.feats.shape[-1])
        return pool[np.random.default_rng(seed).choice(len(pool), min(n, len(pool)), replace=False)]


def score_units(model: SparseAutoencoder | None, acts: np.ndarray, data: ReportData) -> UnitScores:
    """Purity, σ_label and sparse probing of `acts` (n, units); dissection of `model`'s token maps (an SAE or
    a `dictionaries.Dictionary`)."""
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
def _token_maps(sae, tokens: np.ndarray, batch: int = 32) -> np.ndarray:
    """Every unit's map over token features (n, H, W, C) → (n, n_latents, H, W), float16 to bound memory."""
    n, H, W, _ = tokens.shape
    out = np.zeros((n, sae.n_latents, H, W), np.float16)
    for s in range(0, n, batch):
        x = torch.from_numpy(np.ascontiguousarray(tokens[s:s + batch], np.float32))
        vals, idx = sae.encode_sparse(x.reshape(-1, sae.d_in))
        dense = torch.zeros(vals.shape[0], sae.n_latents).scatter_(1, idx, vals)
        out[s:s + len(x)] = dense.reshape(len(x), H, W, -1).permute(0, 3, 1, 2).numpy()
    return out


def control_units(sae: SparseAutoencoder, sample: np.ndarray, name: str, seed: int):
    """Control `name` (CONTROL_NAMES) of `sae`, built from train vectors `sample` (raw features (N, C))."""
    pooling, k = sae.config.latent_pooling, int(sae.config.k)
    if name in ("random", "sae_init"):
        return control_sae(sae, name, seed, sample)
    if name == "random_raw":
        return dictionaries.random_raw(sample, sae.n_latents, k, seed, pooling)
    if name == "token_rows":
        return dictionaries.token_rows(sample, sae.n_latents, k, seed, pooling)
    if name == "pca":
        return dictionaries.pca(sample, k, pooling)
    if name == "kmeans":
        return dictionaries.kmeans(sample, sae.n_latents, seed, pooling)
    if name == "channels":
        return dictionaries.channels(sae.d_in, pooling)
    raise ValueError(f"unknown control {name!r}; known: {', '.join(CONTROL_NAMES)}")


SEEDED = ("random", "random_raw", "token_rows")  # random draws: scored once per control seed


def score_controls(sae: SparseAutoencoder, data: ReportData, seeds: Sequence[int] = CONTROL_SEEDS,
                   init_seed: int = 0, names: Sequence[str] = CONTROL_NAMES) -> dict[str, list[UnitScores]]:
    """Every control of `names` (the random draws once per seed; the SAE's initialisation and k-means with
    `init_seed`), each read, pooled and dissected exactly like the SAE.

    They depend on the SAE only through its config and normalisation, which are fixed before training:
    scored once, they serve every evaluation of a training run.
    """
    sample = data.sample()
    jobs = [(name, s) for name in names for s in (seeds if name in SEEDED else (init_seed,))]

    def score(job: tuple[str, int]) -> UnitScores:
        units = control_units(sae, sample, *job)
        return score_units(units, image_latents(units, data.feats), data)

    from sklearn.exceptions import ConvergenceWarning  # the sparse probes' solver; deferred like sklearn itself

    out: dict[str, list[UnitScores]] = {}
    for (name, _), scores in zip(jobs, thread_map(score, jobs, quiet=(ConvergenceWarning,))):
        out.setdefault(name, []).append(scores)
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


def report_rows(is_test: np.ndarray, train_limit: int = TRAIN_ROWS, labels: np.ndarray | None = None,
                seed: int = 0, train: np.ndarray | None = None) -> np.ndarray:
    """The store rows a report reads: every `is_test` row and a seeded sample of at most `train_limit` of the
    `train` rows (default: every other row), stratified by `labels` when given. Never the first rows in store
    order: an image folder is stored class by class, and those would hold a few classes only."""
    test = np.asarray(is_test, bool)
    cand = np.flatnonzero(~test if train is None else np.asarray(train, bool) & ~test)
    y = np.zeros(len(test), np.int64) if labels is None else np.asarray(labels)
    return np.sort(np.concatenate([np.flatnonzero(test), stratified_sample(y, cand, train_limit, seed)]))


def split_roles(is_test: np.ndarray, index: np.ndarray, rows: str = "test",
                fraction: float = VALIDATION_FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scored, fitted) masks over store rows. `rows="test"`: the test rows are scored, the train rows fit the
    sparse probes. `rows="validation"` (tuning): a `fraction` of the train images chosen by a hash of their
    dataset index is scored and the rest of the train rows fit; the test rows are in neither."""
    test = np.asarray(is_test, bool)
    if rows == "test":
        return test, ~test
    if rows != "validation":
        raise ValueError(f"rows must be 'test' or 'validation', got {rows!r}")
    val = validation_mask(np.asarray(index), fraction, seed) & ~test
    if not val.any() or not (~test & ~val).any():
        raise ValueError(f"a validation fraction of {fraction} of {int((~test).sum())} train rows leaves one side "
                         "empty; use more images or another fraction")
    return val, ~test & ~val


def dissection_rows(is_test: np.ndarray, limit: int = DISSECTION_IMAGES) -> np.ndarray:
    """The test rows dissection uses: the first `limit` (rows are in dataset order, so this is fixed)."""
    return np.flatnonzero(np.asarray(is_test, bool))[:limit]
