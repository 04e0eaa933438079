"""Progress bars on a terminal, one summary line elsewhere.

A bar redrawn at every step fills a log file (or a CI log) with carriage returns: when stderr is not a
terminal the bar is off and, when it closes, one line says what was done and how fast.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm


class _Bar(tqdm):
    """A tqdm bar that, when disabled, still counts and prints one summary line at close."""

    def __init__(self, *a: Any, summary: bool, **kw: Any):
        self._summary = {"desc": kw.get("desc", ""), "unit": kw.get("unit", "it"), "total": kw.get("total"),
                         "n": int(kw.get("initial") or 0), "t0": time.monotonic()} if summary else None
        super().__init__(*a, **kw)

    def update(self, n: float | None = 1) -> bool | None:
        if self._summary is not None:
            self._summary["n"] += int(n or 0)
        return super().update(n)

    def close(self) -> None:
        super().close()
        s, self._summary = getattr(self, "_summary", None), None
        if s is not None and self.disable and s["n"]:
            secs = time.monotonic() - s["t0"]
            rate = f", {s['n'] / secs:.1f} {s['unit']}/s" if secs > 0 else ""
            total = f"/{s['total']}" if s["total"] else ""
            print(f"{s['desc']}: {s['n']}{total} {s['unit']} in {secs:.1f} s{rate}", file=sys.stderr)


def progress_bar(*, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 **kw: Any) -> tqdm:
    """A tqdm bar drawn only when stderr is a terminal; otherwise silent until one summary line at close.

    `enabled=False`: no bar and no summary line.
    """
    return _Bar(total=total, desc=desc, unit=unit, disable=not (enabled and sys.stderr.isatty()),
                summary=enabled, **kw)
