"""Image files for the app tests: good, convertible and bad uploads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "revelio_svc" / "app" / "examples"


def example(shape: str) -> Path:
    """The shipped example image of one shape class."""
    (p,) = [p for p in EXAMPLES.glob(f"{shape}_*.png")]
    return p


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(h + w - 2, 1)],
                    -1).astype(np.uint8)


def bad_files(d: Path) -> dict[str, Path]:
    """name → file that is not a usable image."""
    d.mkdir(parents=True, exist_ok=True)
    text = d / "notes.txt"
    text.write_text("this is not an image\n")
    fake = d / "fake.png"  # an image extension on text: the extension must not fool the decoder
    fake.write_bytes(b"definitely not a PNG" * 10)
    good = example("star").read_bytes()
    trunc = d / "truncated.png"
    trunc.write_bytes(good[: len(good) // 2])
    empty = d / "empty.png"
    empty.write_bytes(b"")
    return {"text": text, "fake_png": fake, "truncated": trunc, "empty": empty}


def convertible_files(d: Path) -> dict[str, Path]:
    """mode name → an image the app must convert (and say so)."""
    d.mkdir(parents=True, exist_ok=True)
    rgb = gradient(40, 40)
    grey = write_png(d / "grey.png", rgb[..., 0])
    rgba = np.dstack([rgb, np.where(np.arange(40)[None, :] < 20, 0, 255).repeat(40, 0).astype(np.uint8)])
    alpha = write_png(d / "rgba.png", rgba)
    deep = d / "deep16.png"
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(deep)  # mode I;16, a 16-bit PNG
    return {"grayscale": grey, "transparency": alpha, "16-bit": deep}
