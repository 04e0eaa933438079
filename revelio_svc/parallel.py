"""Independent probe fits side by side on threads.

scikit-learn's saga and lbfgs solvers spend most of a fit in single-threaded compiled loops that release the
GIL, so the fits a stage makes one after another (a probe per control, per shot count, per seed) leave every
other core idle. `thread_map` runs them on a few threads and returns the results in input order. Each fit
seeds its own solver, and BLAS and OpenMP run one thread per fit meanwhile (what `fit_linear_probe` already
does for the probes of this service's sizes), so the numbers are those of a serial run.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_WORKERS = 8
# threads for the fits (1 = one after another); default: the cores this process may use, at most MAX_WORKERS
WORKERS_ENV = "REVELIO_FIT_WORKERS"


def fit_workers() -> int:
    """Threads `thread_map` uses by default: $REVELIO_FIT_WORKERS, else the usable cores (≤ MAX_WORKERS)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV} must be a whole number of threads, got {raw!r}") from None
        if n < 1:
            raise ValueError(f"{WORKERS_ENV} must be at least 1, got {n}")
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
               quiet: tuple[type[Warning], ...] = ()) -> list[R]:
    """[fn(x) for x in items], on up to `workers` threads (default `fit_workers()`), in input order.

    While threads run, BLAS and OpenMP are held to one thread per call, so two fits never fight over the same
    cores; held for the whole pool, the limit is not raced by the fits' own `threadpool_limits` (each would
    otherwise restore, on exit, a value another thread had set). Warning filters are process-wide in the
    same way: the categories in `quiet` (e.g. a solver's convergence warning, which a fit records itself) are
    silenced for the whole pool, since a filter one fit sets for itself can be undone by another's exit. The first exception is raised once all started
    calls have ended."""
    items = list(items)
    n = fit_workers() if workers is None else int(workers)
    if n <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    with warnings.catch_warnings(), _one_blas_thread():
        for category in quiet:
            warnings.simplefilter("ignore", category)
        with ThreadPoolExecutor(min(n, len(items)), thread_name_prefix="revelio-fit") as pool:
            return list(pool.map(fn, items))


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it the fits still run, only less evenly
        return nullcontext()
    return threadpool_limits(limits=1)
