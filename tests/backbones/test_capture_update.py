"""Capture mode `update` (PATH:update = the module's output minus its input), the hook point the published
SDXL-Turbo SAEs read, on the tiny SD and SDXL models: in a capture, in `revelio extract`, and refused clearly
where it cannot apply."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.backbones import load_backbone
from revelio_svc.backbones.base import split_hook_point
from revelio_svc.cli import main
from revelio_svc.config import BackboneConfig, ConfigError
from revelio_svc.features import open_store
from tests.backbones import tiny_models as tm
from tests.backbones.tiny_models import features

ATTN = {"sd": "down_blocks.0.attentions.0", "sdxl": "down_blocks.1.attentions.0"}
IDS = ["x-0", "x-1"]


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def adapter(request, tmp_path_factory):
    kind = request.param
    return kind, load_backbone(BackboneConfig(kind=kind, id=str(tm.pipeline_dir(tmp_path_factory, kind)),
                                              device="cpu"))


def test_split_hook_point():
    assert split_hook_point("mid_block.attentions.0:update") == ("mid_block.attentions.0", "update")
    assert split_hook_point("up_blocks.1") == ("up_blocks.1", "output")


def test_update_is_the_attention_blocks_output_minus_its_input(adapter):
    kind, a = adapter
    path = ATTN[kind]
    a.validate_hook_points([f"{path}:update"])
    seen = {}

    def grab(_m, args, kwargs, out):  # what the block received and returned, read independently
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        seen["out"] = (out[0] if isinstance(out, tuple) else out.sample).detach().clone()

    h = a.model.get_submodule(path).register_forward_hook(grab, with_kwargs=True)
    try:
        maps = features(a, tm.images(2), IDS, 100, [path, f"{path}:update"], stop_early=False)
    finally:
        h.remove()
    upd, out = maps[f"{path}:update"], maps[path]
    assert upd.shape == out.shape and upd.dim() == 4
    torch.testing.assert_close(out, seen["out"])
    torch.testing.assert_close(upd, seen["out"] - seen["in"])
    assert float(upd.abs().max()) > 0 and not torch.allclose(upd, out)  # not the output itself


def test_bad_capture_modes_and_shape_changing_modules_are_refused(adapter):
    kind, a = adapter
    with pytest.raises(ConfigError, match="capture mode 'delta'"):
        a.validate_hook_points([f"{ATTN[kind]}:delta"])
    with pytest.raises(ConfigError, match="unknown hook point 'nowhere'"):
        a.validate_hook_points(["nowhere:update"])
    # a down block halves the resolution: its output minus its input is not defined
    a.validate_hook_points(["down_blocks.0:update"])
    with pytest.raises(ValueError, match="one shape"):
        features(a, tm.images(1), IDS[:1], 100, ["down_blocks.0:update"])


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_extract_stores_update_hook_points(tmp_path_factory, tmp_path, kind):
    model_dir = tm.pipeline_dir(tmp_path_factory, kind)
    hook = f"{ATTN[kind]}:update"
    args = ["extract", "--no-mlflow"]
    for s in ["data.source=shapes", "data.n_images=6", f"data.image_size={tm.IMAGE_SIZE}", f"backbone.kind={kind}",
              f"backbone.id={model_dir}", "backbone.device=cpu", f"extract.hook_points=[{ATTN[kind]}, {hook}]",
              "extract.timesteps=[10]", "extract.pooling=[mean, tokens]", "extract.batch_size=3",
              "extract.shard_size=6", f"output_dir={tmp_path / 'out'}"]:
        args += ["--set", s]
    assert main(args) == 0
    store = open_store(next((tmp_path / "out" / "features").iterdir()), verify=True)
    upd = store.feature_set(hook, 10, "tokens").load()
    out = store.feature_set(ATTN[kind], 10, "tokens").load()
    assert upd.shape == out.shape and np.isfinite(upd).all()
    assert not np.allclose(upd, out)
    np.testing.assert_allclose(store.feature_set(hook, 10, "mean").load(), upd.mean(axis=(1, 2)), rtol=1e-3,
                               atol=1e-4)
