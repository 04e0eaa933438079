"""Faithfulness of a registered classifier's explanations, logged on the run of its registered version.

    log_faithfulness("revelio-classifier/3")          # computes, then logs on that version's run
    faithfulness_for_classifier(clf)                  # computes only (what the pipeline's register stage calls)

The metrics (`inference.faithfulness.faithfulness_metrics`: deletion-curve areas over held-out images,
ranked removal versus random removal) are logged as run metrics named `faithfulness.<name>` and copied to
the version's tags as `metric.faithfulness.<name>`, next to its other headline metrics.
"""
from __future__ import annotations

from typing import Any

from ..inference.faithfulness import DEFAULT_N_MAX, faithfulness_metrics
from .access import registry_client, resolve_version
from .errors import RegistryError
from .loaders import load_classifier
from .refs import parse_uri
from .register import METRIC_TAG

PREFIX = "faithfulness."


def faithfulness_for_classifier(clf, n_images: int = 64, n_max: int = DEFAULT_N_MAX) -> dict[str, float]:
    """`faithfulness.*` metrics of a loaded Classifier (needs its dataset and backbone)."""
    return {PREFIX + k: float(v) for k, v in faithfulness_metrics(clf, n_images, n_max).items()}


def log_faithfulness(uri: str, n_images: int = 64, n_max: int = DEFAULT_N_MAX, clf: Any = None) -> dict[str, Any]:
    """Compute the metrics of the classifier version `uri` names and log them on the run that registered it.

    Returns {"name", "version", "run_id", "metrics"}. `clf` skips loading when the caller has it already.
    """
    ref = parse_uri(uri)
    if ref.kind != "registry":
        raise RegistryError(f"log_faithfulness needs a registered version (NAME/version or NAME@alias), got {uri!r}")
    client = registry_client()
    mv = resolve_version(ref, client)
    if not mv.run_id:
        raise RegistryError(f"{mv.name} version {mv.version} has no run to log on")
    clf = clf if clf is not None else load_classifier(uri)
    metrics = faithfulness_for_classifier(clf, n_images, n_max)
    for k, v in metrics.items():
        client.log_metric(mv.run_id, k, v)
        client.set_model_version_tag(mv.name, mv.version, METRIC_TAG + k, repr(v))
    return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, "metrics": metrics}
