"""`revelio extract`: one forward per (image batch, timestep) captures every requested hook point."""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..backbones import BackboneAdapter, backbone_describe, load_backbone
from ..backbones.hub import weights_fingerprint
from ..backbones.memory import OOMBackoff
from ..config import Config
from ..contracts import StageResult
from .. import distributed
from ..data import BadImageError, ImageDataset, assign_split, load_dataset
from ..identity import Paths, digest
from ..progress import progress_bar
from .space import check_manifest_fits
from .store import StoreWriter, new_manifest, set_key


@dataclass(frozen=True, kw_only=True)
class ExtractResult(StageResult):
    store_uri: str
    config_hash: str
    n_images: int
    n_rows: int
    skipped: tuple[Mapping[str, Any], ...] = ()
    images_per_s: float = 0.0  # images·timesteps per second over the shards computed in this call
    shards_computed: int = 0
    dataset: Mapping[str, Any] = field(default_factory=dict)  # the dataset's description and fingerprint

    def outputs(self) -> dict[str, str]:
        return {"store_uri": self.store_uri, "config_hash": self.config_hash}


def store_config(cfg: Config, ds: ImageDataset) -> dict[str, Any]:
    """Everything the features depend on; its hash names and guards the store.

    Computable without loading the backbone, so later stages can find the store of a config.
    """
    ec = cfg.extract
    return {
        "backbone": _backbone_key(cfg.backbone),
        "prompt_mode": cfg.backbone.prompt_mode,
        "prompt": (cfg.backbone.generic_prompt if cfg.backbone.prompt_mode == "generic" else
                   cfg.backbone.class_template if cfg.backbone.prompt_mode == "class" else ""),
        "resolution": cfg.backbone.resolution,
        "dataset": {"fingerprint": ds.fingerprint(), **ds.describe()},
        "split": {"seed": cfg.data.seed, "test_fraction": cfg.data.test_fraction},
        "hook_points": list(ec.hook_points),
        "timesteps": list(ec.timesteps),
        "pooling": list(ec.pooling),
        "token_hook_points": list(ec.token_hook_points),
        "token_timesteps": list(ec.token_timesteps),
        "dtype": ec.dtype,
        "noise_seed": ec.noise_seed,
        "shard_size": ec.shard_size,
    }


def _backbone_key(bc) -> dict[str, Any]:
    """The backbone as the features depend on it: its config, and for pretrained local weights (built-in or a
    directory) a fingerprint of those weights, so new weights behind the same id make a new store."""
    out = backbone_describe(bc)
    if bc.init == "pretrained":
        fp = weights_fingerprint(bc.id)
        if fp is not None:
            out["weights"] = fp
    return out


def default_store_uri(cfg: Config, chash: str) -> str:
    return str(Paths.under(cfg.output_dir).store(chash))


def store_identity(cfg: Config, dataset: ImageDataset | None = None) -> str:
    """The identity of the store `extract` writes for this config (identity.py)."""
    return digest(store_config(cfg, dataset if dataset is not None else load_dataset(cfg.data)), 16)


def store_uri_for(cfg: Config, dataset: ImageDataset | None = None) -> str:
    """Where `extract` with this config writes (or wrote) its store."""
    if cfg.extract.store:
        return cfg.extract.store
    return default_store_uri(cfg, store_identity(cfg, dataset))


def pool(maps: torch.Tensor, how: str) -> torch.Tensor:
    """(B, C, H, W) → (B, C) for mean/max, (B, H, W, C) for tokens."""
    if how == "mean":
        return maps.float().mean(dim=(2, 3))
    if how == "max":
        return maps.float().amax(dim=(2, 3))
    return maps.float().permute(0, 2, 3, 1)


def _decode(ds: ImageDataset, indices: range) -> tuple[list[int], list[np.ndarray], list[dict[str, Any]]]:
    ids = ds.ids()
    kept, imgs, skipped = [], [], []
    for i in indices:
        try:
            imgs.append(ds.image(i))
            kept.append(i)
        except BadImageError as e:
            skipped.append({"index": i, "id": ids[i], "reason": str(e)[:300]})
    return kept, imgs, skipped


