"""One object that turns images into class probabilities and explains them through SAE latents.

A `Classifier` bundles what a prediction needs: the backbone reference (BackboneConfig fields), the hook
point and timestep the SAE reads, the noise seed, the SAE, a linear probe trained on the SAE's latents, the
class names, the data config (to show top-activating dataset images) and, per latent, the dataset indices
of its top-activating images.

    image ─► backbone encode ─► x_t (seeded noise) ─► hook point map ─► SAE latents z ─► probe ─► probs
                                                     └─► per-position latents ─► heatmaps

Attribution: the probe's logit for class c is Σ_j (z_j − m_j)/s_j · W[c, j] + b_c (m, s: the probe's
scaler; m = 0 for SAE latents). `explain` sorts the active latents by their share of the prediction
(`interpret.explanation`): by default (`attribution="contrastive"`) each latent's share of the logit *margin*
between the predicted class c and the runner-up r, (z_j − m_j)/s_j · (W[c, j] − W[r, j]), so a dense latent
that lifts every class alike cancels out; `attribution="logit"` gives the plain share of c's logit,
(z_j − m_j)/s_j · W[c, j]. Beside each latent it shows its density (firing rate over the store's images) and
its selectivity for the predicted class (the share of its top images that carry it); latents firing on more
than `DENSE_RATE` of the images are marked dense and `hide_dense=True` leaves them out.

Noise for an image that is not from the dataset: the seeded noise (backbones.seeded_noise) needs an image
id. An uploaded image gets the id `upload:<first 16 hex of sha256 of its decoded RGB bytes>`, so the same
picture always gets the same noise and the same prediction; pass `ids=` to reproduce dataset features
exactly (dataset ids look like `shapes:12`).

On disk (everything safetensors + JSON, nothing pickled):

    classifier.json        format, version, backbone, hook point, timestep, noise seed, class names, data
    sae/                   the SAE (sae.safetensors + config.json)
    probe/                 the probe (probe.safetensors + probe.json)
    top_images.safetensors indices (n_latents, top_n) int64 (−1 = none), values (n_latents, top_n) float32
    latent_stats.safetensors  frequency (n_latents,) float32: firing rate over the store's images; top_labels
                           (n_latents, top_n) int64: the label of each top image (−1 = none); optional
    backbone/              optional copy of a small local backbone (config + safetensors), so a pulled
                           classifier runs where the original directory does not exist
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..backbones import load_backbone
from ..config import BackboneConfig, Config, DataConfig, from_dict, to_dict
from ..data import load_dataset, load_rgb
from ..interpret.explanation import check_attribution
from ..interpret.explanation import contributions as split_prediction
from ..jsonmeta import read_versioned_json
from ..probe import read_probe
from ..sae import SparseAutoencoder, read_sae
from ..sae.latents import image_latents, image_latents_pooled, latent_maps

FORMAT = "revelio-classifier"
VERSION = 1
META = "classifier.json"
TOP_FILE = "top_images.safetensors"
STATS_FILE = "latent_stats.safetensors"
DENSE_RATE = 0.5  # a latent firing on more than this share of the images is dense
BUNDLE_MAX_BYTES = 256 * 2**20  # larger local backbones are referenced, not copied
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class ClassifierFormatError(ValueError):
    """A saved classifier is missing, malformed or its parts disagree; the message says which."""


def upload_id(rgb: np.ndarray) -> str:
    """The image id of an image outside the dataset: a hash of its decoded pixels (documented above)."""
    return "upload:" + hashlib.sha256(np.ascontiguousarray(rgb, np.uint8).tobytes()).hexdigest()[:16]


def _image_latents(sae: SparseAutoencoder, feats: np.ndarray, pooling: str) -> np.ndarray:
    return np.asarray(image_latents(sae, feats, pooling=pooling), np.float32)


def _latent_maps(sae: SparseAutoencoder, tokens: np.ndarray, latents: Sequence[int]) -> np.ndarray:
    return np.asarray(latent_maps(sae, tokens, list(latents)), np.float32)


def full_proba(probe, X, n_classes: int) -> np.ndarray:
    """Probe probabilities with one column per class name (classes unseen in training get 0)."""
    p = np.asarray(probe.predict_proba(X), np.float64)
    classes = np.asarray(probe.classes, np.int64)
    out = np.zeros((p.shape[0], n_classes), np.float64)
    out[:, classes] = p
    return out


def top_k_rows(values: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `values` (L, m), the k largest (descending) with their `indices` (L, m)."""
    k = min(k, values.shape[1])
    part = np.argpartition(-values, k - 1, axis=1)[:, :k] if values.shape[1] > k else np.tile(
        np.arange(values.shape[1]), (values.shape[0], 1))
    v = np.take_along_axis(values, part, 1)
    i = np.take_along_axis(indices, part, 1)
    order = np.argsort(-v, axis=1, kind="stable")
    return np.take_along_axis(v, order, 1), np.take_along_axis(i, order, 1)


