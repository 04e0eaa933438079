"""Tags on registered model versions: what a later stage learnt about a version it did not register."""
from __future__ import annotations

from collections.abc import Mapping

import mlflow


def tag_model_version(name: str, version: str | int, tags: Mapping[str, float | str], prefix: str = "") -> None:
    """Set `prefix + key` = value on version `version` of registered model `name` (numbers to 4 digits)."""
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        value = f"{v:.4g}" if isinstance(v, float) else str(v)
        client.set_model_version_tag(name, str(version), f"{prefix}{k}", value)
