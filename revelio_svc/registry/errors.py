"""What can go wrong with a registered model; every message says what was tried and what to do."""
from __future__ import annotations


class RegistryError(RuntimeError):
    """Base class of every registry failure; the message says what was tried and what to do."""


class ModelNotFoundError(RegistryError, LookupError):
    """No registered model, version or alias of that name; the message lists what exists."""


class AliasNotFoundError(ModelNotFoundError):
    pass


class MissingArtifactsError(RegistryError, FileNotFoundError):
    """The registry knows the model but its files are gone or incomplete."""


class ModelMismatchError(RegistryError, ValueError):
    """A model's recorded configuration disagrees with its weights (or with the other parts it bundles)."""


class UntrustedModelError(RegistryError):
    """A model's code file (run by MLflow's loaders) is not the one revelio logs: it is refused, never used."""


class RegistrationError(RegistryError):
    """Registering a new version failed; no version was left behind."""
