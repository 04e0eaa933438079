"""Procedural shapes with ground-truth concepts.

Each image is a function of (seed, index) alone, so any count can be drawn, in any order, on any
machine. Shape is the fine-grained concept: six outlines under random rotation, position, hue and
textured backgrounds, so raw pixels barely beat chance on it, while colour, size and background
are coarse concepts a network finds easily.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from .base import Concept, ImageDataset

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")
SIZES = ("small", "medium", "large")
BACKGROUNDS = ("plain", "stripes", "checker", "noise")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")

# radius as a fraction of the image side, per size class
_SIZE_RANGES = ((0.20, 0.25), (0.27, 0.32), (0.34, 0.40))
_SUPERSAMPLE = 4


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radius_fn) -> list[tuple[float, float]]:
        return [(cx + radius_fn(j) * math.cos(rot + 2 * math.pi * j / n),
                 cy + radius_fn(j) * math.sin(rot + 2 * math.pi * j / n)) for j in range(n)]

    if shape == "square":
        return ring(4, lambda j: r)
    if shape == "triangle":
        return ring(3, lambda j: r * 1.1)
    if shape == "hexagon":
        return ring(6, lambda j: r)
    if shape == "star":
        return ring(10, lambda j: r * 1.1 if j % 2 == 0 else r * 0.45)
    if shape == "cross":
        w = 0.36 * r
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(shape)


# Masks: "object" is the whole shape; parts are where a shape has them (a circle has none). Part masks
# are regions of the object, so dissection can ask whether a unit follows the part or just the object.
PARTS: dict[str, tuple[str, ...]] = {"circle": (), "square": ("corners",), "triangle": ("corners",),
                                     "star": ("tips",), "cross": ("arms",), "hexagon": ("corners",)}
MASK_NAMES = ("object", "tips", "arms", "corners")
_CORNER_FRACTION = 0.3  # a corner region: within this fraction of the side length from a vertex


def _part_polygons(shape: str, cx: float, cy: float, r: float, rot: float) -> dict[str, list[list[tuple[float, float]]]]:
    """Polygons whose union is each part (supersampled pixel coordinates); corners are handled apart."""
    if shape == "star":
        pts = _polygon(shape, cx, cy, r, rot)  # even indices are the outer points
        return {"tips": [[pts[j - 1], pts[j], pts[(j + 1) % 10]] for j in range(0, 10, 2)]}
    if shape == "cross":
        w = 0.36 * r
        c, s = math.cos(rot), math.sin(rot)
        arms = []
        for a in range(4):  # the arm along +x, turned by a quarter turn each time
            ca, sa = math.cos(a * math.pi / 2), math.sin(a * math.pi / 2)
            local = [(w, -w), (r, -w), (r, w), (w, w)]
            local = [(x * ca - y * sa, x * sa + y * ca) for x, y in local]
            arms.append([(cx + x * c - y * s, cy + x * s + y * c) for x, y in local])
        return {"arms": arms}
    return {}


def shape_masks(shape: str, cx: float, cy: float, r: float, rot: float, big: int, size: int) -> dict[str, np.ndarray]:
    """Bool (size, size) masks for every name in `MASK_NAMES` (empty where the shape lacks the part).

    Drawn on the supersampled canvas like the image and box-downsampled the same way; a pixel is in a
    mask when at least half of it is covered, so a mask pixel is mostly object colour in the image.
    """
    def draw(fn) -> np.ndarray:
        canvas = Image.new("L", (big, big), 0)
        fn(ImageDraw.Draw(canvas))
        return np.asarray(canvas, np.uint8)

    def down(hi: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(hi).resize((size, size), Image.BOX), np.uint8) >= 128

    if shape == "circle":
        obj = draw(lambda d: d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255))
    else:
        obj = draw(lambda d: d.polygon(_polygon(shape, cx, cy, r, rot), fill=255))
    out = {name: np.zeros((size, size), bool) for name in MASK_NAMES}
    out["object"] = down(obj)
    for part, polys in _part_polygons(shape, cx, cy, r, rot).items():
        out[part] = down(draw(lambda d: [d.polygon(p, fill=255) for p in polys]) & obj)
    if "corners" in PARTS[shape]:
        pts = _polygon(shape, cx, cy, r, rot)
        rho = _CORNER_FRACTION * math.dist(pts[0], pts[1])
        discs = draw(lambda d: [d.ellipse([x - rho, y - rho, x + rho, y + rho], fill=255) for x, y in pts])
        out["corners"] = down(discs & obj)
    return out


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, int]]:
    """Draw one image; returns the uint8 array and its labels."""
    img, labels, _ = _render(rng, size, with_masks=False)
    return img, labels


def render_with_masks(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, int], dict[str, np.ndarray]]:
    """`render` plus the image's masks (`MASK_NAMES` → bool (size, size)); the image is the same bytes."""
    return _render(rng, size, with_masks=True)


