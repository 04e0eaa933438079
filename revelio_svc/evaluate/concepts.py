"""Does ablating latents remove one concept and leave the others? SCR and TPP on image-level activations.

Both work on any (n_images, n_units) activation matrix (SAE latents pooled as the classifier pools them,
a control's units, raw channels), with labels and the store's train/test split. Probes are the project's
linear probe (`probe.linear.fit_linear_probe`) on the activations as a sparse matrix, so standardisation
only scales and a unit set to 0 contributes nothing: *ablating* a unit zeroes its column, the probe is not
refitted.

**Spurious-correlation removal (SCR)**, after SAEBench. For a pair of classes (c0, c1) of the concept
(shape) and a pair (s0, s1) of the spurious concept (background):

- a *biased* training set from the train rows where c0 comes with s0 and c1 with s1 in `correlation` of the
  rows (95 %), so a probe for the concept can lean on the spurious one;
- an *oracle* probe trained on as many train rows balanced over the four cells;
- a *balanced* test set (test rows, equal count per cell), where leaning on the spurious concept costs;
- the N units most associated with the spurious concept, ranked on train rows only (every train row of
  s0 or s1, where it is independent of the concept; standardised mean difference), zeroed.

    share(N) = acc_biased_probe(units ablated) / acc_oracle        (recovered accuracy, share of unbiased)
    shift(N) = (acc(N) − acc_biased) / (acc_oracle − acc_biased)   (SAEBench's normalised SCR)

averaged over several (class pair, spurious pair) draws.

**Targeted probe perturbation (TPP)**: one binary probe per class i (class i against as many rows of other
classes); ablating the N units most associated with class i (train rows, signed standardised mean
difference) should lower probe i's test accuracy and leave probe j's:

    tpp(N) = mean_i drop_ii − mean_{i≠j} drop_ij.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..interpret.sparse_probe import rank_units
from ..probe.linear import fit_linear_probe

ABLATE = (2, 5, 10, 20, 50)


def _accuracy(probe, X: np.ndarray, y: np.ndarray) -> float:
    return float((probe.predict(sp.csr_matrix(X)) == y).mean()) if len(y) else float("nan")


def ablated(acts: np.ndarray, units: Sequence[int]) -> np.ndarray:
    """A copy of `acts` with the columns `units` zeroed."""
    out = np.array(acts, np.float64, copy=True)
    out[:, np.asarray(list(units), np.int64)] = 0.0
    return out


def signed_scores(acts: np.ndarray, on: np.ndarray) -> np.ndarray:
    """(mean over rows `on` − mean over the rest) / std, per unit; 0 for constant units."""
    a = np.asarray(acts, np.float64)
    on = np.asarray(on, bool)
    if on.all() or not on.any():
        return np.zeros(a.shape[1])
    sd = a.std(0)
    diff = a[on].mean(0) - a[~on].mean(0)
    return np.where(sd > 1e-12, diff / np.where(sd > 1e-12, sd, 1.0), 0.0)


# --------------------------------------------------------------------------- SCR
def biased_rows(y: np.ndarray, s: np.ndarray, rows: np.ndarray, classes: tuple[int, int],
                spurious: tuple[int, int], correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Rows (from `rows`) where classes[0] comes with spurious[0] and classes[1] with spurious[1] in a
    `correlation` share; the two classes equally often. Empty when a cell is empty."""
    rows = np.asarray(rows)
    cell = {(a, b): rng.permutation(rows[(y[rows] == a) & (s[rows] == b)])
            for a in classes for b in spurious}
    (c0, c1), (s0, s1) = classes, spurious
    n_al = min(len(cell[c0, s0]), len(cell[c1, s1]))
    n_mis = int(round(n_al * (1 - correlation) / correlation))  # per misaligned cell
    n_mis = min(n_mis, len(cell[c0, s1]), len(cell[c1, s0]))
    if n_al == 0:
        return np.zeros(0, np.int64)
    return np.sort(np.concatenate([cell[c0, s0][:n_al], cell[c1, s1][:n_al], cell[c0, s1][:n_mis],
                                   cell[c1, s0][:n_mis]])).astype(np.int64)


