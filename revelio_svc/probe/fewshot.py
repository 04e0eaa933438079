"""Few-shot protocol: n-way k-shot, repeated over seeds, reported as mean ± std.

Training rows come only from the store's train split and evaluation rows only from its test split. The
sampler checks that on every call (`check_no_leak` raises, it is not an `assert` that `python -O` strips).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import FewShotShortfall, few_shot_indices
from .metrics import accuracy, chance_accuracy, macro_f1, mean_std


class LeakError(RuntimeError):
    """A test row reached training (or a train row reached evaluation)."""


def parse_shots(shots: Sequence[str | int]) -> list[int | None]:
    """("1", "5", "all") → [1, 5, None]; None = every training row."""
    out: list[int | None] = []
    for s in shots:
        s = str(s)
        if s == "all":
            out.append(None)
        elif s.isdigit() and int(s) > 0:
            out.append(int(s))
        else:
            raise ValueError(f"shots must be positive integers or 'all'; got {s!r}")
    return out


def shot_name(k: int | None) -> str:
    return "all" if k is None else str(k)


def check_no_leak(train_rows: np.ndarray, test_rows: np.ndarray, is_test: np.ndarray) -> None:
    is_test = np.asarray(is_test, bool)
    train_rows, test_rows = np.asarray(train_rows, np.int64), np.asarray(test_rows, np.int64)
    if is_test[train_rows].any():
        bad = train_rows[is_test[train_rows]][:5].tolist()
        raise LeakError(f"{int(is_test[train_rows].sum())} test-split row(s) were picked for training, e.g. {bad}")
    if (~is_test[test_rows]).any():
        bad = test_rows[~is_test[test_rows]][:5].tolist()
        raise LeakError(f"{int((~is_test[test_rows]).sum())} train-split row(s) were picked for evaluation, e.g. {bad}")
    if np.intersect1d(train_rows, test_rows).size:
        raise LeakError("a row is both in training and in evaluation")


def few_shot_rows(labels: np.ndarray, is_test: np.ndarray, k: int | None, seed: int,
                  index: np.ndarray | None = None) -> np.ndarray:
    """Up to `k` training rows per class (every training row for k=None), sorted row positions.

    The draw is `revelio_svc.data.few_shot_indices` over the dataset indices of the train rows (`index`,
    the store's `index()`; row positions when omitted): each image is ranked by a seeded hash of its
    dataset index, so the picks do not move when other images are skipped, and for one seed the 1-shot
    rows are among the 5-shot rows. A class with fewer than k training rows contributes all it has.
    """
    labels = np.asarray(labels, np.int64)
    is_test = np.asarray(is_test, bool)
    if labels.shape != is_test.shape:
        raise ValueError(f"labels ({labels.shape}) and is_test ({is_test.shape}) differ in length")
    index = np.arange(len(labels), dtype=np.int64) if index is None else np.asarray(index, np.int64)
    if index.shape != labels.shape or (len(index) > 1 and np.any(np.diff(index) <= 0)):
        raise ValueError("index must hold one increasing dataset index per row (the store's index())")
    train = np.flatnonzero(~is_test)
    if k is None or train.size == 0:
        picked = train
    else:
        # labels over dataset indices; -1 (never picked) where no row of the store is that image
        by_index = np.full(int(index[-1]) + 1, -1, np.int64)
        by_index[index] = labels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewShotShortfall)  # small classes: the run records n_train
            chosen = few_shot_indices(by_index, index[train], k, seed, allow_fewer=True)
        picked = np.searchsorted(index, chosen).astype(np.int64)
    check_no_leak(picked, np.flatnonzero(is_test), is_test)
    return picked


@dataclass
class FewShotResult:
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per (shots, seed)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # shots → mean/std
    models: dict[tuple[str, int], Any] = field(default_factory=dict)  # kept fits, by (shots, seed)
    predictions: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)


def run_few_shot(fit: Callable[[Any, np.ndarray, int], Any], X: Any, labels: np.ndarray, is_test: np.ndarray,
                 shots: Sequence[str | int], seeds: int, n_classes: int, deterministic: bool = False,
                 keep: Sequence[tuple[str, int]] = (), index: np.ndarray | None = None) -> FewShotResult:
    """Fit `fit(X_train, y_train, seed) -> model with .predict` for every k in `shots` and seed in
    range(seeds); evaluate each on every test row.

    `deterministic=True` (a convex probe) runs k=all once: the same rows give the same model, and
    repeating it would only pretend to measure a spread. `keep` lists (shots, seed) whose model and test
    predictions are returned.
    """
    labels = np.asarray(labels, np.int64)
    is_test = np.asarray(is_test, bool)
    test_rows = np.flatnonzero(is_test)
    if test_rows.size == 0:
        raise ValueError("the store has no test rows: the probe cannot be evaluated (check data.test_fraction)")
    if (~is_test).sum() == 0:
        raise ValueError("the store has no training rows")
    y_test = labels[test_rows]
    X_test = X[test_rows]
    res = FewShotResult()
    for k in parse_shots(shots):
        name = shot_name(k)
        n_seeds = 1 if (k is None and deterministic) else seeds
        accs, f1s, ns = [], [], []
        for seed in range(n_seeds):
            rows = few_shot_rows(labels, is_test, k, seed, index)
            check_no_leak(rows, test_rows, is_test)
            y_train = labels[rows]
            if np.unique(y_train).size < 2:
                res.runs.append({"shots": name, "seed": seed, "n_train": int(rows.size), "accuracy": float("nan"),
                                 "macro_f1": float("nan"), "skipped": "fewer than two classes in the training rows"})
                continue
            model = fit(X[rows], y_train, seed)
            pred = np.asarray(model.predict(X_test))
            acc, f1 = accuracy(y_test, pred), macro_f1(y_test, pred, n_classes)
            accs.append(acc)
            f1s.append(f1)
            ns.append(rows.size)
            res.runs.append({"shots": name, "seed": seed, "n_train": int(rows.size), "accuracy": acc,
                             "macro_f1": f1, "chance": chance_accuracy(y_train, y_test)})
            if (name, seed) in keep:
                res.models[(name, seed)] = model
                res.predictions[(name, seed)] = pred
        am, as_ = mean_std(accs)
        fm, fs = mean_std(f1s)
        res.summary[name] = {"accuracy_mean": am, "accuracy_std": as_, "macro_f1_mean": fm, "macro_f1_std": fs,
                             "n_runs": len(accs), "n_train_mean": float(np.mean(ns)) if ns else float("nan")}
    return res
