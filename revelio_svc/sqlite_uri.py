"""The file behind a `sqlite:` store URI (MLflow tracking and registry stores, Optuna storages)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:` URI (relative: `sqlite:///x.db`, absolute: `sqlite:////x.db`); None for
    other stores and for an in-memory database."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    if path in ("", "/", "/:memory:"):
        return None
    if uri.startswith("sqlite:////"):  # absolute
        return Path("/" + path.lstrip("/"))
    return Path(path[1:] if uri.startswith("sqlite:///") else path)
