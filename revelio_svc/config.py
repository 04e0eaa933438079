"""Typed configuration: YAML files → frozen dataclasses, with `--set a.b=c` overrides.

Every option is validated where it is declared (`__post_init__`), and unknown keys or
invalid values fail with a message naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _at_least(name: str, bound: float, **fields: float) -> None:
    """Each of `fields` (name=value) must be >= bound; the message names `<section name>.<field>`."""
    for key, value in fields.items():
        _check(value >= bound, f"{name}.{key}", f"must be {'> 0' if bound == 1 else f'>= {bound:g}'}, got {value}")


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DataConfig:
    source: Literal["shapes", "digits", "hf", "imagefolder"] = "shapes"
    id: str = ""  # Hugging Face dataset id (source=hf) or folder path (source=imagefolder)
    split: str = "train"  # split of a Hugging Face dataset / imagefolder
    image_column: str = "image"
    label_column: str = "label"
    caption_column: str = ""  # needed by prompt_mode=caption
    n_images: int = 2000  # 0 = every image of the split
    image_size: int = 32
    seed: int = 0  # seeds procedural data and the train/test assignment
    test_fraction: float = 0.25
    max_pixels: int = 50_000_000  # larger images are skipped, not decoded (decompression bombs)

    def __post_init__(self) -> None:
        _check(self.n_images >= 0, "data.n_images", f"must be >= 0, got {self.n_images}")
        _check(8 <= self.image_size <= 4096, "data.image_size", f"must be in [8, 4096], got {self.image_size}")
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        _check(self.max_pixels > 0, "data.max_pixels", "must be > 0")
        # a generated dataset has no id: one set here would be ignored while naming the runs
        _check(not self.id or self.source in ("hf", "imagefolder"), "data.id",
               f"is only read when data.source is hf or imagefolder, but data.source={self.source!r} "
               f"(which ignores it); remove data.id={self.id!r} or set data.source")
        if self.source in ("hf", "imagefolder"):
            _check(bool(self.id), "data.id", f"is required when data.source={self.source!r}"
                   + (" (a Hugging Face dataset id such as 'timm/oxford-iiit-pet')" if self.source == "hf"
                      else " (a folder with one sub-folder per class)"))


@dataclass(frozen=True)
class BackboneConfig:
    kind: Literal["unet2d", "sd", "sdxl", "dit"] = "unet2d"
    # diffusers model id, local directory, or a model shipped with the project ("builtin:shapes-unet")
    id: str = "builtin:shapes-unet"
    revision: str = ""
    init: Literal["pretrained", "random"] = "pretrained"  # random = same architecture, fresh weights (control)
    init_seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    prompt_mode: Literal["empty", "generic", "class", "caption"] = "empty"
    generic_prompt: str = "a photo"
    class_template: str = "a photo of a {}"
    resolution: int = 0  # 0 = the model's native resolution

    def __post_init__(self) -> None:
        _check(bool(self.id), "backbone.id", "must name a model id, a local directory or builtin:shapes-unet")
        _check(self.resolution >= 0, "backbone.resolution", "must be >= 0")
        _check("{}" in self.class_template, "backbone.class_template", "must contain '{}' for the class name")


@dataclass(frozen=True)
class ExtractConfig:
    hook_points: tuple[str, ...] = ("down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")
    timesteps: tuple[int, ...] = (10, 100, 250)
    pooling: tuple[Literal["mean", "max", "tokens"], ...] = ("mean", "max", "tokens")
    # token maps are large: keep them only at these hook points / timesteps (empty = everywhere)
    token_hook_points: tuple[str, ...] = ("up_blocks.1",)
    token_timesteps: tuple[int, ...] = (10,)
    dtype: Literal["float32", "float16"] = "float16"
    batch_size: int = 100
    shard_size: int = 500  # dataset indices per shard
    noise_seed: int = 0
    store: str = ""  # "" = features/<config hash> under the project's output dir; or a path / s3:// URI
    num_threads: int = 0  # 0 = torch default

    def poolings_for(self, hook_point: str, timestep: int) -> tuple[str, ...]:
        keep_tokens = ((not self.token_hook_points or hook_point in self.token_hook_points)
                       and (not self.token_timesteps or timestep in self.token_timesteps))
        return tuple(p for p in self.pooling if p != "tokens" or keep_tokens)

    def __post_init__(self) -> None:
        _check(len(self.hook_points) > 0, "extract.hook_points", "needs at least one hook point")
        _check(len(set(self.hook_points)) == len(self.hook_points), "extract.hook_points", "has duplicates")
        _check(len(self.timesteps) > 0, "extract.timesteps", "needs at least one timestep")
        _check(len(set(self.timesteps)) == len(self.timesteps), "extract.timesteps", "has duplicates")
        for t in self.timesteps:
            _check(0 <= t <= 999, "extract.timesteps", f"each must be in [0, 999], got {t}")
        _check(len(self.pooling) > 0, "extract.pooling", "needs at least one of mean, max, tokens")
        for h in self.token_hook_points:
            _check(h in self.hook_points, "extract.token_hook_points",
                   f"{h!r} is not among extract.hook_points ({', '.join(self.hook_points)})")
        for t in self.token_timesteps:
            _check(t in self.timesteps, "extract.token_timesteps",
                   f"{t} is not among extract.timesteps ({', '.join(map(str, self.timesteps))})")
        _check(self.batch_size > 0, "extract.batch_size", "must be > 0")
        _check(self.shard_size > 0, "extract.shard_size", "must be > 0")


@dataclass(frozen=True)
class PretrainConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 128, 256)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_mid_block: bool = True
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    # after the warm-up: "constant" keeps lr; "cosine" anneals it to min_lr at the last step (a lower
    # learning rate late in training gave sharper samples: model card)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 0.0
    # how the noise-prediction error of each timestep counts: "uniform" (plain ε-MSE) or "min_snr", which
    # scales a timestep by min(SNR, snr_gamma) / SNR (Hang et al. 2023): low-noise steps, whose ε-error
    # dominates the plain loss, stop crowding out the high-noise steps where a sample's shape is decided
    loss_weighting: Literal["uniform", "min_snr"] = "uniform"
    snr_gamma: float = 5.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99  # 0 = no EMA
    hflip: bool = True
    seed: int = 1000  # the training images are drawn from this shapes seed, disjoint from evaluation data
    num_threads: int = 0
    checkpoint_every: int = 250
    sample_every: int = 500
    output: str = "outputs/pretrain"
    save_dtype: Literal["float32", "float16"] = "float16"
    # start from these weights (a backbone directory or "builtin:shapes-unet") instead of a fresh init;
    # the optimiser starts fresh, with its warm-up
    init_from: str = ""

    def __post_init__(self) -> None:
        _check(len(self.block_out_channels) >= 2, "pretrain.block_out_channels", "needs at least two levels")
        for c in self.block_out_channels:
            _check(c % self.norm_num_groups == 0, "pretrain.block_out_channels",
                   f"each must be divisible by norm_num_groups={self.norm_num_groups}, got {c}")
        _check(self.steps > 0, "pretrain.steps", "must be > 0")
        _check(self.batch_size > 0, "pretrain.batch_size", "must be > 0")
        _check(self.lr > 0, "pretrain.lr", "must be > 0")
        _check(self.lr_schedule in ("constant", "cosine"), "pretrain.lr_schedule",
               f"must be constant or cosine, got {self.lr_schedule!r}")
        _check(0 <= self.min_lr <= self.lr, "pretrain.min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        _check(self.loss_weighting in ("uniform", "min_snr"), "pretrain.loss_weighting",
               f"must be uniform or min_snr, got {self.loss_weighting!r}")
        _check(self.snr_gamma > 0, "pretrain.snr_gamma", f"must be > 0, got {self.snr_gamma}")
        _check(0 <= self.ema_decay < 1, "pretrain.ema_decay", "must be in [0, 1)")
        _check(self.checkpoint_every > 0, "pretrain.checkpoint_every", "must be > 0")


@dataclass(frozen=True)
class SAEConfig:
    variant: Literal["topk", "batchtopk"] = "topk"
    hook_point: str = "up_blocks.1"
    timestep: int = 10
    input: Literal["pooled", "tokens"] = "tokens"
    pooling: Literal["mean", "max"] = "mean"  # which pooled features (input=pooled)
    expansion: int = 8
    k: int = 12
    relu: bool = True
    normalize: Literal["none", "standard", "scalar", "whiten"] = "whiten"
    whiten_power: float = 0.7  # normalize=whiten: principal variances λ → λ^(1 − power); 1 = full whitening
    lr: float = 0.0  # 0 = scaled with the number of latents
    warmup_steps: int = 100
    steps: int = 2000
    batch_size: int = 2048
    auxk_coef: float = 1.0 / 32
    k_aux: int = 0  # 0 = d_in // 2
    dead_window: int = 400_000  # a latent is dead when it has not fired in this many samples
    latent_pooling: str = "top8"  # token latents → image vector: max | mean | top<q> (mean of the q largest)
    store: str = ""  # feature store to train on; "" = the store `extract` writes for this config
    output: str = ""  # "" = <output_dir>/sae/<config hash>
    seed: int = 0
    checkpoint_every: int = 500
    eval_every: int = 250
    heldout_fraction: float = 0.1  # used only when the store has no test rows: train images held out by hash
    # which rows evaluate (and interpret while training): the store's test rows, or, for tuning, a validation
    # share of the train images (validation_fraction, by hash of the dataset index; test rows unread)
    eval_rows: Literal["test", "validation"] = "test"
    validation_fraction: float = 0.2
    num_threads: int = 0

    def __post_init__(self) -> None:
        _at_least("sae", 1, expansion=self.expansion, k=self.k, steps=self.steps, batch_size=self.batch_size,
                  checkpoint_every=self.checkpoint_every, eval_every=self.eval_every, dead_window=self.dead_window)
        _at_least("sae", 0, lr=self.lr, auxk_coef=self.auxk_coef, warmup_steps=self.warmup_steps,
                  k_aux=self.k_aux, num_threads=self.num_threads)
        _check(0 < self.whiten_power <= 1, "sae.whiten_power", "must be in (0, 1]")
        _check(0 < self.heldout_fraction < 1, "sae.heldout_fraction", "must be in (0, 1)")
        _check(0 < self.validation_fraction < 1, "sae.validation_fraction", "must be in (0, 1)")
        _check(re.fullmatch(r"max|mean|top[1-9][0-9]*", self.latent_pooling) is not None, "sae.latent_pooling",
               f"must be max, mean or top<q> (e.g. top8), got {self.latent_pooling!r}")


@dataclass(frozen=True)
class ProbeConfig:
    kind: Literal["linear", "diffc"] = "linear"
    input: Literal["features", "sae"] = "sae"
    hook_point: str = "up_blocks.1"
    timestep: int = 10
    pooling: Literal["mean", "max"] = "mean"
    concept: str = "shape"  # which label to predict (datasets with one label: "label")
    C: float = 1.0  # inverse regularisation strength of an L2 linear probe (and of the L2 probes other stages fit)
    # the same for an L1 probe, stated for a fit on every train row (a few-shot L1 fit scales it by the ratio of
    # rows: probe.linear.l1_C)
    C_l1: float = 0.5
    # linear: "l1" makes each class rest on few latents by itself (then latents_per_class must be 0 or -1).
    # Chosen on a validation split of the train rows of the default store (test rows unread): L1 at C = 0.5 kept
    # accuracy within 1 point of L2 at C = 1 (0.946 vs 0.953), used 109 of 1024 latents per class and raised
    # explanation precision from 0.557 to 0.654 (docs/findings.md)
    penalty: Literal["l2", "l1"] = "l1"
    max_iter: int = 1000
    # linear: m > 0 = each class reads at most m inputs (probe/sparse.py); 0 = all; -1 = the fewest m within 2
    # points of the dense probe on a validation split of the train rows (all when none is)
    latents_per_class: int = -1
    shots: tuple[str, ...] = ("1", "5", "10", "all")
    seeds: int = 3
    # Diff-C
    width: int = 64
    depth: int = 3  # Diff-C stride-2 blocks
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    batch_size: int = 64
    controls: bool = True
    # beside the probe: what a linear probe reads of the concept from the raw features at its hook point, with
    # the pooling and C chosen by cross-validation on the train rows (probe/select.py), scored on the test rows
    raw_probe: bool = True
    store: str = ""  # "" = the store `extract` writes for this config
    sae: str = ""  # SAE directory or registry URI for input=sae; "" = the SAE `train-sae` writes for this config

    @property
    def fit_C(self) -> float:
        """The C of the probe this config fits: C_l1 for an L1 probe, C for an L2 one."""
        return self.C_l1 if self.penalty == "l1" else self.C

    def __post_init__(self) -> None:
        _check(self.C > 0, "probe.C", "must be > 0")
        _check(self.C_l1 > 0, "probe.C_l1", "must be > 0")
        for s in self.shots:
            _check(s == "all" or (s.isdigit() and int(s) > 0), "probe.shots",
                   f"each must be a positive integer or 'all', got {s!r}")
        _at_least("probe", 1, seeds=self.seeds, width=self.width)
        _at_least("probe", -1, latents_per_class=self.latents_per_class)
        _check(self.penalty == "l2" or self.latents_per_class <= 0, "probe.penalty",
               f"l1 already makes the probe sparse; set probe.latents_per_class to 0, or probe.penalty=l2 to keep "
               f"at most m latents per class (got latents_per_class={self.latents_per_class})")
        _at_least("probe", 0, depth=self.depth)


@dataclass(frozen=True)
class TuneConfig:
    target: Literal["sae", "probe"] = "sae"
    n_trials: int = 4
    metric: str = "fvu"
    direction: Literal["minimize", "maximize"] = "minimize"
    storage: str = ""  # "" = sqlite:///optuna.db; any Optuna RDB URL
    study_name: str = "revelio"
    pruner: Literal["median", "none"] = "median"
    timeout_s: float = 0.0
    search_space: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.n_trials >= 1, "tune.n_trials", "must be >= 1")


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    registry_uri: str = ""
    experiment: str = "revelio"
    artifact_location: str = ""
    system_metrics: bool = False
    register: bool = True


@dataclass(frozen=True)
class RegistryConfig:
    # a new classifier (with its SAE and probe) becomes champion only if it beats the champion on the same
    # held-out images with an exact McNemar p-value below this
    promotion_alpha: float = 0.05

    def __post_init__(self) -> None:
        _check(0 < self.promotion_alpha <= 1, "registry.promotion_alpha", "must be in (0, 1]")


@dataclass(frozen=True)
class DemoConfig:
    model: str = "revelio-classifier@champion"  # registry URI or a directory written by `revelio registry pull`
    host: str = "127.0.0.1"
    port: int = 7860
    max_pixels: int = 16_000_000  # larger uploads are refused before decoding
    concurrency: int = 2  # requests served at once; the rest queue
    allow_register: bool = False  # the few-shot tab's "Register in MLflow": off unless asked for (anyone on the demo could register)
    browse_images: int = 2000  # dataset images behind the atlas and latent pages (a seeded sample; 0 = all)

    def __post_init__(self) -> None:
        _check(bool(self.model), "demo.model", "must name a registry URI or a directory")
        _check(0 < self.port < 65536, "demo.port", f"must be a TCP port, got {self.port}")
        _check(self.max_pixels > 0, "demo.max_pixels", "must be > 0")
        _check(self.concurrency > 0, "demo.concurrency", "must be > 0")
        _check(self.browse_images >= 0, "demo.browse_images", "must be >= 0 (0 = every image)")


@dataclass(frozen=True)
class PipelineConfig:
    sweep: bool = False  # run the sweep stage in `revelio run`
    evaluate: bool = False  # run the evaluate stage (`revelio eval`) in `revelio run`
    top_images: int = 16  # top-activating dataset images kept per latent in the classifier

    def __post_init__(self) -> None:
        _check(self.top_images >= 1, "pipeline.top_images", "must be >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    """`revelio eval` (and the `evaluate` step of `revelio run`): an SAE inside its model, and its latents."""

    sae: str = ""  # SAE directory or registry URI; "" = the SAE `train-sae` writes for this config
    store: str = ""  # "" = the store the SAE was trained on for this config (sae.store, else extract's)
    n_images: int = 256  # held-out (test) images for the denoising loss
    mean_images: int = 64  # train images whose mean hook-point map is the mean-ablation floor
    timesteps: tuple[int, ...] = (100, 250)  # besides the SAE's own timestep
    batch_size: int = 64
    samples: int = 4  # DDIM samples (seeds 0…n-1) with and without the SAE spliced; 0 = none
    sample_steps: int = 10
    spurious: str = "background"  # SCR: the concept that is made to correlate with probe.concept
    correlation: float = 0.95
    scr_draws: int = 6  # (class pair, spurious pair) draws SCR averages over
    ablate: tuple[int, ...] = (2, 5, 10, 20, 50)  # latents ablated (SCR and TPP)
    train_rows: int = 1000  # train rows for the probes of SCR and TPP (every test row is scored)
    seed: int = 0
    # the sparsity frontier (`revelio eval-frontier`): short SAEs at each k, against the controls
    frontier_ks: tuple[int, ...] = (4, 8, 12, 16, 32, 64)
    frontier_steps: int = 500

    def __post_init__(self) -> None:
        _at_least("evaluate", 1, n_images=self.n_images, mean_images=self.mean_images,
                  batch_size=self.batch_size, sample_steps=self.sample_steps, scr_draws=self.scr_draws,
                  train_rows=self.train_rows, frontier_steps=self.frontier_steps)
        _at_least("evaluate", 0, samples=self.samples)
        _check(0.5 < self.correlation < 1, "evaluate.correlation", f"must be in (0.5, 1), got {self.correlation}")
        for t in self.timesteps:
            _check(0 <= t <= 999, "evaluate.timesteps", f"each must be in [0, 999], got {t}")
        for n in self.ablate:
            _check(n >= 1, "evaluate.ablate", f"each must be >= 1, got {n}")
        _check(len(self.frontier_ks) > 0 and all(k >= 1 for k in self.frontier_ks), "evaluate.frontier_ks",
               "needs at least one k, each >= 1")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    output_dir: str = "outputs"
    force: bool = False

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# --------------------------------------------------------------------------- conversion
def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, str) and "," in value:
            # `10,100` is the same list as `[10,100]`, in --set as in --section.key options
            value = [_parse_scalar(v.strip()) for v in value.strip().strip("[]").split(",") if v.strip()]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_t = args[0] if args else Any
        return tuple(_coerce(v, item_t, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; known keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # __post_init__ of a nested section names the key without the parent prefix
        raise e


def _parse_scalar(text: str) -> Any:
    """Values in --set are YAML scalars or flow lists: 10, 1e-3, true, [10, 100], up_blocks.1."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. sae.k=32)")
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        node = out
        cls: Any = Config
        for i, p in enumerate(parts):
            hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
            if dataclasses.is_dataclass(cls) and p not in hints:
                known = ", ".join(sorted(hints))
                where = ".".join(parts[:i]) or "the top level"
                raise ConfigError(f"unknown key {key}: {where} has no {p!r}; known keys: {known}")
            if i == len(parts) - 1:
                node[p] = _parse_scalar(raw)
            else:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {key}: {'.'.join(parts[:i + 1])} is not a section")
                cls = hints.get(p, dict)
    return out


def _read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict | None):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults) and apply `key=value` overrides."""
    data = _read_yaml_mapping(path) if path else {}
    return from_dict(Config, apply_overrides(data, list(overrides)))


def replace(cfg: Any, **changes: Any) -> Any:
    """dataclasses.replace for nested sections: replace(cfg, **{"sae.k": 16})."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for k, v in changes.items():
        head, _, rest = k.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = v
        else:
            flat[k] = v
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)
