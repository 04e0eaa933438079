"""Other tools' SAE layouts: ours out to SAELens and sparsify, theirs in (SAELens, sparsify, the SDXL-Turbo
"unbox" SAEs, SAeUron).

Every layout here is, at inference, one affine encoder, a selection and one affine decoder on the *raw*
input vectors. `RawSAE` is that common form:

    pre = x W_enc^T + b_enc               (x raw: no normalisation, no bias subtracted)
    z   = select(pre)                     (TopK per row then ReLU, or ReLU(pre) where pre > threshold)
    x̂   = z W_dec + b_dec

Ours normalises first (x_n = (x − μ) M, with M a whitening matrix or diag(1/scale)) and subtracts b_pre;
both are affine, so they fold exactly into the linear maps (`to_raw`):

    W_enc' = W_enc M^T          b_enc' = b_enc − (μ M + b_pre) W_enc^T
    W_dec' = W_dec M^-1         b_dec' = b_pre M^-1 + μ

(computed in float64, stored in float32). A layout that subtracts b_dec before encoding (SAELens with
apply_b_dec_to_input, sparsify, unbox, SAeUron) gets b_enc'' = b_enc' + b_dec' W_enc'^T so that
(x − b_dec') W_enc'^T + b_enc'' is the same pre-activation. Importing runs the same algebra backwards into
an SAE with normalize=none.

Files are read as safetensors and JSON; the unbox layout's `.pth`/`.pt` files load with
`torch.load(weights_only=True)` only, and a file that needs more is refused.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .base import SAELoadError, SparseAutoencoder
from .batchtopk import BatchTopKSAEConfig
from .io import build_sae
from .topk import TopKSAEConfig

EXPORT_FORMATS = ("saelens", "sparsify", "revelio")
IMPORT_FORMATS = ("saelens", "sparsify", "unbox", "saeuron")

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS, SPARSIFY_META = "cfg.json", "sae.safetensors", "revelio.json"
UNBOX_CFG, UNBOX_WEIGHTS, UNBOX_MEAN, UNBOX_STD = "config.json", "state_dict.pth", "mean.pt", "std.pt"
ORIGIN_FILE = "origin.json"  # written next to an imported SAE: where it came from, what was kept aside
EXTRA_STATS_FILE = "origin_stats.safetensors"  # statistics a layout ships that the SAE itself does not use
SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout written here (SAELens reads older ones differently)

# our config fields that describe where the inputs come from; carried through the other layouts' metadata
PROVENANCE_FIELDS = ("hook_point", "timestep", "backbone", "backbone_init", "dataset_fingerprint",
                     "store_config_hash", "input", "pooling", "latent_pooling")


class SAEFormatError(SAELoadError):
    """A file in another tool's layout is missing, malformed, or describes an SAE that cannot be represented."""


@dataclass(frozen=True)
class RawSAE:
    """An SAE as affine maps on raw inputs (see the module docstring). Tensors are float64 on the CPU."""

    W_enc: torch.Tensor  # (n_latents, d_in)
    b_enc: torch.Tensor  # (n_latents,)
    W_dec: torch.Tensor  # (n_latents, d_in)
    b_dec: torch.Tensor  # (d_in,)
    k: int
    variant: str = "topk"  # topk | batchtopk (threshold selection at inference)
    threshold: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)  # our config fields the layout carried (hook point…)

    @property
    def n_latents(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[1])

    def b_enc_after_b_dec(self) -> torch.Tensor:
        """The encoder bias of a layout that computes (x − b_dec) W_enc^T + b_enc (same pre-activation)."""
        return self.b_enc + self.W_enc @ self.b_dec


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise SAEFormatError(msg)


