"""Fits side by side on threads: results in input order, the same numbers as one after another."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from revelio_svc.parallel import WORKERS_ENV, fit_workers, thread_map
from revelio_svc.probe.linear import fit_linear_probe


def test_results_come_back_in_input_order_from_several_threads():
    seen = set()

    def f(x):
        seen.add(threading.current_thread().name)
        return x * x

    assert thread_map(f, range(20), workers=3) == [x * x for x in range(20)]
    assert any(name.startswith("revelio-fit") for name in seen)


def test_one_worker_or_one_item_runs_in_the_calling_thread():
    main = threading.current_thread().name
    assert thread_map(lambda _: threading.current_thread().name, range(4), workers=1) == [main] * 4
    assert thread_map(lambda _: threading.current_thread().name, [0], workers=4) == [main]
    assert thread_map(lambda x: x, [], workers=4) == []


def test_the_first_error_reaches_the_caller():
    def f(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    with pytest.raises(ValueError, match="bad item 3"):
        thread_map(f, range(6), workers=2)


def test_blas_threads_are_restored_after_the_pool():
    before = [(i["user_api"], i["num_threads"]) for i in threadpool_info()]
    inside = thread_map(lambda _: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"],
                        range(4), workers=2)
    assert all(n == 1 for row in inside for n in row)  # one BLAS thread per fit while the pool runs
    assert [(i["user_api"], i["num_threads"]) for i in threadpool_info()] == before


def test_probe_fits_side_by_side_equal_the_serial_fits():
    rng = np.random.default_rng(0)
    jobs = []
    for s in range(4):
        y = rng.integers(0, 3, 120)
        X = rng.standard_normal((120, 20)) + np.eye(3)[y] @ rng.standard_normal((3, 20))
        jobs.append((X, y, "l1" if s % 2 else "l2"))

    def fit(j):
        return fit_linear_probe(j[0], j[1], C=0.5, penalty=j[2])

    serial, threaded = thread_map(fit, jobs, workers=1), thread_map(fit, jobs, workers=4)
    for a, b in zip(serial, threaded):
        assert np.array_equal(a.coef, b.coef) and np.array_equal(a.intercept, b.intercept)


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert fit_workers() == 3
    for bad, msg in (("0", "at least 1"), ("two", "whole number")):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=msg):
            fit_workers()
    monkeypatch.delenv(WORKERS_ENV)
    assert 1 <= fit_workers() <= 8
