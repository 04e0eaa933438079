"""`revelio plan`: what an extraction will write, hold in memory and take, before it starts.

`plan(cfg)` loads the dataset and the backbone (or takes them) and returns a frozen `Plan`:

- **Feature sets**: per hook point × timestep × pooling, the per-image shape and bytes in the store dtype.
  Shapes come from running the capture forward on fake tensors (`torch._subclasses.FakeTensorMode`: the
  real module code, no memory, no arithmetic), and are checked against a real forward when the probe runs.
- **Store size, exact**: the bytes of every file `extract` writes (docs/feature-store.md): each feature
  file and `rows/` file is a safetensors file whose size is 8 + its JSON header (padded to 8 bytes) + its
  data, and `manifest.json` is computed by serialising the final manifest with placeholder checksums (a
  SHA-256 hex digest has a fixed length). The total counts every byte of the store directory (files'
  apparent sizes, not file-system blocks) provided every image decodes; a skipped image removes its rows
  and adds its entry to the manifest.
- **Peak memory** (estimate) of the capture at the configured batch and dtype: resident weights (every
  part the adapter holds, exact) + the largest transient of one step, measured by tracking the live tensor
  storages of the encode and of the capture forward (up to the deepest hook point) on fake tensors at the
  configured batch + the host buffers extraction keeps for one shard (decoded images, features, their
  concatenation and one serialised file). Kernel-internal workspaces and allocator caching are not seen.
- **Run time** (estimate) from a short timed probe on the current device: one real encode and one real
  capture of the first image (on CUDA: after a warm-up, at the configured batch), scaled to the dataset.
- **Free space**: for a local store, the free bytes of the destination file system; `ensure_fits` refuses
  (InsufficientSpaceError, with the numbers) when the bytes still to write exceed them.

`format_plan(plan)` renders it; `revelio plan` prints it, and `revelio extract` prints it before starting.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..backbones import load_backbone
from ..backbones.meta import load_meta_backbone
from ..config import Config
from ..data import BadImageError, ImageDataset, load_dataset
from ..identity import digest
from .extract import default_store_uri, store_config
from .space import (
    InsufficientSpaceError,
    StoreBytes,
    done_shards,
    ensure_fits,
    feature_file_size,
    free_bytes,
    shard_rows,
    store_bytes,
    written_shards,
)
from .store import new_manifest, set_key


# --------------------------------------------------------------------------- fake-tensor analysis
class LiveBytes:
    """A dispatch mode that tracks the bytes of live tensor storages created by ops, and their peak.

    Storages that exist when tracking starts (weights, inputs made before) are never counted, nor are
    views of them. Works on real and fake tensors alike (fake storages have a size, no memory).
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        from torch.utils.weak import WeakIdKeyDictionary

        tracker = self
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()
        for t in exclude:
            self._seen[t.untyped_storage()] = None

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker.add(t)
                return out

        self.mode = _Mode()

    def _free(self, n: int) -> None:
        self.live -= n

    def add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st in self._seen:
            return
        n = int(st.nbytes())
        self._seen[st] = weakref.finalize(st, self._free, n)
        self.live += n
        self.peak = max(self.peak, self.live)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def adapter_modules(adapter) -> list[nn.Module]:
    """Every module the adapter keeps resident (denoiser, VAE, text encoders), without duplicates."""
    found: dict[int, nn.Module] = {}
    for v in vars(adapter).values():
        for m in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(m, nn.Module):
                found.setdefault(id(m), m)
    return list(found.values())


def _tensors(modules: Sequence[nn.Module]) -> Iterator[tuple[nn.Module, str, str, torch.Tensor]]:
    for m in modules:
        for sub in m.modules():
            for n, p in sub._parameters.items():
                if p is not None:
                    yield sub, "_parameters", n, p
            for n, b in sub._buffers.items():
                if b is not None:
                    yield sub, "_buffers", n, b


