"""`backbone.id: arch:<name>` + `backbone.init: random`: full-size pipelines with random weights, offline.

The architectures are typed in (`arch_configs.py`); nothing is downloaded. Each model part is built on the
meta device (no memory, no init cost) and then materialised directly in its target dtype with a
deterministic fill, so a 2.6 B-parameter SDXL UNet in bfloat16 costs its 5.1 GB once, never an fp32 copy:

- Linear / Conv weights and their biases: U(-1/√fan_in, 1/√fan_in), PyTorch's default init of those layers;
- Embedding tables: N(0, 1) (PyTorch's default);
- GroupNorm / LayerNorm: weight 1, bias 0; any other 1-d parameter: 0.

Every tensor has its own generator seeded from (backbone.init_seed, part, parameter name): the weights do
not depend on build order, thread count or what ran before, and the same seed gives the same weights.
Buffers (CLIP's position ids, DiT's sin-cos position table) are computed by the modules as usual.

The adapters are the ordinary `StableDiffusionAdapter` / `DiTAdapter`; only where their parts come from
differs (`_load`, `_load_denoiser`), so encode, noising, conditioning and capture run the real code paths.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..config import BackboneConfig, ConfigError
from .arch_configs import ArchSpec, arch_names, get_arch, is_arch_id
from .base import BackboneAdapter, ModelUnavailableError

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.InstanceNorm2d)


# --------------------------------------------------------------------------- deterministic random weights
def tensor_seed(seed: int, part: str, name: str) -> int:
    h = hashlib.sha256(f"{seed}|{part}|{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _fan_in(shape: torch.Size) -> int:
    return int(shape[1] * math.prod(shape[2:])) if len(shape) >= 2 else int(shape[0])


def _fill(t: torch.Tensor, module: nn.Module, pname: str, seed: int) -> None:
    if isinstance(module, _NORMS):
        t.fill_(1.0 if pname == "weight" else 0.0)
        return
    g = torch.Generator().manual_seed(seed)
    if isinstance(module, nn.Embedding):
        t.normal_(0.0, 1.0, generator=g)
    elif t.dim() >= 2:
        bound = 1.0 / math.sqrt(_fan_in(t.shape))
        t.uniform_(-bound, bound, generator=g)
    elif pname == "bias" and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2:
        bound = 1.0 / math.sqrt(_fan_in(module.weight.shape))
        t.uniform_(-bound, bound, generator=g)
    else:
        t.zero_()


def materialize_(model: nn.Module, dtype: torch.dtype, seed: int, part: str, workers: int = 0) -> nn.Module:
    """Replace every meta parameter by a CPU tensor of `dtype` filled deterministically (see module doc).

    Tied parameters stay tied. Fills run on `workers` threads (default: the number of CPUs, at most 8); each
    tensor has its own generator, so the result does not depend on the number of workers.
    """
    jobs: list[tuple[torch.Tensor, nn.Module, str, int]] = []
    done: dict[int, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        for pname, p in list(mod._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) in done:
                mod._parameters[pname] = done[id(p)]
                continue
            t = torch.empty(p.shape, dtype=dtype if p.is_floating_point() else p.dtype)
            full = f"{mod_name}.{pname}" if mod_name else pname
            jobs.append((t, mod, pname, tensor_seed(seed, part, full)))
            new = nn.Parameter(t, requires_grad=False)
            done[id(p)] = new
            mod._parameters[pname] = new
    workers = workers or min(8, os.cpu_count() or 1)
    # largest first so the pool stays busy; uniform_/normal_ release the GIL
    jobs.sort(key=lambda j: -j[0].numel())
    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda j: _fill(*j), jobs))
    else:
        for j in jobs:
            _fill(*j)
    leftover = [n for n, b in model.named_buffers() if b is not None and b.is_meta]
    if leftover:
        raise RuntimeError(f"{part}: buffers left on the meta device: {leftover[:5]}")
    # floating buffers follow the dtype, as from_pretrained(torch_dtype=...) does
    nn.Module.to(model, dtype=dtype)
    return model


def _meta_module(factory: Callable[[], nn.Module]) -> nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def _model_class(class_name: str):
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        cls = getattr(lib, class_name, None)
        if cls is not None:
            return cls
    raise ModelUnavailableError(f"no model class {class_name!r} in diffusers or transformers")


def meta_part(conf: dict[str, Any], cls: Any | None = None) -> nn.Module:
    """A part of a pipeline built on the meta device from its typed-in configuration (no memory)."""
    conf = dict(conf)
    cls = cls or _model_class(conf["_class_name"])
    if conf.get("model_type") == "clip_text_model":
        from transformers import CLIPTextConfig

        kwargs = {k: v for k, v in conf.items() if not k.startswith("_") and k != "model_type"}
        config = CLIPTextConfig(**kwargs)
        return _meta_module(lambda: cls(config))
    return _meta_module(lambda: cls.from_config(conf))


def build_random(conf: dict[str, Any], dtype: torch.dtype, seed: int, part: str, cls: Any | None = None,
                 workers: int = 0) -> nn.Module:
    model = materialize_(meta_part(conf, cls), dtype, seed, part, workers)
    return model.eval().requires_grad_(False)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- stand-in tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    # the byte → printable-character table of byte-level BPE (GPT-2 / CLIP)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_vocab() -> dict[str, int]:
    """The 256 byte symbols, then the same as word ends (`</w>`): a byte-level BPE vocabulary without merges."""
    chars = list(_bytes_to_unicode().values())
    return {s: i for i, s in enumerate(chars + [c + "</w>" for c in chars])}


def stand_in_tokenizer(conf: dict[str, Any]):
    """A CLIP tokenizer without merges over the 512 byte symbols (ids 0–511) plus CLIP's start (49406)
    and end (49407) tokens: real sequence length, padding token and special ids; not CLIP's vocabulary."""
    from transformers import CLIPTokenizer

    vocab = byte_vocab()
    vocab["<|startoftext|>"] = 49406
    vocab["<|endoftext|>"] = 49407
    with tempfile.TemporaryDirectory(prefix="revelio-tok-") as tmp:
        d = Path(tmp)
        (d / "vocab.json").write_text(json.dumps(vocab))
        (d / "merges.txt").write_text("#version: 0.2\n")
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": conf.get("model_max_length", 77),
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": conf.get("pad_token", "<|endoftext|>")}))
        return CLIPTokenizer.from_pretrained(str(d))


