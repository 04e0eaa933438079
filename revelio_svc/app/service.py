"""What the demo does, without any Gradio: decode uploads, classify and explain, few-shot probes, latent stats.

The Gradio layer (`app.main`) only turns these results into components and turns `InputError` into a
message in the UI. Keeping the work here lets tests and the benchmark call it directly.

Thread safety: `Classifier.tokens` registers forward hooks on the shared backbone module for the duration
of one forward. Two forwards at once on the same module would each see the other's hooks (mixed-up
activations, or one forward stopped by the other's early-exit), so every backbone forward goes through
`DemoService.model_lock`. The request queue still runs `concurrency_limit` events at once: decoding,
rendering and probe fitting overlap, the backbone forwards take turns.
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from revelio_svc.data import BadImageError, load_rgb
from revelio_svc.inference import atlas as atlas_mod
from revelio_svc.inference import latent_stats as latent_stats_mod
from revelio_svc.inference.faithfulness import deletion_curve
from revelio_svc.inference.latent_stats import DatasetLatents, compute_dataset_latents
from revelio_svc.inference.steering import MODES, SAMPLERS, SteeringSpec, steer
from revelio_svc.inference.steering_eval import (
    class_specific_latents,
    exemplar_fields,
    exemplar_row,
    judge_variants,
    variant_verdicts,
)
from revelio_svc.interpret.explanation import ATTRIBUTIONS
from revelio_svc.sae import latent_maps

DEFAULT_MAX_PIXELS = 16_000_000  # 4000×4000: far beyond what the model needs, far below a decompression bomb
FEWSHOT_DATASETS = ("shapes", "digits")
ATLAS_VIEWS = ("images", "latents")
HIDE_DENSE = False  # the demo marks latents firing on > 50 % of images as dense; a checkbox hides them
_MAX_EXAMPLES = 48  # training images kept per few-shot probe for the gallery (they live in session state)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


class InputError(ValueError):
    """Something the user gave cannot be used; the message says what and what to do instead."""


# --------------------------------------------------------------------------- input decoding
@dataclass
class DecodedImage:
    rgb: np.ndarray  # (S, S, 3) uint8, what the model sees
    notes: list[str]  # conversions the user should be warned about (grayscale, alpha, 16-bit)
    mode: str = ""
    size: tuple[int, int] = (0, 0)
    name: str = ""


_MODE_NOTES = {
    "L": "grayscale image: converted to RGB (all three channels equal)",
    "1": "black-and-white image: converted to RGB",
    "P": "palette image: converted to RGB",
    "LA": "grayscale image with transparency: transparent pixels were put on mid-grey",
    "RGBA": "image with transparency: transparent pixels were put on mid-grey",
    "CMYK": "CMYK image: converted to RGB",
    "I;16": "16-bit image: its value range was stretched to 8 bits",
    "I;16B": "16-bit image: its value range was stretched to 8 bits",
    "I;16L": "16-bit image: its value range was stretched to 8 bits",
    "I": "32-bit integer image: its value range was stretched to 8 bits",
    "F": "floating-point image: its value range was stretched to 8 bits",
}


def _header(path: str) -> tuple[str, tuple[int, int]]:
    """Mode and size from the header only (nothing decoded); ("", (0, 0)) when it is not readable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except Exception:  # noqa: BLE001 - load_rgb below gives the user-facing reason
        return "", (0, 0)


def decode_upload(path: str | os.PathLike | None, size: int, max_pixels: int) -> DecodedImage:
    """An uploaded file → the model's RGB input, or `InputError` with a one-line reason (never a traceback)."""
    if path is None or str(path) == "":
        raise InputError("no image given: upload an image file (PNG, JPEG, WebP, ...) or pick an example")
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise InputError(f"{name}: the uploaded file is gone from the server; upload it again")
    if p.stat().st_size == 0:
        raise InputError(f"{name}: the file is empty (0 bytes)")
    mode, wh = _header(str(p))
    try:
        rgb = load_rgb(str(p), size, max_pixels)
    except BadImageError as e:
        reason = str(e)
        # load_rgb names the server-side path; the user knows the file by its own name
        reason = reason.replace(str(p), name)
        if "max_pixels" in reason:
            w, h = wh
            raise InputError(f"{name}: the image is too large ({w}×{h} = {w * h:,} pixels; this demo accepts at "
                             f"most {max_pixels:,}). Downscale it and upload again.") from e
        if "not an image" in reason:
            raise InputError(f"{name}: this is not an image file (no image format recognises it). Upload a PNG, "
                             "JPEG, WebP, BMP, GIF or TIFF image.") from e
        raise InputError(f"{name}: the image cannot be read ({reason}). The file may be corrupt or truncated; "
                         "try another file.") from e
    except (OSError, ValueError) as e:  # anything else Pillow throws at odd files
        raise InputError(f"{name}: the image cannot be read ({type(e).__name__}). Try another file.") from e
    notes = [_MODE_NOTES[mode]] if mode in _MODE_NOTES else []
    notes += resize_notes(wh, size)
    return DecodedImage(rgb, notes, mode, wh, name)


