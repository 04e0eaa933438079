"""Resolve a model reference (built-in name, local directory or hub id) with errors that say what to do."""
from __future__ import annotations

import hashlib
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


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
FULL_HASH_BYTES = 64 * 2**20  # files up to this size are hashed whole; larger ones by size and both ends
_SAMPLE = 2**20
_FINGERPRINTS: dict[tuple, str] = {}


def _file_digest(p: Path, size: int) -> bytes:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:  # gigabytes of weights: the header and the last block change with any retraining
            h.update(fh.read(_SAMPLE))
            fh.seek(size - _SAMPLE)
            h.update(fh.read(_SAMPLE))
    return h.digest()


def weights_fingerprint(ref: str) -> str | None:
    """A digest of the weight and config files of a built-in backbone or a local directory; None for a hub id
    (its `backbone.revision` names the version) or a reference that does not resolve here.

    Stores and SAEs are cached under an identity computed from the config; without this, replacing the weights
    behind the same `backbone.id` (a new release's built-in backbone, a retrained local model) would serve
    features of the old weights. Files are hashed by content (large weight files by size and both ends), not by
    modification time, so copies of one model on several machines name the same store."""
    try:
        path = resolve_local(ref)
    except ModelUnavailableError:
        return None
    if path is None:
        return None
    files = sorted(p for p in path.rglob("*") if p.suffix in (*WEIGHT_SUFFIXES, ".json") and p.is_file())
    stats = tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(path.resolve()), stats)  # unchanged files are not read again in this process
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p, (name, size, _) in zip(files, stats):
            h.update(f"{name}|{size}|".encode())
            h.update(_file_digest(p, size))
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FINGERPRINTS[key]


def unavailable(model_id: str, err: Exception) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    why = ("HF_HUB_OFFLINE is set, so only the local cache was searched" if offline
           else "the Hugging Face hub could not be reached or the files are not in the local cache")
    return ModelUnavailableError(
        f"could not load model {model_id!r}: {why} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        f"Fix: on a machine with network run `huggingface-cli download {model_id}` (or "
        f"`python -c \"from huggingface_hub import snapshot_download; snapshot_download('{model_id}')\"`) to fill "
        f"the cache, or download the model elsewhere and set backbone.id to its local directory.")
