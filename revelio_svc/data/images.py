"""Turn whatever an image source holds into one `(size, size, 3)` uint8 RGB array, or a `BadImageError`.

Every dataset decodes through `load_rgb`, so all of them agree on colour handling, orientation, resizing
and on which files count as bad. A bad image never takes a dataset down: the caller gets a one-line reason
and the extractor records it against that index.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .base import BadImageError

# Transparent pixels land on mid-grey: neither white nor black, so they do not read as a colour concept.
BACKGROUND = (128, 128, 128)

_HIGH_BIT_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}

# What Pillow raises on malformed data; Image.open itself treats the same set as "not this format".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
                  struct.error, zlib.error, Image.DecompressionBombError)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _open(src: Any) -> tuple[Image.Image, str]:
    """Open lazily (header only); returns the image and a short name of the source for messages."""
    if isinstance(src, dict):
        data, path = src.get("bytes"), src.get("path")
        if data is None and not path:
            raise BadImageError("image record has neither 'bytes' nor 'path'")
        return _open(data if data is not None else path)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise BadImageError("empty image data (0 bytes)")
        fp: Any = io.BytesIO(bytes(src))
        where = f"{len(src)} bytes"
    elif isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.is_file():
            raise BadImageError(f"{p}: file not found")
        fp, where = p, str(p)
    else:
        raise TypeError(f"load_rgb cannot read a {type(src).__name__}; pass bytes, a path, a PIL image, "
                        "a {'bytes', 'path'} dict or a numpy array")
    try:
        with warnings.catch_warnings():
            # we enforce our own max_pixels right after; Pillow's softer limit would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp), where
    except Image.DecompressionBombError as e:
        raise BadImageError(f"{where}: over Pillow's decompression-bomb limit, not decoded ({_one_line(e)})") from e
    except UnidentifiedImageError as e:
        raise BadImageError(f"{where}: not an image file (no image format recognises it)") from e
    except _DECODE_ERRORS as e:
        raise BadImageError(f"{where}: cannot read the image header ({_one_line(e)})") from e


def _check_pixels(w: int, h: int, max_pixels: int, where: str) -> None:
    if w <= 0 or h <= 0:
        raise BadImageError(f"{where}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise BadImageError(f"{where}: {w}x{h} = {w * h} pixels is over max_pixels={max_pixels}; not decoded")


def _scale_to_uint8(a: np.ndarray, nominal_max: float) -> np.ndarray:
    """Stretch the actual value range to 0..255; clipping would turn most 16-bit or float images white."""
    a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        raise BadImageError("image has no finite pixel values")
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        # a flat image has no range to stretch; place its one value on the mode's nominal scale instead
        out = np.full(a.shape, np.clip(lo / nominal_max, 0.0, 1.0) * 255.0)
    out[~finite] = 0.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _composite(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _HIGH_BIT_MODES:
        grey = _scale_to_uint8(np.asarray(img), _HIGH_BIT_MODES[mode])
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # palette / grey / RGB images may carry transparency as a tRNS entry rather than an alpha band
        return _composite(img)
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise BadImageError(f"colour mode {mode} cannot be converted to RGB ({_one_line(e)})") from e


def _from_array(a: np.ndarray, max_pixels: int) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise BadImageError(f"array of shape {a.shape} is not an image; expected (H, W), (H, W, 1), "
                            "(H, W, 3) or (H, W, 4), channels last")
    _check_pixels(a.shape[1], a.shape[0], max_pixels, f"array {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise BadImageError(f"array of dtype {a.dtype} is not an image")
        nominal = 1.0 if np.issubdtype(a.dtype, np.floating) else float(np.iinfo(a.dtype).max)
        if a.ndim == 3 and a.shape[-1] == 4:
            # colour is stretched like any high-bit image; alpha keeps its meaning on the dtype's scale
            alpha = np.clip(np.nan_to_num(a[..., 3].astype(np.float64)) / nominal, 0, 1)
            a = np.dstack([_scale_to_uint8(a[..., :3], nominal), np.round(alpha * 255).astype(np.uint8)])
        else:
            a = _scale_to_uint8(a, nominal)
    return Image.fromarray(np.ascontiguousarray(a))


def _apply_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF is a metadata problem; the pixels are still usable
        return img


def _square(img: Image.Image, size: int) -> np.ndarray:
    """RGB image in; shorter side to `size`, centre crop: one resample through a centred square box."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    out = img.resize((size, size), Image.Resampling.LANCZOS, box=box,
                     reducing_gap=3.0 if s >= 3 * size else None)
    return np.array(out, dtype=np.uint8)  # a copy: writable, and detached from Pillow's buffer


def load_rgb(src: Any, size: int, max_pixels: int) -> np.ndarray:
    """Decode `src` to a `(size, size, 3)` uint8 RGB array.

    `src` may be encoded bytes, a file path, a PIL image, a Hugging Face image record
    (`{"bytes": ..., "path": ...}`; bytes win when both are set) or an array (H, W[, 1|3|4]).
    Images over `max_pixels` are rejected from their header, before any pixel is decoded.
    Raises `BadImageError` (one-line reason) for anything that is not a usable image.
    """
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels}")

    opened: Image.Image | None = None  # a file we opened ourselves and must close
    if isinstance(src, np.ndarray):
        img, where = _from_array(src, max_pixels), f"array {src.shape}"
    elif isinstance(src, Image.Image):
        img, where = src, f"PIL image {src.mode} {src.size[0]}x{src.size[1]}"
    else:
        img, where = _open(src)
        opened = img

    try:
        _check_pixels(img.size[0], img.size[1], max_pixels, where)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if opened is not None and img.format == "JPEG":
                # let libjpeg decode at 1/2..1/8 scale: far less work, and both sides stay >= size for the resize
                img.draft(None, (size, size))
            img.load()
            img = _apply_orientation(img)
            return _square(_to_rgb(img), size)
    except BadImageError as e:
        msg = str(e)
        raise BadImageError(msg if msg.startswith(where) else f"{where}: {msg}") from e
    except Image.DecompressionBombError as e:
        raise BadImageError(f"{where}: over Pillow's decompression-bomb limit, not decoded ({_one_line(e)})") from e
    except _DECODE_ERRORS as e:
        raise BadImageError(f"{where}: corrupt or truncated image ({_one_line(e)})") from e
    finally:
        if opened is not None:
            opened.close()
