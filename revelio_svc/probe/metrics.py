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


# --------------------------------------------------------------------------- figures
def confusion_figure(cm: np.ndarray, class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix with counts written in each cell."""
    import matplotlib  # deferred: pyplot picks a backend on import, and most callers never draw

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
