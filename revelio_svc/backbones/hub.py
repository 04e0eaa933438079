"""Resolve a model reference (built-in name, local directory or hub id) with errors that say what to do."""
from __future__ import annotations

import os
from pathlib import Path

from .base import ModelUnavailableError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "backbones"


def builtin_names() -> list[str]:
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").is_file())


def resolve_local(ref: str) -> Path | None:
    """A built-in name or an existing directory → its path; a hub id → None."""
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        path = BUILTIN_DIR / name
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(
                f"built-in backbone {ref!r} is not shipped with this installation; available: "
                f"{', '.join('builtin:' + n for n in builtin_names()) or 'none'}")
        return path
    p = Path(os.path.expanduser(ref))
    if p.exists():
        if not p.is_dir():
            raise ModelUnavailableError(f"backbone path {p} is a file; point backbone.id at the model directory")
        return p
    if ref.startswith(("/", ".", "~")) or os.sep in ref.strip("/").replace("/", "", 1):
        raise ModelUnavailableError(f"backbone directory {ref!r} does not exist")
    return None


def unavailable(model_id: str, err: Exception) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    why = ("HF_HUB_OFFLINE is set, so only the local cache was searched" if offline
           else "the Hugging Face hub could not be reached or the files are not in the local cache")
    return ModelUnavailableError(
        f"could not load model {model_id!r}: {why} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        f"Fix: on a machine with network run `huggingface-cli download {model_id}` (or "
        f"`python -c \"from huggingface_hub import snapshot_download; snapshot_download('{model_id}')\"`) to fill "
        f"the cache, or download the model elsewhere and set backbone.id to its local directory.")
