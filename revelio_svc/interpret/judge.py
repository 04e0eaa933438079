"""The ground-truth judge: a small CNN that names the shape in a 32×32 image, trained only on renders.

It answers one question for the steering and sample reports: *which shape does this image show, and how
sure is it?* It is trained on the shapes generator's own renders (`data.shapes`, seed 2000: disjoint from
the evaluation seed 0 and the backbone's pretraining seed 1000), never on a backbone's features or samples,
so it is an outside judge of what a backbone draws. Its accuracy on held-out renders (seed 2001) is the
ceiling any shape read-out at 32 px can be held to.

    judge = load_judge()                       # the shipped weights (assets/judge, safetensors)
    probs = judge_probs(judge, images)         # uint8 (N, S, S, 3) → (N, 6) class probabilities
    train_judge(JudgeConfig())                 # what `python benchmarks/judge.py train` runs

The shipped weights are reproduced by `python benchmarks/judge.py train --out revelio_svc/assets/judge`
(see the model card there); thread counts change summation order, so a rerun matches closely, not bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.shapes import SHAPES, ShapesDataset

JUDGE_DIR = Path(__file__).resolve().parents[1] / "assets" / "judge"
WEIGHTS_FILE = "judge.safetensors"
CONFIG_FILE = "config.json"
CLASSES = SHAPES


class JudgeError(RuntimeError):
    """The judge's files are missing or do not fit its architecture."""


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture and training recipe; `image_size` is what the judge reads (other sizes are resized)."""

    width: int = 16  # channels of the first stage; doubled at each of the two poolings
    image_size: int = 32
    seed: int = 2000  # training renders: disjoint from evaluation (0) and backbone pretraining (1000)
    n_train: int = 12000
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    heldout_seed: int = 2001
    n_heldout: int = 2000


class ShapeJudge(nn.Module):
    """Three stages of two 3×3 conv + BN + ReLU, max-pooling between them, global average pool, linear."""

    def __init__(self, cfg: JudgeConfig = JudgeConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate((w, 2 * w, 4 * w)):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


# --------------------------------------------------------------------------- data
def render_set(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """`n` renders of the shapes generator with `seed`: uint8 (n, size, size, 3) and shape labels (n,)."""
    ds = ShapesDataset(n=n, image_size=size, seed=seed)
    pairs = [ds.sample(i) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.array([p[1]["shape"] for p in pairs], np.int64)


def _to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, S, S, 3) → float (N, 3, size, size) in [-1, 1], box-resized when S ≠ size."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"the judge reads RGB images (N, H, W, 3), got an array of shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = F.adaptive_avg_pool2d(x, size) if min(x.shape[-2:]) >= size else F.interpolate(x, size=(size, size), mode="bilinear")
    return x


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips and quarter turns: every shape class is closed under them, so the labels stay right."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, (2, 3))
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


# --------------------------------------------------------------------------- use
@torch.no_grad()
def judge_probs(judge: ShapeJudge, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Class probabilities (N, 6) of uint8 images (N, S, S, 3), in the order of `CLASSES`."""
    judge.eval()
    size = judge.cfg.image_size
    out = [F.softmax(judge(_to_input(images[i:i + batch], size)), -1) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, len(CLASSES)))


def accuracy(judge: ShapeJudge, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(judge_probs(judge, images).argmax(1) == labels))


def verdict_summary(probs: np.ndarray, min_conf: float = 0.9) -> dict:
    """What the judge says of a set of images: the share judged with top probability ≥ `min_conf`, and the
    class histogram of those confident verdicts (every class named, 0 included)."""
    probs = np.asarray(probs, np.float64)
    top, arg = probs.max(1), probs.argmax(1)
    sure = top >= min_conf
    hist = {c: int(np.sum(sure & (arg == i))) for i, c in enumerate(CLASSES)}
    return {"n": int(len(probs)), "min_conf": float(min_conf), "confident_share": float(sure.mean()) if len(probs) else 0.0,
            "histogram": hist, "all_classes_present": all(v > 0 for v in hist.values()),
            "argmax_histogram": {c: int(np.sum(arg == i)) for i, c in enumerate(CLASSES)}}


