"""Feature store (manifest + shards) and extraction; see docs/feature-store.md."""
from .store import FeatureSet, FeatureStore, StoreError, StoreMismatchError, open_store

__all__ = ["FeatureSet", "FeatureStore", "StoreError", "StoreMismatchError", "open_store"]
