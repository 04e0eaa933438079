"""A dependency-free copy of the `diffusers.UNet2DModel` forward for the layouts the default backbone uses.

Why: importing diffusers costs seconds on a small machine (its package import pulls in torch._dynamo,
transformers' quantisation configs and scipy.stats) before a single weight is read, and building the model
initialises every weight only to overwrite it. This module builds the same modules with the same names on
the meta device (no memory, no random init), then assigns the tensors of the safetensors file, so a
classifier on the default backbone loads in a fraction of a second. Module names, parameter names, the
return types of every block (what a forward hook sees) and the order of every operation are diffusers', so
a state dict, a hook point path and an output are interchangeable with `UNet2DModel` (tests compare both).

Only the layouts below are built here (`native_unsupported` says why any other is not); everything else,
random initialisation and training still go through diffusers (`backbones/unet2d.py`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = "diffusion_pytorch_model.safetensors"
CONFIG = "config.json"
# UNet2DModel's defaults for keys a config.json may leave out
_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}


def read_unet_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a UNet2DModel folder with diffusers' defaults filled in."""
    raw = json.loads((Path(directory) / CONFIG).read_text())
    given = {k: v for k, v in raw.items() if not k.startswith("_")}
    return {**_DEFAULTS, **given, "_class_name": raw.get("_class_name")}


def native_unsupported(cfg: dict[str, Any]) -> str | None:
    """Why this module cannot build `cfg` (None when it can)."""
    checks = [
        (cfg.get("_class_name") in (None, "UNet2DModel"), f"class {cfg.get('_class_name')}"),
        (all(b == "DownBlock2D" for b in cfg["down_block_types"]), f"down blocks {cfg['down_block_types']}"),
        (all(b == "UpBlock2D" for b in cfg["up_block_types"]), f"up blocks {cfg['up_block_types']}"),
        (cfg["mid_block_type"] in ("UNetMidBlock2D", None), f"mid block {cfg['mid_block_type']}"),
        (cfg["time_embedding_type"] == "positional", f"time embedding {cfg['time_embedding_type']}"),
        (cfg["class_embed_type"] is None and cfg["num_class_embeds"] is None, "class embedding"),
        (cfg["resnet_time_scale_shift"] == "default", f"time scale shift {cfg['resnet_time_scale_shift']}"),
        (cfg["downsample_type"] == "conv" and cfg["upsample_type"] == "conv", "resampling type"),
        (str(cfg["act_fn"]).lower() in ("silu", "swish"), f"activation {cfg['act_fn']}"),
        (cfg["norm_num_groups"] is not None, "norm_num_groups None"),
        (len(cfg["down_block_types"]) == len(cfg["up_block_types"]) == len(cfg["block_out_channels"]),
         "block counts differ"),
    ]
    bad = [why for ok, why in checks if not ok]
    return ", ".join(bad) if bad else None


class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 dropout: float, output_scale_factor: float):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        return (input_tensor + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[0] >= 64:  # as diffusers: nearest upsampling of large NHWC batches
            hidden_states = hidden_states.contiguous()
        return self.conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """diffusers' `Attention` as the mid block builds it (group norm, residual, one projection out)."""

    def __init__(self, channels: int, head_dim: int, groups: int | None, eps: float, rescale: float):
        super().__init__()
        self.heads = channels // head_dim
        self.rescale_output_factor = rescale
        inner = self.heads * head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True) if groups is not None else None
        self.to_q = nn.Linear(channels, inner, bias=True)
        self.to_k = nn.Linear(channels, inner, bias=True)
        self.to_v = nn.Linear(channels, inner, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels, bias=True), nn.Dropout(0.0)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        x = hidden_states.view(b, c, h * w).transpose(1, 2)
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        hd = k.shape[-1] // self.heads
        q, k, v = (t.view(b, -1, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        x = x.transpose(1, 2).reshape(b, -1, self.heads * hd).to(q.dtype)
        x = self.to_out[1](self.to_out[0](x))
        x = x.transpose(-1, -2).reshape(b, c, h, w)
        return (x + residual) / self.rescale_output_factor


class DownBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb: int, layers: int, groups: int, eps: float, dropout: float,
                 add_downsample: bool, padding: int):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb, groups, eps, dropout, 1.0) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch, padding)]) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor):
        out: tuple[torch.Tensor, ...] = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            out = out + (hidden_states,)
        if self.downsamplers is not None:
            for d in self.downsamplers:
                hidden_states = d(hidden_states)
            out = out + (hidden_states,)
        return hidden_states, out


