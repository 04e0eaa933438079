"""Reading the versioned JSON descriptions saved beside weights (probe.json, classifier.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_versioned_json(path: Path, fmt: str, version: int, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON at `path`, checked for its `format` and `version`; `error` names the problem otherwise."""
    if not path.is_file():
        raise error(f"no {what} at {path.parent} (missing {path.name})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from e
    if meta.get("format") != fmt:
        raise error(f"{path} is not a revelio {what} (format {meta.get('format')!r})")
    if meta.get("version") != version:
        raise error(f"{path} has {what} format version {meta.get('version')}; this revelio reads {version}")
    return meta
