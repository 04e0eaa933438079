"""Steering measured: does pushing a class's most specific latent make the backbone draw that class?

For each class c of the concept (shape):

1. the latent most specific to c is chosen on the store's *train* rows (`class_specific_latents`): the
   largest share of its image-level activation mass falling on images of c (selectivity), among latents
   firing on at least `min_active` train images;
2. the backbone samples the same seeds without steering (the baseline) and with α · d_j added at the SAE's
   hook point (`inference.steering`, every denoising step by default), for α = r × the latent's strongest
   train activation, r in `strengths`; and again with a random direction of the same norm as d_j and the
   same α (the control);
3. the judge (`interpret.judge`, a shape classifier trained only on renders) names every sample's shape.

The metric (`flip_stats`, a pure function of the judge's probabilities): at strength α, a seed has *flipped*
when its baseline sample is not judged c and its steered sample is judged c with top probability ≥ 0.5
(a verdict the judge is at least even about: the sample is still in the judge's distribution; a sample
pushed into noise does not count). Flip rate(α) = flipped seeds / seeds whose baseline is not c. The
headline flip rate of a class is the largest over the strengths, reported at the smallest strength that
reaches it; the random direction gets the same treatment, so the comparison is fair. The in-distribution
share (top probability ≥ 0.5, whatever the class) is reported at every strength beside it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .steering import SteeringSpec, decoder_direction, steer

DEFAULT_STRENGTHS = (1.0, 2.0, 4.0, 8.0)
MIN_CONF = 0.5  # "in distribution": the judge's top probability at least this
PREFIX = "steering."
# what the pipeline's register stage spends on it (make run has little time to spare): 6 classes × 2
# directions × 2 strengths × 4 seeds × 10 DDIM steps = 960 denoiser calls per image, plus the baseline
PIPELINE_BUDGET = {"seeds": (0, 1, 2, 3), "strengths": (1.0, 4.0), "steps": 10}
# the same for a class's most specific latents placed as an exemplar has them (`exemplar_steering`): the setting
# that flips most against its control (benchmarks/judge.py steering --exemplar 16: 0.44 vs 0.20 at 12 seeds)
EXEMPLAR_PREFIX = "steering_exemplar."
EXEMPLAR_BUDGET = {"exemplar": 16, "seeds": (0, 1, 2, 3), "strengths": (8.0, 16.0), "steps": 10}


# --------------------------------------------------------------------------- pure parts
def class_specific_latents(Z: np.ndarray, y: np.ndarray, n_classes: int, per_class: int = 1,
                           min_active: int = 5) -> list[list[int]]:
    """Per class, the `per_class` latents with the highest selectivity on (train) rows `Z` (n, L), labels `y`.

    Selectivity of latent j for class c: Σ_{i: y_i = c} z_ij / Σ_i z_ij (1 for a latent that fires only on c).
    Latents active (> 0) on fewer than `min_active` rows are left out; ties go to the larger activation mass.
    A class no eligible latent prefers still gets its most selective ones.
    """
    Z = np.asarray(Z, np.float64)
    y = np.asarray(y)
    if Z.ndim != 2 or len(Z) != len(y):
        raise ValueError(f"Z must be (n, n_latents) with one label per row, got {Z.shape} and {y.shape} labels")
    mass = Z.clip(min=0).sum(0)
    ok = ((Z > 0).sum(0) >= min_active) & (mass > 0)
    out = []
    for c in range(n_classes):
        on = Z[y == c].clip(min=0).sum(0)
        sel = np.where(ok, np.divide(on, mass, out=np.zeros_like(on), where=mass > 0), -1.0)
        order = np.lexsort((-mass, -sel))  # by selectivity, then mass
        out.append([int(j) for j in order[:per_class]])
    return out


@dataclass(frozen=True)
class FlipStats:
    """One class, one direction: per strength the flip rate and the in-distribution share (module docstring)."""

    target: int
    strengths: tuple[float, ...]
    flip: tuple[float, ...]
    in_dist: tuple[float, ...]
    n_seeds: int
    n_eligible: int  # seeds whose baseline is not judged the target
    baseline_in_dist: float
    best: int | None  # index of the headline strength (None: no seed flipped at any strength)

    @property
    def flip_rate(self) -> float:
        return self.flip[self.best] if self.best is not None else 0.0

    @property
    def strength(self) -> float | None:
        return self.strengths[self.best] if self.best is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "strengths": list(self.strengths), "flip": list(self.flip),
                "in_dist": list(self.in_dist), "n_seeds": self.n_seeds, "n_eligible": self.n_eligible,
                "baseline_in_dist": self.baseline_in_dist, "flip_rate": self.flip_rate, "strength": self.strength}


def flip_stats(probs: np.ndarray, target: int, strengths: Sequence[float], min_conf: float = MIN_CONF) -> FlipStats:
    """The flip metric of the module docstring from the judge's probabilities.

    probs: (1 + len(strengths), n_seeds, n_classes); row 0 is the unsteered baseline of the same seeds.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 3 or p.shape[0] != len(strengths) + 1:
        raise ValueError(f"probs must be (1 + {len(strengths)} strengths, seeds, classes), got {p.shape}")
    if not 0 <= target < p.shape[2]:
        raise ValueError(f"target class {target} is not in [0, {p.shape[2] - 1}]")
    arg, top = p.argmax(2), p.max(2)
    sure = top >= min_conf
    eligible = arg[0] != target
    n_el = int(eligible.sum())
    flipped = (arg[1:] == target) & sure[1:] & eligible[None]
    flip = flipped.sum(1) / n_el if n_el else np.zeros(len(strengths))
    best = int(np.argmax(flip)) if len(flip) and flip.max() > 0 else None
    return FlipStats(int(target), tuple(float(s) for s in strengths), tuple(float(f) for f in flip),
                     tuple(float(v) for v in sure[1:].mean(1)), int(p.shape[1]), n_el, float(sure[0].mean()), best)


