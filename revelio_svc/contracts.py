"""What every stage returns, and how stages report progress, without knowing about MLflow.

A stage is a plain function `(config, inputs) -> StageResult subclass`. The result says what the stage
wrote (typed fields of the subclass), the numbers a user compares (`metrics`, flat and finite), values the
stage derived that a user compares too (`params`: the SAE's width, the number of training vectors), the
files worth keeping with the run (`artifacts`), a few labels (`tags`) and its `identity` (see identity.py). The
tracking adapter (revelio_svc.tracking) turns results into MLflow runs; nothing below it imports MLflow.

Long stages report while they run through a `MetricsCallback(step, metrics)`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MetricsCallback = Callable[[int, Mapping[str, float]], None]
EVALUATION_FILE = "evaluation.json"  # a model's per-image results on held-out images (see Evaluation)


@dataclass(frozen=True)
class Artifact:
    """A local file or directory to keep with the run, under `path` in the run's artifacts."""

    local: Path
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class StageResult:
    identity: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    def outputs(self) -> dict[str, str]:
        """What a later stage needs from this one (paths, URIs), as strings: kept with the run for reuse."""
        return {}


def metric_key(name: str) -> str:
    """MLflow accepts letters, digits, _ - . / and space in metric names; anything else becomes _."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers of a nested metrics dict as flat `a.b.c` keys; booleans, arrays and non-finite values left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = metric_key(f"{prefix}{k}")
        if isinstance(v, Mapping):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, (bool, np.bool_)):
            continue
        elif isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


@dataclass(frozen=True)
class Evaluation:
    """Which held-out images a model got right, keyed by (dataset fingerprint, dataset index)."""

    dataset: str
    index: tuple[int, ...]
    correct: tuple[bool, ...]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(len(self.correct), 1)

    def to_json(self) -> str:
        return json.dumps({"dataset": self.dataset, "index": list(self.index),
                           "correct": [int(c) for c in self.correct]})

    def write(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, path: Path) -> Evaluation | None:
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        return cls(str(d["dataset"]), tuple(int(i) for i in d["index"]), tuple(bool(c) for c in d["correct"]))
