"""Out-of-memory backoff for batched forwards: halve the batch and retry instead of failing the run.

How extraction should call it
-----------------------------
Keep one `OOMBackoff` for the whole extraction so that, after a batch runs out of memory, later
batches start at the size that worked instead of failing again at the configured size::

    backoff = OOMBackoff(cfg.extract.batch_size)
    for images, ids, names in batches:                       # batches of extract.batch_size
        def step(sub):                                       # sub = (images, ids, names) sliced alike
            imgs, sub_ids, sub_names = sub
            x0 = adapter.encode(imgs)
            cond = adapter.conditioning(len(sub_ids), class_names=sub_names)   # cached embeddings
            return {t: adapter.capture(adapter.add_noise(x0, t, sub_ids, seed), t, cond, hook_points)
                    for t in timesteps}
        out = backoff.run(step, (images, ids, names))        # sub-results merged back in order

`fn` must build everything that depends on the batch (conditioning included) from the sub-batch it is
given, and must not keep references to tensors of a failed attempt: the memory is only freed once
the exception is gone. Because noise is seeded per (image, t) (`base.seeded_noise`), the features
do not depend on where the batch was split.

`run_with_oom_backoff(fn, batch)` is the one-shot form of the same thing.
"""
from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

# CPU allocators say it in several ways; CUDA/MPS raise torch.cuda.OutOfMemoryError or "out of memory"
_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


class BatchTooLargeError(RuntimeError):
    """Out of memory even at the smallest allowed batch size."""


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(err, (RuntimeError, MemoryError)):
        text = str(err).lower()
        return isinstance(err, MemoryError) or any(m in text for m in _OOM_MESSAGES)
    return False


def batch_len(batch: Any) -> int:
    if isinstance(batch, tuple):
        return batch_len(batch[0])
    if isinstance(batch, Mapping):
        return batch_len(next(iter(batch.values())))
    return len(batch)


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """The same rows of every part of a batch: a tuple or dict of arrays/tensors/lists, or one of them."""
    if isinstance(batch, tuple):
        return tuple(slice_batch(b, start, stop) for b in batch)
    if isinstance(batch, Mapping):
        return {k: slice_batch(v, start, stop) for k, v in batch.items()}
    if batch is None:
        return None
    return batch[start:stop]


def merge_results(parts: Sequence[Any]) -> Any:
    """Concatenate sub-batch results along the batch dimension, recursing into dicts/tuples."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts), dim=0)
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=0)
    if isinstance(first, Mapping):
        return {k: merge_results([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(merge_results([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, list):
        return [x for p in parts for x in p]
    if first is None:
        return None
    raise TypeError(f"cannot merge sub-batch results of type {type(first).__name__}; "
                    f"return tensors, arrays, lists, or dicts/tuples of them")


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class OOMBackoff:
    """Runs `fn` on sub-batches of at most `batch_size`, halving it on out-of-memory; remembers the size."""

    def __init__(self, batch_size: int, min_batch: int = 1, log: Callable[[str], None] = print):
        if batch_size < 1 or min_batch < 1:
            raise ValueError(f"batch_size and min_batch must be >= 1, got {batch_size} and {min_batch}")
        self.batch_size = batch_size
        self.min_batch = min(min_batch, batch_size)
        self.log = log

    def run(self, fn: Callable[[Any], Any], batch: Any) -> Any:
        n = batch_len(batch)
        parts: list[Any] = []
        start = 0
        while start < n:
            size = min(self.batch_size, n - start)
            failed: str | None = None
            try:
                parts.append(fn(slice_batch(batch, start, start + size)))
            except Exception as e:
                if not is_oom(e):
                    raise
                # keep only the message: the traceback holds the frames (and tensors) of the failed try
                failed = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            if failed is None:
                start += size
                continue
            _free_memory()
            if size <= self.min_batch:
                raise BatchTooLargeError(
                    f"out of memory even at batch size {size} (the minimum is {self.min_batch}): {failed}. "
                    f"Use a smaller backbone.resolution, a lower-precision backbone.dtype, or a larger device.")
            self.batch_size = max(self.min_batch, size // 2)
            self.log(f"out of memory at batch size {size}; retrying with batch size {self.batch_size}")
        return merge_results(parts)


def run_with_oom_backoff(fn: Callable[[Any], Any], batch: Any, min_batch: int = 1,
                         log: Callable[[str], None] = print) -> Any:
    """`fn(batch)`, or on out-of-memory `fn` over halves (quarters, …) of it, results merged in order."""
    return OOMBackoff(batch_len(batch), min_batch=min_batch, log=log).run(fn, batch)
