"""Registering a backbone trained by `revelio pretrain` (a diffusers folder, not an MLflow model)."""
from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException


def register_backbone(run_id: str, name: str = "revelio-backbone") -> str:
    """Register the run's `backbone/` directory (a diffusers model folder, not an MLflow model).

    The version is `challenger`; it becomes `champion` when there is none yet (a backbone has no single
    held-out metric to compare on: promote with `revelio registry promote`).
    """
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Diffusion backbones trained by `revelio pretrain` "
                                                         "(diffusers UNet2DModel folder: config + safetensors)")
    source = mlflow.get_artifact_uri("backbone")
    mv = client.create_model_version(name, source=source, run_id=run_id,
                                     tags={"stage": "pretrain", "dataset": "shapes"})
    client.set_registered_model_alias(name, "challenger", mv.version)
    aliases = client.get_registered_model(name).aliases or {}
    if "champion" not in aliases:
        client.set_registered_model_alias(name, "champion", mv.version)
    return str(mv.version)


