"""The MLflow Model Registry side of revelio: load, pull, promote, list and register models.

    from revelio_svc.registry import load_sae, load_classifier
    sae = load_sae("revelio-sae@champion")              # or NAME/version, models:/..., runs:/..., a directory
    clf = load_classifier("revelio-classifier@champion")
    clf.predict(images); clf.explain(image)

Registered models (see registry/README.md): revelio-sae, revelio-probe, revelio-classifier; aliases
`champion` (serving; the SAE, probe and classifier of one run move together, only on evidence) and
`challenger` (newest version).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names resolve on first use (PEP 562): `from revelio_svc.registry import load_classifier` must not import
# registration (MLflow's pyfunc layer, scipy.stats), which a cached load never needs.
_WHERE = {
    "access": ("fetch", "local_copy", "model_kind", "payload_dir", "registry_client", "resolve_version",
               "target_uri"),
    "errors": ("AliasNotFoundError", "MissingArtifactsError", "ModelMismatchError", "ModelNotFoundError",
               "RegistrationError", "RegistryError", "UntrustedModelError"),
    "loaders": ("load_classifier", "load_probe", "load_sae", "materialize", "pull"),
    "refs": ("CHALLENGER", "CHAMPION", "MODEL_NAMES", "ModelRef", "parse_uri"),
    "register": ("Decision", "Evaluation", "Registration", "list_models", "promote", "promotion_decision",
                 "register_model", "register_set"),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


if TYPE_CHECKING:
    from .access import (
        fetch,
        local_copy,
        model_kind,
        payload_dir,
        registry_client,
        resolve_version,
        target_uri,
    )
    from .errors import (
        AliasNotFoundError,
        MissingArtifactsError,
        ModelMismatchError,
        ModelNotFoundError,
        RegistrationError,
        RegistryError,
        UntrustedModelError,
    )
    from .loaders import load_classifier, load_probe, load_sae, materialize, pull
    from .refs import CHALLENGER, CHAMPION, MODEL_NAMES, ModelRef, parse_uri
    from .register import (
        Decision,
        Evaluation,
        Registration,
        list_models,
        promote,
        promotion_decision,
        register_model,
        register_set,
    )

__all__ = [
    "CHALLENGER", "CHAMPION", "MODEL_NAMES", "AliasNotFoundError", "Decision", "Evaluation", "MissingArtifactsError",
    "ModelMismatchError", "ModelNotFoundError", "ModelRef", "Registration", "RegistrationError", "RegistryError",
    "fetch", "list_models", "load_classifier", "load_probe", "load_sae", "local_copy", "materialize", "model_kind",
    "parse_uri", "payload_dir", "promote", "pull", "promotion_decision", "register_model", "register_set",
    "registry_client", "resolve_version", "target_uri", "UntrustedModelError",
]
