"""`revelio pretrain`: train the default pixel-space backbone on procedural shapes, on a CPU.

Training images are drawn fresh every step from the shapes generator (seed `pretrain.seed`, disjoint
from the evaluation seed), so the model never sees an evaluation image. A constant learning rate after
warm-up means stopping at step N equals a run configured with `pretrain.steps=N`; checkpoints make a
killed run resume where it stopped.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel

from ..config import Config, to_dict
from ..contracts import Artifact, MetricsCallback, StageResult
from ..data.shapes import ShapesDataset
from ..identity import digest
from ..progress import progress_bar
from .hub import resolve_local
from .unet2d import build_unet, default_scheduler

CKPT = "checkpoint.pt"


def _batch(ds: ShapesDataset, step: int, batch_size: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    start = step * batch_size
    imgs = np.stack([ds.image(start + j) for j in range(batch_size)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if hflip:
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
    return x


def sample_images(model, n: int = 16, steps: int = 50, seed: int = 0, batch: int = 64) -> np.ndarray:
    """`n` DDIM samples (eta 0) of a pixel-space denoiser: uint8 (n, S, S, 3); the same seed gives the same images."""
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    sched.set_timesteps(steps)
    size = int(model.config.sample_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    model.eval()
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for t in sched.timesteps:
            eps = torch.cat([model(x[i:i + batch].to(dtype), t).sample.float() for i in range(0, n, batch)])
            x = sched.step(eps, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def sample_grid(model, n: int = 16, steps: int = 50, seed: int = 0) -> np.ndarray:
    """DDIM samples as one uint8 grid image (a quick look at what the model learned)."""
    imgs = sample_images(model, n, steps, seed)
    size = imgs.shape[1]
    side = int(math.ceil(math.sqrt(n)))
    grid = np.zeros((side * size, side * size, 3), np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, side)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = im
    return grid


def save_backbone(model, out_dir: Path, dtype: str, card: dict | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to(torch.float16 if dtype == "float16" else torch.float32)
    m.save_pretrained(out_dir, safe_serialization=True)
    default_scheduler().save_pretrained(out_dir)
    if card is not None:
        (out_dir / "training.json").write_text(json.dumps(card, indent=2))
    return out_dir


@dataclass(frozen=True, kw_only=True)
class PretrainResult(StageResult):
    backbone_dir: Path
    steps: int
    final_loss: float

    def outputs(self) -> dict[str, str]:
        return {"backbone_dir": str(self.backbone_dir)}


def _save_png(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _loss_figure(losses: list[float], path: Path) -> Path:
    import matplotlib  # deferred: pyplot picks a backend on import

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    sm = np.convolve(losses, np.ones(25) / 25, mode="valid") if len(losses) > 25 else losses
    ax.plot(sm)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE (25-step mean)")
    ax.set_title("pretrain loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pretrain(cfg: Config, on_metrics: MetricsCallback | None = None, progress: bool = True) -> PretrainResult:
    """Train (or resume) the backbone of `cfg.pretrain`; `on_metrics(step, {loss, images_per_s})` every 10 steps."""
    pc = cfg.pretrain
    if pc.num_threads:
        torch.set_num_threads(pc.num_threads)
    out = Path(pc.output)
    out.mkdir(parents=True, exist_ok=True)
    ds = ShapesDataset(n=10**9, image_size=cfg.data.image_size, seed=pc.seed)
    torch.manual_seed(pc.seed)
    model = build_unet(pc, cfg.data.image_size)
    if pc.init_from:
        _load_init(model, pc.init_from)
    ema = copy.deepcopy(model).requires_grad_(False) if pc.ema_decay > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
    sched = default_scheduler()
    alphas = sched.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(pc.seed)
    step, losses = 0, []
    ckpt = out / CKPT
    if ckpt.is_file():
        # our own checkpoint; weights_only refuses anything but tensors and plain containers
        state = torch.load(ckpt, weights_only=True)
        if state.get("arch") != _arch(pc):
            raise RuntimeError(f"{ckpt} was written by a different pretrain config; use another pretrain.output")
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, losses = int(state["step"]), list(state["losses"])
        print(f"resuming pretrain from step {step}")

    n_params = sum(p.numel() for p in model.parameters())
    samples = out / "samples"
    model.train()
    bar = progress_bar(total=pc.steps, initial=step, desc="pretrain", unit="step", enabled=progress)
    t0, seen0 = time.perf_counter(), step
    while step < pc.steps:
        x0 = _batch(ds, step, pc.batch_size, pc.hflip, gen)
        t = torch.randint(0, 1000, (pc.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = lr_at(pc, step)
        per_image = F.mse_loss(model(xt, t).sample, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_image * loss_weights(pc, alphas[t])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if pc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), pc.grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - pc.ema_decay)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if on_metrics is not None and (step % 10 == 0 or step == pc.steps):
            on_metrics(step, {"loss": float(np.mean(losses[-10:])),
                              "images_per_s": (step - seen0) * pc.batch_size / (time.perf_counter() - t0)})
        if step % pc.checkpoint_every == 0 or step == pc.steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                        "opt": opt.state_dict(), "gen": gen.get_state(), "step": step, "losses": losses,
                        "arch": _arch(pc)}, tmp)
            tmp.replace(ckpt)
            save_backbone(ema if ema is not None else model, out / f"step-{step:06d}", pc.save_dtype,
                          {"step": step, "loss_last50": float(np.mean(losses[-50:]))})
        if pc.sample_every and step % pc.sample_every == 0:
            _save_png(sample_grid(ema if ema is not None else model, n=16, steps=25), samples / f"step-{step:06d}.png")
            model.train()
    bar.close()
    final = ema if ema is not None else model
    card = {"steps": pc.steps, "final_loss_last50": float(np.mean(losses[-50:])), "n_params": n_params,
            "pretrain": to_dict(pc), "data": {"source": "shapes", "seed": pc.seed, "image_size": cfg.data.image_size}}
    path = save_backbone(final, out / "final", pc.save_dtype, card)
    _save_png(sample_grid(final, n=16, steps=25), samples / "final.png")
    curve = _loss_figure(losses, out / "loss_curve.png")
    return PretrainResult(identity=digest(_arch(pc)), metrics={"final_loss": card["final_loss_last50"], "n_params": n_params},
                          artifacts=(Artifact(curve), Artifact(samples, "samples"), Artifact(path, "backbone")),
                          tags={"backbone": "unet2d", "dataset": "shapes"}, backbone_dir=path, steps=pc.steps,
                          final_loss=card["final_loss_last50"])


def lr_at(pc, step: int) -> float:
    """The learning rate of `step` (0-based): linear warm-up to pc.lr, then constant or cosine to pc.min_lr."""
    warm = pc.lr * min(1.0, (step + 1) / max(pc.warmup_steps, 1))
    if pc.lr_schedule == "constant" or step < pc.warmup_steps:
        return warm
    span = max(pc.steps - 1 - pc.warmup_steps, 1)
    frac = min(1.0, (step - pc.warmup_steps) / span)
    return pc.min_lr + 0.5 * (pc.lr - pc.min_lr) * (1.0 + math.cos(math.pi * frac))


def loss_weights(pc, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Per-image weights of the ε-MSE at noise levels `alpha_bar` (ᾱ_t): ones, or min(SNR, γ) / SNR."""
    if pc.loss_weighting == "uniform":
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=pc.snr_gamma) / snr


def _load_init(model, ref: str) -> None:
    """Copy the weights of an existing backbone (same architecture) into `model`."""
    path = resolve_local(ref)
    if path is None:
        raise RuntimeError(f"pretrain.init_from={ref!r} must be a backbone directory or a builtin: name")
    src = UNet2DModel.from_pretrained(str(path), torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"pretrain.init_from={ref!r} has another architecture than the pretrain config "
                           f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")


def _arch(pc) -> str:
    return json.dumps({"c": list(pc.block_out_channels), "l": pc.layers_per_block, "g": pc.norm_num_groups,
                       "a": pc.attention_mid_block, "b": pc.batch_size, "lr": pc.lr, "seed": pc.seed,
                       "w": pc.warmup_steps, "ema": pc.ema_decay, "init": pc.init_from,
                       # only a non-default schedule enters: checkpoints of earlier constant-lr runs still resume
                       **({"sched": [pc.lr_schedule, pc.min_lr, pc.steps]} if pc.lr_schedule != "constant" else {}),
                       **({"weighting": [pc.loss_weighting, pc.snr_gamma]} if pc.loss_weighting != "uniform" else {})},
                      sort_keys=True)
