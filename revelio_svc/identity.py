"""Names of what the stages write: one hashing scheme, and the one place that turns identities into paths.

An *identity* is `digest(what an output depends on)`: SHA-256 of the canonical JSON of the value (sorted
keys, no whitespace, non-JSON values as `str`), as hex, truncated. Options that change only speed, progress
output or where files go are left out, so they never change an identity. docs/identity.md lists what goes
into each one:

    feature store  digest(store config, 16)                                  <output_dir>/features/<id>
    SAE            digest(training key, 12)   (contains the store id)        <output_dir>/sae/<id>
    probe          digest(probe options, store id, SAE id, 12)               <output_dir>/probe/<id>
    classifier     digest(SAE id, probe id, top images, 12)                  <output_dir>/classifier/<id>
    sweep          digest(store id, probe options, concepts, 12)             <output_dir>/sweep/<id>

The pipeline caches a stage under the same identity, so a stage is recomputed exactly when its output
would be written somewhere else.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import to_dict


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, n: int = 12) -> str:
    """The identity of `obj` (a JSON-able value; dataclasses go through `config.to_dict` first)."""
    return hashlib.sha256(canonical_json(to_dict(obj)).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Paths:
    """Where each kind of output lives under the project's output directory."""

    root: Path

    @classmethod
    def under(cls, output_dir: str | Path) -> Paths:
        return cls(Path(output_dir))

    def store(self, identity: str) -> Path:
        return self.root / "features" / identity

    def sae(self, identity: str) -> Path:
        return self.root / "sae" / identity

    def probe(self, identity: str) -> Path:
        return self.root / "probe" / identity

    def classifier(self, identity: str) -> Path:
        return self.root / "classifier" / identity

    def sweep(self, identity: str) -> Path:
        return self.root / "sweep" / identity

    def fewshot(self) -> Path:
        return self.root / "fewshot"
