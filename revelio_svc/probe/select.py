"""Choose a linear probe's inputs and regularisation by cross-validation on training rows alone.

A raw-feature probe has choices to make (how token maps are pooled into an image vector, how strongly the
weights are held back). Taking the best of them on the test rows would report the luckiest draw, so
`choose_probe` is only ever handed training rows: it scores each (inputs, C) pair by stratified k-fold
cross-validation on them and returns the winner with the whole table, so every candidate is reported.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..parallel import thread_map
from .linear import Matrix, fit_linear_probe, fit_warnings

DEFAULT_CS = (0.1, 0.3, 1.0, 3.0)
RAW_PREFIX = "raw_probe."


@dataclass(frozen=True)
class ProbeChoice:
    """The chosen inputs and C, and every candidate's mean cross-validated accuracy on the training rows."""

    inputs: str
    C: float
    cv_accuracy: float
    table: tuple[tuple[str, float, float], ...]  # (inputs, C, cv accuracy) for every candidate


def cv_accuracy(X: Matrix, y: np.ndarray, C: float, folds: int = 5, seed: int = 0, max_iter: int = 2000) -> float:
    """Mean held-out accuracy of a linear probe over stratified `folds` of the rows of X."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    if X.shape[0] != len(y):
        raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} labels")
    smallest = int(np.unique(y, return_counts=True)[1].min()) if len(y) else 0
    if smallest < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} rows of every class; "
                         f"the rarest class has {smallest}")
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    return float(np.mean([np.mean(fit_linear_probe(X[a], y[a], C=C, max_iter=max_iter, seed=seed).predict(X[b]) == y[b])
                          for a, b in split]))


def choose_probe(candidates: Mapping[str, Matrix], y_train: np.ndarray, Cs: Sequence[float] = DEFAULT_CS,
                 folds: int = 5, seed: int = 0) -> ProbeChoice:
    """The (inputs, C) with the best cross-validated accuracy; `candidates` hold *training rows only*.

    A tie goes to the earlier candidate, then the smaller C (the simpler probe).
    """
    if not candidates:
        raise ValueError("choose_probe needs at least one candidate input")
    if not Cs or min(Cs) <= 0:
        raise ValueError(f"Cs must be positive inverse regularisation strengths, got {list(Cs)}")
    y_train = np.asarray(y_train, np.int64)
    for name, X in candidates.items():
        if X.shape[0] != len(y_train):
            raise ValueError(f"candidate {name!r} has {X.shape[0]} rows but there are {len(y_train)} labels")
    grid = [(name, float(C)) for name in candidates for C in sorted(Cs)]
    # the fits are independent and release the GIL: side by side, results in grid order
    scores = thread_map(lambda nc: cv_accuracy(candidates[nc[0]], y_train, nc[1], folds, seed), grid,
                        quiet=fit_warnings())
    table = tuple((n, C, acc) for (n, C), acc in zip(grid, scores))
    best = max(table, key=lambda r: r[2])  # max keeps the first of equals
    return ProbeChoice(best[0], best[1], best[2], table)


def raw_inputs_available(store, hook_point: str, timestep: int) -> bool:
    """Whether the store holds features `raw_inputs` can pool at this hook point and timestep."""
    return any(store.has(hook_point, timestep, p) for p in ("mean", "max", "tokens"))


def raw_inputs(store, hook_point: str, timestep: int,
               known: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The image vectors a raw-feature probe may read at one hook point: the stored mean and max pooling,
    both side by side, and the mean of each channel's 8 strongest positions when token maps are stored.

    `known`: some of them already pooled by the caller (pooling name → matrix, every row in store order), so the
    token maps are not read and pooled a second time."""
    from .controls import pool_tokens

    known = known or {}
    out = {p: known[p] if p in known else store.feature_set(hook_point, timestep, p).load()
           for p in ("mean", "max") if p in known or store.has(hook_point, timestep, p)}
    if "mean" in out and "max" in out:
        out["mean+max"] = np.hstack([out["mean"], out["max"]])
    if "top8" in known:
        out["top8"] = known["top8"]
    elif store.has(hook_point, timestep, "tokens"):
        out["top8"] = pool_tokens(store.feature_set(hook_point, timestep, "tokens").load(), "top8")
    return out


@dataclass(frozen=True)
class RawProbe:
    """A raw-feature probe chosen on the train rows and scored once on the test rows."""

    choice: ProbeChoice
    test_accuracy: float
    n_train: int
    n_test: int

    def metrics(self, prefix: str = RAW_PREFIX) -> dict[str, float]:
        return {f"{prefix}accuracy": self.test_accuracy, f"{prefix}cv_accuracy": self.choice.cv_accuracy,
                f"{prefix}C": self.choice.C}


def raw_probe(store, hook_point: str, timestep: int, concept: str, folds: int = 5,
              known: Mapping[str, np.ndarray] | None = None, **kw) -> RawProbe:
    """What a linear probe reads of `concept` from the raw features at one hook point: inputs and C chosen
    by `choose_probe` on the store's train rows, then fitted on all of them and scored on its test rows.

    `folds` shrinks to the rarest class's train rows on a small store (at least 2, else ValueError); `known` as
    in `raw_inputs`."""
    inputs = raw_inputs(store, hook_point, timestep, known)
    if not inputs:
        raise ValueError(f"the store holds no pooled or token features at {hook_point} t={timestep}")
    y, test = store.labels(concept), store.is_test()
    rarest = int(np.unique(y[~test], return_counts=True)[1].min())
    if rarest < 2:
        raise ValueError(f"{concept}: a class has {rarest} train row(s); cross-validation needs 2 per class")
    choice = choose_probe({k: v[~test] for k, v in inputs.items()}, y[~test], folds=min(folds, rarest),
                          **kw)  # no test row goes in
    X = inputs[choice.inputs]
    probe = fit_linear_probe(X[~test], y[~test], C=choice.C, max_iter=2000, seed=kw.get("seed", 0))
    acc = float(np.mean(probe.predict(X[test]) == y[test]))
    return RawProbe(choice, acc, int((~test).sum()), int(test.sum()))
