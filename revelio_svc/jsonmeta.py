"""JSON beside weights: writing numpy values, reading the versioned descriptions (probe.json, classifier.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def json_default(o: Any) -> Any:
    """`json.dumps(..., default=json_default)`: numpy scalars and arrays and paths as JSON; anything else fails."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def read_versioned_json(path: Path, fmt: str, version: int, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON at `path`, checked for its `format` and `version`; `error` names the problem otherwise."""
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise error(f"no {what} at {path.parent} (missing {path.name})") from e
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from e
    problem = ("" if meta.get("format") == fmt else f"is not a revelio {what} (format {meta.get('format')!r})") or (
        "" if meta.get("version") == version else
        f"has {what} format version {meta.get('version')}; this revelio reads {version}")
    if problem:
        raise error(f"{path} {problem}")
    return meta
