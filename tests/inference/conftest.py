"""The app tests' tiny classifier (tiny random UNet, untrained SAE, probe on 40 shapes), shared here."""
from tests.app.conftest import tiny_app_cfg, tiny_clf, tiny_model_dir  # noqa: F401 - fixtures
