"""Fixtures of the registry tests live in helpers.py so the pipeline and tune tests can share them."""
from tests.registry.helpers import classifier_dir, fresh_mlflow, template_db, trained  # noqa: F401
