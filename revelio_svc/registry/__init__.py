"""The MLflow Model Registry side of revelio: load, pull, promote, list and register models.

    from revelio_svc.registry import load_sae, load_classifier
    sae = load_sae("revelio-sae@champion")              # or NAME/version, models:/..., runs:/..., a directory
    clf = load_classifier("revelio-classifier@champion")
    clf.predict(images); clf.explain(image)

Registered models (see registry/README.md): revelio-sae, revelio-probe, revelio-classifier; aliases
`champion` (serving; moves only on improvement of the held-out metric) and `challenger` (newest version).
"""
from .client import (
                     CHALLENGER,
                     CHAMPION,
                     MODEL_NAMES,
                     AliasNotFoundError,
                     MissingArtifactsError,
                     ModelMismatchError,
                     ModelNotFoundError,
                     ModelRef,
                     Registration,
                     RegistrationError,
                     RegistryError,
                     check_server,
                     fetch,
                     list_models,
                     load_classifier,
                     load_probe,
                     load_sae,
                     model_kind,
                     parse_uri,
                     promote,
                     pull,
                     register_model,
                     resolve_version,
)

__all__ = [
    "CHALLENGER", "CHAMPION", "MODEL_NAMES", "AliasNotFoundError", "MissingArtifactsError", "ModelMismatchError",
    "ModelNotFoundError", "ModelRef", "Registration", "RegistrationError", "RegistryError", "check_server", "fetch",
    "list_models", "load_classifier", "load_probe", "load_sae", "model_kind", "parse_uri", "promote", "pull",
    "register_model", "resolve_version",
]