EXTREME_ASPECT = 2.0  # longer side / shorter side beyond which the centre crop drops most of the image


def resize_notes(wh: tuple[int, int], size: int) -> list[str]:
    """What the user should know about how the model sees an image of `wh` pixels at `size`×`size`."""
    w, h = (int(v) for v in wh)
    if w <= 0 or h <= 0:
        return []
    out = []
    s = min(w, h)
    if max(w, h) / s > EXTREME_ASPECT:
        kept = s * s / (w * h)
        out.append(f"resized from {w}×{h}: extreme aspect ratio, so only the centre {s}×{s} square "
                   f"({kept:.0%} of the image) was kept and scaled to {size}×{size}")
    if s < size:
        out.append(f"resized from {w}×{h}: smaller than the model's {size}×{size} input, so it was blown up "
                   f"{size / s:.0f}× and the model sees little real detail; treat the prediction with care")
    return out


# --------------------------------------------------------------------------- model description
def model_info(clf) -> dict[str, Any]:
    """Which model the app serves, for the header and the API."""
    src = dict(getattr(clf, "source", {}) or {})
    sf = clf.sae.config.to_dict()
    b = clf.backbone_cfg
    return {
        "model": src.get("name") or src.get("uri") or "local classifier",
        "version": str(src.get("version") or ""),
        "alias": src.get("alias") or "",
        "uri": src.get("uri") or "",
        "run_id": src.get("run_id") or "",
        "backbone": b.id, "backbone_kind": b.kind, "backbone_init": b.init,
        "hook_point": clf.hook_point, "timestep": int(clf.timestep),
        "sae": {k: sf.get(k) for k in ("variant", "d_in", "n_latents", "k", "input", "latent_pooling")},
        "concept": clf.concept, "classes": list(clf.class_names),
        "dataset": f"{clf.data.source}{(':' + clf.data.id) if clf.data.id else ''}",
        "image_size": int(clf.data.image_size),
    }


# --------------------------------------------------------------------------- few-shot
@dataclass
class FewShotProbe:
    """A probe trained in the app: small (numpy arrays only), so it can live in a per-session gr.State."""

    probe: Any  # revelio_svc.probe.LinearProbe on the SAE latents
    class_names: list[str]
    concept: str
    source: str  # "upload" or "shapes:shape" etc.
    n_train: int
    train_accuracy: float
    test_accuracy: float | None = None
    n_test: int = 0
    chance: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    examples: list[tuple[np.ndarray, str]] = field(default_factory=list)  # a few training images, for display

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "concept": self.concept, "classes": self.class_names,
                "n_train": self.n_train, "per_class": self.counts, "train_accuracy": self.train_accuracy,
                "test_accuracy": self.test_accuracy, "n_test": self.n_test, "chance": self.chance,
                "skipped": self.skipped}


def precision_metrics(clf) -> dict[str, float]:
    """The classifier's explanation precision against its controls, as its build recorded it (empty if not)."""
    m = dict(clf.meta.get("metrics") or {})
    return {k: float(v) for k, v in m.items() if k.startswith("explanation_precision")}


