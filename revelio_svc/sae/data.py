"""SAE training data: the vectors of one feature set of a store, shuffled across shards in bounded memory.

Which rows: training uses the store's train rows (`split == 0`), evaluation its test rows. A store
without test rows falls back to holding out `heldout_fraction` of the train images, chosen by a hash of
their dataset index (so the choice never depends on shard order), and never trains on them. With
`eval_rows="validation"` (tuning) a `validation_fraction` of the train images evaluates
(`data.splits.validation_mask`, the rows the interpretation report scores too), the rest train, and the
test rows are in neither: a tuning study never reads them.

Which vectors: a pooled set gives one vector per row; a `tokens` set gives H·W vectors per row (each
(n, H, W, C) shard is reshaped to (n·H·W, C)).

Order (deterministic, resumable from one integer): epoch `e` visits the shards in the permutation
`default_rng([seed, e])`; consecutive shards of that order form a *group* holding at least
`buffer_vectors` vectors (a shard is the unit of reading, so a group is never smaller than one shard);
a group's vectors are shuffled with `default_rng([seed, e, g, 1])`. The stream is the concatenation of
the shuffled groups, epoch after epoch, and batch `b` is stream items [b·B, (b+1)·B). The position in
the stream (samples consumed) is the whole data state of a checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..data.splits import validation_mask
from ..features.store import FeatureSet, FeatureStore, StoreError


class NonFiniteInputError(ValueError):
    """Input features hold NaN or inf; `problems` lists {shard, rows, indices} per affected shard."""

    def __init__(self, problems: list[dict], where: str):
        self.problems = problems
        parts = []
        for p in problems:
            idx = ", ".join(map(str, p["indices"][:5])) + (", …" if len(p["indices"]) > 5 else "")
            parts.append(f"shard {p['shard']}: {p['rows']} row(s) with NaN/inf (dataset indices {idx})")
        super().__init__(f"non-finite input features (NaN/inf) in {where}: " + "; ".join(parts)
                         + ". Re-extract those shards (delete them from the manifest) or fix the backbone dtype.")


def heldout_mask(index: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Deterministic per-image choice of a held-out fraction, from the dataset index alone."""
    salt = np.uint64((seed * 0x632BE59BD9B4E019 + 1) % (1 << 64))
    h = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(1 << 24)).astype(np.float64) / float(1 << 24) < fraction


def feature_set_for(store: FeatureStore, hook_point: str, timestep: int, input_kind: str, pooling: str) -> FeatureSet:
    """The feature set an SAE trains on: `tokens` for token SAEs, else the pooled set (mean/max)."""
    return store.feature_set(hook_point, timestep, "tokens" if input_kind == "tokens" else pooling)


@dataclass
class SplitPlan:
    """Per shard: which local rows train and which evaluate, and how many vectors that gives."""

    train_rows: dict[int, np.ndarray]
    eval_rows: dict[int, np.ndarray]
    index: dict[int, np.ndarray]  # dataset index of each local row
    per_row: int  # vectors per row (H·W for tokens, else 1)
    heldout_fallback: bool  # the store had no test rows
    validation: bool = False  # evaluation rows carved from the train rows; test rows unused

    def describe(self, sc) -> str:
        if self.validation:
            return f"validation: {sc.validation_fraction:g} of the train images (test rows unread)"
        if self.heldout_fallback:
            return f"{sc.heldout_fraction:g} of the train images (the store has no test rows)"
        return "store test rows"

    @property
    def n_train(self) -> int:
        return sum(len(r) for r in self.train_rows.values()) * self.per_row

    @property
    def n_eval(self) -> int:
        return sum(len(r) for r in self.eval_rows.values()) * self.per_row


def plan_split(fset: FeatureSet, heldout_fraction: float = 0.1, seed: int = 0, eval_rows: str = "test",
               validation_fraction: float = 0.2) -> SplitPlan:
    store = fset.store
    if not store.complete:
        raise StoreError(f"the feature store at {store.uri} is incomplete ({len(store.shard_ids)} of "
                         f"{store.manifest.n_shards} shards); run `revelio extract` with the same config "
                         "to finish it")
    per_row = int(np.prod(fset.shape[:-1])) if len(fset.shape) > 1 else 1
    rows = {i: store.rows(i) for i in store.shard_ids}
    any_test = any(bool(r["split"].astype(bool).any()) for r in rows.values())
    train, ev, index = {}, {}, {}
    if eval_rows not in ("test", "validation"):
        raise ValueError(f"eval_rows must be 'test' or 'validation', got {eval_rows!r}")
    for i, r in rows.items():
        split = r["split"].astype(bool)
        index[i] = r["index"]
        if eval_rows == "validation":
            val = validation_mask(r["index"], validation_fraction, seed) & ~split
            train[i], ev[i] = np.flatnonzero(~split & ~val), np.flatnonzero(val)
            continue
        if any_test:
            test = split
        else:
            test = heldout_mask(r["index"], heldout_fraction, seed)
        train[i] = np.flatnonzero(~test)
        ev[i] = np.flatnonzero(test)
    return SplitPlan(train, ev, index, per_row, not any_test, eval_rows == "validation")


