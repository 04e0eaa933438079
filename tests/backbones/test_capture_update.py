"""Capture mode `update` (PATH:update = the module's output minus its input), the hook point the published
SDXL-Turbo SAEs read, on the tiny SD and SDXL models: in a capture, in `revelio extract`, and refused clearly
where it cannot apply."""
from __future__ import annotations

import json

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
def test_plan_and_extract_store_update_hook_points(tmp_path_factory, tmp_path, capsys, kind):
    model_dir = tm.pipeline_dir(tmp_path_factory, kind)
    hook = f"{ATTN[kind]}:update"
    args = ["extract", "--no-mlflow"]
    for s in ["data.source=shapes", "data.n_images=6", f"data.image_size={tm.IMAGE_SIZE}", f"backbone.kind={kind}",
              f"backbone.id={model_dir}", "backbone.device=cpu", f"extract.hook_points=[{ATTN[kind]}, {hook}]",
              f"extract.token_hook_points=[{ATTN[kind]}, {hook}]", "extract.token_timesteps=[10]",
              "extract.timesteps=[10]", "extract.pooling=[mean, tokens]", "extract.batch_size=3",
              "extract.shard_size=6", f"output_dir={tmp_path / 'out'}"]:
        args += ["--set", s]
    assert main(["plan", "--no-probe", "--json", *args[2:]]) == 0  # the plan knows the update hook point
    plan = json.loads(capsys.readouterr().out)
    assert hook in json.dumps(plan)
    assert main(args) == 0
    store = open_store(next((tmp_path / "out" / "features").iterdir()), verify=True)
    upd = store.feature_set(hook, 10, "tokens").load()
    out = store.feature_set(ATTN[kind], 10, "tokens").load()
    assert upd.shape == out.shape and np.isfinite(upd).all()
    assert not np.allclose(upd, out)
    np.testing.assert_allclose(store.feature_set(hook, 10, "mean").load(), upd.mean(axis=(1, 2)), rtol=1e-3,
                               atol=1e-4)


def test_steering_at_an_update_hook_point_reads_and_edits_the_update(adapter):
    """Ablation at PATH:update removes z_j(output − input) · d_j from the block's output; steer() runs there."""
    from revelio_svc.inference.steering import LatentIntervention, SteeringSpec, decoder_direction, steer
    from revelio_svc.sae import TopKSAEConfig, build_sae

    kind, a = adapter
    hook = f"{ATTN[kind]}:update"
    upd = features(a, tm.images(4), [f"i{i}" for i in range(4)], 10, [hook])[hook]
    tok = upd.float().permute(0, 2, 3, 1).reshape(-1, upd.shape[1])
    sae = build_sae(TopKSAEConfig(d_in=int(upd.shape[1]), n_latents=32, k=4, hook_point=hook, timestep=10,
                                  input="tokens"), seed=0)
    sae.init_from_data(tok)
    sae.eval()
    vals, idx = sae.encode_sparse(tok)
    j = int(idx[0, 0])
    block = torch.nn.Linear(tok.shape[1], tok.shape[1])  # stands in for a residual block: out = x + f(x)
    x = torch.randn(2, tok.shape[1], 3, 3)
    out = x + block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    hook_fn = LatentIntervention(sae, SteeringSpec(j, "ablate"), torch.tensor([1.0, 1.0]))
    hook_fn.t, hook_fn.update = 500, True
    got = hook_fn(None, (x,), out.clone())
    read = (out - x).permute(0, 2, 3, 1).reshape(-1, tok.shape[1])
    v, i = sae.encode_sparse(read)
    z_j = (v * (i == j)).sum(-1)
    expect = out.permute(0, 2, 3, 1).reshape(-1, tok.shape[1]) - z_j[:, None] * decoder_direction(sae, j)
    torch.testing.assert_close(got.permute(0, 2, 3, 1).reshape(-1, tok.shape[1]), expect, atol=1e-5, rtol=1e-5)
    res = steer(a, sae, hook, SteeringSpec(j, "add", (8.0,)), [0], steps=2)
    assert res.images.shape[:2] == (2, 1) and not np.array_equal(res.images[0, 0], res.images[1, 0])
