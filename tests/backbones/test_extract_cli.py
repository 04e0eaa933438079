"""Every architecture goes through the same `revelio extract` command and feature store, from local tiny models."""
import numpy as np
import pytest

from revelio_svc.backbones import load_backbone
from revelio_svc.cli import main
from revelio_svc.config import BackboneConfig
from revelio_svc.features import open_store
from tests.backbones import tiny_models as tm

CASES = [("sd", "sd", "empty"), ("sd", "sd", "generic"), ("sd", "sd", "class"), ("sdxl", "sdxl", "empty"),
         ("sdxl", "sdxl", "class"), ("dit", "dit", "empty"), ("dit", "dit", "class")]


@pytest.mark.parametrize("name,kind,mode", CASES)
def test_extract_command_on_tiny_local_model(tmp_path_factory, tmp_path, name, kind, mode):
    model_dir = tm.pipeline_dir(tmp_path_factory, name)
    hooks = load_backbone(BackboneConfig(kind=kind, id=str(model_dir), device="cpu")).hook_points()
    sets = ["data.source=shapes", "data.n_images=12", f"data.image_size={tm.IMAGE_SIZE}",
            f"backbone.kind={kind}", f"backbone.id={model_dir}", "backbone.device=cpu",
            f"backbone.prompt_mode={mode}", f"extract.hook_points=[{', '.join(hooks)}]",
            "extract.timesteps=[10, 500]", "extract.pooling=[mean, tokens]", "extract.batch_size=5",
            "extract.token_hook_points=[]", "extract.token_timesteps=[]", "extract.dtype=float32",
            "extract.shard_size=8", f"output_dir={tmp_path / 'out'}"]
    args = ["extract", "--no-mlflow"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    assert main(args) == 0  # a second run finds the complete store and recomputes nothing
    store = open_store(next((tmp_path / "out" / "features").iterdir()), verify=True)
    assert store.complete and store.n_rows == 12
    assert store.config["backbone"]["kind"] == kind and store.config["prompt_mode"] == mode
    for h in hooks:
        for t in (10, 500):
            mean = store.feature_set(h, t, "mean").load()
            tok = store.feature_set(h, t, "tokens").load()
            assert mean.shape[0] == 12 and np.isfinite(mean).all()
            assert tok.ndim == 4 and tok.shape[-1] == mean.shape[-1]
            np.testing.assert_allclose(tok.mean(axis=(1, 2)), mean, rtol=1e-3, atol=1e-4)
