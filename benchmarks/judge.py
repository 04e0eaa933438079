"""The ground-truth shape judge: train it, measure it, and judge a backbone's own samples with it.

    python benchmarks/judge.py train [--out revelio_svc/assets/judge] [--steps N] ...
        trains the judge on renders of seed 2000 (revelio_svc/interpret/judge.py), prints its held-out accuracy
    python benchmarks/judge.py accuracy [--judge DIR] [--n 2000]
        the judge's accuracy on held-out renders (seed 2001) and on the evaluation renders (seed 0): the ceiling
    python benchmarks/judge.py samples [--backbone builtin:shapes-unet] [--n 256] [--steps 50]
        DDIM samples of a backbone, judged: the share with confidence >= 0.9 and the class histogram
    python benchmarks/judge.py steering [--config mlproject/configs/default.yaml] [--set k=v ...] [--seeds 16]
        per class, its most specific SAE latent (on train rows) steered at r x its strongest activation vs a random
        direction of the same norm: flip rates (revelio_svc/inference/steering_eval.py); with --exemplar M, each
        class's M most specific latents placed where an exemplar image has them, vs random directions placed alike

Each command prints a JSON line last. Use one thread (`OMP_NUM_THREADS=1`) on a shared machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from revelio_svc.interpret.judge import (  # noqa: E402
    CLASSES,
    JUDGE_DIR,
    JudgeConfig,
    accuracy,
    backbone_samples,
    judge_samples,
    load_judge,
    render_set,
    save_judge,
    train_judge,
)

CONFIDENT = 0.9  # issue 21: the share of samples judged with top probability >= 0.9


def heldout_accuracy(judge, n: int = 2000, seed: int = 2001) -> float:
    """Accuracy on `n` renders of `seed` (2001: held out from the judge's training seed 2000)."""
    imgs, labels = render_set(n, seed, judge.cfg.image_size)
    return accuracy(judge, imgs, labels)


def _train(args) -> dict:
    cfg = dataclasses.replace(JudgeConfig(), **{k: v for k, v in (("steps", args.steps), ("n_train", args.n_train),
                                                                   ("width", args.width), ("seed", args.seed))
                                                if v is not None})
    judge, metrics = train_judge(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    metrics["eval_seed0_accuracy"] = heldout_accuracy(judge, 2000, 0)
    out = save_judge(judge, args.out, metrics)
    size = (out / "judge.safetensors").stat().st_size
    return {"out": str(out), "weights_bytes": size, "config": dataclasses.asdict(cfg), **metrics}


def _accuracy(args) -> dict:
    judge = load_judge(args.judge)
    return {"heldout_seed2001": heldout_accuracy(judge, args.n, 2001), "eval_seed0": heldout_accuracy(judge, args.n, 0),
            "n": args.n}


def _samples(args) -> dict:
    t0 = time.perf_counter()
    key = f"{args.backbone}|n={args.n}|steps={args.steps}|seed={args.seed}"
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file() and str(np.load(cache)["key"]) == key:
        imgs = np.load(cache)["images"]  # plain arrays (allow_pickle stays off)
    else:
        imgs = backbone_samples(args.backbone, args.n, args.steps, args.seed)
        if cache is not None:
            np.savez(cache, images=imgs, key=np.array(key))
    if args.only_sample:
        return {"cached": str(cache), "n": len(imgs), "seconds": round(time.perf_counter() - t0, 1)}
    judge = load_judge(args.judge)
    rep = judge_samples(judge, imgs, args.min_conf)
    rep.update(backbone=args.backbone, ddim_steps=args.steps, seed=args.seed, seconds=round(time.perf_counter() - t0, 1))
    if args.save_grid:
        from PIL import Image

        side = int(np.ceil(np.sqrt(len(imgs))))
        s = imgs.shape[1]
        grid = np.zeros((side * s, side * s, 3), np.uint8)
        for i, im in enumerate(imgs):
            grid[(i // side) * s:(i // side + 1) * s, (i % side) * s:(i % side + 1) * s] = im
        Image.fromarray(grid).save(args.save_grid)
    hist = ", ".join(f"{c} {rep['histogram'][c]}" for c in CLASSES)
    print(f"{args.backbone}: {rep['confident_share']:.1%} of {rep['n']} samples judged with confidence >= "
          f"{args.min_conf} ({hist}); all shapes present: {rep['all_classes_present']}")
    return rep


def _steering(args) -> dict:
    from revelio_svc.config import load_config
    from revelio_svc.features.extract import store_uri_for
    from revelio_svc.inference.steering_eval import steering_eval_for_sae
    from revelio_svc.sae.trainer import sae_output_dir

    cfg = load_config(args.config, args.overrides)
    store_uri = cfg.sae.store or store_uri_for(cfg)
    sae_dir = Path(args.sae) if args.sae else sae_output_dir(cfg, store_uri)
    kw = dict(strengths=tuple(args.strengths), seeds=tuple(range(args.seeds)), steps=args.steps, t_min=args.t_min,
              t_max=args.t_max, progress=lambda s: print(s, file=sys.stderr, flush=True))
    ev = steering_eval_for_sae(cfg.backbone, sae_dir, store_uri, judge=load_judge(args.judge),
                               exemplar=args.exemplar or 0, **kw)
    unit = (f"the {args.exemplar} most specific latents placed as in an exemplar, r x its own activations"
            if args.exemplar else "r x the latent's strongest train activation")
    print(f"steering flips (judge top probability >= {ev.min_conf}; {len(ev.seeds)} seeds, DDIM {ev.steps} steps, "
          f"strengths {unit}):\n{ev.table()}")
    return ev.to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the judge on renders and save it")
    t.add_argument("--out", default=str(JUDGE_DIR))
    t.add_argument("--steps", type=int)
    t.add_argument("--n-train", type=int)
    t.add_argument("--width", type=int)
    t.add_argument("--seed", type=int)
    a = sub.add_parser("accuracy", help="accuracy on held-out renders")
    a.add_argument("--judge", default=None, help="a judge directory (default: the shipped one)")
    a.add_argument("--n", type=int, default=2000)
    s = sub.add_parser("samples", help="judge a backbone's DDIM samples")
    s.add_argument("--backbone", default="builtin:shapes-unet")
    s.add_argument("--judge", default=None)
    s.add_argument("--n", type=int, default=256)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-conf", type=float, default=CONFIDENT)
    s.add_argument("--save-grid", default=None, help="write the samples as one PNG grid here")
    s.add_argument("--cache", default=None, help="an .npz to keep the samples in (reused for the same backbone, n, "
                                                 "steps and seed)")
    s.add_argument("--only-sample", action="store_true", help="sample (into --cache) without judging")
    st = sub.add_parser("steering", help="flip rates of each class's most specific SAE latent vs a random direction")
    st.add_argument("--config", default="mlproject/configs/default.yaml")
    st.add_argument("--set", dest="overrides", action="append", default=[])
    st.add_argument("--judge", default=None)
    st.add_argument("--sae", default="", help="an SAE directory (default: the one train-sae writes for --config)")
    st.add_argument("--seeds", type=int, default=16)
    st.add_argument("--steps", type=int, default=20)
    st.add_argument("--strengths", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    st.add_argument("--t-min", type=int, default=0, help="steer only at timesteps >= this")
    st.add_argument("--t-max", type=int, default=999, help="steer only at timesteps <= this")
    st.add_argument("--exemplar", type=int, default=0, metavar="M",
                    help="steer with each class's M most specific latents placed as in an exemplar image "
                         "(inference.steering_eval.exemplar_steering) instead of one latent everywhere")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    res = {"train": _train, "accuracy": _accuracy, "samples": _samples, "steering": _steering}[args.cmd](args)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
