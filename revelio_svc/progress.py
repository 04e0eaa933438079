"""Progress bars on a terminal; heartbeat lines and one summary line elsewhere.

A bar redrawn at every step fills a log file (or a CI log) with carriage returns: when stderr is not a
terminal the bar is off. A long stage must still show that it is alive (a piped `revelio run` on a loaded
machine would otherwise be silent for many minutes after `[train_sae] running`): about every
`HEARTBEAT_S` seconds one line says where it is, how fast it goes and when it should end, and when the bar
closes one line says what was done and how fast.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm

HEARTBEAT_S = 30.0
# seconds between heartbeat lines when not on a terminal (0 = none); for logs that want more or fewer
HEARTBEAT_ENV = "REVELIO_HEARTBEAT_S"


def heartbeat_interval() -> float:
    raw = os.environ.get(HEARTBEAT_ENV, "")
    try:
        return max(float(raw), 0.0) if raw else HEARTBEAT_S
    except ValueError:
        return HEARTBEAT_S


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min': what a person reads in a log line."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def heartbeat_line(desc: str, n: int, total: int | None, unit: str, done_here: int, elapsed: float,
                   postfix: str = "") -> str:
    """`train-sae: 1200/5000 step (24%), 3.4 step/s, ETA 18 min 38 s, loss=0.1` (rate over this process's work)."""
    where = f"{n}/{total} {unit} ({100 * n / total:.0f}%)" if total else f"{n} {unit}"
    rate = done_here / elapsed if elapsed > 0 else 0.0
    parts = [f"{desc}: {where}", f"{rate:.3g} {unit}/s"]
    if total and rate > 0:
        parts.append(f"ETA {format_duration((total - n) / rate)}")
    if postfix:
        parts.append(postfix)
    return ", ".join(parts)


class _Bar(tqdm):
    """A tqdm bar that, when disabled, still counts, prints a heartbeat line every `heartbeat_s` seconds and
    one summary line at close."""

    def __init__(self, *a: Any, summary: bool, heartbeat_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None, **kw: Any):
        self._clock, self._stream, self._heartbeat_s = clock, stream, heartbeat_s
        now = clock()
        n0 = int(kw.get("initial") or 0)
        self._summary = {"desc": kw.get("desc", ""), "unit": kw.get("unit", "it"), "total": kw.get("total"),
                         "n": n0, "n0": n0, "t0": now, "last": now} if summary else None
        super().__init__(*a, **kw)

    def _out(self) -> TextIO:
        return self._stream or sys.stderr

    def update(self, n: float | None = 1) -> bool | None:
        s = self._summary
        if s is not None:
            s["n"] += int(n or 0)
            if self.disable and self._heartbeat_s > 0:
                now = self._clock()
                if now - s["last"] >= self._heartbeat_s:
                    s["last"] = now
                    print(heartbeat_line(s["desc"], s["n"], s["total"], s["unit"], s["n"] - s["n0"], now - s["t0"],
                                         getattr(self, "postfix", "") or ""), file=self._out(), flush=True)
        return super().update(n)

    def close(self) -> None:
        super().close()
        s, self._summary = getattr(self, "_summary", None), None
        if s is not None and self.disable and s["n"]:
            secs = self._clock() - s["t0"]
            rate = f", {(s['n'] - s['n0']) / secs:.1f} {s['unit']}/s" if secs > 0 else ""
            total = f"/{s['total']}" if s["total"] else ""
            print(f"{s['desc']}: {s['n']}{total} {s['unit']} in {secs:.1f} s{rate}", file=self._out(), flush=True)


def progress_bar(*, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 heartbeat_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 stream: TextIO | None = None, **kw: Any) -> tqdm:
    """A tqdm bar drawn only when stderr is a terminal; otherwise a heartbeat line about every
    `heartbeat_s` seconds (default HEARTBEAT_S, or $REVELIO_HEARTBEAT_S) and one summary line at close.

    `enabled=False`: no bar, no heartbeat and no summary line. `clock` and `stream` are for tests.
    """
    return _Bar(total=total, desc=desc, unit=unit, disable=not (enabled and sys.stderr.isatty()),
                summary=enabled, heartbeat_s=heartbeat_interval() if heartbeat_s is None else heartbeat_s,
                clock=clock, stream=stream, **kw)