def backbone_samples(backbone: str, n: int = 256, steps: int = 50, seed: int = 0) -> np.ndarray:
    """`n` DDIM samples of a pixel-space backbone (a directory or `builtin:` name): uint8 (n, S, S, 3)."""
    from diffusers import UNet2DModel

    from ..backbones.hub import resolve_local
    from ..backbones.pretrain import sample_images

    path = resolve_local(backbone)
    if path is None:
        raise JudgeError(f"backbone {backbone!r} is not a backbone directory or a builtin: name")
    model = UNet2DModel.from_pretrained(str(path), torch_dtype=torch.float32)
    return sample_images(model, n=n, steps=steps, seed=seed)


def judge_samples(judge: ShapeJudge, images: np.ndarray, min_conf: float = 0.9) -> dict:
    """The judge's verdicts on a backbone's samples (`verdict_summary`) and their mean top probability."""
    probs = judge_probs(judge, images)
    out = verdict_summary(probs, min_conf)
    out["mean_top_prob"] = float(probs.max(1).mean()) if len(probs) else 0.0
    return out


# --------------------------------------------------------------------------- train, save, load
def train_judge(cfg: JudgeConfig = JudgeConfig(), log: Callable[[str], None] | None = None,
                data: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[ShapeJudge, dict]:
    """Train on `cfg.n_train` renders of `cfg.seed` (or on `data`), return (judge, metrics with held-out accuracy).

    AdamW with a one-cycle learning rate; augmentation by flips and quarter turns. The held-out accuracy
    is on `cfg.n_heldout` renders of `cfg.heldout_seed`, never seen in training.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    imgs, labels = data if data is not None else render_set(cfg.n_train, cfg.seed, cfg.image_size)
    x_all, y_all = _to_input(imgs, cfg.image_size), torch.from_numpy(np.asarray(labels, np.int64))
    t_render = time.perf_counter() - t0
    judge = ShapeJudge(cfg)
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.15)
    judge.train()
    losses = []
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        x = _augment(x_all[idx].clone(), gen)
        loss = F.cross_entropy(judge(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and ((step + 1) % 250 == 0 or step + 1 == cfg.steps):
            log(f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    judge.eval()
    metrics = {"train_loss_last100": float(np.mean(losses[-100:])) if losses else float("nan"),
               "train_seconds": time.perf_counter() - t0, "render_seconds": t_render,
               "n_params": int(sum(p.numel() for p in judge.parameters()))}
    if cfg.n_heldout > 0:
        h_imgs, h_labels = render_set(cfg.n_heldout, cfg.heldout_seed, cfg.image_size)
        metrics["heldout_accuracy"] = accuracy(judge, h_imgs, h_labels)
    return judge, metrics


def save_judge(judge: ShapeJudge, out_dir: str | Path, metrics: dict | None = None) -> Path:
    """Weights as safetensors (float32) and the config + metrics as JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().float() for k, v in judge.state_dict().items() if v.is_floating_point()}
    save_file(state, str(out / WEIGHTS_FILE))
    meta = {"format": "revelio-shape-judge", "version": 1, "classes": list(CLASSES),
            "config": dataclasses.asdict(judge.cfg), "metrics": metrics or {}}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_judge(path: str | Path | None = None) -> ShapeJudge:
    """The judge saved at `path` (default: the shipped one). Safetensors and JSON only; nothing is unpickled."""
    d = Path(path) if path is not None else JUDGE_DIR
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / f).is_file():
            raise JudgeError(f"no shape judge at {d}: {f} is missing (train one with `python benchmarks/judge.py train`)")
    meta = json.loads((d / CONFIG_FILE).read_text())
    if meta.get("format") != "revelio-shape-judge" or list(meta.get("classes", [])) != list(CLASSES):
        raise JudgeError(f"{d / CONFIG_FILE} is not a shape judge for the classes {', '.join(CLASSES)}")
    fields = {f.name for f in dataclasses.fields(JudgeConfig)}
    judge = ShapeJudge(JudgeConfig(**{k: v for k, v in meta["config"].items() if k in fields}))
    state = load_file(str(d / WEIGHTS_FILE))
    ref = judge.state_dict()
    missing = [k for k, v in ref.items() if v.is_floating_point() and k not in state]
    unexpected = set(state) - set(ref)
    misshapen = [k for k, v in state.items() if k in ref and tuple(v.shape) != tuple(ref[k].shape)]
    if missing or unexpected or misshapen:
        raise JudgeError(f"{d / WEIGHTS_FILE} does not fit the judge's architecture in {d / CONFIG_FILE} "
                         f"(missing {len(missing)}, unexpected {len(unexpected)}, misshapen {len(misshapen)} tensors)")
    judge.load_state_dict(state, strict=False)  # BN's integer batch counters are not saved: unused in eval
    return judge.eval()