# --------------------------------------------------------------------------- adapters
def check_arch_config(cfg: BackboneConfig) -> ArchSpec:
    """The spec of cfg.id, or a ConfigError saying what to set."""
    try:
        spec = get_arch(cfg.id)
    except KeyError:
        raise ConfigError(f"backbone.id: unknown architecture {cfg.id!r}; known: {', '.join(arch_names())}") from None
    if cfg.init != "random":
        raise ConfigError(f"backbone.init: {cfg.id} is an architecture without weights; set backbone.init=random "
                          f"(random weights at the real size), or set backbone.id to {spec.published!r} for the "
                          f"published weights")
    if cfg.kind != spec.kind:
        raise ConfigError(f"backbone.kind: {cfg.id} is a {spec.kind} architecture; set backbone.kind: {spec.kind}")
    if cfg.revision:
        raise ConfigError(f"backbone.revision: {cfg.id} is built from configurations in the code; leave revision empty")
    return spec


class _ArchParts:
    """Mixed into an adapter: pipeline parts come from the typed-in spec, with random weights."""

    arch: ArchSpec
    cfg: BackboneConfig

    def _load(self, what: str, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            conf = self.arch.part(what)
        except KeyError as e:
            raise ModelUnavailableError(str(e)) from None
        if what.startswith("tokenizer"):
            return stand_in_tokenizer(conf)
        name = getattr(fn, "__name__", "")
        if name == "load_config":
            return conf
        if name == "from_pretrained":
            dtype = kw.get("torch_dtype") or kw.get("dtype") or torch.float32
            return build_random(conf, dtype, self.cfg.init_seed, what, cls=getattr(fn, "__self__", None))
        raise ModelUnavailableError(f"{self.cfg.id}: cannot load {what}/ with {name or fn!r}")

    def _load_denoiser(self, what: str, cls: Any, config_cls: Any | None = None) -> nn.Module:
        # the spec names the concrete class (DiTTransformer2DModel for DiT), not the hub's legacy name
        model = build_random(self.arch.part(what), self.dtype, self.cfg.init_seed, what)
        return model.to(self.device).eval().requires_grad_(False)

    def describe(self) -> dict:
        d = super().describe()  # type: ignore[misc]
        d["architecture"] = self.arch.published + " (configuration only, random weights)"
        return d


def load_arch_backbone(cfg: BackboneConfig) -> BackboneAdapter:
    spec = check_arch_config(cfg)
    if spec.kind in ("sd", "sdxl"):
        from .sd import StableDiffusionAdapter

        class ArchStableDiffusionAdapter(_ArchParts, StableDiffusionAdapter):
            arch = spec

        return ArchStableDiffusionAdapter(cfg)
    from .dit import DiTAdapter

    class ArchDiTAdapter(_ArchParts, DiTAdapter):
        arch = spec

    return ArchDiTAdapter(cfg)


# --------------------------------------------------------------------------- shapes without weights
def denoiser_part(spec: ArchSpec) -> str:
    return "unet" if "unet" in spec.parts else "transformer"


def hook_shapes(spec: ArchSpec, resolution: int = 0) -> dict[str, tuple[int, int, int]]:
    """Every hook point's map (C, H, W) for one image at `resolution` (0 = native), from a forward on the
    meta device: the real module code, no weights, no arithmetic."""
    from .dit import dit_hook_points
    from .sd import tokens_to_map, unet_hook_points

    part = denoiser_part(spec)
    conf = spec.part(part)
    with torch.device("meta"):
        model = _model_class(conf["_class_name"]).from_config(conf)
    names = unet_hook_points(model) if part == "unet" else dit_hook_points(model)
    shapes: dict[str, tuple[int, int, int]] = {}

    def hook(name):
        def fn(_m, _i, out):
            shapes[name] = tuple(int(x) for x in tokens_to_map(name, out).shape[1:])
        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    scale = 2 ** (len(spec.parts["vae"]["block_out_channels"]) - 1)
    side = (resolution or spec.native_resolution) // scale
    try:
        with torch.device("meta"), torch.no_grad():
            x = torch.empty(1, conf["in_channels"], side, side)
            ts = torch.full((1,), 10)
            if part == "unet":
                kw: dict[str, Any] = {"encoder_hidden_states": torch.empty(1, 77, conf["cross_attention_dim"])}
                if conf.get("addition_embed_type") == "text_time":
                    pooled = spec.parts["text_encoder_2"]["projection_dim"]
                    kw["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled), "time_ids": torch.empty(1, 6)}
                model(x, ts, **kw)
            else:
                model(x, timestep=ts, class_labels=torch.zeros(1, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return {n: shapes[n] for n in names}


def models_markdown(store_dtypes: tuple[str, ...] = ("float16", "float32")) -> str:
    """The per-model hook-point tables of docs/models.md (native resolution, bytes per image per pooling)."""
    from .arch_configs import ARCHS

    out = []
    for spec in ARCHS.values():
        res = spec.native_resolution
        out.append(f"### `{spec.id}` — {spec.published}, {res} px\n")
        dt = " / ".join(store_dtypes)
        out.append(f"| hook point | map C × H × W | mean or max, bytes/image ({dt}) | tokens H × W × C | "
                   f"tokens, bytes/image ({dt}) |")
        out.append("|---|---|---|---|---|")
        for name, (c, h, w) in hook_shapes(spec).items():
            item = [np.dtype(d).itemsize for d in store_dtypes]
            pooled = " / ".join(f"{c * i:,}" for i in item)
            tokens = " / ".join(f"{h * w * c * i:,}" for i in item)
            out.append(f"| `{name}` | {c} × {h} × {w} | {pooled} | {h} × {w} × {c} | {tokens} |")
        out.append("")
    return "\n".join(out)


__all__ = ["build_random", "check_arch_config", "count_params", "is_arch_id", "hook_shapes", "load_arch_backbone",
           "materialize_", "meta_part", "models_markdown", "stand_in_tokenizer", "tensor_seed"]


if __name__ == "__main__":  # python -m revelio_svc.backbones.arch  → the tables of docs/models.md
    print(models_markdown())
