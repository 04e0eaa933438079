"""What the backbone knows as it trains: raw-feature linear probes against training steps.

For each backbone directory given (checkpoints `step-NNNNNN/` written by `revelio pretrain`, or
`builtin:shapes-unet`), extracts the default run's hook point and timestep (`up_blocks.1`, t=10; mean and
max pooled) on the default data (shapes seed 0, 2000 images, the store's train/test split), fits a
multinomial linear probe per concept on train rows and scores the test rows. Prints a table and writes
`curve.csv` and `curve.png` (probe accuracy and training loss against steps) into `--out`.

Run: `python benchmarks/backbone_curve.py --out OUT DIR [DIR ...] [--step-offset N]`
`--step-offset`: steps the checkpoints' run started from (a run with `pretrain.init_from`), so that the
x axis counts every step the weights saw.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from revelio_svc.config import load_config  # noqa: E402
from revelio_svc.features.extract import extract  # noqa: E402
from revelio_svc.features.store import open_store  # noqa: E402
from revelio_svc.probe.linear import fit_linear_probe  # noqa: E402

CONCEPTS = ("shape", "size", "background")
HOOK, T = "up_blocks.1", 10


def probe_accuracies(backbone: str, work: Path) -> dict[str, float]:
    """Test accuracy per (concept, pooling) of a linear probe on `backbone`'s features."""
    cfg = load_config("mlproject/configs/default.yaml", [
        f"backbone.id={backbone}", f"extract.hook_points=[{HOOK}]", f"extract.timesteps=[{T}]",
        "extract.pooling=[mean,max]", "extract.token_hook_points=[]", f"output_dir={work}"])
    store = open_store(extract(cfg, progress=False).store_uri)
    test = store.is_test()
    out = {}
    for pooling in ("mean", "max"):
        X = store.feature_set(HOOK, T, pooling).load()
        for c in CONCEPTS:
            y = store.labels(c)
            probe = fit_linear_probe(X[~test], y[~test], C=1.0, max_iter=2000, seed=0)
            out[f"{c}.{pooling}"] = float(np.mean(probe.predict(X[test]) == y[test]))
    return out


def step_and_loss(backbone: str, offset: int) -> tuple[int | None, float | None]:
    card = Path(backbone) / "training.json"
    if not card.is_file():
        return None, None
    info = json.loads(card.read_text())
    step = info.get("step", info.get("steps"))
    loss = info.get("loss_last50", info.get("final_loss_last50"))
    return (int(step) + offset if step is not None else None), loss


def plot(rows: list[dict], path: Path) -> None:
    rows = [r for r in rows if r["step"] is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows]
    for c in CONCEPTS:
        a.plot(steps, [max(r[f"{c}.mean"], r[f"{c}.max"]) for r in rows], marker="o", label=c)
    a.set(xlabel="training step", ylabel="test accuracy (best pooling)", title=f"linear probe, {HOOK} t={T}")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(steps, [r["loss"] for r in rows], marker="o", color="tab:grey")
    b.set(xlabel="training step", ylabel="noise-prediction MSE (50-step mean)", title="training loss")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backbones", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--step-offset", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, b in enumerate(args.backbones):
            step, loss = step_and_loss(b, args.step_offset)
            acc = probe_accuracies(b, Path(tmp) / str(i))
            rows.append({"backbone": Path(b).name if not b.startswith("builtin:") else b, "step": step,
                         "loss": loss, **acc})
            print(f"{rows[-1]['backbone']:<22} step {step!s:>5} loss {loss if loss is None else round(loss, 4)!s:>7}  "
                  + "  ".join(f"{c} {max(acc[c + '.mean'], acc[c + '.max']):.3f}" for c in CONCEPTS), flush=True)
    with open(out / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "curve.png")
    print(f"wrote {out / 'curve.csv'} and {out / 'curve.png'}")


if __name__ == "__main__":
    main()