def weight_bytes(modules: Sequence[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for _, _, _, t in _tensors(modules):
        st = t.untyped_storage()
        key = st.data_ptr() if st.data_ptr() else id(t)
        if key not in seen:
            seen.add(key)
            total += int(st.nbytes())
    return total


@contextmanager
def fake_weights(modules: Sequence[nn.Module], mode) -> Iterator[list[torch.Tensor]]:
    """Temporarily swap every parameter and buffer for a fake twin (same shape/dtype/device, no data);
    yields the twins (so that a LiveBytes can leave them and their views out)."""
    swapped = []
    twins: dict[int, torch.Tensor] = {}
    try:
        for sub, where, n, t in list(_tensors(modules)):
            if id(t) not in twins:
                twins[id(t)] = mode.from_tensor(t)
            getattr(sub, where)[n] = twins[id(t)]
            swapped.append((sub, where, n, t))
        yield list(twins.values())
    finally:
        for sub, where, n, t in swapped:
            getattr(sub, where)[n] = t


@dataclass(frozen=True)
class ForwardAnalysis:
    shapes: dict[str, tuple[int, ...]]  # hook point → (C, H, W) map of one image
    encode_peak: int  # bytes live at the peak of encode (preprocessing + VAE) at the batch
    capture_peak: int  # bytes live at the peak of the capture forward (inputs, activations, maps)
    batch: int
    latent_shape: tuple[int, ...] = ()  # what encode gives for the batch


def analyse_forward(adapter, image: np.ndarray, cond, hook_points: Sequence[str], t: int,
                    batch: int) -> ForwardAnalysis:
    """Run encode and capture at `batch` on fake tensors: map shapes and peak live bytes of each step."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    modules = adapter_modules(adapter)
    images = np.repeat(image[None], batch, axis=0)
    with fake_weights(modules, mode) as weights:
        # weights are resident, counted apart (weight_bytes): neither they nor views of them (W.t()) count here
        enc = LiveBytes(exclude=weights)
        with mode, enc, torch.no_grad():
            x0 = adapter.encode(images)
            x0_shape, x0_dtype = tuple(x0.shape), x0.dtype
            del x0
        cond_fake = _fake_cond(cond, batch, mode)
        cap = LiveBytes(exclude=[*weights, *_leaves(cond_fake)])
        with mode, cap, torch.no_grad():
            x0 = torch.empty(x0_shape, dtype=x0_dtype, device=adapter.device)  # held across timesteps
            noise = torch.empty(x0_shape, dtype=torch.float32, device=adapter.device)
            x_t = x0.float() * 0.5 + noise * 0.5
            del noise
            maps = adapter.capture(x_t, t, cond_fake, list(hook_points))
            shapes = {h: tuple(int(s) for s in m.shape[1:]) for h, m in maps.items()}
            del maps, x_t, x0
    # cond tensors are resident during capture (the prompt cache); count them with the capture
    cond_bytes = sum(int(x.untyped_storage().nbytes()) for x in _leaves(cond_fake))
    return ForwardAnalysis(shapes, enc.peak, cap.peak + cond_bytes, batch, x0_shape)


def _leaves(cond) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [x for x in tree_leaves(cond.kwargs) if isinstance(x, torch.Tensor)]


def _fake_cond(cond, batch: int, mode):
    """Conditioning of one image, expanded to the batch, as fake tensors."""
    from torch.utils._pytree import tree_map

    from ..backbones import Conditioning

    def grow(x):
        if not isinstance(x, torch.Tensor):
            return x
        with mode:
            return torch.empty((batch, *x.shape[1:]), dtype=x.dtype, device=x.device) if x.dim() else x.clone()

    return Conditioning(tree_map(grow, cond.kwargs))


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class SetPlan:
    key: str
    hook_point: str
    timestep: int
    pooling: str
    shape: tuple[int, ...]  # per image
    dtype: str
    bytes_per_image: int  # feature data of one image
    file_bytes: int  # every shard file of this set, headers included


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    dtype: str  # of the denoiser
    batch: int
    weights: int  # resident parameters and buffers of every part
    encode_peak: int  # transient of encoding one batch
    capture_peak: int  # transient of one capture forward (one timestep) of one batch
    shard_buffers: int  # host memory for one shard: decoded images + features (+ their concatenation)
    peak: int  # the estimate: weights + max(forward step + shard buffers, shard write)
    method: str = ("weights: exact; activations: live tensor storages of encode and capture on fake tensors "
                   "(FakeTensorMode) at the configured batch; host buffers of one shard")


@dataclass(frozen=True)
class TimePlan:
    device: str
    probe_batch: int
    encode_s_per_image: float
    capture_s_per_image_t: float
    total_s: float  # encode every image once + capture every (image, timestep)
    probe_wall_s: float  # what the probe itself took
    probe_resolution: int = 0  # the encode was timed at this resolution (scaled by FLOPs when not native)

    @property
    def images_t_per_s(self) -> float:
        return 1.0 / self.capture_s_per_image_t if self.capture_s_per_image_t > 0 else float("inf")


@dataclass(frozen=True)
class Plan:
    backbone_id: str
    kind: str
    resolution: int
    store_uri: str
    config_hash: str
    n_images: int
    n_shards: int
    shard_size: int
    timesteps: tuple[int, ...]
    sets: tuple[SetPlan, ...]
    store: StoreBytes
    free_bytes: int | None  # None: not a local path (S3) — not checked
    memory: MemoryPlan
    time: TimePlan | None = None
    shapes_verified: bool = False  # a real forward gave the same shapes as the fake one
    notes: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)  # e.g. the peak-memory estimate exceeds the machine's

    @property
    def fits(self) -> bool | None:
        return None if self.free_bytes is None else self.store.to_write <= self.free_bytes

    def feature_sets(self) -> dict[str, dict]:
        """The manifest's `feature_sets` (what extract would write)."""
        return {s.key: {"hook_point": s.hook_point, "timestep": s.timestep, "pooling": s.pooling,
                        "shape": list(s.shape), "dtype": s.dtype} for s in self.sets}

    def ensure_fits(self) -> None:
        ensure_fits(self.store_uri, self.store.to_write, self.free_bytes, self.store.total)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["store"]["total"] = self.store.total
        d["fits"] = self.fits
        return d


def pooled_shape(map_shape: tuple[int, ...], pooling: str) -> tuple[int, ...]:
    c, h, w = map_shape
    return (h, w, c) if pooling == "tokens" else (c,)


def first_image(ds: ImageDataset) -> tuple[int, np.ndarray]:
    for i in range(len(ds)):
        try:
            return i, ds.image(i)
        except BadImageError:
            continue
    raise RuntimeError("no image of the dataset could be decoded; see the skipped list")


def _cond_for(cfg: Config, adapter, ds: ImageDataset, idx: list[int]):
    """The conditioning extract builds for these dataset indices (same rules as features/extract.py)."""
    mode = cfg.backbone.prompt_mode
    concepts = [c.name for c in ds.concepts]
    if mode == "class":
        names = ds.label_names().get(concepts[0], []) if concepts else []
        lab = ds.labels(concepts[0])
        return adapter.conditioning(len(idx), class_names=[names[lab[i]] for i in idx])
    if mode == "caption":
        return adapter.conditioning(len(idx), captions=[ds.caption(i) for i in idx])
    return adapter.conditioning(len(idx))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PROBE_BUDGET_S = 2.0  # a second, batched probe runs when it should take about this long or less
CPU_PROBE_MAX_RES = 256  # above this, the CPU probe encodes at half the side and scales by FLOPs


@contextmanager
def _resolution(adapter, res: int) -> Iterator[None]:
    old = adapter.resolution
    adapter.resolution = res
    try:
        yield
    finally:
        adapter.resolution = old


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):  # not in torch's own table
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa
    return FlopCounterMode(display=False, custom_mapping=mapping)


def encode_flops(adapter, image: np.ndarray, res: int) -> int:
    """FLOPs (matmul, convolution, attention) of encoding one image at `res`, counted on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    counter = _flop_counter()
    with fake_weights(adapter_modules(adapter), mode), _resolution(adapter, res), mode, counter, torch.no_grad():
        adapter.encode(image[None])
    return int(counter.get_total_flops())


def _timed_probe(cfg: Config, adapter, ds, index: int, image: np.ndarray, order: list[str], batch: int,
                 analysis: ForwardAnalysis) -> tuple[TimePlan, dict[str, tuple[int, ...]]]:
    """Timed real forwards: encode of the first image and capture of one latent (also the shapes check).

    On CUDA both are repeated at the configured batch after that warm-up. On the CPU, a second, batched
    run follows when the first was quick (PROBE_BUDGET_S); above CPU_PROBE_MAX_RES px the encode is timed
    at half the side and scaled by the ratio of its FLOPs (counted on fake tensors), since on the CPU the
    VAE encode of one full-size image alone can take most of a minute.
    """
    ec = cfg.extract
    t = ec.timesteps[0]
    ids = ds.ids()
    cuda = adapter.device.type == "cuda"
    res = int(getattr(adapter, "resolution", 0) or 0)
    scale = int(getattr(adapter, "vae_scale_factor", 1) or 1)
    probe_res = res
    if not cuda and res > CPU_PROBE_MAX_RES and (res // 2) % scale == 0:
        probe_res = res // 2
    enc_factor = 1.0
    if probe_res != res:
        small = encode_flops(adapter, image, probe_res)
        enc_factor = encode_flops(adapter, image, res) / small if small else (res / probe_res) ** 2
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(0)

    def run(b: int) -> tuple[float, float, dict]:
        images = np.repeat(image[None], b, axis=0)
        cond = _cond_for(cfg, adapter, ds, [index] * b)  # text encoding happens here, once per distinct prompt
        _sync(adapter.device)
        t0 = time.perf_counter()
        with _resolution(adapter, probe_res) if probe_res != res else nullcontext():
            adapter.encode(images)
        _sync(adapter.device)
        t_enc = (time.perf_counter() - t0) * enc_factor
        # the capture runs on a latent of the real shape (its values change neither the shapes nor the time)
        x0 = torch.randn((b, *analysis.latent_shape[1:]), generator=g).to(adapter.device)
        x_t = adapter.add_noise(x0, t, [ids[index]] * b, ec.noise_seed)
        _sync(adapter.device)
        t0 = time.perf_counter()
        maps = adapter.capture(x_t, t, cond, order)
        _sync(adapter.device)
        return t_enc / b, (time.perf_counter() - t0) / b, maps

    with torch.inference_mode():
        t_enc, t_cap, maps = run(1)
        shapes = {h: tuple(int(s) for s in m.shape[1:]) for h, m in maps.items()}
        del maps
        probe_batch = 1
        first = t_enc + t_cap
        if cuda or first < PROBE_BUDGET_S:
            b = batch if cuda else min(batch, max(1, int(PROBE_BUDGET_S / max(first, 1e-3))))
            t_enc, t_cap, _ = run(b)
            probe_batch = b
    n, n_t = len(ds), len(ec.timesteps)
    total = n * t_enc + n * n_t * t_cap
    tp = TimePlan(str(adapter.device), probe_batch, t_enc, t_cap, total, time.perf_counter() - t_start,
                  probe_res)
    return tp, shapes


def plan(cfg: Config, dataset: ImageDataset | None = None, adapter=None, probe: bool = True,
         require_space: bool = False) -> Plan:
    """The plan of `revelio extract` for this config. Writes nothing.

    Loads the dataset and the backbone unless given. With `probe`, runs one real encode + capture
    (timed) unless the store is already complete. With `require_space`, raises InsufficientSpaceError
    (before the probe) when a local store would not fit its file system.
    """
    ec = cfg.extract
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    if adapter is None:
        # without the timed forward no weight is needed: the parts are built on the meta device
        adapter = load_backbone(cfg.backbone) if probe else load_meta_backbone(cfg.backbone)
    device = getattr(adapter, "plan_device", adapter.device)  # what the estimates are for
    adapter.validate_hook_points(ec.hook_points)
    conf = store_config(cfg, ds)
    chash = digest(conf, 16)
    uri = ec.store or default_store_uri(cfg, chash)
    n = len(ds)
    np_dtype = np.dtype(np.float16 if ec.dtype == "float16" else np.float32)
    order = [h for h in adapter.hook_points() if h in ec.hook_points] + [
        h for h in ec.hook_points if h not in adapter.hook_points()]
    index, image = first_image(ds)
    batch = max(1, min(ec.batch_size, n))

    analysis = analyse_forward(adapter, image, _cond_for(cfg, adapter, ds, [index]), order, ec.timesteps[0], batch)

    sets: list[SetPlan] = []
    rows_per_shard = shard_rows(n, ec.shard_size)
    for h in order:
        for t in ec.timesteps:
            for p in ec.poolings_for(h, t):
                shape = pooled_shape(analysis.shapes[h], p)
                per = int(math.prod(shape)) * np_dtype.itemsize
                files = sum(feature_file_size(shape, np_dtype.name, r) for r in rows_per_shard)
                sets.append(SetPlan(set_key(h, t, p), h, t, p, shape, np_dtype.name, per, files))
    feature_sets = {s.key: {"hook_point": s.hook_point, "timestep": s.timestep, "pooling": s.pooling,
                            "shape": list(s.shape), "dtype": s.dtype} for s in sets}
    manifest = new_manifest(conf, chash, n, ec.shard_size, ds.label_names(), feature_sets)
    concepts = [c.name for c in ds.concepts]
    done = done_shards(uri, chash)
    sb = store_bytes(manifest, concepts, done)
    free = free_bytes(uri)
    if require_space:
        ensure_fits(uri, sb.to_write, free, sb.total)

    # host memory for one shard (extract.py keeps a shard's decoded images and features until it writes it)
    shard_n = min(ec.shard_size, n)
    per_image = sum(s.bytes_per_image for s in sets)
    largest_file = max((feature_file_size(s.shape, s.dtype, shard_n) for s in sets), default=0)
    images_bytes = shard_n * int(np.asarray(image).nbytes)
    feats = shard_n * per_image
    forward = max(analysis.encode_peak, analysis.capture_peak)
    # during the forwards: images + features so far; at the write: images + lists + concatenation + one file
    shard_buffers = images_bytes + 2 * feats + largest_file
    weights = weight_bytes(adapter_modules(adapter))
    peak = weights + max(forward + images_bytes + feats, shard_buffers)
    mem = MemoryPlan(str(device), str(adapter.dtype).replace("torch.", ""), batch, weights,
                     analysis.encode_peak, analysis.capture_peak, shard_buffers, peak)
    warn = memory_warning(mem, *machine_memory(torch.device(device)), batch=ec.batch_size)

    notes = []
    tp, verified = None, False
    if probe and len(done) < len(rows_per_shard):
        tp, real_shapes = _timed_probe(cfg, adapter, ds, index, image, order, batch, analysis)
        if real_shapes != analysis.shapes:
            raise RuntimeError(f"the fake-tensor forward gave map shapes {analysis.shapes} but the real one "
                               f"{real_shapes}; please report this")
        verified = True
    elif probe:
        notes.append("the store is complete: nothing to extract, no probe run")
    if done:
        notes.append(resume_note(uri, chash, rows_per_shard))
    return Plan(backbone_id=cfg.backbone.id, kind=cfg.backbone.kind, resolution=int(getattr(adapter, "resolution", 0)),
                store_uri=uri, config_hash=chash, n_images=n, n_shards=len(rows_per_shard),
                shard_size=ec.shard_size, timesteps=tuple(ec.timesteps), sets=tuple(sets), store=sb,
                free_bytes=free, memory=mem, time=tp, shapes_verified=verified, notes=tuple(notes),
                warnings=(warn,) if warn else ())


def machine_memory(device: torch.device) -> tuple[str, int | None]:
    """(what, bytes) of the memory the estimate has to fit in: the GPU's on CUDA, else this machine's RAM."""
    if device.type == "cuda" and torch.cuda.is_available():
        return "GPU memory", int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return "RAM", int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): not checked
        return "RAM", None


def memory_warning(mem: MemoryPlan, what: str, total: int | None, batch: int) -> str | None:
    """A warning when the peak-memory estimate exceeds `total` bytes of `what`; None when it fits."""
    if total is None or mem.peak <= total:
        return None
    return (f"the peak-memory estimate {human_bytes(mem.peak)} exceeds this machine's {what} ({human_bytes(total)}): "
            f"the extraction would likely run out of memory. Lower extract.batch_size (now {batch}; extraction "
            f"halves it on out-of-memory) or extract.shard_size, or use backbone.dtype=float16 / bfloat16")


def resume_note(uri: str, chash: str, rows_per_shard: list[int]) -> str:
    """What a resume really skips: the shards of the manifest and those an earlier distributed launch left
    in `_parts/` (extract folds them in first), and what is left to extract."""
    in_manifest, in_parts = written_shards(uri, chash)
    done = in_manifest | in_parts
    left = [i for i in range(len(rows_per_shard)) if i not in done]
    where = (f" ({len(in_manifest)} in the manifest, {len(in_parts)} more in _parts/ from an earlier "
             "distributed launch, folded in first)") if in_parts else ""
    rest = (f"{len(left)} shard(s) ({sum(rows_per_shard[i] for i in left)} images) left to extract" if left
            else "nothing left to extract")
    return f"resuming: {len(done)} of {len(rows_per_shard)} shards are already written{where} and skipped; {rest}"


# --------------------------------------------------------------------------- rendering
def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_plan(p: Plan) -> str:
    lines = [f"plan: {p.backbone_id} ({p.kind}) at {p.resolution} px; {p.n_images} images in {p.n_shards} "
             f"shard(s) of {p.shard_size}; timesteps {', '.join(map(str, p.timesteps))}",
             f"store: {p.store_uri} (config hash {p.config_hash})",
             f"  {'hook point':<24s} {'t':>4s} {'pooling':<7s} {'shape per image':<18s} {'bytes/image':>12s} "
             f"{'set total':>12s}"]
    for s in p.sets:
        lines.append(f"  {s.hook_point:<24s} {s.timestep:>4d} {s.pooling:<7s} {'×'.join(map(str, s.shape)):<18s} "
                     f"{s.bytes_per_image:>12,d} {human_bytes(s.file_bytes):>12s}")
    sb = p.store
    lines.append(f"store size (exact, every file): {sb.total:,} bytes ({human_bytes(sb.total)}) = features "
                 f"{sb.features:,} + rows {sb.rows:,} + manifest {sb.manifest:,}; dtype {p.sets[0].dtype if p.sets else '-'}")
    if sb.shards_done:
        lines.append(f"  still to write: {sb.to_write:,} bytes ({sb.shards_done} shard(s) already complete)")
    if p.free_bytes is None:
        lines.append("free space: not checked (not a local path)")
    else:
        lines.append(f"free space at destination: {human_bytes(p.free_bytes)} — "
                     + ("fits" if p.fits else "DOES NOT FIT"))
    m = p.memory
    lines.append(f"peak memory (estimate) on {m.device}, {m.dtype}, batch {m.batch}: {human_bytes(m.peak)} = weights "
                 f"{human_bytes(m.weights)} + largest step (encode {human_bytes(m.encode_peak)}, capture "
                 f"{human_bytes(m.capture_peak)}) + shard buffers ≤ {human_bytes(m.shard_buffers)}")
    if p.time is not None:
        t = p.time
        enc_at = (f", encode timed at {t.probe_resolution} px and scaled by FLOPs"
                  if t.probe_resolution not in (0, p.resolution) else "")
        lines.append(f"run time (estimate from a {t.probe_wall_s:.1f} s probe at batch {t.probe_batch} on {t.device}{enc_at}): "
                     f"{human_seconds(t.total_s)} — encode {t.encode_s_per_image:.3f} s/image, capture "
                     f"{t.capture_s_per_image_t:.3f} s per image·t ({t.images_t_per_s:.2f} images·t/s)")
    for note in p.notes:
        lines.append(f"note: {note}")
    for w in p.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)




def preflight(cfg: Config, dataset: ImageDataset | None = None, adapter=None) -> tuple[Plan, dict[str, Any]]:
    """What `revelio extract` runs first: the plan (printed), a refusal when the store would not fit, and
    the keyword arguments that let `extract` reuse the loaded dataset, backbone and checked shapes."""
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    adapter = adapter if adapter is not None else load_backbone(cfg.backbone)
    p = plan(cfg, dataset=ds, adapter=adapter, require_space=True)
    if distributed.is_main():
        print(format_plan(p), flush=True)
    return p, {"adapter": adapter, "dataset": ds, "feature_sets": p.feature_sets() if p.shapes_verified else None}


__all__ = ["InsufficientSpaceError", "MemoryPlan", "Plan", "SetPlan", "StoreBytes", "TimePlan", "analyse_forward",
           "ensure_fits", "feature_file_size", "format_plan", "machine_memory", "memory_warning", "plan", "preflight",
           "store_bytes"]
