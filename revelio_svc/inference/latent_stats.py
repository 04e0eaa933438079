"""What each SAE latent of a classifier does on its dataset: one statistics record per latent.

`compute_dataset_latents` runs the classifier over (a sample of) its dataset once and keeps, per image, the
image-level SAE latents (sparse) and those of the matched random-dictionary control
(`interpret.controls.matched_random`: the SAE's own class, normalisation, centre, selection and pooling with
random unit directions, read through the same `image_latents`), plus, where the dataset has per-pixel
concept masks (`ShapesDataset.masks_batch`) and the SAE reads tokens, the Network-Dissection IoU of every
latent's spatial map with every concept mask (`interpret.dissection`, on the first `n_dissect` images at
token resolution). From that,
`latent_table` gives every latent's frequency and label purity per concept next to the control's, and
`latent_stats(j)` one latent's full record (`LatentStats`): activation histogram, firing density, label
distribution and purity per concept with the control's purity and chance, the probe weights it feeds,
the latents that co-fire with it (Jaccard of the image sets where each is active), and the dataset images
where it fires most.

A measure the model cannot have is a field that says so: `dissection_iou` is None with `dissection_note`
explaining why (no masks for this dataset, or a pooled SAE without spatial maps); `control_name` names the
control the purities are compared with.

Everything is saved with safetensors + JSON (`save` / `load`), keyed by `model_key` (a digest of the SAE
and probe weights, the backbone, hook point, timestep, noise seed and the data config), so it is computed
once per model and sample size.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from ..config import to_dict
from ..data.shapes import PARTS
from ..interpret.controls import matched_random
from ..interpret.dissection import concept_masks, dissect
from ..interpret.knn import ATLAS_POOLING
from ..interpret.purity import chance_purity, majority
from ..sae.latents import image_latents

FORMAT = "revelio-dataset-latents"
VERSION = 2  # 2: the atlas codes (Z_atlas) beside the classifier's; a version-1 cache is computed again
PURITY_TOP_N = 20  # images per unit for label purity (as interpret.purity's default)
N_DISSECT = 256  # images whose latent maps are dissected (maps of every latent are held at once) …
MAP_BUDGET = 32 * 2**20  # … at most this many map values (128 MB of float32): fewer images for large SAEs
NOT_AVAILABLE = "not available for this model"
CONTROL_NAME = "a matched random dictionary (the SAE's encoder with random unit directions)"


def model_key(clf, n_images: int) -> str:
    """A digest naming what the dataset statistics depend on (weights, backbone, data, sample size)."""
    h = hashlib.sha256()
    for name, t in sorted(clf.sae.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(np.asarray(clf.probe.coef, np.float64)).tobytes())
    desc = {"backbone": clf.backbone_origin or clf.backbone_cfg.id, "init": clf.backbone_cfg.init,
            "hook": clf.hook_point, "t": clf.timestep, "noise": clf.noise_seed, "data": to_dict(clf.data),
            "n": int(n_images), "format": VERSION}
    h.update(json.dumps(desc, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------- dataset latents
@dataclass
class DatasetLatents:
    """Image-level latents of a dataset sample and a control's activations on the same images."""

    Z: sp.csr_matrix  # (n, n_latents) float32
    indices: np.ndarray  # (n,) dataset index of each row
    labels: dict[str, tuple[list[str], np.ndarray]]  # concept → (class names, label per row)
    control: sp.csr_matrix | np.ndarray  # (n, n_control_units) float32, sparse or dense
    control_name: str
    key: str = ""
    n_dataset: int = 0  # images in the whole dataset
    dissection_iou: np.ndarray | None = None  # (n_latents, n_concepts) IoU with concept masks
    dissection_concepts: list[str] = field(default_factory=list)
    dissection_note: str = ""  # how it was computed, or why it is not there
    # the same latents pooled the way the atlas places images (interpret.knn.ATLAS_POOLING); None: the same as Z
    Z_atlas: sp.csr_matrix | None = None
    _csc: sp.csc_matrix | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.Z.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.Z.shape[1])

    @property
    def atlas_codes(self) -> sp.csr_matrix:
        """The image codes the atlas maps and scores (`Z_atlas`, else `Z`)."""
        return self.Z if self.Z_atlas is None else self.Z_atlas

    @property
    def csc(self) -> sp.csc_matrix:
        if self._csc is None:
            self._csc = self.Z.tocsc()
        return self._csc

    def column(self, j: int) -> np.ndarray:
        """Latent j's activation on every row (n,)."""
        c = self.csc
        out = np.zeros(self.n, np.float32)
        s, e = c.indptr[j], c.indptr[j + 1]
        out[c.indices[s:e]] = c.data[s:e]
        return out

    def dense_columns(self, cols: slice) -> np.ndarray:
        return np.asarray(self.csc[:, cols].toarray(), np.float32)

    def control_csc(self) -> sp.csc_matrix:
        return sp.csc_matrix(self.control, dtype=np.float32)

    # -------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        z = self.Z.tocsr()
        c = sp.csr_matrix(self.control, dtype=np.float32)
        arrays = {"z_data": z.data.astype(np.float32), "z_indices": z.indices.astype(np.int64),
                  "z_indptr": z.indptr.astype(np.int64), "indices": self.indices.astype(np.int64),
                  "c_data": c.data.astype(np.float32), "c_indices": c.indices.astype(np.int64),
                  "c_indptr": c.indptr.astype(np.int64)}
        for name, (_, lab) in self.labels.items():
            arrays[f"label.{name}"] = np.asarray(lab, np.int64)
        if self.dissection_iou is not None:
            arrays["dissection_iou"] = np.ascontiguousarray(self.dissection_iou, np.float32)
        if self.Z_atlas is not None:
            za = self.Z_atlas.tocsr()
            arrays.update({"za_data": za.data.astype(np.float32), "za_indices": za.indices.astype(np.int64),
                           "za_indptr": za.indptr.astype(np.int64)})
        meta = {"format": FORMAT, "version": str(VERSION), "shape": json.dumps(list(z.shape)),
                "control_shape": json.dumps(list(c.shape)),
                "label_names": json.dumps({n: names for n, (names, _) in self.labels.items()}),
                "control_name": self.control_name, "key": self.key, "n_dataset": str(self.n_dataset),
                "dissection_concepts": json.dumps(self.dissection_concepts),
                "dissection_note": self.dissection_note}
        tmp = path.with_suffix(".tmp")
        save_file(arrays, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DatasetLatents:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
                raise ValueError(f"{path} is not a {FORMAT} v{VERSION} file")
            a = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        shape = tuple(json.loads(meta["shape"]))
        names = json.loads(meta["label_names"])
        Z = sp.csr_matrix((a["z_data"], a["z_indices"], a["z_indptr"]), shape=shape)
        control = sp.csr_matrix((a["c_data"], a["c_indices"], a["c_indptr"]),
                                shape=tuple(json.loads(meta["control_shape"])))
        labels = {c: (list(n), a[f"label.{c}"]) for c, n in names.items()}
        za = (sp.csr_matrix((a["za_data"], a["za_indices"], a["za_indptr"]), shape=shape) if "za_data" in a
              else None)
        return cls(Z, a["indices"], labels, control, meta.get("control_name", ""), meta.get("key", ""),
                   int(meta.get("n_dataset", "0")), a.get("dissection_iou"),
                   json.loads(meta.get("dissection_concepts", "[]")), meta.get("dissection_note", ""), za)


def sample_indices(n_dataset: int, n_max: int, seed: int = 0) -> np.ndarray:
    """All indices, or a seeded uniform sample of n_max of them (sorted)."""
    if n_max <= 0 or n_max >= n_dataset:
        return np.arange(n_dataset, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_dataset, n_max, replace=False)).astype(np.int64)


