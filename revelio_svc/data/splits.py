"""Train/test assignment and few-shot picks that depend on the image, not on where it sits in a list.

`assign_split` decides each image from a hash of (seed, id) alone: adding images, dropping bad ones,
or reading them in another order never moves an image between train and test, and the same seed gives
the same split on every machine. Few-shot picks rank each candidate by a seeded hash of its index, so the
n=1 pick is part of the n=5 pick (few-shot curves compare nested sets) and candidate order is irrelevant.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

_U64 = float(2**64)


def stable_unit(seed: int, key: str, salt: str = "split") -> float:
    """A number in [0, 1) fixed by (salt, seed, key), the same in every process and on every machine."""
    digest = hashlib.blake2b(f"{salt}\0{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _U64


def assign_split(ids: Sequence[str], seed: int, test_fraction: float) -> np.ndarray:
    """Boolean mask over `ids`, True = test. Each id is decided on its own: about `test_fraction` of them
    are test, exactly so only on average (a tiny dataset can end up with no test image; see
    `train_test_indices`, which checks)."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    return np.fromiter((stable_unit(seed, str(i)) < test_fraction for i in ids), dtype=bool, count=len(ids))


def train_test_indices(ids: Sequence[str], seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), each sorted int64; raises if either side is empty."""
    test = assign_split(ids, seed, test_fraction)
    train_idx, test_idx = np.flatnonzero(~test).astype(np.int64), np.flatnonzero(test).astype(np.int64)
    if len(train_idx) == 0 or len(test_idx) == 0:
        empty = "train" if len(train_idx) == 0 else "test"
        raise ValueError(f"the {empty} split is empty: {len(ids)} images with test_fraction={test_fraction} "
                         f"and seed={seed}; use more images or a test_fraction further from 0 and 1")
    return train_idx, test_idx


class FewShotShortfall(UserWarning):
    """Some class had fewer candidates than the few-shot n asked for (only with allow_fewer=True)."""


def _index_rank(indices: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random key per dataset index (splitmix64), identical on every platform."""
    with np.errstate(over="ignore"):
        x = indices.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def few_shot_indices(labels: Sequence[int] | np.ndarray, candidates: Iterable[int], n_per_class: int,
                     seed: int, *, n_classes: int | None = None, allow_fewer: bool = False) -> np.ndarray:
    """Pick `n_per_class` images of every class among `candidates` (pass the train indices only).

    `labels` covers the whole dataset; negative labels mean "unlabelled" and are never picked. Classes are
    those present among the candidates, or 0..n_classes-1 when `n_classes` is given (so a class with no
    candidate at all is noticed). Returns sorted int64 dataset indices.

    A class with fewer than `n_per_class` candidates raises `ValueError` naming each short class and its
    count, because a few-shot result with silently unequal shots is not the experiment that was asked for.
    With `allow_fewer=True` such classes contribute all their candidates and a `FewShotShortfall` warning
    carries the same message.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    cand = np.unique(np.fromiter((int(c) for c in candidates), dtype=np.int64))
    if len(cand) and (cand[0] < 0 or cand[-1] >= len(labels)):
        bad = cand[0] if cand[0] < 0 else cand[-1]
        raise ValueError(f"candidate index {bad} is out of range for {len(labels)} labels")
    cand_labels = labels[cand]
    keep = cand_labels >= 0
    cand, cand_labels = cand[keep], cand_labels[keep]
    classes = (np.arange(n_classes) if n_classes is not None else np.unique(cand_labels))
    if len(classes) == 0:
        raise ValueError("no labelled candidates to pick few-shot images from")

    picks: list[np.ndarray] = []
    short: list[str] = []
    for c in classes:
        members = cand[cand_labels == c]
        if len(members) < n_per_class:
            short.append(f"class {int(c)} has {len(members)}")
        order = np.argsort(_index_rank(members, seed), kind="stable")
        picks.append(members[order[:n_per_class]])
    if short:
        msg = (f"few-shot n={n_per_class} per class, but among the {len(cand)} labelled candidates "
               f"{'; '.join(short)}")
        if not allow_fewer:
            raise ValueError(msg + "; lower n_per_class, or pass allow_fewer=True to take all of them")
        warnings.warn(msg + "; took all of them", FewShotShortfall, stacklevel=2)
    return np.sort(np.concatenate(picks)).astype(np.int64)


def validation_mask(index: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask over dataset indices: about `fraction` of them, chosen by a seeded hash of the index alone
    (the same rows in every process, whatever the store order), drawn independently of `assign_split`.
    Carved from the train rows, it is what tuning scores on so the test rows choose nothing."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    h = _index_rank(np.asarray(index, np.int64), seed ^ 0x5A11D)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def stratified_sample(labels: Sequence[int] | np.ndarray, candidates: Iterable[int], n: int, seed: int) -> np.ndarray:
    """At most `n` of `candidates` (indices into `labels`), every class in proportion to its share among them
    (largest remainders), each class's members ranked by a seeded hash of their index: the sample does not
    depend on candidate order, so a dataset stored class by class gives a class-balanced sample. Sorted int64."""
    cand = np.unique(np.fromiter((int(c) for c in candidates), dtype=np.int64))
    if n >= len(cand):
        return cand
    if n <= 0:
        return np.zeros(0, np.int64)
    lab = np.asarray(labels)[cand]
    classes, counts = np.unique(lab, return_counts=True)
    quota = counts * (n / len(cand))
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[:n - int(take.sum())]] += 1
    picks = []
    for c, t in zip(classes, take):
        members = cand[lab == c]
        picks.append(members[np.argsort(_index_rank(members, seed), kind="stable")[:t]])
    return np.sort(np.concatenate(picks)).astype(np.int64)