def extract(cfg: Config, adapter: BackboneAdapter | None = None, dataset: ImageDataset | None = None,
            progress: bool = True, on_shard=None, feature_sets: dict[str, dict] | None = None) -> ExtractResult:
    """`feature_sets`: the manifest's feature sets when already known (from `plan`, whose probe forward
    checked them), so that no extra forward is spent on learning the shapes."""
    ec = cfg.extract
    if ec.num_threads:
        torch.set_num_threads(ec.num_threads)
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    adapter = adapter if adapter is not None else load_backbone(cfg.backbone)
    adapter.validate_hook_points(ec.hook_points)
    if cfg.backbone.prompt_mode == "class":
        print("warning: prompt_mode=class puts the class name in the prompt; features leak the label "
              "(use it for analysis only)")

    conf = store_config(cfg, ds)
    chash = digest(conf, 16)
    uri = ec.store or default_store_uri(cfg, chash)
    ids = ds.ids()
    split = assign_split(ids, cfg.data.seed, cfg.data.test_fraction)
    concepts = [c.name for c in ds.concepts]
    labels = {c: ds.labels(c) for c in concepts}
    n = len(ds)
    np_dtype = np.float16 if ec.dtype == "float16" else np.float32

    # shapes of every set, from one probe forward on the first decodable image
    order = [h for h in adapter.hook_points() if h in ec.hook_points] + [
        h for h in ec.hook_points if h not in adapter.hook_points()]
    known_sets, feature_sets = feature_sets, {}
    writer = None
    captions_fn = getattr(ds, "caption", None)
    class_names = ds.label_names().get(concepts[0], []) if concepts else []

    def cond_for(idx: list[int]):
        if cfg.backbone.prompt_mode == "class":
            lab = labels[concepts[0]]
            return adapter.conditioning(len(idx), class_names=[class_names[lab[i]] for i in idx])
        if cfg.backbone.prompt_mode == "caption":
            return adapter.conditioning(len(idx), captions=[captions_fn(i) for i in idx])
        return adapter.conditioning(len(idx))

    n_shards = (n + ec.shard_size - 1) // ec.shard_size
    ctx = distributed.init()
    mine = ctx.shard(n_shards)
    if ctx.distributed:
        # rank 0 creates or resumes the store (and folds parts of an earlier launch) before anyone writes
        writer, feature_sets = _open_shared_writer(ctx, uri, conf, chash, n, ec, ds, adapter, order, ids,
                                                   cond_for, np_dtype, known_sets)
    my_images = sum(min(ec.shard_size, n - s * ec.shard_size) for s in mine)
    bar = progress_bar(total=my_images * len(ec.timesteps), desc="extract", unit="img·t",
                       enabled=progress and ctx.is_main)
    backoff = OOMBackoff(ec.batch_size, log=bar.write)
    t_compute, work, computed = 0.0, 0, 0
    for s in mine:
        if writer is not None and s in writer.done:
            bar.update(min(ec.shard_size, n - s * ec.shard_size) * len(ec.timesteps))
            continue
        kept, imgs, skipped = _decode(ds, range(s * ec.shard_size, min((s + 1) * ec.shard_size, n)))
        if writer is None:
            if not kept and s < n_shards - 1:
                pass
            writer, feature_sets = _open_writer(uri, conf, chash, n, ec, ds, adapter, order, imgs, ids, kept,
                                                cond_for, np_dtype, known_sets)
            if s in writer.done:
                bar.update(min(ec.shard_size, n - s * ec.shard_size) * len(ec.timesteps))
                continue
        t0 = time.perf_counter()
        sets: dict[str, list[np.ndarray]] = {k: [] for k in feature_sets}

        def step(sub: tuple[np.ndarray, list[int]]) -> dict[str, np.ndarray]:
            sub_imgs, sub_idx = sub
            x0 = adapter.encode(sub_imgs)
            cond = cond_for(sub_idx)
            sub_ids = [ids[i] for i in sub_idx]
            out: dict[str, np.ndarray] = {}
            for t in ec.timesteps:
                maps = adapter.capture(adapter.add_noise(x0, t, sub_ids, ec.noise_seed), t, cond, order)
                for h, m in maps.items():
                    for p in ec.poolings_for(h, t):
                        out[set_key(h, t, p)] = pool(m, p).cpu().numpy().astype(np_dtype)
                bar.update(len(sub_idx))
            return out

        for b in range(0, len(kept), ec.batch_size):
            bidx = kept[b:b + ec.batch_size]
            # on out-of-memory the batch is split and retried; per-image noise keeps results identical
            out = backoff.run(step, (np.stack(imgs[b:b + ec.batch_size]), bidx))
            for k, v in out.items():
                sets[k].append(v)
        t_compute += time.perf_counter() - t0
        work += len(kept) * len(ec.timesteps)
        kept_arr = np.asarray(kept, np.int64)
        rows = {"index": kept_arr, "split": split[kept_arr].astype(np.uint8)}
        for c in concepts:
            rows[f"label.{c}"] = labels[c][kept_arr].astype(np.int64)
        arrays = {k: (np.concatenate(v) if v else np.zeros((0, *feature_sets[k]["shape"]), np_dtype))
                  for k, v in sets.items()}
        writer.write_shard(s, rows, arrays, skipped)
        computed += 1
        if skipped:
            bar.write(f"shard {s}: skipped {len(skipped)} image(s): " +
                      "; ".join(f"{x['id']} ({x['reason'][:80]})" for x in skipped[:3]))
        if on_shard is not None:
            on_shard(s)
    bar.close()
    if writer is None:
        raise RuntimeError("the dataset is empty: nothing to extract")
    rate = work / t_compute if t_compute > 0 else 0.0
    metrics: dict[str, float] = {}
    if ctx.distributed:
        rates = _finish_shared(ctx, writer, [rate, float(computed)])
        metrics.update({f"images_per_s.rank{r}": v[0] for r, v in enumerate(rates)})
        rate, computed = sum(v[0] for v in rates), int(sum(v[1] for v in rates))
    m = writer.manifest
    metrics.update({"images_per_s": rate, "n_images": n, "n_rows": m.n_rows, "skipped_images": len(m.skipped),
                    "shards_computed": computed})
    return ExtractResult(identity=chash, metrics=metrics, tags={"store_uri": writer.uri, "config_hash": chash},
                         store_uri=writer.uri, config_hash=chash, n_images=n, n_rows=m.n_rows,
                         skipped=tuple(m.skipped), images_per_s=rate, shards_computed=computed,
                         dataset=conf["dataset"])


