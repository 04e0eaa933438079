"""Write the demo's example images: one procedural shapes image per shape class, into revelio_svc/app/examples/.

    python app/make_examples.py          (rewrites the PNGs in revelio_svc/app/examples/)

The images come from the same generator as the `shapes` dataset, but from a seed no default config trains
or evaluates on, so an example is never a training image. They are drawn at 96 px, larger than the 32 px
the model sees, so they are legible in the UI; the app resizes them like any upload.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from revelio_svc.data.shapes import BACKGROUNDS, COLOURS, SHAPES, ShapesDataset

OUT = Path(__file__).resolve().parent.parent / "revelio_svc" / "app" / "examples"
SEED = 2024  # disjoint from the data seeds of the default configs (0) and pretraining (1000)
SIZE = 96


def make_examples(out: Path = OUT, size: int = SIZE, seed: int = SEED) -> list[Path]:
    """First image of every shape class (plain or striped background, for legibility); returns the paths."""
    ds = ShapesDataset(n=400, image_size=size, seed=seed)
    labels = {c: ds.labels(c) for c in ("shape", "colour", "background")}
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    paths = []
    for s, shape in enumerate(SHAPES):
        cands = [i for i in range(len(ds)) if labels["shape"][i] == s]
        # a busy noise background makes a poor first impression of what the model sees
        nice = [i for i in cands if BACKGROUNDS[labels["background"][i]] in ("plain", "stripes")] or cands
        i = nice[0]
        name = f"{shape}_{COLOURS[labels['colour'][i]]}_{i}.png"
        p = out / name
        Image.fromarray(ds.image(i)).save(p, optimize=True)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--size", type=int, default=SIZE)
    args = ap.parse_args()
    for p in make_examples(args.out, args.size):
        print(p, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
