"""Errors of the feature store."""


class StoreError(RuntimeError):
    pass


class StoreMismatchError(StoreError):
    """The store at the path was written for another config or dataset; it is never mixed."""
