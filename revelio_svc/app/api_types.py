"""What the JSON API endpoints return, typed: gradio_client's API page and schema show these fields instead
of `Any` (`/model_info`, `/explain_dataset_image`)."""
from __future__ import annotations

from typing import Any, TypedDict


class SAEInfo(TypedDict):
    variant: str | None
    d_in: int | None
    n_latents: int | None
    k: int | None
    input: str | None
    latent_pooling: str | None


class ModelInfo(TypedDict):
    """The model the app serves (app.service.model_info)."""

    model: str
    version: str
    alias: str
    uri: str
    run_id: str
    backbone: str
    backbone_kind: str
    backbone_init: str
    hook_point: str
    timestep: int
    sae: SAEInfo
    concept: str
    classes: list[str]
    dataset: str
    image_size: int


class Contribution(TypedDict):
    latent: int
    activation: float
    weight: float
    contribution: float  # activation × probe weight
    top_images: list[int]  # dataset indices of the images it fires on most


class ExplanationModel(TypedDict):
    model: str
    version: str
    alias: str
    backbone: str
    hook_point: str
    timestep: int


class Explanation(TypedDict):
    """A classification with its explanation (app.views.explanation_json)."""

    label: str
    probs: dict[str, float]
    concept: str
    logit: float | None
    intercept: float | None
    image_id: str | None
    input: dict[str, Any]
    contributions: list[Contribution]
    heatmap_grid: list[int]
    model: ExplanationModel