def _concept_masks(ds, idx: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per-class object and part masks of dataset images `idx` (None: the dataset has no masks)."""
    if not hasattr(ds, "masks_batch") or "shape" not in [c.name for c in ds.concepts]:
        return None
    labels = np.asarray(ds.labels("shape"))[idx]
    return concept_masks(ds.masks_batch(idx), labels, list(ds.concept("shape").classes), PARTS)


def all_latent_maps(sae, tok: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Every latent's spatial map (n, n_latents, H, W) from token features (n, H, W, C), via the SAE's dense
    codes (scatter of the k active values per position; `sae.latents.latent_maps` suits a few latents)."""
    n, H, W, _ = tok.shape
    out = np.zeros((n, sae.n_latents, H, W), np.float32)
    with torch.no_grad():
        for s in range(0, n, chunk):
            z = sae.encode(torch.from_numpy(np.ascontiguousarray(tok[s:s + chunk], np.float32)))  # (b, H, W, L)
            out[s:s + z.shape[0]] = z.permute(0, 3, 1, 2).numpy()
    return out


class _Dissector:
    """Collects every latent's maps on the first `n` images of the pass, then dissects them once."""

    def __init__(self, clf, ds, n: int):
        self.clf, self.ds, self.n = clf, ds, int(n)
        self.maps: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.note = ""
        if self.n <= 0:
            self.note = "not computed (n_dissect=0)"
        elif clf.sae.config.input != "tokens":
            self.note = f"{NOT_AVAILABLE} (a pooled SAE has no spatial maps)"
        elif not hasattr(ds, "masks_batch"):
            self.note = f"{NOT_AVAILABLE} (its dataset has no per-pixel concept masks)"

    @property
    def wanted(self) -> int:
        return 0 if self.note else self.n - sum(len(r) for r in self.rows)

    def add(self, tok: np.ndarray, rows: np.ndarray) -> None:
        if not self.maps:  # the first batch tells the map size: cap the images to the memory budget
            per_image = self.clf.n_latents * tok.shape[1] * tok.shape[2]
            self.n = min(self.n, max(8, MAP_BUDGET // max(per_image, 1)))
        k = min(self.wanted, len(rows))
        if k > 0:
            self.maps.append(all_latent_maps(self.clf.sae, tok[:k]))
            self.rows.append(rows[:k])

    def result(self) -> tuple[np.ndarray | None, list[str], str]:
        if self.note or not self.maps:
            return None, [], self.note or f"{NOT_AVAILABLE} (no images)"
        maps = np.concatenate(self.maps)
        idx = np.concatenate(self.rows)
        masks = _concept_masks(self.ds, idx)
        if not masks:
            return None, [], f"{NOT_AVAILABLE} (its dataset has no shape masks)"
        H = next(iter(masks.values())).shape[1]
        res = "token" if H % maps.shape[2] == 0 and H >= maps.shape[2] else "image"
        d = dissect(maps, masks, resolution=res)
        return (d.iou.astype(np.float32), list(d.concepts),
                f"IoU of its top-0.5% activations with concept masks on {len(idx)} images ({res} resolution); "
                f"a detector above {d.iou_threshold:g}")


def stored_tokens(clf, indices: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """Token maps of dataset images read from the feature store the classifier was built from, when that
    store is here, is the same store (its config hash: backbone, data, noise seed) and holds the SAE's token
    set for every image asked for; None otherwise (the caller runs the backbone). The store holds what the
    backbone gives for those images (the same seeded noise), at the store's precision, which is the precision
    the classifier rounds to (`feature_dtype`), so the latents are the same without a forward pass: reading
    2000 images' maps takes a fraction of a second, computing them tens of seconds on a small CPU."""
    want, uri = clf.meta.get("store_config_hash"), clf.meta.get("store_uri")
    if clf.sae.config.input != "tokens" or not want or not uri:
        return None
    try:
        from ..features.store import open_store

        store = open_store(uri)
        if store.config_hash != want or not store.has(clf.hook_point, clf.timestep, "tokens"):
            return None
        fs = store.feature_set(clf.hook_point, clf.timestep, "tokens")
        need = set(int(i) for i in indices)
        found: dict[int, np.ndarray] = {}
        for shard, feats in fs.iter_shards():
            for r, i in enumerate(store.rows(shard)["index"]):
                if int(i) in need:
                    found[int(i)] = feats[r]
    except Exception:  # noqa: BLE001 - a store that is gone, moved or unreadable: compute instead
        return None
    if len(found) < len(need):
        return None

    def read(part: np.ndarray) -> np.ndarray:
        return np.stack([found[int(i)] for i in part]).astype(np.float32)

    return read


def compute_dataset_latents(clf, n_max: int = 2000, *, batch: int = 64, seed: int = 0, n_dissect: int = N_DISSECT,
                            lock: Any = None, progress: Callable[[int, int], None] | None = None) -> DatasetLatents:
    """One pass of the classifier over `n_max` images of its dataset (all when n_max <= 0).

    `lock` (a context manager) is held around each backbone forward: a server that shares the model with
    other requests passes its model lock. A token SAE's maps come from its feature store when that store is
    here (`stored_tokens`), otherwise from the backbone. `progress(done, total)` after each batch.
    """
    ds = clf.dataset()
    idx = sample_indices(len(ds), n_max, seed)
    ids = ds.ids()
    pooling = clf.sae.config.to_dict().get("latent_pooling", "max")
    control = None
    dissector = _Dissector(clf, ds, n_dissect)
    # the atlas' own pooling, when it differs (a pooled SAE has one code per image: nothing to pool)
    tokens_in = clf.sae.config.to_dict().get("input") == "tokens"
    atlas_pool = ATLAS_POOLING if tokens_in and pooling != ATLAS_POOLING else None
    rows, ctrl, atlas_rows = [], [], []
    lock = lock if lock is not None else contextlib.nullcontext()
    stored = stored_tokens(clf, idx)

    def control_rows(feats):
        return sp.csr_matrix(np.asarray(image_latents(control, feats, pooling), np.float32))

    # the control's encode is as large as the SAE's and independent of it: a second thread runs it beside the
    # SAE's encode and the dissection (torch releases the GIL), so a 2-core machine draws the atlas sooner
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-encode") as pool:
        for s in range(0, len(idx), batch):
            part = idx[s:s + batch]
            if stored is not None:
                tok = stored(part)
            else:
                images = [ds.image(int(i)) for i in part]
                with lock:
                    _, tok, _ = clf.tokens(images, [ids[int(i)] for i in part])
            feats = clf._sae_input(tok)
            if control is None:  # BatchTopK calibrates its threshold on the first batch's vectors
                control = matched_random(clf.sae, seed + 1, calibration=feats.reshape(-1, feats.shape[-1]))
            pending = pool.submit(control_rows, feats)
            z = clf.latents_from_tokens_multi(tok, (pooling, atlas_pool) if atlas_pool else (pooling,))
            rows.append(sp.csr_matrix(z[pooling]))
            if atlas_pool:
                atlas_rows.append(sp.csr_matrix(z[atlas_pool]))
            dissector.add(tok, part)
            ctrl.append(pending.result())
            if progress is not None:
                progress(min(s + batch, len(idx)), len(idx))
    L = clf.n_latents
    Z = sp.vstack(rows).tocsr().astype(np.float32) if rows else sp.csr_matrix((0, L), dtype=np.float32)
    C = sp.vstack(ctrl).tocsr().astype(np.float32) if ctrl else sp.csr_matrix((0, L), dtype=np.float32)
    labels = {c.name: (list(c.classes), np.asarray(ds.labels(c.name))[idx]) for c in ds.concepts}
    ZA = sp.vstack(atlas_rows).tocsr().astype(np.float32) if atlas_rows else None
    iou, concepts, note = dissector.result()
    return DatasetLatents(Z, idx, labels, C, CONTROL_NAME, model_key(clf, n_max), len(ds), iou, concepts, note, ZA)


# --------------------------------------------------------------------------- all latents at once
@dataclass
class LatentTable:
    """Per-latent summary over the dataset sample: what the atlas colours and the browser opens on."""

    frequency: np.ndarray  # (L,) share of images where the latent is active
    max_activation: np.ndarray  # (L,)
    purity: dict[str, np.ndarray]  # concept → (L,) majority share of its top images (NaN: too rare)
    majority: dict[str, list[str | None]]  # concept → majority label per latent
    chance: dict[str, float]  # concept → expected purity of random image sets
    control_purity: dict[str, np.ndarray]  # concept → (n_control,) the control units' purity
    best_concept: list[str | None]  # per latent: the concept whose purity is furthest above chance
    best_margin: np.ndarray  # (L,) purity − chance on the best concept (NaN: no concept)
    vs_control: np.ndarray  # (L,) purity on the best concept − the control's mean purity on it
    top_n: int = PURITY_TOP_N


def _purity_chunks(acts_csc: sp.csc_matrix, lab: np.ndarray, top_n: int, chunk: int = 256):
    """Majority share and label of each unit's top images (NaN: active on fewer than top_n), unit chunks dense."""
    n, L = acts_csc.shape
    pur = np.full(L, np.nan)
    maj = np.zeros(L, np.int64)
    for s in range(0, L, chunk):
        acts = np.asarray(acts_csc[:, s:min(L, s + chunk)].toarray(), np.float32)
        m, share, _ = majority(acts, lab, top_n)
        ok = (acts > 0).sum(0) >= min(top_n, max(1, n))
        pur[s:s + acts.shape[1]] = np.where(ok, share, np.nan)
        maj[s:s + acts.shape[1]] = m
    return pur, maj


def latent_table(dl: DatasetLatents, top_n: int = PURITY_TOP_N) -> LatentTable:
    top_n = int(min(top_n, max(1, dl.n)))
    act = dl.csc
    counts = np.diff(act.indptr)
    freq = counts / max(dl.n, 1)
    ctrl_csc = dl.control_csc()
    mx = np.asarray(act.max(axis=0).toarray()).reshape(-1) if dl.n else np.zeros(dl.n_latents)
    purity, majority_names, chance, ctrl = {}, {}, {}, {}
    for c, (names, lab) in dl.labels.items():
        lab = np.asarray(lab, np.int64)
        if lab.size == 0 or lab.min() < 0:
            continue
        p, m = _purity_chunks(act, lab, top_n)
        purity[c] = p
        majority_names[c] = [None if np.isnan(p[j]) else names[int(m[j])] for j in range(len(p))]
        chance[c] = chance_purity(lab, top_n, n_draws=400)
        ctrl[c] = _purity_chunks(ctrl_csc, lab, top_n)[0]
    L = dl.n_latents
    best: list[str | None] = [None] * L
    margin = np.full(L, np.nan)
    vs = np.full(L, np.nan)
    for c, p in purity.items():
        m = p - chance[c]
        better = np.isfinite(m) & ~(m <= margin)  # NaN margin (nothing yet) counts as worse
        for j in np.flatnonzero(better):
            best[j] = c
        margin = np.where(better, m, margin)
        cmean = float(np.nanmean(ctrl[c])) if np.isfinite(ctrl[c]).any() else np.nan
        vs = np.where(better, p - cmean, vs)
    return LatentTable(freq.astype(np.float64), mx.astype(np.float64), purity, majority_names, chance, ctrl, best,
                       margin, vs, top_n)


def useful_latent(table: LatentTable, clf) -> int:
    """The latent a browser opens on: the purest (above chance) on the probe's concept among latents active on
    enough images, else the one with the largest |probe weight| × frequency; never a dead latent if any lives."""
    L = len(table.frequency)
    live = np.flatnonzero(table.frequency > 0)
    if live.size == 0:
        return 0
    c = clf.concept if clf.concept in table.purity else None
    if c is not None:
        p = table.purity[c]
        ok = live[np.isfinite(p[live])]
        if ok.size:
            key = np.lexsort((-table.max_activation[ok], -p[ok]))
            return int(ok[key[0]])
    w = np.abs(np.asarray(clf.probe.coef)).max(0)[:L] * table.frequency
    return int(live[np.argmax(w[live])])


# --------------------------------------------------------------------------- one latent
@dataclass
class ConceptStats:
    concept: str
    majority: str | None
    purity: float | None  # majority share of the latent's top images (None: active on too few images)
    chance: float
    control_purity: float | None  # the control units' mean purity
    beats_control: float | None  # share of control units whose purity is below the latent's
    distribution: dict[str, int]  # label → count among the latent's top images


@dataclass
class LatentStats:
    """One latent's record (see the module docstring). JSON-able with `to_dict`."""

    latent: int
    n_latents: int
    n_images: int  # images in the sample the statistics are over
    n_dataset: int
    frequency: float
    n_active: int
    mean_when_active: float
    max_activation: float
    histogram_edges: list[float]
    histogram_counts: list[int]
    top_images: list[int]  # dataset indices, strongest first (from the classifier's top-image table)
    top_values: list[float]
    concepts: list[ConceptStats]
    best_concept: str | None
    control_name: str
    probe_weights: dict[str, float]
    cofiring: list[dict[str, float]]  # [{"latent", "jaccard", "both"}], strongest first
    dissection_iou: dict[str, float] | None = None  # its best concepts' IoU, best first
    dissection_note: str = f"{NOT_AVAILABLE} (needs per-pixel concept masks)"
    top_n: int = PURITY_TOP_N

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def dead(self) -> bool:
        return self.n_active == 0 and not self.top_images


def cofiring(dl: DatasetLatents, j: int, n: int = 8) -> list[dict[str, float]]:
    """Latents whose active image sets overlap latent j's most (Jaccard), with the number of shared images."""
    A = dl.csc  # activations are > 0 where stored (ReLU codes), so counts of stored entries are firing counts
    a = (dl.column(j) > 0).astype(np.float32)
    nj = a.sum()
    if nj == 0:
        return []
    ones = sp.csc_matrix((np.ones_like(A.data), A.indices, A.indptr), shape=A.shape)
    both = np.asarray(ones.T @ a).reshape(-1)
    counts = np.diff(A.indptr)
    jac = both / np.maximum(nj + counts - both, 1)
    jac[j] = -1
    order = [int(k) for k in np.argsort(-jac, kind="stable")[:n] if jac[k] > 0]
    return [{"latent": k, "jaccard": float(jac[k]), "both": int(both[k])} for k in order]


def probe_weights(clf, j: int) -> dict[str, float]:
    probe = clf.probe
    coef = np.asarray(probe.coef)
    return {clf.class_names[int(c)]: float(coef[r, j] / probe.scaler_scale[j])
            for r, c in enumerate(np.asarray(probe.classes, np.int64))}


def latent_stats(dl: DatasetLatents, table: LatentTable, clf, j: int, n_top: int = 12, bins: int = 20) -> LatentStats:
    """Latent j's record over the dataset sample `dl` (validated: 0 <= j < n_latents)."""
    L = dl.n_latents
    if not 0 <= int(j) < L:
        raise ValueError(f"latent must be between 0 and {L - 1}, got {j}")
    j = int(j)
    z = dl.column(j)
    on = z[z > 0]
    if on.size:
        counts, edges = np.histogram(on, bins=bins)
    else:
        counts, edges = np.zeros(0, np.int64), np.zeros(0)
    top_n = table.top_n
    order = np.argsort(-z, kind="stable")[:top_n]
    order = order[z[order] > 0]
    concepts = []
    for c, (names, lab) in dl.labels.items():
        if c not in table.purity:
            continue
        labs = np.asarray(lab)[order]
        dist = {names[int(k)]: int((labs == k).sum()) for k in np.unique(labs)}
        dist = dict(sorted(dist.items(), key=lambda kv: -kv[1]))
        p = table.purity[c][j]
        ctrl = table.control_purity[c]
        finite = ctrl[np.isfinite(ctrl)]
        concepts.append(ConceptStats(
            c, table.majority[c][j], None if np.isnan(p) else float(p), float(table.chance[c]),
            float(finite.mean()) if finite.size else None,
            float((finite < p).mean()) if finite.size and not np.isnan(p) else None, dist))
    top = clf.top_images(j, n_top)
    iou = None
    if dl.dissection_iou is not None and dl.dissection_concepts:
        row = dl.dissection_iou[j]
        iou = {dl.dissection_concepts[k]: float(row[k]) for k in np.argsort(-row, kind="stable")[:5]}
    return LatentStats(
        latent=j, n_latents=L, n_images=dl.n, n_dataset=dl.n_dataset, frequency=float(on.size / max(dl.n, 1)),
        n_active=int(on.size), mean_when_active=float(on.mean()) if on.size else 0.0,
        max_activation=float(clf.top_values[j, 0]) if clf.top_values.shape[1] and top else float(on.max(initial=0)),
        histogram_edges=[float(e) for e in edges], histogram_counts=[int(c) for c in counts], top_images=top,
        top_values=[float(v) for v in clf.top_values[j][:len(top)]], concepts=concepts,
        best_concept=table.best_concept[j], control_name=dl.control_name, probe_weights=probe_weights(clf, j),
        cofiring=cofiring(dl, j), dissection_iou=iou,
        dissection_note=dl.dissection_note or f"{NOT_AVAILABLE} (needs per-pixel concept masks)", top_n=top_n)
