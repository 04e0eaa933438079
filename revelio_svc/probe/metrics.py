"""Probe metrics as small pure functions (scikit-learn underneath), plus the confusion figure.

Every function takes integer label ids in `[0, n_classes)` so that a class absent from a test split still
has its row and column in the confusion matrix (few-shot runs on small stores hit that case).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predicted ones."""
    y_true, y_pred = _check_pair(y_true, y_pred, n_classes)
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("accuracy of an empty set is undefined (no test rows?)")
    return float(accuracy_score(y_true, y_pred))


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of each class; NaN for a class with no test rows (it has no accuracy, not zero)."""
    y_true, y_pred = _check_pair(y_true, y_pred, n_classes)
    return recall_score(y_true, y_pred, labels=np.arange(n_classes), average=None, zero_division=np.nan)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes that occur in y_true or y_pred (sklearn's own convention)."""
    y_true, y_pred = _check_pair(y_true, y_pred, n_classes)
    if y_true.size == 0:
        raise ValueError("macro-F1 of an empty set is undefined (no test rows?)")
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0.0))


def chance_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent training class: the floor any probe must beat."""
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if y_train.size == 0 or y_test.size == 0:
        return float("nan")
    vals, counts = np.unique(y_train, return_counts=True)
    return float(np.mean(y_test == vals[np.argmax(counts)]))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1, per-class accuracy (by class name) and the confusion matrix of one evaluation."""
    k = len(class_names)
    pca = per_class_accuracy(y_true, y_pred, k)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, k),
        "per_class_accuracy": {str(n): float(a) for n, a in zip(class_names, pca)},
        "confusion": confusion(y_true, y_pred, k),
        "n_test": int(np.asarray(y_true).size),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0: with one seed the spread is 0, not undefined)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def label_spread(labels: np.ndarray, n_classes: int) -> float:
    """Spread of categorical labels: the total std of their one-hot codes, sqrt(sum_c p_c (1 - p_c)).

    0 when every label is the same, sqrt(1 - 1/K) when they are uniform over K classes. Unlike the std
    of label ids, it does not depend on how classes happen to be numbered.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    p = np.bincount(labels, minlength=n_classes) / labels.size
    return float(np.sqrt(np.sum(p * (1 - p))))


def sigma_label(acts: np.ndarray, labels: np.ndarray, n_classes: int, top_n: int = 20,
                require_active: bool = True) -> dict[str, float]:
    """The paper's label spread over top-activating images, for every unit of `acts` (n_images, n_units).

    For each unit active (> 0) on at least `top_n` images (every unit when `require_active` is False, as
    for raw channels, which are signed and have no "inactive"), take its `top_n` highest-activating images and
    measure the spread of their labels (`label_spread`); report the mean over those units, how many
    qualified, and the same spread for the whole dataset (what a unit that ignores the label gets).
    Lower is more monosemantic for this concept.
    """
    acts = np.asarray(acts)
    labels = np.asarray(labels)
    if acts.ndim != 2 or len(acts) != len(labels):
        raise ValueError(f"acts must be (n_images, n_units) with one label per image; got {acts.shape}, "
                         f"{labels.shape}")
    active = ((acts > 0).sum(axis=0) >= top_n) if require_active else np.ones(acts.shape[1], bool)
    units = np.flatnonzero(active)
    base = label_spread(labels, n_classes)
    if units.size == 0 or len(acts) < top_n:
        return {"sigma_label": float("nan"), "sigma_label_units": 0, "sigma_label_chance": base}
    # argpartition keeps this O(n·units); the order inside the top set does not matter to the spread
    top = np.argpartition(-acts[:, units], top_n - 1, axis=0)[:top_n]  # (top_n, units)
    top_labels = labels[top]
    onehot = np.zeros((units.size, n_classes))
    for c in range(n_classes):
        onehot[:, c] = (top_labels == c).mean(axis=0)
    spreads = np.sqrt(np.sum(onehot * (1 - onehot), axis=1))
    return {"sigma_label": float(spreads.mean()), "sigma_label_units": int(units.size), "sigma_label_chance": base}


# --------------------------------------------------------------------------- figures
def confusion_figure(cm: np.ndarray, class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix with counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    k = len(class_names)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(3.5, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:  # beyond that the numbers are unreadable
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _check_pair(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, np.int64).ravel()
    y_pred = np.asarray(y_pred, np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels, y_pred {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} has label ids outside [0, {n_classes})")
    return y_true, y_pred