def balanced_rows(y: np.ndarray, s: np.ndarray, rows: np.ndarray, classes: tuple[int, int],
                  spurious: tuple[int, int], rng: np.random.Generator, total: int | None = None) -> np.ndarray:
    """Rows with the same count in each of the four (class, spurious) cells (at most total / 4 each)."""
    rows = np.asarray(rows)
    cells = [rng.permutation(rows[(y[rows] == a) & (s[rows] == b)]) for a in classes for b in spurious]
    n = min(len(c) for c in cells)
    if total is not None:
        n = min(n, max(1, total // 4))
    return np.sort(np.concatenate([c[:n] for c in cells])).astype(np.int64)


@dataclass(frozen=True)
class SCRResult:
    base: float  # the biased probe on the balanced test set
    oracle: float  # a probe trained without the bias
    accuracy: dict[int, float]  # N → the biased probe with the N most spurious units ablated
    n_draws: int
    n_train: int
    n_test: int

    def share(self, n: int) -> float:
        return self.accuracy[n] / self.oracle if self.oracle > 0 else float("nan")

    def shift(self, n: int) -> float:
        gap = self.oracle - self.base
        return (self.accuracy[n] - self.base) / gap if gap > 1e-9 else float("nan")

    def metrics(self, prefix: str = "scr") -> dict[str, float]:
        out = {f"{prefix}.base_accuracy": self.base, f"{prefix}.oracle_accuracy": self.oracle,
               f"{prefix}.draws": float(self.n_draws)}
        for n, a in self.accuracy.items():
            out[f"{prefix}.accuracy.n{n}"] = a
            out[f"{prefix}.share.n{n}"] = self.share(n)
            out[f"{prefix}.shift.n{n}"] = self.shift(n)
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def scr_pairs(n_classes: int, n_spurious: int, draws: int, seed: int = 0) -> list[tuple[tuple[int, int],
                                                                                         tuple[int, int]]]:
    """`draws` distinct (class pair, spurious pair) combinations, seeded."""
    combos = list(itertools.product(itertools.combinations(range(n_classes), 2),
                                    itertools.combinations(range(n_spurious), 2)))
    rng = np.random.default_rng([seed, 0x5C2])
    return [combos[i] for i in rng.permutation(len(combos))[:draws]]


def scr(acts: np.ndarray, y: np.ndarray, s: np.ndarray, is_test: np.ndarray, *, ns: Sequence[int] = ABLATE,
        correlation: float = 0.95, draws: int = 6, seed: int = 0, C: float = 1.0,
        pairs: Sequence[tuple[tuple[int, int], tuple[int, int]]] | None = None) -> SCRResult:
    """Spurious-correlation removal of concept `y` against spurious concept `s` (module docstring)."""
    acts = np.asarray(acts, np.float64)
    y, s, test = np.asarray(y), np.asarray(s), np.asarray(is_test, bool)
    if not 0.5 < correlation < 1:
        raise ValueError(f"correlation must be in (0.5, 1), got {correlation}")
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    pairs = list(pairs) if pairs is not None else scr_pairs(int(y.max()) + 1, int(s.max()) + 1, draws, seed)
    rng = np.random.default_rng([seed, 0x5C3])
    base, oracle, n_tr, n_te = [], [], [], []
    accs: dict[int, list[float]] = {int(n): [] for n in ns}
    for classes, spurious in pairs:
        tr = biased_rows(y, s, train_rows, classes, spurious, correlation, rng)
        te = balanced_rows(y, s, test_rows, classes, spurious, rng)
        orc = balanced_rows(y, s, train_rows, classes, spurious, rng, total=len(tr))
        if len(tr) < 4 or len(te) < 4 or len(orc) < 4:
            continue
        yb = lambda r: (y[r] == classes[1]).astype(np.int64)  # noqa: E731 - binary concept labels
        probe = fit_linear_probe(sp.csr_matrix(acts[tr]), yb(tr), C=C)
        o_probe = fit_linear_probe(sp.csr_matrix(acts[orc]), yb(orc), C=C)
        base.append(_accuracy(probe, acts[te], yb(te)))
        oracle.append(_accuracy(o_probe, acts[te], yb(te)))
        rank_rows = train_rows[np.isin(s[train_rows], spurious)]
        order = rank_units(acts[rank_rows], (s[rank_rows] == spurious[1]).astype(np.int64))
        for n in accs:
            accs[n].append(_accuracy(probe, ablated(acts[te], order[:n]), yb(te)))
        n_tr.append(len(tr))
        n_te.append(len(te))
    if not base:
        raise ValueError("SCR found no (class pair, spurious pair) with rows in every cell of both splits")
    return SCRResult(float(np.mean(base)), float(np.mean(oracle)), {n: float(np.mean(v)) for n, v in accs.items()},
                     len(base), int(np.mean(n_tr)), int(np.mean(n_te)))


# --------------------------------------------------------------------------- TPP
@dataclass(frozen=True)
class TPPResult:
    accuracy: np.ndarray  # (n_classes,) probe i on its own balanced test rows, nothing ablated
    drops: dict[int, np.ndarray]  # N → (n_classes, n_classes): drop of probe j when class i's units go

    def intended(self, n: int) -> float:
        return float(np.mean(np.diag(self.drops[n])))

    def unintended(self, n: int) -> float:
        d = self.drops[n]
        off = ~np.eye(d.shape[0], dtype=bool)
        return float(d[off].mean()) if off.any() else float("nan")

    def score(self, n: int) -> float:
        return self.intended(n) - self.unintended(n)

    def metrics(self, prefix: str = "tpp") -> dict[str, float]:
        out = {f"{prefix}.probe_accuracy": float(np.mean(self.accuracy))}
        for n in self.drops:
            out[f"{prefix}.n{n}"] = self.score(n)
            out[f"{prefix}.intended.n{n}"] = self.intended(n)
            out[f"{prefix}.unintended.n{n}"] = self.unintended(n)
        return {k: v for k, v in out.items() if np.isfinite(v)}


def _one_vs_rest_rows(y: np.ndarray, rows: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    on = rows[y[rows] == c]
    off = rng.permutation(rows[y[rows] != c])[:len(on)]
    return np.sort(np.concatenate([on, off])).astype(np.int64)


def tpp(acts: np.ndarray, y: np.ndarray, is_test: np.ndarray, *, ns: Sequence[int] = ABLATE, seed: int = 0,
        C: float = 1.0) -> TPPResult:
    """Targeted probe perturbation of concept `y` (module docstring)."""
    acts = np.asarray(acts, np.float64)
    y, test = np.asarray(y), np.asarray(is_test, bool)
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    classes = [int(c) for c in np.unique(y[train_rows]) if (y[test_rows] == c).any()]
    if len(classes) < 2:
        raise ValueError("TPP needs at least two classes present in both splits")
    rng = np.random.default_rng([seed, 0x799])
    probes, tests, orders = [], [], []
    for c in classes:
        tr = _one_vs_rest_rows(y, train_rows, c, rng)
        probes.append(fit_linear_probe(sp.csr_matrix(acts[tr]), (y[tr] == c).astype(np.int64), C=C))
        tests.append(_one_vs_rest_rows(y, test_rows, c, rng))
        orders.append(np.argsort(-signed_scores(acts[train_rows], y[train_rows] == c), kind="stable"))
    base = np.array([_accuracy(p, acts[te], (y[te] == c).astype(np.int64))
                     for p, te, c in zip(probes, tests, classes)])
    drops: dict[int, np.ndarray] = {}
    for n in ns:
        d = np.zeros((len(classes), len(classes)))
        for i in range(len(classes)):
            units = orders[i][:int(n)]
            for j, (p, te, c) in enumerate(zip(probes, tests, classes)):
                d[i, j] = base[j] - _accuracy(p, ablated(acts[te], units), (y[te] == c).astype(np.int64))
        drops[int(n)] = d
    return TPPResult(base, drops)