def compute_top_images(sae, store, hook_point: str, timestep: int, top_n: int = 16,
                       frequency: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices (n_latents, top_n) of each latent's top-activating images in a feature store (−1 = none).

    `frequency` (n_latents,), if given, is filled with each latent's firing rate over the store's images."""
    sf = sae.config.to_dict()
    set_pooling = "tokens" if sf.get("input") == "tokens" else (sf.get("pooling") or "mean")
    fs = store.feature_set(hook_point, timestep, set_pooling)
    L = int(sf["n_latents"])
    best_v = np.full((L, 0), -np.inf, np.float32)
    best_i = np.zeros((L, 0), np.int64)
    fires, n_rows = np.zeros(L, np.int64), 0
    for shard, feats in fs.iter_shards():
        z = _image_latents(sae, feats.astype(np.float32, copy=False), sf.get("latent_pooling", "max"))
        fires += (z > 0).sum(0)
        n_rows += len(z)
        idx = store.rows(shard)["index"].astype(np.int64)
        v = np.concatenate([best_v, z.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(idx, (L, len(idx)))], axis=1)
        best_v, best_i = top_k_rows(v, i, top_n)
    if best_v.shape[1] < top_n:  # fewer rows than top_n
        pad = top_n - best_v.shape[1]
        best_v = np.concatenate([best_v, np.zeros((L, pad), np.float32)], axis=1)
        best_i = np.concatenate([best_i, np.full((L, pad), -1, np.int64)], axis=1)
    best_i = np.where(best_v > 0, best_i, -1)  # an image where the latent is silent is not a top image
    if frequency is not None:
        frequency[:] = fires / max(n_rows, 1)
    return best_i.astype(np.int64), np.maximum(best_v, 0).astype(np.float32)


def top_image_labels(top_indices: np.ndarray, dataset_index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The label (−1 = none) of each top image, from a store's dataset indices and their labels."""
    order = np.argsort(dataset_index, kind="stable")
    sorted_idx = np.asarray(dataset_index)[order]
    pos = np.clip(np.searchsorted(sorted_idx, top_indices), 0, max(len(sorted_idx) - 1, 0))
    found = (top_indices >= 0) & (len(sorted_idx) > 0) & (sorted_idx[pos] == top_indices)
    return np.where(found, np.asarray(labels, np.int64)[order][pos], -1).astype(np.int64)


def _bundle_backbone(bcfg: BackboneConfig, dst: Path) -> bool:
    """Copy a small local backbone directory (config + safetensors only) into the classifier; False if not."""
    if bcfg.id.startswith("builtin:"):
        return False
    src = Path(bcfg.id).expanduser()
    if not src.is_dir():
        return False  # a hub id: the reference is enough
    files = [p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not any(p.suffix == ".safetensors" for p in files):
        return False  # only pickled weights: never copy or load those
    keep = [p for p in files if p.suffix not in _PICKLE_SUFFIXES]
    if sum(p.stat().st_size for p in keep) > BUNDLE_MAX_BYTES:
        return False
    for p in keep:
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, out)
    return True


class Classifier:
    """images → class probabilities, with `explain` for per-latent attributions and heatmaps."""

    def __init__(self, *, backbone: BackboneConfig, hook_point: str, timestep: int, noise_seed: int, sae, probe,
                 class_names: Sequence[str], concept: str, data: DataConfig, top_indices: np.ndarray,
                 top_values: np.ndarray, feature_dtype: str = "float32", meta: dict[str, Any] | None = None,
                 frequency: np.ndarray | None = None, top_labels: np.ndarray | None = None):
        self.backbone_cfg = backbone
        self.hook_point = hook_point
        self.timestep = int(timestep)
        self.noise_seed = int(noise_seed)
        self.sae = sae
        self.probe = probe
        self.class_names = list(class_names)
        self.concept = concept
        self.data = data
        self.top_indices = np.asarray(top_indices, np.int64)
        self.top_values = np.asarray(top_values, np.float32)
        self.feature_dtype = feature_dtype
        self.meta = dict(meta or {})
        # per latent: firing rate over the store's images and the label of each top image (None: not recorded)
        self.frequency = None if frequency is None else np.asarray(frequency, np.float32)
        self.top_labels = None if top_labels is None else np.asarray(top_labels, np.int64)
        self.source: dict[str, Any] = {}
        # a classifier loaded with a bundled backbone runs it from its own files; this is the id it came from
        self.backbone_origin: str | None = None
        self._adapter = None
        self._dataset = None
        self._check()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, cfg: Config, sae_dir: str | Path, probe_dir: str | Path, store_uri: str | None = None,
              top_n: int = 16) -> Classifier:
        """From a trained SAE and a linear probe on its latents; top images come from the probe's feature store."""

        sae = read_sae(sae_dir)
        probe = read_probe(probe_dir)
        pm = dict(getattr(probe, "meta", {}) or {})
        if getattr(probe, "kind", "") != "linear" or pm.get("input") != "sae":
            raise ClassifierFormatError(
                f"a classifier needs a linear probe trained on SAE latents (probe.kind=linear, probe.input=sae); "
                f"the probe at {probe_dir} is kind={getattr(probe, 'kind', '?')}, input={pm.get('input')}")
        if cfg.backbone.prompt_mode not in ("empty", "generic"):
            raise ClassifierFormatError(
                f"backbone.prompt_mode={cfg.backbone.prompt_mode!r} needs a label or caption per image, which an "
                "uploaded image does not have; build the classifier from features extracted with prompt_mode "
                "empty or generic")
        sf = sae.config.to_dict()
        from ..features.store import open_store  # with the S3 client: not needed to load or apply a classifier

        store = open_store(store_uri or pm.get("store_uri") or "")
        hp, t = sf.get("hook_point") or pm["hook_point"], int(sf.get("timestep", -1))
        if t < 0:
            t = int(pm["timestep"])
        freq = np.zeros(int(sf["n_latents"]), np.float32)
        top_i, top_v = compute_top_images(sae, store, hp, t, top_n, frequency=freq)
        concept = pm.get("concept", "")
        top_lab = (top_image_labels(top_i, store.index(), store.labels(concept))
                   if concept in store.label_names else None)
        set_pooling = "tokens" if sf.get("input") == "tokens" else (sf.get("pooling") or "mean")
        fdtype = store.manifest.feature_sets[f"{hp}/t{t}/{set_pooling}"].dtype
        meta = {"store_uri": store.uri, "store_config_hash": store.config_hash,
                "dataset_fingerprint": store.config.get("dataset", {}).get("fingerprint"),
                "probe_metrics": {k: pm[k] for k in ("C",) if k in pm}}
        return cls(backbone=cfg.backbone, hook_point=hp, timestep=t, noise_seed=cfg.extract.noise_seed, sae=sae,
                   probe=probe, class_names=pm.get("class_names") or store.label_names[pm["concept"]],
                   concept=concept, data=cfg.data, top_indices=top_i, top_values=top_v,
                   feature_dtype=fdtype, meta=meta, frequency=freq, top_labels=top_lab)

    def _check(self) -> None:
        sf = self.sae.config.to_dict()
        L = int(sf["n_latents"])
        nf = int(getattr(self.probe, "n_features", -1))
        if nf != L:
            raise ClassifierFormatError(f"the probe takes {nf} features but the SAE has {L} latents: they do not "
                                        "belong together")
        classes = np.asarray(self.probe.classes, np.int64)
        if classes.size and (classes.min() < 0 or classes.max() >= len(self.class_names)):
            raise ClassifierFormatError(f"the probe predicts label ids {classes.tolist()} but only "
                                        f"{len(self.class_names)} class names are recorded")
        if self.top_indices.shape != self.top_values.shape or self.top_indices.shape[0] != L:
            raise ClassifierFormatError(f"top images have shape {self.top_indices.shape}; expected ({L}, top_n)")
        if self.frequency is not None and self.frequency.shape != (L,):
            raise ClassifierFormatError(f"latent frequencies have shape {self.frequency.shape}; expected ({L},)")
        if self.top_labels is not None and self.top_labels.shape != self.top_indices.shape:
            raise ClassifierFormatError(f"top-image labels have shape {self.top_labels.shape}; expected "
                                        f"{self.top_indices.shape}")

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, bundle_backbone: bool = True) -> Path:

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.sae.save(d / "sae")
        self.probe.save(d / "probe")
        save_file({"indices": np.ascontiguousarray(self.top_indices), "values": np.ascontiguousarray(self.top_values)},
                  str(d / TOP_FILE))
        if self.frequency is not None and self.top_labels is not None:
            save_file({"frequency": np.ascontiguousarray(self.frequency, np.float32),
                       "top_labels": np.ascontiguousarray(self.top_labels, np.int64)}, str(d / STATS_FILE))
        bundled = bundle_backbone and (_bundle_backbone(self.backbone_cfg, d / "backbone")
                                       or self._bundle_loaded_backbone(d / "backbone"))
        bdict = to_dict(self.backbone_cfg)
        if self.backbone_origin:
            bdict["id"] = self.backbone_origin
        sf = self.sae.config.to_dict()
        meta = {"format": FORMAT, "version": VERSION, "backbone": bdict,
                "backbone_bundled": bool(bundled), "hook_point": self.hook_point, "timestep": self.timestep,
                "noise_seed": self.noise_seed, "class_names": self.class_names, "concept": self.concept,
                "data": to_dict(self.data), "feature_dtype": self.feature_dtype,
                "top_n": int(self.top_indices.shape[1]),
                "sae": {k: sf.get(k) for k in ("variant", "d_in", "n_latents", "k", "input", "pooling",
                                               "latent_pooling")},
                "probe": {"n_features": int(self.probe.n_features),
                          "classes": [int(c) for c in np.asarray(self.probe.classes)]},
                "upload_id": "upload:<sha256(decoded RGB uint8 bytes)[:16]>", **self.meta}
        (d / META).write_text(json.dumps(meta, indent=2, default=str))
        return d

    def with_probe(self, probe, class_names: Sequence[str], concept: str,
                   meta: dict[str, Any] | None = None) -> Classifier:
        """Another classifier on the same backbone and SAE (shared, already loaded) with another probe."""
        new = Classifier(backbone=self.backbone_cfg, hook_point=self.hook_point, timestep=self.timestep,
                         noise_seed=self.noise_seed, sae=self.sae, probe=probe, class_names=class_names,
                         concept=concept, data=self.data, top_indices=self.top_indices, top_values=self.top_values,
                         feature_dtype=self.feature_dtype, meta={**self.meta, **(meta or {})},
                         frequency=self.frequency,
                         top_labels=self.top_labels if concept == self.concept else None)
        new.backbone_origin = self.backbone_origin
        new._adapter, new._dataset = self._adapter, self._dataset
        return new

    def _bundle_loaded_backbone(self, dst: Path) -> bool:
        """A classifier that was loaded with a bundled backbone whose files are gone (a fetched temporary
        copy) still holds the model in memory: write that (safetensors) so the copy stays self-contained."""
        if self.backbone_origin is None or self._adapter is None or not hasattr(self._adapter.model, "save_pretrained"):
            return False
        self._adapter.model.save_pretrained(str(dst), safe_serialization=True)
        sched = getattr(self._adapter, "scheduler", None)
        if sched is not None and hasattr(sched, "save_pretrained"):
            sched.save_pretrained(str(dst))
        return True

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> Classifier:


        d = Path(directory)
        p = d / META
        meta = read_versioned_json(p, FORMAT, VERSION, "classifier", ClassifierFormatError)
        for part in ("sae", "probe", TOP_FILE):
            if not (d / part).exists():
                raise ClassifierFormatError(f"the classifier at {d} is incomplete: {part} is missing")
        sae = read_sae(d / "sae")
        probe = read_probe(d / "probe")
        sf = sae.config.to_dict()
        for k in ("d_in", "n_latents", "input", "latent_pooling"):
            want = (meta.get("sae") or {}).get(k)
            if want is not None and sf.get(k) != want:
                raise ClassifierFormatError(f"{p} says the SAE has {k}={want!r} but its weights say {sf.get(k)!r}: "
                                            "the config and the weights do not belong together")
        top = load_file(str(d / TOP_FILE))
        stats = load_file(str(d / STATS_FILE)) if (d / STATS_FILE).is_file() else {}
        bdict = dict(meta["backbone"])
        if meta.get("backbone_bundled"):
            bdict["id"] = str(d / "backbone")
        if device:
            bdict["device"] = device
        ddict = dict(meta.get("data") or {})
        if ddict.get("source", "shapes") not in ("hf", "imagefolder"):
            ddict.pop("id", None)  # written before data.id was refused for generated datasets (never read)
        rest = {k: v for k, v in meta.items() if k in ("store_uri", "store_config_hash", "dataset_fingerprint",
                                                          "probe_metrics", "metrics")}
        clf = cls(backbone=from_dict(BackboneConfig, bdict, "backbone"), hook_point=meta["hook_point"],
                  timestep=meta["timestep"], noise_seed=meta["noise_seed"], sae=sae, probe=probe,
                  class_names=meta["class_names"], concept=meta.get("concept", ""),
                  data=from_dict(DataConfig, ddict, "data"), top_indices=top["indices"],
                  top_values=top["values"], feature_dtype=meta.get("feature_dtype", "float32"), meta=rest,
                  frequency=stats.get("frequency"), top_labels=stats.get("top_labels"))
        if meta.get("backbone_bundled"):
            clf.backbone_origin = meta["backbone"]["id"]
        return clf

    # ------------------------------------------------------------------ lazy parts
    @property
    def adapter(self):
        if self._adapter is None:

            self._adapter = load_backbone(self.backbone_cfg)
            self._adapter.validate_hook_points([self.hook_point])
        return self._adapter

    def dataset(self):
        """The dataset the top images index into (loaded on first use)."""
        if self._dataset is None:

            self._dataset = load_dataset(self.data)
        return self._dataset

    @property
    def n_latents(self) -> int:
        return int(self.top_indices.shape[0])

    # ------------------------------------------------------------------ inference
    def to_rgb(self, image: Any) -> np.ndarray:
        """uint8 array, PIL image, encoded bytes or path → (image_size, image_size, 3) uint8 as in training."""

        s = self.data.image_size
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (s, s, 3):
            return image
        return load_rgb(image, s, self.data.max_pixels)

    def tokens(self, images: Sequence[Any], ids: Sequence[str] | None = None, batch_size: int = 32
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(rgb (n, S, S, 3), token features (n, H, W, C) at the hook point, image ids)."""

        rgb = np.stack([self.to_rgb(im) for im in images])
        ids = list(ids) if ids is not None else [upload_id(x) for x in rgb]
        if len(ids) != len(rgb):
            raise ValueError(f"{len(rgb)} images but {len(ids)} ids")
        ad = self.adapter
        out = []
        for b in range(0, len(rgb), batch_size):
            x0 = ad.encode(rgb[b:b + batch_size])
            xt = ad.add_noise(x0, self.timestep, ids[b:b + batch_size], self.noise_seed)
            m = ad.capture(xt, self.timestep, ad.conditioning(len(x0)), [self.hook_point])[self.hook_point]
            with torch.no_grad():
                out.append(m.float().permute(0, 2, 3, 1).cpu().numpy())
        tok = np.concatenate(out)
        if self.feature_dtype == "float16":  # the SAE and probe saw float16-rounded features
            tok = tok.astype(np.float16).astype(np.float32)
        return rgb, tok, ids

    def _sae_input(self, tokens: np.ndarray) -> np.ndarray:
        sf = self.sae.config.to_dict()
        if sf.get("input") == "tokens":
            return tokens
        how = sf.get("pooling") or "mean"
        pooled = tokens.max(axis=(1, 2)) if how == "max" else tokens.mean(axis=(1, 2))
        if self.feature_dtype == "float16":
            pooled = pooled.astype(np.float16).astype(np.float32)
        return pooled

    def latents_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return _image_latents(self.sae, self._sae_input(tokens), self.sae.config.to_dict().get("latent_pooling", "max"))

    def latents_from_tokens_multi(self, tokens: np.ndarray, poolings: Sequence[str]) -> dict[str, np.ndarray]:
        """{pooling: image-level latents (n, n_latents)} from one encoding (`sae.latents.image_latents_pooled`)."""
        z = image_latents_pooled(self.sae, self._sae_input(tokens), poolings)
        return {p: np.asarray(v, np.float32) for p, v in z.items()}

    def latents(self, images: Sequence[Any], ids: Sequence[str] | None = None) -> np.ndarray:
        """Image-level SAE latents (n, n_latents), the probe's input."""
        return self.latents_from_tokens(self.tokens(images, ids)[1])

    def predict_latents(self, z: np.ndarray) -> np.ndarray:
        return full_proba(self.probe, np.asarray(z, np.float64), len(self.class_names))

    def predict(self, images: Sequence[Any] | np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in `class_names` order."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        return self.predict_latents(self.latents(list(images), ids))

    def contributions(self, z: np.ndarray, label: int) -> np.ndarray:
        """Each latent's exact share of the probe's logit for `label` (see the module docstring)."""
        classes = list(np.asarray(self.probe.classes, np.int64))
        if label not in classes:
            return np.zeros(z.shape[-1])
        w = np.asarray(self.probe.coef)[classes.index(label)]
        return self._scaled(z) * w

    def _scaled(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.probe.scaler_mean) / self.probe.scaler_scale

    def attribution(self, z: np.ndarray, mode: str = "contrastive") -> tuple[np.ndarray, int, int | None, np.ndarray]:
        """(per-latent shares (n_latents,), predicted label id, runner-up label id (None with one class), the
        weight each share multiplies: W[c] for `logit`, W[c] − W[r] for `contrastive`) of one image's latents."""
        coef = np.asarray(self.probe.coef, np.float64)
        classes = np.asarray(self.probe.classes, np.int64)
        contrib, pred, runner = split_prediction(self._scaled(z).reshape(1, -1), coef, self.probe.intercept, mode)
        c_row, r_row = int(pred[0]), int(runner[0])
        w = coef[c_row] if mode == "logit" else coef[c_row] - coef[r_row]
        return contrib[0], int(classes[c_row]), (int(classes[r_row]) if len(classes) > 1 else None), w

    def selectivity(self, latent: int, label: int) -> float | None:
        """Share of the latent's top images that carry `label` (None: labels not recorded or no top images)."""
        if self.top_labels is None:
            return None
        lab = self.top_labels[int(latent)]
        lab = lab[lab >= 0]
        return float(np.mean(lab == label)) if lab.size else None

    def density(self, latent: int) -> float | None:
        """The latent's firing rate over the store's images (None: not recorded)."""
        return None if self.frequency is None else float(self.frequency[int(latent)])

    def top_images(self, latent: int, n: int = 8) -> list[int]:
        row = self.top_indices[int(latent)]
        return [int(i) for i in row[row >= 0][:n]]

    def explain(self, image: Any, top: int = 8, image_id: str | None = None, n_images: int = 8,
                attribution: str = "contrastive", hide_dense: bool = False) -> dict[str, Any]:
        """Prediction plus the `top` latents that pushed hardest toward it, their heatmaps and top dataset images.

        `attribution`: `contrastive` (share of the margin over the runner-up class, the default) or `logit`
        (share of the predicted class's logit); `hide_dense` leaves out latents firing on more than DENSE_RATE
        of the images. Returns label, label_index, runner_up, probs (name → p), logit, margin (logit − the
        runner-up's), intercept, attribution, contributions (list sorted by contribution, each with latent,
        activation, weight, contribution, density, dense, selectivity, top_images), hidden_dense (how many
        active dense latents were left out), heatmaps (len(contributions), H, W) over the hook point's grid,
        rgb (the preprocessed image) and image_id.
        """
        check_attribution(attribution)
        rgb, tok, ids = self.tokens([image], [image_id] if image_id else None)
        z = self.latents_from_tokens(tok)[0]
        probs = self.predict_latents(z[None])[0]
        contrib, c, r, w = self.attribution(z, attribution)
        active = np.flatnonzero(z > 0)
        hidden = 0
        if hide_dense and self.frequency is not None:
            keep = self.frequency[active] <= DENSE_RATE
            hidden = int((~keep).sum())
            active = active[keep]
        order = active[np.argsort(-contrib[active], kind="stable")][:top]
        classes = list(np.asarray(self.probe.classes, np.int64))
        heat = (_latent_maps(self.sae, tok, order.tolist())[0] if len(order)
                else np.zeros((0, tok.shape[1], tok.shape[2]), np.float32))
        rows = []
        for j in order:
            dens = self.density(int(j))
            rows.append({"latent": int(j), "activation": float(z[j]), "weight": float(w[j]),
                         "contribution": float(contrib[j]), "density": dens,
                         "dense": bool(dens is not None and dens > DENSE_RATE),
                         "selectivity": self.selectivity(int(j), c),
                         "top_images": self.top_images(int(j), n_images)})
        logits = self.probe.decision_function(np.asarray(z[None], np.float64))[0]
        intercept = float(np.asarray(self.probe.intercept)[classes.index(c)])
        logit = float(logits[classes.index(c)])
        margin = logit - float(logits[classes.index(r)]) if r is not None else 0.0
        return {"label": self.class_names[c], "label_index": c,
                "runner_up": self.class_names[r] if r is not None else None,
                "probs": {n: float(p) for n, p in zip(self.class_names, probs)},
                "logit": logit, "margin": margin, "intercept": intercept, "attribution": attribution,
                "contributions": rows, "hidden_dense": hidden,
                "heatmaps": heat, "rgb": rgb[0], "image_id": ids[0], "concept": self.concept}


def explanation_figure(clf: Classifier, exp: dict[str, Any], n_images: int = 4):
    """The image, each top latent's heatmap over it, and that latent's top dataset images (matplotlib figure)."""
    import matplotlib  # deferred: pyplot picks a backend on import, and most predictions draw nothing

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = exp["contributions"]
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 2 + n_images, figsize=(1.6 * (2 + n_images), 1.6 * n + 0.6), squeeze=False)
    ds = None
    for r in range(n):
        for ax in axes[r]:
            ax.axis("off")
        axes[r, 0].imshow(exp["rgb"])
        if r < len(rows):
            h = exp["heatmaps"][r]
            axes[r, 1].imshow(exp["rgb"])
            axes[r, 1].imshow(h, cmap="inferno", alpha=0.6, extent=(0, exp["rgb"].shape[1], exp["rgb"].shape[0], 0))
            axes[r, 1].set_title(f"latent {rows[r]['latent']}\n{rows[r]['contribution']:+.2f}", fontsize=7)
            for j, idx in enumerate(rows[r]["top_images"][:n_images]):
                try:
                    ds = ds or clf.dataset()
                    axes[r, 2 + j].imshow(ds.image(idx))
                    axes[r, 2 + j].set_title(f"#{idx}", fontsize=6)
                except Exception:  # a dataset that cannot be loaded here only loses the thumbnails
                    break
    fig.suptitle(f"{exp['label']} (p={exp['probs'][exp['label']]:.2f})", fontsize=9)
    fig.tight_layout()
    return fig
