"""Small SAEs written in other tools' published layouts, and those tools' inference formulas, for the tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def write_unbox(folder: Path, d: int, n: int, k: int, stats: bool = True) -> dict[str, torch.Tensor]:
    """The SDXL-Turbo "unbox" layout: config.json, torch.save({"state_dict": …}) as state_dict.pth, and the
    per-latent mean.pt / std.pt the published code ships beside it."""
    folder.mkdir(parents=True)
    sd = {"encoder.weight": rand(n, d, seed=1), "decoder.weight": rand(d, n, seed=2),
          "pre_bias": rand(d, seed=3), "latent_bias": 0.1 * rand(n, seed=4),
          "stats_last_nonzero": torch.zeros(n, dtype=torch.long)}
    (folder / "config.json").write_text(json.dumps({"n_dirs_local": n, "d_model": d, "k": k, "auxk": 256,
                                                    "dead_steps_threshold": 2441}))
    torch.save({"state_dict": sd}, folder / "state_dict.pth")
    if stats:
        torch.save(torch.rand(n), folder / "mean.pt")
        torch.save(torch.rand(n), folder / "std.pt")
    return sd


def reference_unbox(sd, x, k):
    """The published unbox encoder: latents = relu(topk(encoder(x − pre_bias) + latent_bias))."""
    pre = (x - sd["pre_bias"]) @ sd["encoder.weight"].T + sd["latent_bias"]
    vals, idx = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
    return z, z @ sd["decoder.weight"].T + sd["pre_bias"]


def write_sparsify_style(folder: Path, d: int, n: int, k: int, *, saeuron: bool = True,
                         input_unit_norm: bool = False) -> dict[str, torch.Tensor]:
    """One hook-point folder of sparsify (SparseCoderConfig fields + d_in) or SAeUron (its SaeConfig fields,
    BatchTopK-trained): cfg.json and sae.safetensors."""
    folder.mkdir(parents=True)
    t = {"encoder.weight": rand(n, d, seed=11), "encoder.bias": 0.1 * rand(n, seed=12),
         "W_dec": rand(n, d, seed=13), "b_dec": rand(d, seed=14)}
    save_file(t, str(folder / "sae.safetensors"))
    if saeuron:
        cfg = {"expansion_factor": n // d, "normalize_decoder": True, "num_latents": 0, "k": k, "batch_topk": True,
               "sample_topk": False, "input_unit_norm": input_unit_norm, "multi_topk": False, "d_in": d}
    else:
        cfg = {"activation": "topk", "expansion_factor": n // d, "normalize_decoder": True, "num_latents": n, "k": k,
               "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


def reference_sparsify(t, x, k):
    """sparsify / SAeUron at inference: relu(encoder(x − b_dec)), TopK per row; x̂ = codes W_dec + b_dec."""
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, idx, vals)
    return z, z @ t["W_dec"] + t["b_dec"]


def write_saelens_style(folder: Path, d: int, n: int, k: int, hook_name: str) -> dict[str, torch.Tensor]:
    """A SAELens v6 TopK SAE as SAELens saves one: cfg.json (with metadata) and sae_weights.safetensors."""
    folder.mkdir(parents=True)
    t = {"W_enc": rand(d, n, seed=21), "b_enc": 0.1 * rand(n, seed=22), "W_dec": rand(n, d, seed=23),
         "b_dec": rand(d, seed=24)}
    save_file(t, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": d, "d_sae": n, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none", "k": k,
        "rescale_acts_by_decoder_norm": False,
        "metadata": {"sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0", "hook_name": hook_name,
                     "model_name": "tiny-unet"}}))
    return t


def reference_saelens(t, x, k):
    """SAELens TopKSAE: hidden_pre = (x − b_dec) W_enc + b_enc; TopK then ReLU; x̂ = z W_dec + b_dec."""
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    vals, idx = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
    return z, z @ t["W_dec"] + t["b_dec"]