def _render(rng: np.random.Generator, size: int, with_masks: bool):
    # every random draw happens here, in this order, whether or not masks are asked for: the masks are
    # drawn afterwards from the geometry alone, so asking for them can never change an image
    shape = int(rng.integers(len(SHAPES)))
    colour = int(rng.integers(len(COLOURS)))
    size_c = int(rng.integers(len(SIZES)))
    bg = int(rng.integers(len(BACKGROUNDS)))
    # hue on a continuum: the class centre plus jitter up to ±0.35 of a bin
    hue = (colour + rng.uniform(-0.35, 0.35)) / len(COLOURS)
    fg = _hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.75, 1.0))
    bg_hue = rng.uniform(0, 1)
    bg_a = _hsv(bg_hue, rng.uniform(0.0, 0.6), rng.uniform(0.05, 0.45))
    bg_b = _hsv(bg_hue + rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.6), rng.uniform(0.05, 0.45))
    lo, hi = _SIZE_RANGES[size_c]
    r_frac = rng.uniform(lo, hi)
    cx_f = rng.uniform(r_frac, 1 - r_frac)
    cy_f = rng.uniform(r_frac, 1 - r_frac)
    rot = rng.uniform(0, 2 * math.pi)

    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), bg_a)
    draw = ImageDraw.Draw(canvas)
    if BACKGROUNDS[bg] == "stripes":
        period = big // int(rng.integers(3, 7))
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:big, 0:big]
        band = ((xx * math.cos(angle) + yy * math.sin(angle)) // max(period // 2, 1)).astype(int) % 2
        arr = np.where(band[..., None] == 1, np.array(bg_b, np.uint8), np.array(bg_a, np.uint8)).astype(np.uint8)
        canvas = Image.fromarray(arr)
        draw = ImageDraw.Draw(canvas)
    elif BACKGROUNDS[bg] == "checker":
        cell = big // int(rng.integers(3, 7))
        ox, oy = rng.integers(0, cell, size=2)
        yy, xx = np.mgrid[0:big, 0:big]
        band = (((xx + ox) // cell + (yy + oy) // cell) % 2).astype(int)
        arr = np.where(band[..., None] == 1, np.array(bg_b, np.uint8), np.array(bg_a, np.uint8)).astype(np.uint8)
        canvas = Image.fromarray(arr)
        draw = ImageDraw.Draw(canvas)
    elif BACKGROUNDS[bg] == "noise":
        base = np.array(bg_a, np.float32)
        noise = rng.normal(0, 40, size=(size, size, 1)).astype(np.float32)
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        canvas = Image.fromarray(arr).resize((big, big), Image.NEAREST)
        draw = ImageDraw.Draw(canvas)

    cx, cy, r = cx_f * big, cy_f * big, r_frac * big
    if SHAPES[shape] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        draw.polygon(_polygon(SHAPES[shape], cx, cy, r, rot), fill=fg)
    img = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.uint8)
    position = int(cx_f >= 0.5) + 2 * int(cy_f >= 0.5)
    labels = {"shape": shape, "colour": colour, "size": size_c, "background": bg, "position": position}
    masks = shape_masks(SHAPES[shape], cx, cy, r, rot, big, size) if with_masks else {}
    return img, labels, masks


class ShapesDataset(ImageDataset):
    """`n` procedural images; image i depends only on (seed, i)."""

    def __init__(self, n: int = 2000, image_size: int = 32, seed: int = 0):
        if n <= 0:
            raise ValueError(f"shapes needs n_images > 0, got {n}")
        self.n, self.image_size, self.seed = n, image_size, seed
        self.name = f"shapes-s{seed}"
        self._labels: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def image(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        return render(self._rng(i), self.image_size)[0]

    def sample(self, i: int) -> tuple[np.ndarray, dict[str, int]]:
        return render(self._rng(i), self.image_size)

    mask_names = MASK_NAMES

    def masks(self, i: int) -> dict[str, np.ndarray]:
        """Per-pixel ground truth of image i: `mask_names` → bool (image_size, image_size).

        "object" covers the shape; "tips" (star), "arms" (cross) and "corners" (square, triangle,
        hexagon) are its parts, empty for shapes without them. What dissection scores units against.
        """
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        return render_with_masks(self._rng(i), self.image_size)[2]

    def masks_batch(self, indices) -> dict[str, np.ndarray]:
        """`masks` of several images stacked: name → bool (len(indices), image_size, image_size)."""
        got = [self.masks(int(i)) for i in indices]
        shape = (0, self.image_size, self.image_size)
        return {k: np.stack([g[k] for g in got]) if got else np.zeros(shape, bool) for k in MASK_NAMES}

    @property
    def concepts(self) -> tuple[Concept, ...]:
        return (Concept("shape", SHAPES), Concept("colour", COLOURS), Concept("size", SIZES),
                Concept("background", BACKGROUNDS), Concept("position", POSITIONS))

    def labels(self, concept: str) -> np.ndarray:
        self.concept(concept)
        if self._labels is None:
            # labels come from the same draw as the image; rendering the small canvas is cheap enough
            rows = [render(self._rng(i), 8)[1] for i in range(self.n)]
            self._labels = {c.name: np.array([r[c.name] for r in rows], np.int64) for c in self.concepts}
        return self._labels[concept]

    def describe(self) -> dict:
        return {"name": "shapes", "seed": self.seed, "n": self.n, "image_size": self.image_size, "version": 1}