def _open_shared_writer(ctx, uri, conf, chash, n, ec, ds, adapter, order, ids, cond_for, np_dtype, known_sets):
    """Rank 0 opens the store as the one process would; the others join it after a barrier, each with its
    own manifest part (docs/feature-store.md, "Distributed writing")."""
    if ctx.is_main:
        writer, feature_sets = _open_writer(uri, conf, chash, n, ec, ds, adapter, order, [], ids, [], cond_for,
                                            np_dtype, known_sets)
    distributed.barrier()
    if not ctx.is_main:
        writer = StoreWriter(uri, new_manifest(conf, chash, n, ec.shard_size, ds.label_names(), {}), part=ctx.rank)
        feature_sets = {k: {"shape": list(v.shape)} for k, v in writer.manifest.feature_sets.items()}
    return writer, feature_sets


def _finish_shared(ctx, writer: StoreWriter, figures: list[float]) -> list[list[float]]:
    """Every rank's `figures`; on return the manifest holds every rank's shards and no part is left."""
    gathered = distributed.gather_floats(figures)  # also the barrier: every rank has written its part
    if ctx.is_main:
        writer.fold_parts()
        if not writer.manifest.complete:
            missing = sorted(set(range(writer.manifest.n_shards)) - writer.done)
            raise RuntimeError(f"after every rank finished, shards {missing[:10]} are still missing from "
                               f"{writer.uri}; run the same command again to complete the store")
    distributed.barrier()
    if not ctx.is_main:
        writer.reload()
    return gathered


def _open_writer(uri, conf, chash, n, ec, ds, adapter, order, imgs, ids, kept, cond_for, np_dtype, known_sets=None):
    if known_sets is not None:
        return _create_writer(uri, conf, chash, n, ec, ds, known_sets)
    if not kept:
        # find one decodable image anywhere to learn the shapes
        for i in range(n):
            try:
                imgs, kept = [ds.image(i)], [i]
                break
            except BadImageError:
                continue
        else:
            raise RuntimeError("no image of the dataset could be decoded; see the skipped list")
    x0 = adapter.encode(np.stack(imgs[:1]))
    maps = adapter.capture(adapter.add_noise(x0, ec.timesteps[0], [ids[kept[0]]], ec.noise_seed),
                           ec.timesteps[0], cond_for(kept[:1]), order)
    feature_sets = {}
    for h in order:
        m = maps[h]
        for t in ec.timesteps:
            for p in ec.poolings_for(h, t):
                shape = list(pool(m, p).shape[1:])
                feature_sets[set_key(h, t, p)] = {"hook_point": h, "timestep": t, "pooling": p,
                                                  "shape": shape, "dtype": np.dtype(np_dtype).name}
    return _create_writer(uri, conf, chash, n, ec, ds, feature_sets)


def _create_writer(uri, conf, chash, n, ec, ds, feature_sets):
    manifest = new_manifest(conf, chash, n, ec.shard_size, ds.label_names(), feature_sets)
    # refuse a local store that would not fit before anything is written (exact sizes, features/plan.py)
    check_manifest_fits(uri, manifest, [c.name for c in ds.concepts])
    writer = StoreWriter(uri, manifest)
    return writer, {k: {"shape": list(v.shape)} for k, v in writer.manifest.feature_sets.items()}