# --------------------------------------------------------------------------- the service
class DemoService:
    """One loaded classifier and everything the tabs compute from it."""

    def __init__(self, clf, *, max_pixels: int = DEFAULT_MAX_PIXELS, top: int = 6, n_top_images: int = 6,
                 browse_images: int = 2000, fewshot_dir: str | os.PathLike = "outputs/fewshot",
                 fewshot_eval: int = 120, allow_register: bool = False, experiment: str = "revelio",
                 cache_dir: str | os.PathLike | None = None, atlas_method: str = "tsne"):
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be > 0, got {max_pixels}")
        self.clf = clf
        self.max_pixels = int(max_pixels)
        self.top = int(top)
        self.n_top_images = int(n_top_images)
        self.browse_images = int(browse_images)
        self.fewshot_dir = Path(fewshot_dir)
        self.fewshot_eval = int(fewshot_eval)
        self.allow_register = allow_register
        self.experiment = experiment
        self.model_lock = threading.Lock()
        self._thumbs: OrderedDict[int, np.ndarray] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._dl = None  # DatasetLatents
        self._model_key: str | None = None
        self._table = None  # LatentTable
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.atlas_method = atlas_method
        self._atlas: dict[tuple[str, str], np.ndarray] = {}
        self._knn: dict[str, dict[str, float]] = {}  # concept → atlas kNN report
        self._atlas_lock = threading.Lock()
        self._baselines: dict = {}  # steering: unsteered samples per (seeds, sampler, steps)
        self._judge = None  # the shape judge (interpret.judge), loaded on the first steering run of a shapes model
        self._datasets: dict[tuple[str, int], Any] = {}

    @property
    def info(self) -> dict[str, Any]:
        return model_info(self.clf)

    # ------------------------------------------------------------------ dataset access
    def dataset(self):
        try:
            return self.clf.dataset()
        except Exception as e:  # noqa: BLE001 - e.g. an HF dataset that is not cached on this machine
            raise InputError(f"the dataset this model was trained on ({self.info['dataset']}) cannot be loaded "
                             f"here, so its top images cannot be shown ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e

    def thumb(self, index: int) -> np.ndarray:
        """A dataset image by index (cached: the same top images come back on every request)."""
        with self._thumb_lock:
            if index in self._thumbs:
                self._thumbs.move_to_end(index)
                return self._thumbs[index]
        try:
            img = self.dataset().image(int(index))
        except BadImageError:  # one undecodable dataset image only blanks its own tile
            return np.full((int(self.clf.data.image_size),) * 2 + (3,), 128, np.uint8)
        with self._thumb_lock:
            self._thumbs[index] = img
            while len(self._thumbs) > 4096:
                self._thumbs.popitem(last=False)
        return img

    def dataset_labels(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """concept → (class names, label per dataset image); empty when the dataset cannot be loaded."""
        try:
            ds = self.dataset()
        except InputError:
            return {}
        return {c.name: (list(c.classes), ds.labels(c.name)) for c in ds.concepts}

    # ------------------------------------------------------------------ classify
    def explain(self, path: str | None, clf=None, top: int | None = None, attribution: str = "contrastive",
                hide_dense: bool = HIDE_DENSE) -> dict[str, Any]:
        """Decode the upload and explain the prediction (`top` latents, `attribution` contrastive | logit, dense
        latents hidden or marked); adds the input notes, top-image labels and the explanation precision."""
        clf = clf or self.clf
        if attribution not in ATTRIBUTIONS:
            raise InputError(f"attribution must be one of {', '.join(ATTRIBUTIONS)}, got {attribution!r}")
        img = decode_upload(path, int(clf.data.image_size), self.max_pixels)
        with self.model_lock:
            exp = clf.explain(img.rgb, top=int(top or self.top), n_images=self.n_top_images,
                              attribution=attribution, hide_dense=bool(hide_dense))
        exp["explanation_precision"] = precision_metrics(clf)
        exp["input"] = {"name": img.name, "mode": img.mode, "size": list(img.size), "notes": img.notes,
                        "model_size": int(clf.data.image_size)}
        self._label_tops(exp)
        return exp

    def _label_tops(self, exp: dict[str, Any]) -> None:
        """Add each top image's label (the classifier's concept) and activation to the explanation rows."""
        labels = self.dataset_labels()
        concept = self.clf.concept if self.clf.concept in labels else (next(iter(labels)) if labels else "")
        for row in exp["contributions"]:
            if concept:
                names, lab = labels[concept]
                row["top_labels"] = [names[int(lab[i])] if 0 <= lab[i] < len(names) else "?"
                                     for i in row["top_images"]]
                row["top_labels_concept"] = concept
            row["top_values"] = [float(v) for v in self.clf.top_values[row["latent"]][:len(row["top_images"])]]

    # ------------------------------------------------------------------ few-shot
    def classifier_with(self, fs: FewShotProbe):
        """A Classifier that shares this one's backbone and SAE but predicts with the few-shot probe."""
        c = self.clf
        # with_probe keeps the backbone's origin, so a saved few-shot classifier stays self-contained
        new = c.with_probe(fs.probe, fs.class_names, fs.concept,
                           meta={"fewshot": fs.summary(), "base_model": self.info["uri"] or self.info["model"]})
        if new._adapter is None:
            new._adapter = c.adapter
        new.source = {"name": "few-shot probe", "uri": "", "base": self.info}
        return new

    def _latents(self, images: Sequence[np.ndarray], ids: Sequence[str] | None) -> np.ndarray:
        with self.model_lock:
            return self.clf.latents(list(images), ids)

    def _fit(self, z: np.ndarray, y: np.ndarray, class_names: list[str], concept: str, source: str):
        import scipy.sparse as sp

        from revelio_svc.probe import fit_linear_probe

        classes = np.unique(y)
        if classes.size < 2:
            raise InputError("a few-shot probe needs images of at least two classes; "
                             f"got only {[class_names[int(c)] for c in classes]}")
        meta = {"input": "sae", "concept": concept, "class_names": class_names, "hook_point": self.clf.hook_point,
                "timestep": int(self.clf.timestep), "few_shot_source": source}
        # SAE latents are sparse and non-negative: CSR keeps them sparse (scale-only standardisation)
        probe = fit_linear_probe(sp.csr_matrix(z.astype(np.float64)), y, C=1.0, max_iter=1000, meta=meta)
        return probe

    def fewshot_from_dataset(self, dataset: str, concept: str, n_per_class: int, seed: int = 0) -> FewShotProbe:
        """Sample `n_per_class` training images per class of a built-in dataset; evaluate on its test split."""
        from revelio_svc.data import few_shot_indices, train_test_indices

        if dataset not in FEWSHOT_DATASETS:
            raise InputError(f"unknown dataset {dataset!r}; choose one of {', '.join(FEWSHOT_DATASETS)}")
        n = int(n_per_class)
        if not 1 <= n <= 100:
            raise InputError(f"images per class must be between 1 and 100, got {n_per_class}")
        ds = self._fewshot_dataset(dataset)
        names = [c.name for c in ds.concepts]
        if concept not in names:
            raise InputError(f"{dataset} has no concept {concept!r}; choose one of {', '.join(names)}")
        classes = list(ds.concept(concept).classes)
        labels = ds.labels(concept)
        train_idx, test_idx = train_test_indices(ds.ids(), seed=0, test_fraction=0.25)
        try:
            picks = few_shot_indices(labels, train_idx, n, int(seed), n_classes=len(classes))
        except ValueError as e:
            raise InputError(f"cannot draw {n} images per class: {e}") from e
        ids = ds.ids()
        train_imgs = [ds.image(int(i)) for i in picks]
        z = self._latents(train_imgs, [ids[int(i)] for i in picks])
        y = labels[picks]
        probe = self._fit(z, y, classes, concept, f"{dataset}:{concept}")
        # a fixed, seeded slice of the test split: the same held-out images for every n and seed
        rng = np.random.default_rng(12345)
        ev = np.sort(rng.permutation(test_idx)[: self.fewshot_eval])
        ze = self._latents([ds.image(int(i)) for i in ev], [ids[int(i)] for i in ev])
        pred = probe.predict(ze.astype(np.float64))
        prior = np.bincount(labels[ev], minlength=len(classes)) / max(len(ev), 1)
        return FewShotProbe(probe, classes, concept, f"{dataset}:{concept}", len(picks),
                            float(np.mean(probe.predict(z.astype(np.float64)) == y)),
                            float(np.mean(pred == labels[ev])), len(ev), float(prior.max()),
                            {classes[int(c)]: int((y == c).sum()) for c in np.unique(y)},
                            examples=[(im, classes[int(c)]) for im, c in zip(train_imgs, y)][:_MAX_EXAMPLES])

    def _fewshot_dataset(self, dataset: str):
        from revelio_svc.data import DigitsDataset, ShapesDataset

        key = (dataset, int(self.clf.data.image_size))
        if key not in self._datasets:
            size = int(self.clf.data.image_size)
            # shapes: 600 images give every class about 75 train and 25 test candidates at 6 classes
            self._datasets[key] = (ShapesDataset(n=600, image_size=size, seed=0) if dataset == "shapes"
                                   else DigitsDataset(image_size=size))
        return self._datasets[key]

    def fewshot_from_uploads(self, classes: Sequence[tuple[str, Sequence[str]]]) -> FewShotProbe:
        """[(class name, [file paths])] → a probe; bad files are skipped and named, never fatal on their own."""
        names: list[str] = []
        images: list[np.ndarray] = []
        y: list[int] = []
        skipped: list[str] = []
        for name, files in classes:
            name = (name or "").strip()
            files = [f for f in (files or []) if f]
            if not files:
                continue
            if not name:
                raise InputError("every class with images needs a name; fill in the class name next to its files")
            if name in names:
                raise InputError(f"class name {name!r} is used twice; give each class its own name")
            names.append(name)
            for f in files:
                try:
                    images.append(decode_upload(f, int(self.clf.data.image_size), self.max_pixels).rgb)
                    y.append(len(names) - 1)
                except InputError as e:
                    skipped.append(str(e))
        if len(names) < 2:
            raise InputError("give images for at least two classes (a name and one or more files each)")
        counts = {n: int(sum(1 for v in y if v == i)) for i, n in enumerate(names)}
        empty = [n for n, c in counts.items() if c == 0]
        if empty:
            raise InputError(f"no usable image for class {', '.join(map(repr, empty))}: "
                             + " | ".join(skipped[:5]))
        z = self._latents(images, None)
        ya = np.asarray(y, np.int64)
        probe = self._fit(z, ya, names, "label", "upload")
        return FewShotProbe(probe, names, "label", "upload", len(ya),
                            float(np.mean(probe.predict(z.astype(np.float64)) == ya)), None, 0,
                            float(np.bincount(ya).max() / len(ya)), counts, skipped,
                            examples=[(im, names[int(c)]) for im, c in zip(images, ya)][:_MAX_EXAMPLES])

    def save_fewshot(self, fs: FewShotProbe | None, name: str) -> Path:
        """Save the few-shot classifier (SAE + probe + top images, loadable by `revelio demo --model DIR`)."""
        if fs is None:
            raise InputError("train a few-shot probe first")
        name = (name or "").strip()
        if not _NAME_RE.match(name) or ".." in name:
            raise InputError(f"{name!r} is not a usable name: use letters, digits, '_', '-' and '.', e.g. "
                             "'my-shapes-probe' (it becomes a directory under the demo's few-shot folder)")
        dest = self.fewshot_dir / name
        if dest.exists() and any(dest.iterdir()):
            raise InputError(f"{dest} exists already; choose another name")
        self.classifier_with(fs).save(dest)
        return dest

    def register_fewshot(self, fs: FewShotProbe | None, name: str, model_name: str) -> dict[str, Any]:
        """Save, then register as a new version of `model_name` in the MLflow registry."""
        if not self.allow_register:
            raise InputError("registering is turned off for this demo (started with registration disabled)")
        model_name = (model_name or "").strip()
        if not _NAME_RE.match(model_name):
            raise InputError(f"{model_name!r} is not a usable registered-model name (letters, digits, _ - .)")
        from revelio_svc.registry import MODEL_NAMES, register_model

        pipeline_names = [MODEL_NAMES[k] for k in ("sae", "probe", "classifier", "backbone")]
        if model_name in pipeline_names:
            # the pipeline registers revelio-sae, -probe and -classifier as one champion set; a few-shot
            # classifier among them could be promoted on its own and split that set
            raise InputError(f"{model_name!r} holds the pipeline's own models ({', '.join(pipeline_names)}); "
                             "register a few-shot classifier under a name of its own, e.g. "
                             "'revelio-classifier-fewshot'")
        dest = self.save_fewshot(fs, name)
        import mlflow

        try:
            mlflow.set_experiment(self.experiment)
            with mlflow.start_run(run_name=f"fewshot-{name}", tags={"stage": "fewshot-demo"}):
                mlflow.log_params({"fewshot.source": fs.source, "fewshot.n_train": fs.n_train,
                                   "fewshot.classes": ",".join(fs.class_names)[:500]})
                metrics = {"train_accuracy": fs.train_accuracy}
                if fs.test_accuracy is not None:
                    metrics["accuracy"] = fs.test_accuracy
                reg = register_model("classifier", dest, metrics, tags={"source": "fewshot-demo",
                                                                        "fewshot_source": fs.source},
                                     metric_name="accuracy", name=model_name)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - the saved directory is still there; say so
            raise InputError(f"saved to {dest}, but registering it failed ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
        out = reg.to_dict() if hasattr(reg, "to_dict") else dict(vars(reg))
        out["saved_to"] = str(dest)  # not "path": gradio_client takes a dict with "path" for a file to download
        return out

    # ------------------------------------------------------------------ dataset statistics (atlas, latent pages)
    def _cache_file(self, what: str, key: str) -> Path | None:
        return self.cache_dir / f"{what}-{key}.safetensors" if self.cache_dir is not None else None

    @property
    def model_key(self) -> str:
        """What the cached statistics are keyed by (hashes the weights once: large SAEs take a moment)."""
        if self._model_key is None:
            self._model_key = latent_stats_mod.model_key(self.clf, self.browse_images)
        return self._model_key

    def dataset_latents(self, progress=None):
        """Image-level latents and the control over `browse_images` dataset images: computed once per model
        (keyed by its weights and data, `inference.latent_stats.model_key`) and kept in `cache_dir`."""
        with self._index_lock:
            if self._dl is None:
                self.dataset()  # a dataset that cannot be loaded here: InputError with the reason
                f = self._cache_file("latents", self.model_key)
                if f is not None and f.is_file():
                    try:
                        self._dl = DatasetLatents.load(f)
                    except (OSError, ValueError):
                        self._dl = None  # unreadable cache: compute again
                if self._dl is None:
                    self._dl = compute_dataset_latents(self.clf, self.browse_images, lock=self.model_lock,
                                                       progress=progress)
                    if f is not None:
                        self._dl.save(f)
            return self._dl

    def latent_table(self):
        dl = self.dataset_latents()
        with self._index_lock:
            if self._table is None:
                self._table = latent_stats_mod.latent_table(dl)
            return self._table

    def useful_latent(self) -> int:
        """The latent the browser opens on (never a dead one while any latent fires)."""
        try:
            return latent_stats_mod.useful_latent(self.latent_table(), self.clf)
        except InputError:  # no dataset here: the first latent that has top images
            live = [j for j in range(self.clf.n_latents) if self.clf.top_indices[j, 0] >= 0]
            return live[0] if live else 0

    def check_latent(self, latent: Any) -> int:
        return int_in(latent, "latent", 0, self.clf.n_latents - 1)

    def latent_page(self, latent: Any) -> dict[str, Any]:
        """Latent j's statistics record (`LatentStats.to_dict()`) plus its top images with heatmaps."""
        j = self.check_latent(latent)
        st = latent_stats_mod.latent_stats(self.dataset_latents(), self.latent_table(), self.clf, j,
                                           n_top=self.n_top_images * 2)
        rec = st.to_dict()
        labels = self.dataset_labels()
        concept = self.clf.concept if self.clf.concept in labels else next(iter(labels), "")
        rec["top_labels"] = [labels[concept][0][int(labels[concept][1][i])] for i in st.top_images] if concept else []
        return rec

    def latent_maps_of(self, latent: int, indices: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Dataset images `indices` and latent's spatial map on each (None for a pooled SAE)."""
        if not indices:
            return [], None
        imgs = [self.thumb(i) for i in indices]
        if self.clf.sae.config.input != "tokens":
            return imgs, None
        ids = self.dataset().ids()
        with self.model_lock:
            _, tok, _ = self.clf.tokens(imgs, [ids[int(i)] for i in indices])
        return imgs, np.asarray(latent_maps(self.clf.sae, tok, [int(latent)]), np.float32)[:, 0]

    def atlas(self, view: str, method: str | None = None) -> np.ndarray:
        """(n, 2) coordinates in [0, 1]: view "images" (rows of `dataset_latents`) or "latents" (decoder
        directions); cached in memory and in `cache_dir` per model."""
        if view not in ATLAS_VIEWS:
            raise InputError(f"unknown atlas view {view!r}; choose one of {', '.join(ATLAS_VIEWS)}")
        method = method or self.atlas_method
        dl = self.dataset_latents() if view == "images" else None
        key = (view, method)
        with self._atlas_lock:
            if key not in self._atlas:
                f = self._cache_file(f"atlas-{view}-{method}", self.model_key)
                xy = load_file(str(f))["xy"] if f is not None and f.is_file() else None
                if xy is None:
                    xy = (atlas_mod.image_atlas(dl.atlas_codes, method) if view == "images"
                          else atlas_mod.latent_atlas(self.clf.sae, method))
                    if f is not None:
                        f.parent.mkdir(parents=True, exist_ok=True)
                        save_file({"xy": np.ascontiguousarray(xy, np.float32)}, str(f))
                self._atlas[key] = np.asarray(xy, np.float32)
            return self._atlas[key]

    def atlas_knn(self, concept: str) -> dict[str, float]:
        """How well the image atlas carries `concept` (`inference.atlas.layout_report`): kNN accuracy in the
        latent codes and in the 2-D layout, with chance; computed once per concept."""
        if concept not in self.concepts():
            raise InputError(f"no labels for {concept!r}; choose one of {', '.join(self.concepts())}")
        if concept not in self._knn:  # idempotent: two requests at once compute the same numbers
            dl = self.dataset_latents()
            self._knn[concept] = atlas_mod.layout_report(dl.atlas_codes, self.atlas("images"), dl.labels[concept][1])
        return self._knn[concept]

    def colour_options(self, view: str) -> list[str]:
        concepts = list(self.concepts())
        if view == "images":
            return concepts + ["prediction"]
        return ["best concept", "purity vs control"] + [f"majority label: {c}" for c in concepts] + ["firing density"]

    def atlas_values(self, view: str, colour_by: str) -> tuple[list[Any] | np.ndarray, str]:
        """What colours each point: categorical (a list) or continuous (an array), and the legend title."""
        options = self.colour_options(view)
        if colour_by not in options:
            raise InputError(f"cannot colour the {view} atlas by {colour_by!r}; choose one of {', '.join(options)}")
        if view == "images":
            dl = self.dataset_latents()
            if colour_by == "prediction":
                pred = np.concatenate([self.clf.predict_latents(dl.Z[s:s + 4096].toarray()).argmax(1)
                                       for s in range(0, dl.n, 4096)]) if dl.n else np.zeros(0, np.int64)
                return [self.clf.class_names[int(k)] for k in pred], "predicted class"
            names, lab = dl.labels[colour_by]
            return [names[int(k)] if 0 <= k < len(names) else None for k in lab], colour_by
        t = self.latent_table()
        if colour_by == "best concept":
            return list(t.best_concept), "concept whose purity is furthest above chance"
        if colour_by == "purity vs control":
            return t.vs_control, "purity on the best concept − the control's mean purity (red: above)"
        if colour_by == "firing density":
            return np.log10(np.maximum(t.frequency, 1e-4)) + 2, "log10 firing density (red: frequent)"
        c = colour_by.split(": ", 1)[1]
        return list(t.majority[c]), f"majority {c} label of each latent's top images"

    def pick(self, view: str, x: float, y: float) -> int | None:
        """The image row (view images: a dataset index) or the latent nearest to atlas coordinates (x, y)."""
        xy = self.atlas(view)
        i = atlas_mod.nearest_point(xy, x, y)
        if i is None:
            return None
        return int(self.dataset_latents().indices[i]) if view == "images" else int(i)

    def explain_dataset_image(self, index: Any) -> dict[str, Any]:
        """The Classify explanation of dataset image `index`, with its own id (the exact training-time noise)."""
        i = int_in(index, "image index", 0, len(self.dataset()) - 1)
        rgb = self.thumb(i)
        ids = self.dataset().ids()
        with self.model_lock:
            exp = self.clf.explain(rgb, top=self.top, image_id=ids[i], n_images=self.n_top_images,
                                   hide_dense=HIDE_DENSE)
        exp["explanation_precision"] = precision_metrics(self.clf)
        exp["input"] = {"name": f"dataset image #{i} ({ids[i]})", "mode": "RGB", "size": [rgb.shape[1], rgb.shape[0]],
                        "notes": [], "model_size": int(self.clf.data.image_size), "dataset_index": i}
        self._label_tops(exp)
        return exp

    def search_latents(self, concept: str, label: str, limit: int = 20) -> list[dict[str, Any]]:
        """Latents ranked by how much of their activation falls on images of `label` (selectivity)."""
        dl = self.dataset_latents()
        if concept not in dl.labels:
            raise InputError(f"unknown concept {concept!r}; this dataset has: {', '.join(dl.labels) or 'none'}")
        names, lab = dl.labels[concept]
        if label not in names:
            raise InputError(f"{concept} has no label {label!r}; its labels: {', '.join(names)}")
        c = names.index(label)
        Z = dl.csc
        mass = np.asarray(Z.sum(0)).reshape(-1)
        on = np.asarray(Z[np.flatnonzero(np.asarray(lab) == c)].sum(0)).reshape(-1)
        sel = np.divide(on, mass, out=np.zeros_like(on), where=mass > 0)
        freq = np.diff(Z.indptr) / max(dl.n, 1)
        order = [int(j) for j in np.argsort(-sel, kind="stable") if mass[j] > 0][:limit]
        _, lab_all = self.dataset_labels()[concept]
        out = []
        for j in order:
            top = self.clf.top_images(j, self.n_top_images * 2)
            prec = float(np.mean([lab_all[i] == c for i in top])) if top else 0.0
            out.append({"latent": j, "selectivity": float(sel[j]), "top_image_precision": prec,
                        "frequency": float(freq[j])})
        return out

    # ------------------------------------------------------------------ causal steering and deletion
    def steer(self, latent: Any, mode: str = "add", strengths: Any = "1, 2, 4", seeds: Any = 4,
              sampler: str = "ddim", steps: Any = 20, t_min: Any = 0, t_max: Any = 999, progress=None):
        """Sample the same seeds with and without latent j pushed in (α × its strongest dataset activation)
        or zeroed, at the SAE's hook point for timesteps in [t_min, t_max] (`inference.steering`)."""
        j = self.check_latent(latent)
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        rel = _numbers(strengths, "strengths")
        if mode == "add" and not 1 <= len(rel) <= 6:
            raise InputError(f"give 1 to 6 strengths, e.g. '1, 2, 4'; got {len(rel)}")
        seed_list = _seed_list(seeds)
        n_steps = int_in(steps, "steps", 2, 200)
        lo, hi = int_in(t_min, "t_min", 0, 999), int_in(t_max, "t_max", 0, 999)
        if lo > hi:
            raise InputError(f"the timestep range is empty: t_min={lo} > t_max={hi}")
        scale = float(self.clf.top_values[j, 0]) if self.clf.top_values.shape[1] else 0.0
        unit = scale if scale > 0 else 1.0
        spec = SteeringSpec(j, mode, tuple(r * unit for r in rel) if mode == "add" else (), lo, hi)
        res = steer(self.clf.adapter, self.clf.sae, self.clf.hook_point, spec, seed_list, steps=n_steps,
                    sampler=sampler, progress=progress, cache=self._baselines)
        if mode == "add":
            res.variants = ["baseline"] + [f"α = {r:g} × {unit:.2f} (its strongest activation)" for r in rel]
        return res

    def steer_class(self, label: Any, strengths: Any = "4, 8, 16", seeds: Any = 4, per_class: Any = 16,
                    sampler: str = "ddim", steps: Any = 20, t_min: Any = 0, t_max: Any = 999, progress=None):
        """Sample the same seeds with class `label`'s `per_class` most selective latents added as one dataset
        image (the exemplar) has them, and with random directions placed by the same codes (the control of
        `steering_eval.exemplar_fields`), α × the exemplar's own activations. Variants: the baseline, then the
        latents at each α, then the control at each α. Returns (the run, {class, latents, image_index})."""
        clf = self.clf
        if clf.sae.config.input != "tokens":
            raise InputError("steering toward a class places latents over positions: this SAE reads pooled vectors")
        names = list(clf.class_names)
        if label not in names:
            raise InputError(f"{clf.concept} has no class {label!r}; its classes: {', '.join(names)}")
        if sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        rel = _numbers(strengths, "strengths")
        if not 1 <= len(rel) <= 4:
            raise InputError(f"give 1 to 4 strengths, e.g. '4, 8, 16'; got {len(rel)}")
        m = int_in(per_class, "latents per class", 1, 64)
        seed_list = _seed_list(seeds)
        n_steps = int_in(steps, "steps", 2, 200)
        lo, hi = int_in(t_min, "t_min", 0, 999), int_in(t_max, "t_max", 0, 999)
        if lo > hi:
            raise InputError(f"the timestep range is empty: t_min={lo} > t_max={hi}")
        dl = self.dataset_latents()
        if clf.concept not in dl.labels:
            raise InputError(f"the dataset sample has no labels for {clf.concept!r}: no class to steer toward")
        dl_names, lab = dl.labels[clf.concept]
        if label not in dl_names:
            raise InputError(f"no image of class {label!r} in the dataset sample")
        c = list(dl_names).index(label)
        js = class_specific_latents(dl.Z.toarray(), lab, len(dl_names), per_class=m)[c]
        try:
            row = exemplar_row(dl.Z, lab, c, js, label, "images in the dataset sample")
        except ValueError as e:
            raise InputError(str(e)) from None
        index = int(dl.indices[row])
        with self.model_lock:
            _, tokens, _ = clf.tokens([self.thumb(index)], ids=[self.dataset().ids()[index]])
            field, control = exemplar_fields(clf.sae, tokens[0], js, seed=c * len(js))
            spec = SteeringSpec(int(js[0]), "add", tuple(rel), lo, hi)
            runs = [steer(clf.adapter, clf.sae, clf.hook_point, spec, seed_list, steps=n_steps, sampler=sampler,
                          progress=progress, cache=self._baselines, direction=f) for f in (field, control)]
        res, ctl = runs
        res.images = np.concatenate([res.images, ctl.images[1:]])
        res.variants = (["baseline"] + [f"{label} latents, α = {r:g}" for r in rel]
                        + [f"random directions, α = {r:g}" for r in rel])
        res.change = list(res.change) + list(ctl.change[1:])
        res.seconds += ctl.seconds
        return res, {"class": label, "latents": [int(j) for j in js], "image_index": index}

    def judge_steering(self, images: np.ndarray) -> list[dict[str, Any]] | None:
        """The shape judge's verdicts on each variant of a steering run (`steering_eval.variant_verdicts`);
        None when the model's dataset is not the procedural shapes the judge was trained on."""
        if getattr(self.clf.data, "source", None) != "shapes":
            return None
        from revelio_svc.interpret.judge import CLASSES, judge_probs, load_judge

        if self._judge is None:
            self._judge = load_judge()
        return variant_verdicts(judge_variants(lambda x: judge_probs(self._judge, x), images), CLASSES)

    def deletion(self, path: str | None, n_max: Any = 16) -> dict[str, Any]:
        """Deletion curve of an uploaded image (`inference.faithfulness.deletion_curve`)."""
        n = int_in(n_max, "n_max", 1, 64)
        img = decode_upload(path, int(self.clf.data.image_size), self.max_pixels)
        with self.model_lock:
            z = self.clf.latents([img.rgb])[0]
        if not (z > 0).any():
            raise InputError("no latent is active on this image: there is nothing to remove")
        return deletion_curve(self.clf, z, n).to_dict()

    def concepts(self) -> dict[str, list[str]]:
        return {c: names for c, (names, _) in self.dataset_labels().items()}


# --------------------------------------------------------------------------- argument checks
def _numbers(value: Any, what: str) -> list[float]:
    """'1, 2, 4' or [1, 2, 4] → [1.0, 2.0, 4.0], or InputError naming `what`."""
    parts = value if isinstance(value, (list, tuple)) else str(value or "").replace(";", ",").split(",")
    try:
        out = [float(p) for p in parts if str(p).strip() != ""]
    except ValueError as e:
        raise InputError(f"{what}: give numbers separated by commas, e.g. '1, 2, 4'; got {value!r}") from e
    if not all(np.isfinite(out)) or any(abs(v) > 1000 for v in out):
        raise InputError(f"{what}: each must be a finite number between -1000 and 1000; got {value!r}")
    return out


def int_in(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi], or InputError naming `what`."""
    try:
        v = int(value)
        ok = float(value) == v
    except (TypeError, ValueError):
        ok = False
    if not ok or not lo <= v <= hi:
        raise InputError(f"{what} must be a whole number between {lo} and {hi}, got {value!r}")
    return v


def _seed_list(value: Any) -> list[int]:
    """A count n (seeds 0…n−1) or a list '3, 7, 11' of distinct seeds; at most 8."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return list(range(int_in(value, "seeds", 1, 8)))
    seeds = [int(v) for v in _numbers(value, "seeds")]
    if not 1 <= len(seeds) <= 8 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError(f"seeds: give a count from 1 to 8 or up to 8 distinct non-negative seeds; got {value!r}")
    return seeds
