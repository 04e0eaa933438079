"""The stage tests use the probe tests' tiny UNet, extraction and MLflow fixtures."""
from tests.probe.conftest import (  # noqa: F401  (fixtures are found by name)
    _mlflow_template,
    _one_blas_thread,
    extracted,
    mlflow_db,
    tiny_config,
    tiny_unet,
    write_planted_store,
)