def judge_variants(judge_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """The judge's probabilities of a steering run's images (n_variants, n_seeds, S, S, 3) → (n_variants, n_seeds, K)."""
    n_var, n = images.shape[:2]
    probs = np.asarray(judge_fn(images.reshape(n_var * n, *images.shape[2:])), np.float64)
    return probs.reshape(n_var, n, -1)


def variant_verdicts(probs: np.ndarray, class_names: Sequence[str], min_conf: float = MIN_CONF) -> list[dict[str, Any]]:
    """Per variant: the judge's class per seed ("?" when its top probability is below `min_conf`), the share
    judged at all (in distribution) and the count per class."""
    out = []
    for pv in np.asarray(probs, np.float64):
        names = [str(class_names[int(k)]) if top >= min_conf else "?" for k, top in zip(pv.argmax(1), pv.max(1))]
        counts = {c: names.count(c) for c in list(class_names) + ["?"] if names.count(c)}
        out.append({"verdicts": names, "in_dist": float(np.mean([v != "?" for v in names])) if names else 0.0,
                    "counts": counts})
    return out


def random_direction(like: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction with the norm of `like` (the control of a latent's decoder direction)."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(like.numel(), generator=g)
    return (r * (like.float().norm() / r.norm().clamp_min(1e-12))).reshape(like.shape)


# --------------------------------------------------------------------------- the driver
@dataclass
class ClassSteering:
    label: str
    target: int
    latent: int
    scale: float  # the latent's strongest train activation: α = r × scale
    latent_stats: FlipStats
    random_stats: FlipStats
    verdicts: dict[str, list[str]] = field(default_factory=dict)  # variant → the judge's class per seed

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "latent": self.latent, "scale": self.scale,
                "latent_direction": self.latent_stats.to_dict(), "random_direction": self.random_stats.to_dict(),
                "verdicts": self.verdicts}


@dataclass
class SteeringEval:
    classes: list[ClassSteering]
    strengths: tuple[float, ...]
    seeds: list[int]
    steps: int
    seconds: float
    min_conf: float = MIN_CONF

    def metrics(self, prefix: str = PREFIX) -> dict[str, float]:
        """`steering.flip_rate` / `steering.flip_rate_random` (mean over classes), and per class (`prefix`
        instead of `steering.`: e.g. `EXEMPLAR_PREFIX`)."""
        if not self.classes:
            return {}
        p = prefix
        m = {p + "flip_rate": float(np.mean([c.latent_stats.flip_rate for c in self.classes])),
             p + "flip_rate_random": float(np.mean([c.random_stats.flip_rate for c in self.classes])),
             p + "baseline_in_dist": float(np.mean([c.latent_stats.baseline_in_dist for c in self.classes])),
             p + "seconds": float(self.seconds)}
        for c in self.classes:
            m[f"{p}flip_rate.{c.label}"] = c.latent_stats.flip_rate
            m[f"{p}flip_rate_random.{c.label}"] = c.random_stats.flip_rate
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"strengths": list(self.strengths), "seeds": self.seeds, "steps": self.steps,
                "min_conf": self.min_conf, "seconds": self.seconds, "metrics": self.metrics(),
                "classes": [c.to_dict() for c in self.classes]}

    def table(self) -> str:
        """One line per class: latent, flip rate (strength) vs random, in-distribution share per strength."""
        head = (f"{'class':<10}{'latent':>7}{'flip':>7}{'at r':>6}{'random':>8}{'at r':>6}   in-dist per r "
                f"({', '.join(f'{s:g}' for s in self.strengths)}): latent | random")
        rows = [head]
        for c in self.classes:
            a, b = c.latent_stats, c.random_stats
            rows.append(f"{c.label:<10}{c.latent:>7}{a.flip_rate:>7.2f}{_r(a.strength):>6}{b.flip_rate:>8.2f}"
                        f"{_r(b.strength):>6}   {' '.join(f'{v:.2f}' for v in a.in_dist)} | "
                        f"{' '.join(f'{v:.2f}' for v in b.in_dist)}")
        m = self.metrics()
        if m:
            rows.append(f"{'mean':<10}{'':>7}{m[PREFIX + 'flip_rate']:>7.2f}{'':>6}{m[PREFIX + 'flip_rate_random']:>8.2f}")
        return "\n".join(rows)


def _r(s: float | None) -> str:
    return "–" if s is None else f"{s:g}"


def _judge_pair(latent_run, random_run, target: int, judge_fn: Callable[[np.ndarray], np.ndarray],
                class_names: Sequence[str], strengths: tuple[float, ...], min_conf: float
                ) -> tuple[list[FlipStats], dict[str, list[str]]]:
    """Flip stats of a steering run and its random control, and the judge's verdict per seed of every variant."""
    stats, verdicts = [], {}
    for name, r in (("latent", latent_run), ("random", random_run)):
        probs = judge_variants(judge_fn, r.images)
        stats.append(flip_stats(probs, target, strengths, min_conf))
        for v, vv in enumerate(variant_verdicts(probs, class_names, min_conf)):
            verdicts["baseline" if v == 0 else f"{name} r={strengths[v - 1]:g}"] = vv["verdicts"]
    return stats, verdicts


def measure_steering(adapter, sae, hook_point: str, latents: Mapping[int, int], scales: Mapping[int, float],
                     judge_fn: Callable[[np.ndarray], np.ndarray], class_names: Sequence[str], *,
                     strengths: Sequence[float] = DEFAULT_STRENGTHS, seeds: Sequence[int] = tuple(range(8)),
                     steps: int = 20, sampler: str = "ddim", t_min: int = 0, t_max: int = 999,
                     min_conf: float = MIN_CONF, random_seed: int = 0,
                     progress: Callable[[str], None] | None = None) -> SteeringEval:
    """Steer class c's latent `latents[c]` at α = r × `scales[latent]` and a random direction of the same norm,
    judge every sample with `judge_fn` (uint8 (N, S, S, 3) → (N, n_classes) probabilities), and score
    both with `flip_stats`. The baseline is sampled once for all classes."""
    t0 = time.perf_counter()
    rel = tuple(float(r) for r in strengths)
    seeds = [int(s) for s in seeds]
    cache: dict = {}
    out = []
    for c, j in latents.items():
        scale = float(scales[j]) if float(scales[j]) > 0 else 1.0
        spec = SteeringSpec(int(j), "add", tuple(r * scale for r in rel), t_min, t_max)
        d = decoder_direction(sae, j)
        res = steer(adapter, sae, hook_point, spec, seeds, steps=steps, sampler=sampler, cache=cache)
        ctl = steer(adapter, sae, hook_point, spec, seeds, steps=steps, sampler=sampler, cache=cache,
                    direction=random_direction(d, random_seed * 1000 + int(c)))
        stats, verdicts = _judge_pair(res, ctl, int(c), judge_fn, class_names, rel, min_conf)
        out.append(ClassSteering(str(class_names[int(c)]), int(c), int(j), scale, stats[0], stats[1], verdicts))
        if progress is not None:
            progress(f"steering {class_names[int(c)]}: latent {j} flips {stats[0].flip_rate:.2f}, "
                     f"random {stats[1].flip_rate:.2f} ({time.perf_counter() - t0:.0f} s)")
    return SteeringEval(out, rel, seeds, int(steps), time.perf_counter() - t0, min_conf)


def train_latents(sae, store, concept: str) -> tuple[np.ndarray, np.ndarray]:
    """Image-level latents (n_train, L) of the store's train rows at the SAE's feature set, and their labels."""
    from ..sae.data import feature_set_for
    from ..sae.latents import image_latents

    c = sae.config
    fset = feature_set_for(store, c.hook_point, c.timestep, c.input, c.pooling or "mean")
    test = np.asarray(store.is_test(), bool)
    Z = np.concatenate([image_latents(sae, np.asarray(f, np.float32), c.latent_pooling) for _, f in fset.iter_shards()])
    return Z[~test], np.asarray(store.labels(concept))[~test]


def steering_eval_for_store(adapter, sae, store, concept: str, judge_fn: Callable[[np.ndarray], np.ndarray],
                            class_names: Sequence[str], *, train: tuple[np.ndarray, np.ndarray] | None = None,
                            **kw) -> SteeringEval:
    """Choose each class's most specific latent on the store's train rows and `measure_steering` with it
    (`train`: `train_latents` of this SAE and store, when already computed)."""
    Z, y = train if train is not None else train_latents(sae, store, concept)
    chosen = class_specific_latents(Z, y, len(class_names))
    latents = {c: js[0] for c, js in enumerate(chosen)}
    scales = {j: float(Z[:, j].max()) for j in latents.values()}
    return measure_steering(adapter, sae, sae.config.hook_point, latents, scales, judge_fn, class_names, **kw)


def exemplar_field(sae, tokens: np.ndarray, latents: Sequence[int],
                   directions: torch.Tensor | None = None) -> torch.Tensor:
    """Latents `latents` placed as an exemplar has them: Σ_j z_j(p) · d_j at every position p, (positions, d_in).

    tokens: the exemplar's features at the SAE's hook point, (H, W, d_in) or (positions, d_in); z_j(p) its code
    there. `directions` (len(latents), d_in) replaces the decoder directions d_j (the control: random directions
    of the same norms, placed by the same codes)."""
    x = torch.as_tensor(np.asarray(tokens, np.float32)).reshape(-1, sae.d_in)
    js = [int(j) for j in latents]
    if not js:
        raise ValueError("give at least one latent")
    if directions is None:
        directions = torch.stack([decoder_direction(sae, j) for j in js])
    if tuple(directions.shape) != (len(js), sae.d_in):
        raise ValueError(f"directions must be ({len(js)}, {sae.d_in}), got {tuple(directions.shape)}")
    with torch.no_grad():
        z = sae.encode(x)[:, js].float()
    return z @ directions.float()


def exemplar_row(Z, y: np.ndarray, k: int, latents: Sequence[int], label: str, where: str = "rows") -> int:
    """The row of class `k` (labels `y`) on which `latents` fire most (their summed image-level activation in
    `Z` (n, L), dense or scipy.sparse): the exemplar whose codes place them. ValueError naming `label` when the
    class has no rows or none of the latents fires on them."""
    rows = np.flatnonzero(np.asarray(y) == k)
    if not len(rows):
        raise ValueError(f"class {label!r} has no {where}: no exemplar to place its latents by")
    mass = np.asarray(Z[rows][:, list(latents)].sum(1)).reshape(-1)
    if not mass.max() > 0:
        raise ValueError(f"none of the latents chosen for class {label!r} ({list(latents)}) fires on its {where}")
    return int(rows[int(np.argmax(mass))])


def exemplar_fields(sae, tokens: np.ndarray, latents: Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(field, control) for steering with `latents` placed as the exemplar `tokens` has them: `exemplar_field`
    with their decoder directions, and with random directions of the same norms (seeds seed, seed + 1, …)
    placed by the same codes, rescaled at every position to the field's norm there (latents firing together
    have correlated directions; random ones do not, so their sum would be shorter)."""
    js = [int(j) for j in latents]
    d = torch.stack([decoder_direction(sae, j) for j in js])
    rnd = torch.stack([random_direction(d[i], int(seed) + i) for i in range(len(js))])
    field = exemplar_field(sae, tokens, js, d)
    control = exemplar_field(sae, tokens, js, rnd)
    return field, control * (field.norm(dim=1, keepdim=True) / control.norm(dim=1, keepdim=True).clamp_min(1e-12))


def exemplar_steering(adapter, sae, store, concept: str, judge_fn: Callable[[np.ndarray], np.ndarray],
                      class_names: Sequence[str], *, per_class: int = 16,
                      strengths: Sequence[float] = DEFAULT_STRENGTHS, seeds: Sequence[int] = tuple(range(8)),
                      steps: int = 20, sampler: str = "ddim", t_min: int = 0, t_max: int = 999,
                      min_conf: float = MIN_CONF, random_seed: int = 0,
                      progress: Callable[[str], None] | None = None,
                      train: tuple[np.ndarray, np.ndarray] | None = None) -> SteeringEval:
    """Steering with a class's `per_class` most specific latents placed where an exemplar has them.

    Per class c: the latents of `class_specific_latents` (train rows), the train image of c on which they fire
    most (their summed image-level activation) as the exemplar, and `exemplar_field` of its token features
    (the SAE's feature set) added at r × 1 for r in `strengths` (r = 1: the exemplar's own activations). The
    control places random directions of the same norms by the same codes, and is then rescaled at every position
    to the latent field's norm there (latents firing together have correlated directions; random ones do not, so
    their sum would be shorter). Flip rates as `measure_steering`; `ClassSteering.latent` is the first latent,
    `scale` 1. Token SAEs only; every class needs train rows on which its latents fire. `train`: as in
    `steering_eval_for_store`."""
    from ..interpret.toplatents import read_rows
    from ..sae.data import feature_set_for

    c = sae.config
    if c.input != "tokens":
        raise ValueError("exemplar steering places latents over positions: the SAE must read tokens")
    t0 = time.perf_counter()
    Z, y = train if train is not None else train_latents(sae, store, concept)
    chosen = class_specific_latents(Z, y, len(class_names), per_class=per_class)
    fset = feature_set_for(store, c.hook_point, c.timestep, c.input, c.pooling or "mean")
    train_rows = np.flatnonzero(~np.asarray(store.is_test(), bool))
    rel = tuple(float(r) for r in strengths)
    seeds = [int(s) for s in seeds]
    cache: dict = {}
    out = []
    for k, js in enumerate(chosen):
        row = exemplar_row(Z, y, k, js, class_names[k], "train rows in the store")
        tokens = read_rows(fset, train_rows[[row]])[0]
        field, control = exemplar_fields(sae, tokens, js, (random_seed * len(class_names) + k) * len(js))
        spec = SteeringSpec(int(js[0]), "add", rel, t_min, t_max)
        res, ctl = (steer(adapter, sae, c.hook_point, spec, seeds, steps=steps, sampler=sampler, cache=cache,
                          direction=f) for f in (field, control))
        stats, verdicts = _judge_pair(res, ctl, k, judge_fn, class_names, rel, min_conf)
        out.append(ClassSteering(str(class_names[k]), k, int(js[0]), 1.0, stats[0], stats[1], verdicts))
        if progress is not None:
            progress(f"exemplar steering {class_names[k]}: {len(js)} latents flip {stats[0].flip_rate:.2f}, "
                     f"random {stats[1].flip_rate:.2f} ({time.perf_counter() - t0:.0f} s)")
    return SteeringEval(out, rel, seeds, int(steps), time.perf_counter() - t0, min_conf)


def check_judged_store(store, concept: str) -> None:
    """Steering is judged by the shape judge: the store's `concept` must be shape with the judge's classes in the
    judge's order (class k of the store is scored as the judge's class k)."""
    from ..interpret.judge import CLASSES

    if concept not in store.label_names or list(store.label_names[concept]) != list(CLASSES):
        raise ValueError(f"steering is judged by the shape judge: the store needs the concept 'shape' with the "
                         f"classes {', '.join(CLASSES)} in that order; it has "
                         + (f"{concept}: {', '.join(store.label_names[concept])}" if concept in store.label_names
                            else f"{', '.join(store.label_names) or 'no labels'}"))


def judge_fn_of(judge) -> Callable[[np.ndarray], np.ndarray]:
    """images → probabilities through a loaded `interpret.judge.ShapeJudge`."""
    from ..interpret.judge import judge_probs

    return lambda images: judge_probs(judge, images)


@dataclass
class JudgedSteering:
    """A saved SAE with its feature store, backbone and the shape judge, loaded once for several steering
    measurements (`run`); the train rows' latents every measurement chooses its latents from are encoded once."""

    adapter: Any
    sae: Any
    store: Any
    concept: str
    judge_fn: Callable[[np.ndarray], np.ndarray]
    _train: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def open(cls, backbone_cfg, sae_dir, store_uri: str, concept: str = "shape", judge=None) -> JudgedSteering:
        """Only the procedural shapes have a judge: `concept` must be "shape" (default judge: the shipped one)."""
        from ..backbones import load_backbone
        from ..features.store import open_store
        from ..interpret.judge import load_judge
        from ..sae import read_sae

        store = open_store(store_uri)
        check_judged_store(store, concept)
        return cls(load_backbone(backbone_cfg), read_sae(sae_dir), store, concept,
                   judge_fn_of(judge if judge is not None else load_judge()))

    def run(self, exemplar: int = 0, **kw) -> SteeringEval:
        """`steering_eval_for_store`, or with `exemplar` > 0 `exemplar_steering` with that many latents per class."""
        from ..interpret.judge import CLASSES

        if self._train is None:
            self._train = train_latents(self.sae, self.store, self.concept)
        args = (self.adapter, self.sae, self.store, self.concept, self.judge_fn, CLASSES)
        if exemplar > 0:
            return exemplar_steering(*args, per_class=int(exemplar), train=self._train, **kw)
        return steering_eval_for_store(*args, train=self._train, **kw)


def steering_eval_for_sae(backbone_cfg, sae_dir, store_uri: str, concept: str = "shape", judge=None,
                          exemplar: int = 0, **kw) -> SteeringEval:
    """`JudgedSteering.run` for a saved SAE, its feature store and backbone, judged by the shape judge."""
    return JudgedSteering.open(backbone_cfg, sae_dir, store_uri, concept, judge).run(exemplar, **kw)
