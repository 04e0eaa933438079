"""What the backbone knows as it trains: raw-feature linear probes against training steps.

For each backbone directory given (checkpoints `step-NNNNNN/` written by `revelio pretrain`, or
`builtin:shapes-unet`), extracts the default run's hook point and timestep (`up_blocks.1`, t=10; mean and
max pooled) on the default data (shapes seed 0, 2000 images, the store's train/test split), fits a
multinomial linear probe per concept on train rows and scores the test rows. Prints a table and writes
`curve.csv` and `curve.png` (probe accuracy and training loss against steps) into `--out`.

The mean and max columns keep C = 1; "best pooling" of the two is a choice made on the test rows. The
`shape.chosen` column makes every choice on the train rows alone (`probe.select.choose_probe`: 5-fold
cross-validation over the pooled inputs mean, max, top8 and mean+max and C in 0.1 … 3), then scores the
chosen probe once on the test rows: the figure the raw-probe target is read from.

Run: `python benchmarks/backbone_curve.py --out OUT DIR [DIR ...] [--step-offset N] [--after CSV]`
`--after`: a curve.csv of earlier checkpoints (docs/backbone_curve.csv) to keep in front of the new rows, so the
figure shows the whole history without re-extracting weights that are gone.
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
from revelio_svc.probe.select import raw_probe  # noqa: E402

CONCEPTS = ("shape", "size", "background")
HOOK, T = "up_blocks.1", 10
CHOSEN = "shape"  # the concept whose probe is chosen by cross-validation (the others keep C = 1)


def probe_accuracies(backbone: str, work: Path) -> dict[str, float]:
    """Test accuracy per (concept, pooling) of a linear probe on `backbone`'s features."""
    cfg = load_config("mlproject/configs/default.yaml", [
        f"backbone.id={backbone}", f"extract.hook_points=[{HOOK}]", f"extract.timesteps=[{T}]",
        "extract.pooling=[mean,max,tokens]", f"extract.token_hook_points=[{HOOK}]", f"extract.token_timesteps=[{T}]",
        f"output_dir={work}"])
    store = open_store(extract(cfg, progress=False).store_uri)
    test = store.is_test()
    out = {}
    for pooling in ("mean", "max"):
        X = store.feature_set(HOOK, T, pooling).load()
        for c in CONCEPTS:
            y = store.labels(c)
            probe = fit_linear_probe(X[~test], y[~test], C=1.0, max_iter=2000, seed=0)
            out[f"{c}.{pooling}"] = float(np.mean(probe.predict(X[test]) == y[test]))
    out.update(chosen_probe(store))
    return out


def chosen_probe(store) -> dict:
    """The `CHOSEN` concept's probe with inputs and C chosen on the train rows, scored once on the test rows."""
    rp = raw_probe(store, HOOK, T, CHOSEN)
    return {f"{CHOSEN}.chosen": rp.test_accuracy, f"{CHOSEN}.chosen_inputs": rp.choice.inputs,
            f"{CHOSEN}.chosen_C": rp.choice.C, f"{CHOSEN}.chosen_cv": round(rp.choice.cv_accuracy, 4)}


def step_and_loss(backbone: str, offset: int) -> tuple[int | None, float | None]:
    card = Path(backbone) / "training.json"
    if not card.is_file():
        return None, None
    info = json.loads(card.read_text())
    step = info.get("step", info.get("steps"))
    loss = info.get("loss_last50", info.get("final_loss_last50"))
    return (int(step) + offset if step is not None else None), loss


def read_rows(path: Path) -> list[dict]:
    """The rows of a curve.csv, numbers as numbers (an empty cell: None)."""
    def value(v: str):
        if v == "":
            return None
        try:
            return int(v) if v.lstrip("-").isdigit() else float(v)
        except ValueError:
            return v

    with open(path, newline="") as f:
        return [{k: (v if k in ("backbone",) else value(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def plot(rows: list[dict], path: Path) -> None:
    rows = [r for r in rows if r["step"] is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows]
    for c in CONCEPTS:
        a.plot(steps, [max(r[f"{c}.mean"], r[f"{c}.max"]) for r in rows], marker="o", label=c)
    chosen = [(r["step"], r[f"{CHOSEN}.chosen"]) for r in rows if r.get(f"{CHOSEN}.chosen") not in (None, "")]
    if chosen:
        a.plot(*zip(*chosen), marker="s", ls="--", color="black", label=f"{CHOSEN}, chosen on train rows")
    a.set(xlabel="training step", ylabel="test accuracy (best pooling)", title=f"linear probe, {HOOK} t={T}")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(steps, [np.nan if r["loss"] is None else r["loss"] for r in rows], marker="o", color="tab:grey")
    b.set(xlabel="training step", ylabel="noise-prediction MSE (50-step mean)", title="training loss")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backbones", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--step-offset", type=int, default=0)
    ap.add_argument("--after", default=None, help="an earlier curve.csv whose rows come first")
    args = ap.parse_args()
    if not args.backbones and not args.after:
        ap.error("name at least one backbone directory, or --after CSV to re-plot")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(Path(args.after)) if args.after else []
    with tempfile.TemporaryDirectory() as tmp:
        for i, b in enumerate(args.backbones):
            step, loss = step_and_loss(b, args.step_offset)
            acc = probe_accuracies(b, Path(tmp) / str(i))
            rows.append({"backbone": Path(b).name if not b.startswith("builtin:") else b, "step": step,
                         "loss": loss, **acc})
            print(f"{rows[-1]['backbone']:<22} step {step!s:>5} loss {loss if loss is None else round(loss, 4)!s:>7}  "
                  + "  ".join(f"{c} {max(acc[c + '.mean'], acc[c + '.max']):.3f}" for c in CONCEPTS)
                  + f"  {CHOSEN} chosen on train rows {acc[CHOSEN + '.chosen']:.3f} ({acc[CHOSEN + '.chosen_inputs']}, "
                    f"C={acc[CHOSEN + '.chosen_C']:g})", flush=True)
    with open(out / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "curve.png")
    print(f"wrote {out / 'curve.csv'} and {out / 'curve.png'}")


if __name__ == "__main__":
    main()
