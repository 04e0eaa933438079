"""A probe on SAE latents together with the SAE it was trained on: predicts from backbone features."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..probe import read_probe
from ..sae import SparseAutoencoder, image_latents, read_sae


@dataclass
class ProbeWithSAE:
    probe: object
    sae: SparseAutoencoder

    def latents(self, feats: np.ndarray) -> sp.csr_matrix:
        z = image_latents(self.sae, np.asarray(feats, np.float32), self.sae.config.latent_pooling)
        return sp.csr_matrix(z, dtype=np.float32)

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        return self.probe.predict_proba(self.latents(feats))

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return self.probe.predict(self.latents(feats))


def load_probe_with_sae(directory: str | Path, sae_path: str | Path | None = None):
    """The probe and the SAE it belongs to (from the path recorded in its JSON, or `sae_path`).

    Returns the probe alone when it was trained on features rather than SAE latents.
    """
    probe = read_probe(directory)
    ref = probe.meta.get("sae")
    if not ref and sae_path is None:
        return probe
    path = Path(sae_path or ref["path"])
    if not path.is_dir():
        raise FileNotFoundError(f"the probe at {directory} was trained on the SAE at {path}, which is not there; "
                                "pass sae_path= to point at its new location")
    return ProbeWithSAE(probe, read_sae(path))
