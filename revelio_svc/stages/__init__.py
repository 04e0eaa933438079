"""The stages of the flow as plain functions: (config, inputs) → a typed result (see contracts.py).

    extract          revelio_svc.features.extract.extract   → ExtractResult (the feature store)
    train_sae        train_sae_stage                        → SAEResult
    train_probe      train_probe_stage                      → ProbeResult
    classifier       build_classifier_stage                 → ClassifierResult
    sweep            sweep_stage                            → SweepResult

None of them imports MLflow: revelio_svc.tracking logs their results, revelio_svc.pipeline chains them.
"""
from ..features.extract import ExtractResult, extract
from .classifier import ClassifierResult, build_classifier_stage
from .sweep import SweepResult, sweep_stage
from .train_probe import ProbeResult, train_probe_stage
from .train_sae import SAEResult, train_sae_stage

__all__ = ["ClassifierResult", "ExtractResult", "ProbeResult", "SAEResult", "SweepResult", "build_classifier_stage",
           "extract", "sweep_stage", "train_probe_stage", "train_sae_stage"]