def _vectors(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    sel = arr[rows]
    return np.ascontiguousarray(sel.reshape(-1, sel.shape[-1]), dtype=np.float32)


def _check_finite(arr: np.ndarray, rows: np.ndarray, index: np.ndarray, shard: int) -> dict | None:
    sel = arr[rows]
    bad = ~np.isfinite(sel.reshape(len(rows), -1)).all(axis=1)
    if bad.any():
        return {"shard": shard, "rows": int(bad.sum()), "indices": [int(x) for x in index[rows[bad]]]}
    return None


class ActivationStream:
    """Shuffled, resumable stream of training vectors of one feature set (see the module docstring)."""

    def __init__(self, fset: FeatureSet, plan: SplitPlan, batch_size: int, seed: int = 0,
                 buffer_vectors: int = 1 << 20):
        self.fset = fset
        self.plan = plan
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.buffer_vectors = max(1, int(buffer_vectors))
        self.shards = sorted(i for i, r in plan.train_rows.items() if len(r))
        self.counts = {i: len(plan.train_rows[i]) * plan.per_row for i in self.shards}
        self.n_vectors = sum(self.counts.values())
        if self.n_vectors == 0:
            raise StoreError(f"the feature set {fset.key} of {fset.store.uri} has no training rows")

    # ------------------------------------------------------------------ layout
    def groups(self, epoch: int) -> list[list[int]]:
        order = [self.shards[j] for j in np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))]
        groups: list[list[int]] = []
        cur: list[int] = []
        size = 0
        for s in order:
            cur.append(s)
            size += self.counts[s]
            if size >= self.buffer_vectors:
                groups.append(cur)
                cur, size = [], 0
        if cur:
            groups.append(cur)
        return groups

    def load_group(self, epoch: int, g: int, shards: list[int]) -> tuple[np.ndarray, np.ndarray]:
        parts, problems = [], []
        for s in shards:
            arr = self.fset.shard(s)
            rows = self.plan.train_rows[s]
            p = _check_finite(arr, rows, self.plan.index[s], s)
            if p:
                problems.append(p)
                continue
            parts.append(_vectors(arr, rows))
        if problems:
            raise NonFiniteInputError(problems, f"the training rows of {self.fset.key} ({self.fset.store.uri})")
        x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        perm = np.random.default_rng([self.seed, epoch, g, 1]).permutation(len(x))
        return x, perm

    # ------------------------------------------------------------------ iteration
    def batches(self, start: int = 0) -> Iterator[np.ndarray]:
        """Batches (B, d) float32 from stream position `start` (samples consumed so far) on, forever."""
        B = self.batch_size
        epoch, off = divmod(int(start), self.n_vectors)
        pending: list[np.ndarray] = []
        have = 0
        while True:
            groups = self.groups(epoch)
            base = 0
            for g, shards in enumerate(groups):
                size = sum(self.counts[s] for s in shards)
                if off >= base + size:
                    base += size
                    continue
                x, perm = self.load_group(epoch, g, shards)
                pos = off - base
                while pos < size:
                    take = min(B - have, size - pos)
                    pending.append(x[perm[pos:pos + take]])
                    have += take
                    pos += take
                    if have == B:
                        yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                        pending, have = [], 0
                base += size
                off = base
            epoch += 1
            off = 0

    def sample(self, n: int) -> np.ndarray:
        """The first `n` vectors of the stream (used for normalisation statistics and b_pre)."""
        n = min(int(n), self.n_vectors)
        it = ActivationStream(self.fset, self.plan, n, self.seed, self.buffer_vectors).batches(0)
        return next(it)


def eval_vectors(fset: FeatureSet, plan: SplitPlan, max_vectors: int = 65536, seed: int = 0) -> np.ndarray:
    """Held-out vectors (the store's test rows), at most `max_vectors`, subsampled evenly per shard."""
    total = plan.n_eval
    if total == 0:
        raise StoreError(f"the feature set {fset.key} of {fset.store.uri} has no held-out rows to evaluate on")
    frac = min(1.0, max_vectors / total)
    parts, problems = [], []
    for s in sorted(plan.eval_rows):
        rows = plan.eval_rows[s]
        if not len(rows):
            continue
        arr = fset.shard(s)
        p = _check_finite(arr, rows, plan.index[s], s)
        if p:
            problems.append(p)
            continue
        v = _vectors(arr, rows)
        if frac < 1.0:
            m = max(1, round(len(v) * frac))
            keep = np.sort(np.random.default_rng([seed, s, 2]).choice(len(v), size=m, replace=False))
            v = v[keep]
        parts.append(v)
    if problems:
        raise NonFiniteInputError(problems, f"the held-out rows of {fset.key} ({fset.store.uri})")
    return np.concatenate(parts)
