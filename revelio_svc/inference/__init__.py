"""Inference: SAE + probe (+ backbone) → predictions and explanations. Below the registry, above the stages."""
from .classifier import Classifier, ClassifierFormatError, explanation_figure, upload_id
from .sae_probe import ProbeWithSAE, load_probe_with_sae

__all__ = ["Classifier", "ClassifierFormatError", "ProbeWithSAE", "explanation_figure", "load_probe_with_sae",
           "upload_id"]