class UpBlock2D(nn.Module):
    def __init__(self, in_ch: int, prev_ch: int, out_ch: int, temb: int, layers: int, groups: int, eps: float,
                 dropout: float, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D((prev_ch if i == 0 else out_ch) + (in_ch if i == layers - 1 else out_ch), out_ch, temb,
                          groups, eps, dropout, 1.0) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple, temb: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            res = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = resnet(torch.cat([hidden_states, res], dim=1), temb)
        if self.upsamplers is not None:
            for u in self.upsamplers:
                hidden_states = u(hidden_states)
        return hidden_states


class UNetMidBlock2D(nn.Module):
    def __init__(self, ch: int, temb: int, groups: int, attn_groups: int | None, eps: float, dropout: float,
                 scale: float, head_dim: int, add_attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([Attention(ch, head_dim, attn_groups, eps, scale) if add_attention else None])
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb, groups, eps, dropout, scale) for _ in range(2)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class Timesteps(nn.Module):
    """Sinusoidal embedding (diffusers' `get_timestep_embedding`, max period 10 000)."""

    def __init__(self, dim: int, flip_sin_to_cos: bool, shift: float):
        super().__init__()
        self.dim, self.flip, self.shift = dim, flip_sin_to_cos, shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device)
        emb = torch.exp(exponent / (half - self.shift))
        emb = timesteps[:, None].float() * emb[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if self.flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        if self.dim % 2 == 1:
            emb = F.pad(emb, (0, 1, 0, 0))
        return emb


class NativeUNet2D(nn.Module):
    """`UNet2DModel` for the supported layouts: same names, same outputs (`.sample`), same hook points."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        why = native_unsupported(config)
        if why:
            raise ValueError(f"this UNet layout needs diffusers: {why}")
        self.config = SimpleNamespace(**config)
        self._raw_config = dict(config)
        c = self.config
        ch = list(c.block_out_channels)
        temb = c.time_embedding_dim or ch[0] * 4
        g, eps, drop = c.norm_num_groups, c.norm_eps, c.dropout
        head = c.attention_head_dim
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=(1, 1))
        self.time_proj = Timesteps(ch[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        n = len(ch)
        self.down_blocks = nn.ModuleList([
            DownBlock2D(ch[max(i - 1, 0)], ch[i], temb, c.layers_per_block, g, eps, drop, i < n - 1,
                        c.downsample_padding) for i in range(n)])
        self.up_blocks = nn.ModuleList()  # registered before the mid block, as in diffusers (module order)
        self.mid_block = None if c.mid_block_type is None else UNetMidBlock2D(
            ch[-1], temb, g, c.attn_norm_num_groups if c.attn_norm_num_groups is not None else g, eps, drop,
            c.mid_block_scale_factor, head if head is not None else ch[-1], c.add_attention)
        rev = ch[::-1]
        self.up_blocks.extend([
            UpBlock2D(rev[min(i + 1, n - 1)], rev[max(i - 1, 0)], rev[i], temb, c.layers_per_block + 1, g, eps, drop,
                      i < n - 1) for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], c.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.long, device=sample.device)
        elif t.dim() == 0:
            t = t[None].to(sample.device)
        t = t * torch.ones(sample.shape[0], dtype=t.dtype, device=t.device)
        emb = self.time_embedding(self.time_proj(t).to(dtype=self.dtype))
        sample = self.conv_in(sample)
        res: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            sample, r = block(sample, emb)
            res += r
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            sample = block(sample, res[-n:], emb)
            res = res[:-n]
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return SimpleNamespace(sample=sample) if return_dict else (sample,)

    def save_pretrained(self, directory: str | Path, safe_serialization: bool = True) -> None:
        """The diffusers folder layout (config.json + safetensors), loadable by either implementation."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = {"_class_name": "UNet2DModel", **{k: v for k, v in self._raw_config.items() if not k.startswith("_")}}
        (d / CONFIG).write_text(json.dumps(cfg, indent=2, default=list))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(d / WEIGHTS),
                  metadata={"format": "pt"})


def load_native_unet(directory: str | Path) -> NativeUNet2D | None:
    """The UNet in a diffusers folder, built on the meta device and given the file's tensors (no random
    init, no copy of the weights); None when the layout or the files need diffusers."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        return None
    cfg = read_unet_config(d)
    if native_unsupported(cfg):
        return None
    with torch.device("meta"):
        model = NativeUNet2D(cfg)
    state = load_file(str(d / WEIGHTS), device="cpu")
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:  # e.g. an old checkpoint with the deprecated attention names: diffusers converts
        return None
    return model
