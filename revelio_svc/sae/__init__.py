"""k-sparse autoencoders: TopK and BatchTopK variants, training on a feature store, latents per image."""
from .base import SAEConfigBase, SAELoadError, SparseAutoencoder, geometric_median
from .batchtopk import BatchTopKSAE, BatchTopKSAEConfig
from .io import build_sae, read_sae
from .latents import image_latents, latent_maps
from .topk import TopKSAE, TopKSAEConfig

__all__ = [
    "BatchTopKSAE",
    "BatchTopKSAEConfig",
    "SAEConfigBase",
    "SAELoadError",
    "SparseAutoencoder",
    "TopKSAE",
    "TopKSAEConfig",
    "TrainResult",
    "TrainingError",
    "build_sae",
    "geometric_median",
    "image_latents",
    "latent_maps",
    "read_sae",
    "train_sae",
]


def __getattr__(name: str):
    # the trainer pulls in the feature store; import it only when asked for
    if name in ("train_sae", "TrainResult", "TrainingError"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