# --------------------------------------------------------------------------- ours ↔ raw
def normalization_maps(sae: SparseAutoencoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(μ, M, M⁻¹) in float64 with x_n = (x − μ) M and x = x_n M⁻¹ + μ, for every `normalize` option."""
    mean = sae.norm_mean.detach().double().cpu()
    if sae.config.normalize == "whiten":
        return mean, sae.norm_matrix.detach().double().cpu(), sae.norm_inverse.detach().double().cpu()
    scale = sae.norm_scale.detach().double().cpu()
    return mean, torch.diag(1.0 / scale), torch.diag(scale)


def to_raw(sae: SparseAutoencoder) -> RawSAE:
    """Fold the input normalisation and b_pre of one of our SAEs into its linear maps (exact algebra)."""
    cfg = sae.config
    if not cfg.relu:
        raise SAEFormatError("this SAE keeps negative activations (relu=false); SAELens and sparsify apply a "
                             "ReLU to the selected latents, so their codes would differ. Export needs relu=true.")
    mu, M, Minv = normalization_maps(sae)
    W_enc, b_enc = sae.W_enc.detach().double().cpu(), sae.b_enc.detach().double().cpu()
    W_dec, b_pre = sae.W_dec.detach().double().cpu(), sae.b_pre.detach().double().cpu()
    threshold = float(getattr(sae, "threshold", torch.tensor(0.0)))
    return RawSAE(W_enc=W_enc @ M.T, b_enc=b_enc - W_enc @ (mu @ M + b_pre), W_dec=W_dec @ Minv,
                  b_dec=b_pre @ Minv + mu, k=cfg.k, variant=cfg.variant, threshold=threshold,
                  meta={f: getattr(cfg, f) for f in PROVENANCE_FIELDS})


def from_raw(raw: RawSAE, **overrides: Any) -> SparseAutoencoder:
    """One of our SAEs (normalize=none, b_pre = the layout's b_dec) computing exactly what `raw` computes."""
    _need(raw.W_dec.shape == raw.W_enc.shape and raw.b_enc.shape == (raw.n_latents,)
          and raw.b_dec.shape == (raw.d_in,),
          f"inconsistent shapes: W_enc {tuple(raw.W_enc.shape)}, W_dec {tuple(raw.W_dec.shape)}, "
          f"b_enc {tuple(raw.b_enc.shape)}, b_dec {tuple(raw.b_dec.shape)}")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        _need(bool(torch.isfinite(getattr(raw, name)).all()), f"{name} holds NaN or infinite values")
    _need(1 <= raw.k <= raw.n_latents, f"k={raw.k} must be in [1, {raw.n_latents}] (the number of latents)")
    fields = {f: v for f, v in {**raw.meta, **overrides}.items() if f in PROVENANCE_FIELDS and v is not None}
    common = dict(d_in=raw.d_in, n_latents=raw.n_latents, k=raw.k, relu=True, normalize="none", **fields)
    try:
        config = (BatchTopKSAEConfig(threshold=float(raw.threshold), **common) if raw.variant == "batchtopk"
                  else TopKSAEConfig(**common))
    except (TypeError, ValueError) as e:
        raise SAEFormatError(str(e)) from e
    sae = build_sae(config)
    with torch.no_grad():
        sae.W_enc.copy_(raw.W_enc)
        sae.W_dec.copy_(raw.W_dec)
        sae.b_pre.copy_(raw.b_dec)
        # ours computes W_enc (x − b_pre) + b_enc: put back what subtracting b_pre takes away
        sae.b_enc.copy_(raw.b_enc_after_b_dec())
        if raw.variant == "batchtopk":
            sae.threshold.fill_(float(raw.threshold))
    sae.eval()
    return sae


# --------------------------------------------------------------------------- small file helpers
def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def _read_json(path: Path) -> dict[str, Any]:
    _need(path.is_file(), f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEFormatError(f"{path} is not valid JSON: {e}") from e
    _need(isinstance(data, dict), f"{path} must hold a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _need(path.is_file(), f"{path} is missing")
    try:
        return {k: v.double() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEFormatError(f"{path} could not be read as safetensors: {e}") from e


def _tensors(tensors: dict[str, torch.Tensor], path: Path, names: tuple[str, ...]) -> list[torch.Tensor]:
    missing = [n for n in names if n not in tensors]
    _need(not missing, f"{path} lacks tensor(s) {', '.join(missing)} (has {', '.join(sorted(tensors)) or 'none'})")
    return [tensors[n] for n in names]


def _write_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: _f32(v) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _write_json(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def safe_torch_load(path: Path) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only; anything else is refused."""
    _need(path.is_file(), f"{path} is missing")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SAEFormatError(f"refused {path}: it does not load with torch.load(weights_only=True) ({first}); "
                             "revelio never unpickles arbitrary objects — re-save it as plain tensors "
                             "(torch.save of a dict of tensors) or as safetensors") from e


# --------------------------------------------------------------------------- SAELens (v6 layout)
def _provenance_meta(raw: RawSAE, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {**{k: v for k, v in raw.meta.items() if v not in (None, "")}, **(extra or {})}


def write_saelens(sae: SparseAutoencoder, dest: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """`cfg.json` + `sae_weights.safetensors` that `sae_lens.SAE.load_from_disk` reads (architecture topk,
    or jumprelu with one threshold for every latent for a BatchTopK SAE — what SAELens saves its own as)."""
    raw = to_raw(sae)
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": raw.W_enc.T, "b_enc": raw.b_enc_after_b_dec(), "W_dec": raw.W_dec, "b_dec": raw.b_dec}
    arch = "topk"
    if raw.variant == "batchtopk":
        arch = "jumprelu"
        tensors["threshold"] = torch.full((raw.n_latents,), raw.threshold, dtype=torch.float64)
    prov = _provenance_meta(raw, metadata)
    meta = {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            "hook_name": prov.get("hook_point", ""), "model_name": prov.get("backbone", ""),
            "model_class_name": "diffusers", "prepend_bos": False, "context_size": None,
            "revelio": {**prov, "variant": raw.variant, "k": raw.k, "threshold": raw.threshold,
                        "folded_normalization": sae.config.normalize}}
    cfg = {"architecture": arch, "d_in": raw.d_in, "d_sae": raw.n_latents, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "k": raw.k, "metadata": meta}
    if arch == "topk":
        cfg["rescale_acts_by_decoder_norm"] = False
    _write_atomic(tensors, d / SAELENS_WEIGHTS)
    _write_json(cfg, d / SAELENS_CFG)
    return d


def read_saelens(src: str | os.PathLike) -> RawSAE:
    d = Path(src)
    cfg = _read_json(d / SAELENS_CFG)
    arch = cfg.get("architecture", "standard")
    norm = cfg.get("normalize_activations", "none")
    _need(norm == "none", f"{d / SAELENS_CFG}: normalize_activations={norm!r} is applied at run time by SAELens and "
                          "is not part of the weights; import takes 'none' (fold it first with SAELens' "
                          "fold_activation_norm_scaling_factor / fold_activation_whitening and save again)")
    _need(cfg.get("reshape_activations", "none") == "none",
          f"{d / SAELENS_CFG}: reshape_activations={cfg.get('reshape_activations')!r} (attention-head SAEs) is not supported")
    _need(not cfg.get("rescale_acts_by_decoder_norm", False),
          f"{d / SAELENS_CFG}: rescale_acts_by_decoder_norm=true selects by decoder-scaled activations; not supported")
    tensors = _read_safetensors(d / SAELENS_WEIGHTS)
    W_enc, b_enc, W_dec, b_dec = _tensors(tensors, d / SAELENS_WEIGHTS, ("W_enc", "b_enc", "W_dec", "b_dec"))
    _need(W_enc.ndim == 2 and W_enc.shape == W_dec.T.shape,
          f"{d / SAELENS_WEIGHTS}: W_enc {tuple(W_enc.shape)} and W_dec {tuple(W_dec.shape)} are not [d_in, d_sae] "
          "and [d_sae, d_in]")
    d_in, d_sae = int(W_enc.shape[0]), int(W_enc.shape[1])
    _need((cfg.get("d_in"), cfg.get("d_sae")) == (d_in, d_sae),
          f"{d}: cfg.json says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')} but the weights are {d_in} × {d_sae}")
    meta_all = cfg.get("metadata") or {}
    ours = dict(meta_all.get("revelio") or {})
    if not ours.get("hook_point") and (meta_all.get("hook_name") or cfg.get("hook_name")):
        ours["hook_point"] = meta_all.get("hook_name") or cfg.get("hook_name")
    if not ours.get("backbone") and meta_all.get("model_name"):
        ours["backbone"] = meta_all["model_name"]
    # SAELens subtracts b_dec from the input when apply_b_dec_to_input is set
    b_raw = b_enc - W_enc.T @ b_dec if cfg.get("apply_b_dec_to_input", True) else b_enc
    common = dict(W_enc=W_enc.T.contiguous(), b_enc=b_raw, W_dec=W_dec, b_dec=b_dec,
                  meta={k: v for k, v in ours.items() if k in PROVENANCE_FIELDS})
    if arch == "topk":
        _need(isinstance(cfg.get("k"), int), f"{d / SAELENS_CFG}: a topk SAE needs an integer k")
        return RawSAE(k=int(cfg["k"]), **common)
    if arch == "jumprelu":
        (thr,) = _tensors(tensors, d / SAELENS_WEIGHTS, ("threshold",))
        _need(thr.numel() == d_sae and bool((thr == thr.flatten()[0]).all()),
              f"{d}: this JumpReLU SAE has a threshold per latent; revelio represents one threshold for all latents "
              "(BatchTopK) only")
        k = cfg.get("k", ours.get("k"))
        _need(isinstance(k, int), f"{d / SAELENS_CFG}: a jumprelu SAE imports as BatchTopK and needs its training k "
                                  "(cfg.json `k` or metadata.revelio.k)")
        return RawSAE(k=int(k), variant="batchtopk", threshold=float(thr.flatten()[0]), **common)
    raise SAEFormatError(f"{d / SAELENS_CFG}: architecture {arch!r} is not a k-sparse SAE; import takes topk, or "
                         "jumprelu with one threshold for all latents")


# --------------------------------------------------------------------------- sparsify / SAeUron
def sparsify_dirname(hook_point: str) -> str:
    """The folder of one hook point (sparsify keeps one folder per hook point, named after it)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", hook_point or "sae")
    return name if name not in ("", ".", "..") else "sae"


def write_sparsify(sae: SparseAutoencoder, dest: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """`<dest>/<hook point>/cfg.json` + `sae.safetensors` that `sparsify.SparseCoder.load_from_disk` reads."""
    raw = to_raw(sae)
    if raw.variant != "topk":
        raise SAEFormatError("sparsify's SparseCoder keeps exactly k latents per row; this BatchTopK SAE selects by "
                             "a threshold at inference, so sparsify would compute other codes. Export it with "
                             "--format saelens (a JumpReLU SAE with the same threshold) instead.")
    d = Path(dest) / sparsify_dirname(str(raw.meta.get("hook_point") or ""))
    d.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": raw.W_enc, "encoder.bias": raw.b_enc_after_b_dec(), "W_dec": raw.W_dec,
               "b_dec": raw.b_dec}
    expansion = raw.n_latents // raw.d_in if raw.n_latents % raw.d_in == 0 else 0
    cfg = {"activation": "topk", "expansion_factor": expansion, "normalize_decoder": False,
           "num_latents": raw.n_latents, "k": raw.k, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": raw.d_in}
    _write_atomic(tensors, d / SPARSIFY_WEIGHTS)
    _write_json(cfg, d / SPARSIFY_CFG)
    # sparsify's config has no room for provenance (it warns about unknown fields): a file beside it
    _write_json({**_provenance_meta(raw, metadata), "folded_normalization": sae.config.normalize}, d / SPARSIFY_META)
    return d


def _sparsify_dir(src: Path) -> Path:
    """The hook-point folder: `src` itself when it has cfg.json, else its one sub-folder that has."""
    if (src / SPARSIFY_CFG).is_file():
        return src
    subs = sorted(p for p in src.iterdir() if (p / SPARSIFY_CFG).is_file()) if src.is_dir() else []
    _need(len(subs) == 1, f"{src}: expected a folder with {SPARSIFY_CFG} and {SPARSIFY_WEIGHTS}, or a folder with one "
                          f"such hook-point folder; found {len(subs)} ({', '.join(p.name for p in subs[:5])}) — "
                          "name the hook-point folder itself")
    return subs[0]


def read_sparsify(src: str | os.PathLike) -> RawSAE:
    """sparsify's and SAeUron's layout: encoder.weight [n, d], encoder.bias, W_dec [n, d], b_dec; the encoder
    reads x − b_dec, ReLU, then TopK per row (SAeUron's loader also switches its BatchTopK to per-row TopK)."""
    d = _sparsify_dir(Path(src))
    cfg = _read_json(d / SPARSIFY_CFG)
    _need(cfg.get("activation", "topk") == "topk",
          f"{d / SPARSIFY_CFG}: activation {cfg.get('activation')!r} is not supported (topk only)")
    for flag in ("transcode", "skip_connection", "input_unit_norm"):
        _need(not cfg.get(flag, False), f"{d / SPARSIFY_CFG}: {flag}=true is not a plain autoencoder on raw inputs; "
                                        "not supported")
    tensors = _read_safetensors(d / SPARSIFY_WEIGHTS)
    W_enc, b_enc, W_dec, b_dec = _tensors(tensors, d / SPARSIFY_WEIGHTS, ("encoder.weight", "encoder.bias", "W_dec",
                                                                        "b_dec"))
    _need(W_enc.ndim == 2 and W_enc.shape == W_dec.shape,
          f"{d / SPARSIFY_WEIGHTS}: encoder.weight {tuple(W_enc.shape)} and W_dec {tuple(W_dec.shape)} differ")
    _need(cfg.get("d_in") in (None, int(W_enc.shape[1])),
          f"{d}: cfg.json says d_in={cfg.get('d_in')} but the weights have {int(W_enc.shape[1])} inputs")
    _need(isinstance(cfg.get("k"), int), f"{d / SPARSIFY_CFG}: needs an integer k")
    meta = _read_json(d / SPARSIFY_META) if (d / SPARSIFY_META).is_file() else {}
    meta.setdefault("hook_point", d.name)  # both tools name a hook point's folder after it
    return RawSAE(W_enc=W_enc, b_enc=b_enc - W_enc @ b_dec, W_dec=W_dec, b_dec=b_dec, k=int(cfg["k"]),
                  meta={k: v for k, v in meta.items() if k in PROVENANCE_FIELDS})


# --------------------------------------------------------------------------- SDXL-Turbo "unbox" SAEs
_UNBOX_DIR = re.compile(r"^(?:unet\.)?(?P<hook>[A-Za-z_][\w.]*?)_k\d+_hidden\d+")


def unbox_hook_point(path: Path) -> str:
    """The hook point in the published checkpoint folder names (`unet.down_blocks.2.attentions.1_k10_…/final`),
    in capture mode `update`: these SAEs read what the block adds to its input (output − input)."""
    for part in (path.name, path.parent.name):
        if m := _UNBOX_DIR.match(part):
            return f"{m.group('hook')}:update"
    return ""


def read_unbox(src: str | os.PathLike) -> tuple[RawSAE, dict[str, torch.Tensor]]:
    """config.json (n_dirs_local, d_model, k, auxk), state_dict.pth ({"state_dict": {encoder.weight [n, d],
    decoder.weight [d, n], pre_bias, latent_bias, …}}); latents = relu(topk(encoder(x − pre_bias) + latent_bias)).
    Also returns mean.pt / std.pt when present (kept aside: the published code uses them as per-latent steering
    strengths, the encoder does not read them)."""
    d = Path(src)
    cfg = _read_json(d / UNBOX_CFG)
    for key in ("n_dirs_local", "d_model", "k"):
        _need(isinstance(cfg.get(key), int), f"{d / UNBOX_CFG}: needs an integer {key}")
    ckpt = safe_torch_load(d / UNBOX_WEIGHTS)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    _need(isinstance(state, dict), f"{d / UNBOX_WEIGHTS}: expected a dict of tensors (optionally under 'state_dict')")
    tensors = {k: v.double() for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    W_enc, W_dec_t, pre_bias, latent_bias = _tensors(tensors, d / UNBOX_WEIGHTS, (
        "encoder.weight", "decoder.weight", "pre_bias", "latent_bias"))
    n, dm = cfg["n_dirs_local"], cfg["d_model"]
    _need(tuple(W_enc.shape) == (n, dm) and tuple(W_dec_t.shape) == (dm, n),
          f"{d}: config.json says n_dirs_local={n}, d_model={dm} but encoder.weight is {tuple(W_enc.shape)} and "
          f"decoder.weight {tuple(W_dec_t.shape)}")
    stats: dict[str, torch.Tensor] = {}
    for name in (UNBOX_MEAN, UNBOX_STD):
        if (d / name).is_file():
            t = safe_torch_load(d / name)
            _need(torch.is_tensor(t), f"{d / name}: expected one tensor, got {type(t).__name__}")
            stats[name.removesuffix(".pt")] = t.detach().float()
    raw = RawSAE(W_enc=W_enc, b_enc=latent_bias - W_enc @ pre_bias, W_dec=W_dec_t.T.contiguous(), b_dec=pre_bias,
                 k=int(cfg["k"]), meta={"hook_point": unbox_hook_point(d)})
    return raw, stats


def read_layout(src: str | os.PathLike, fmt: str) -> tuple[RawSAE, dict[str, torch.Tensor], dict[str, Any]]:
    """(the SAE, statistics kept aside, a description of the origin) of a directory in layout `fmt`."""
    d = Path(src)
    _need(d.is_dir(), f"{d} is not a directory (import reads a folder in the {fmt} layout)")
    stats: dict[str, torch.Tensor] = {}
    if fmt == "saelens":
        raw = read_saelens(d)
        origin = {"selection": "jumprelu (one threshold)" if raw.variant == "batchtopk" else "topk"}
    elif fmt in ("sparsify", "saeuron"):
        raw = read_sparsify(d)
        cfg = _read_json(_sparsify_dir(d) / SPARSIFY_CFG)
        origin = {"selection": "topk per row"}
        if fmt == "saeuron" or cfg.get("batch_topk") or cfg.get("sample_topk"):
            origin["trained_with"] = ("batch_topk" if cfg.get("batch_topk") else
                                      "sample_topk" if cfg.get("sample_topk") else "topk")
            origin["note"] = ("trained with a batch-level TopK; like the published loader, inference keeps the "
                              "k largest latents of each row")
    elif fmt == "unbox":
        raw, stats = read_unbox(d)
        cfg = _read_json(d / UNBOX_CFG)
        origin = {"selection": "topk per row", "capture": "update",
                  "note": "reads the update of its block (output − input), per spatial position",
                  **{k: cfg[k] for k in ("auxk", "dead_steps_threshold") if k in cfg},
                  **({"kept_aside": {k: list(v.shape) for k, v in stats.items()}} if stats else {})}
    else:
        raise SAEFormatError(f"unknown import format {fmt!r}; choose one of {', '.join(IMPORT_FORMATS)}")
    return raw, stats, {"format": fmt, **origin}


def import_layout(src: str | os.PathLike, fmt: str, dest: str | os.PathLike, **overrides: Any) -> SparseAutoencoder:
    """Convert a directory in layout `fmt` into one of ours saved at `dest` (with origin.json beside it)."""
    raw, stats, origin = read_layout(src, fmt)
    sae = from_raw(raw, **overrides)
    out = Path(dest)
    sae.save(out)
    if stats:
        _write_atomic(stats, out / EXTRA_STATS_FILE)
    _write_json({**origin, "source": str(src)}, out / ORIGIN_FILE)
    return sae


def export_layout(sae: SparseAutoencoder, fmt: str, dest: str | os.PathLike,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Write `sae` in layout `fmt` under `dest`; returns the folder that holds the weights."""
    if fmt == "saelens":
        return write_saelens(sae, dest, metadata)
    if fmt == "sparsify":
        return write_sparsify(sae, dest, metadata)
    if fmt == "revelio":
        return sae.save(dest)
    raise SAEFormatError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
