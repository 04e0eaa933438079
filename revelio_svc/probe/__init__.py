"""Probes that validate features and SAE latents: linear probe, Diff-C, few-shot protocol, controls, sweep.

A saved probe is a directory with `probe.json` (format, kind, classes, concept, input, hook point,
timestep, C, SAE reference) and safetensors weights; nothing is ever pickled.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .linear import LinearProbe, ProbeFormatError, fit_linear_probe, read_meta


def load_probe(directory: str | Path, device: str = "cpu"):
    """A saved LinearProbe or DiffCProbe, by the kind recorded in its JSON."""
    meta = read_meta(Path(directory))
    if meta["kind"] == "linear":
        return LinearProbe.load(directory)
    if meta["kind"] == "diffc":
        from .diffc import DiffCProbe

        return DiffCProbe.load(directory, device=device)
    raise ProbeFormatError(f"{directory}: unknown probe kind {meta['kind']!r}")


@dataclass
class ProbeWithSAE:
    """A probe on SAE latents together with the SAE it was trained on: predicts from backbone features."""

    probe: Any
    sae: Any

    def latents(self, feats: np.ndarray) -> sp.csr_matrix:
        from .stage import _image_latents, sae_config

        pooling = sae_config(self.sae).get("latent_pooling", "max")
        return sp.csr_matrix(_image_latents(self.sae, np.asarray(feats, np.float32), pooling), dtype=np.float32)

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        return self.probe.predict_proba(self.latents(feats))

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return self.probe.predict(self.latents(feats))


def load_probe_with_sae(directory: str | Path, sae_path: str | None = None):
    """The probe and the SAE it belongs to (from the path recorded in its JSON, or `sae_path`).

    Returns the probe alone when it was trained on features rather than SAE latents.
    """
    probe = load_probe(directory)
    ref = probe.meta.get("sae")
    if not ref and sae_path is None:
        return probe
    from .stage import _load_sae

    path = sae_path or ref["path"]
    try:
        sae = _load_sae(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the probe at {directory} was trained on the SAE at {path}, which is not there; "
                                "pass sae_path= to point at its new location") from e
    return ProbeWithSAE(probe, sae)


__all__ = ["LinearProbe", "ProbeFormatError", "ProbeWithSAE", "fit_linear_probe", "load_probe",
           "load_probe_with_sae"]
