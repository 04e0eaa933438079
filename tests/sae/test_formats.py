"""Other tools' SAE layouts: folding our normalisation exactly, writing and reading each layout, refusing what
cannot be represented or would need unpickling. Each foreign layout is written by the tests themselves,
following the published code (tests/sae/layouts.py, with the reference formulas)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from revelio_svc.sae import BatchTopKSAEConfig, TopKSAEConfig, build_sae, read_sae
from revelio_svc.sae.formats import (
    EXTRA_STATS_FILE,
    ORIGIN_FILE,
    SAEFormatError,
    export_layout,
    from_raw,
    import_layout,
    read_layout,
    to_raw,
    unbox_hook_point,
)
from tests.sae.layouts import (
    rand,
    reference_saelens,
    reference_sparsify,
    reference_unbox,
    write_saelens_style,
    write_sparsify_style,
    write_unbox,
)

D, N, K = 12, 48, 4


def anisotropic(n: int, seed: int = 0) -> torch.Tensor:
    """Inputs with an offset and one dominant direction (what makes whitening matter)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g) * torch.linspace(0.2, 3.0, D) + torch.linspace(-1, 2, D)
    return x + 4.0 * torch.randn(n, 1, generator=g) * torch.ones(D) / D ** 0.5


def make_sae(normalize: str = "scalar", variant: str = "topk", seed: int = 0, **fields):
    cls = BatchTopKSAEConfig if variant == "batchtopk" else TopKSAEConfig
    sae = build_sae(cls(d_in=D, n_latents=N, k=K, normalize=normalize, hook_point="up_blocks.1", timestep=10,
                        backbone="builtin:shapes-unet", input="tokens", **fields), seed=seed)
    sae.init_from_data(anisotropic(500, seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a trained SAE's encoder is not its decoder's transpose and has biases
        sae.W_enc.add_(0.3 * torch.randn(N, D, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(N, generator=g))
        if variant == "batchtopk":
            pre = sae.pre_activations(sae.normalize(anisotropic(200, seed + 2)))
            sae.threshold.fill_(float(pre.topk(K, dim=1).values[:, -1].clamp_min(0).mean()))
    return sae.eval()


def assert_same_codes(a, b, x, tol: float = 1e-4):
    with torch.no_grad():
        za, zb = a.encode(x), b.encode(x)
        assert torch.equal(za != 0, zb != 0), "different active sets"
        assert (za - zb).abs().max() <= tol
        assert (a(x) - b(x)).abs().max() <= tol * max(1.0, float(x.abs().max()))


def assert_matches_reference(sae, x, z_ref, rec_ref, support: bool = True):
    """The imported SAE encodes and reconstructs `x` as the published code does (same active latents)."""
    with torch.no_grad():
        z = sae.encode(x)
        if support:
            assert torch.equal(z != 0, z_ref != 0)
        assert (z - z_ref).abs().max() < 1e-4
        assert (sae(x) - rec_ref).abs().max() < 1e-4


# --------------------------------------------------------------------------- folding
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
@pytest.mark.parametrize("normalize", ["none", "standard", "scalar", "whiten"])
def test_folded_raw_maps_compute_the_same_pre_activations_and_reconstructions(normalize, variant):
    sae = make_sae(normalize, variant)
    raw = to_raw(sae)
    x = anisotropic(64, seed=9).double()
    with torch.no_grad():
        ours_pre = sae.pre_activations(sae.normalize(x.float())).double()
        z = sae.encode(x.float()).double()
        ours_rec = sae.decode(z.float()).double()
    assert (x @ raw.W_enc.T + raw.b_enc - ours_pre).abs().max() < 1e-4
    assert (z @ raw.W_dec + raw.b_dec - ours_rec).abs().max() < 1e-4
    # and the layout that subtracts b_dec first gets the same pre-activation
    assert ((x - raw.b_dec) @ raw.W_enc.T + raw.b_enc_after_b_dec() - ours_pre).abs().max() < 1e-4


@pytest.mark.parametrize("normalize", ["standard", "whiten"])
def test_from_raw_rebuilds_an_unnormalised_sae_with_identical_codes(normalize):
    sae = make_sae(normalize)
    back = from_raw(to_raw(sae))
    assert back.config.normalize == "none" and back.config.hook_point == "up_blocks.1"
    assert back.config.timestep == 10 and back.config.input == "tokens"
    assert_same_codes(sae, back, anisotropic(200, seed=3))


def test_export_refuses_an_sae_without_relu():
    with pytest.raises(SAEFormatError, match="relu"):
        to_raw(make_sae("scalar", relu=False))


# --------------------------------------------------------------------------- our writers, our readers
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
@pytest.mark.parametrize("normalize", ["scalar", "whiten"])
def test_saelens_export_then_import_gives_identical_codes(tmp_path, normalize, variant):
    sae = make_sae(normalize, variant)
    out = export_layout(sae, "saelens", tmp_path / "sl", metadata={"command": "revelio train-sae"})
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == ("topk" if variant == "topk" else "jumprelu")
    assert cfg["normalize_activations"] == "none" and cfg["metadata"]["hook_name"] == "up_blocks.1"
    assert cfg["metadata"]["revelio"]["folded_normalization"] == normalize
    back = import_layout(out, "saelens", tmp_path / "ours")
    assert back.config.variant == variant and back.config.k == K
    assert_same_codes(sae, back, anisotropic(300, seed=5))
    assert_same_codes(sae, read_sae(tmp_path / "ours"), anisotropic(50, seed=6))
    assert json.loads((tmp_path / "ours" / ORIGIN_FILE).read_text())["format"] == "saelens"


def test_sparsify_export_then_import_gives_identical_codes(tmp_path):
    sae = make_sae("whiten")
    folder = export_layout(sae, "sparsify", tmp_path / "sp")
    assert folder == tmp_path / "sp" / "up_blocks.1"  # one folder per hook point
    assert json.loads((folder / "cfg.json").read_text())["num_latents"] == N
    back = import_layout(tmp_path / "sp", "sparsify", tmp_path / "ours")  # the parent with one hook folder
    assert back.config.hook_point == "up_blocks.1"
    assert_same_codes(sae, back, anisotropic(300, seed=7))


def test_sparsify_export_refuses_batchtopk(tmp_path):
    with pytest.raises(SAEFormatError, match="--format saelens"):
        export_layout(make_sae("scalar", "batchtopk"), "sparsify", tmp_path)


def test_revelio_export_is_our_own_directory(tmp_path):
    sae = make_sae("whiten")
    export_layout(sae, "revelio", tmp_path / "r")
    assert_same_codes(sae, read_sae(tmp_path / "r"), anisotropic(40))


# --------------------------------------------------------------------------- published layouts
def test_unbox_import_matches_the_published_encoder(tmp_path):
    src = tmp_path / "unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001" / "final"
    sd = write_unbox(src, D, N, K)
    sae = import_layout(src, "unbox", tmp_path / "ours")
    assert sae.config.hook_point == "down_blocks.2.attentions.1:update"
    x = rand(100, D, seed=8)
    z_ref, rec_ref = reference_unbox(sd, x, K)
    assert_matches_reference(sae, x, z_ref, rec_ref)
    origin = json.loads((tmp_path / "ours" / ORIGIN_FILE).read_text())
    assert origin["capture"] == "update" and origin["kept_aside"] == {"mean": [N], "std": [N]}
    assert (tmp_path / "ours" / EXTRA_STATS_FILE).is_file()


class NotATensor:
    """Anything that is not a tensor or a plain container: loading it needs full unpickling."""

    def __init__(self):
        self.payload = [1, 2, 3]


def test_unbox_refuses_a_checkpoint_that_needs_unpickling(tmp_path):
    write_unbox(tmp_path / "u", D, N, K, stats=False)
    torch.save({"state_dict": {"encoder.weight": torch.zeros(N, D)}, "extra": NotATensor()},
               tmp_path / "u" / "state_dict.pth")
    with pytest.raises(SAEFormatError, match="weights_only=True"):
        read_layout(tmp_path / "u", "unbox")


def test_unbox_hook_point_from_the_published_folder_names():
    assert unbox_hook_point(Path("x/unet.mid_block.attentions.0_k10_hidden5120_auxk256_bs4096_lr0.0001/final")) \
        == "mid_block.attentions.0:update"
    assert unbox_hook_point(Path("up_blocks.0.attentions.1_k10_hidden5120")) == "up_blocks.0.attentions.1:update"
    assert unbox_hook_point(Path("somewhere/else")) == ""


def test_saeuron_import_matches_the_published_encoder(tmp_path):
    t = write_sparsify_style(tmp_path / "saeuron" / "up_blocks.1.attentions.1", D, N, K)
    sae = import_layout(tmp_path / "saeuron", "saeuron", tmp_path / "ours")
    assert sae.config.hook_point == "up_blocks.1.attentions.1" and sae.config.variant == "topk"
    x = rand(100, D, seed=15)
    z_ref, rec_ref = reference_sparsify(t, x, K)
    assert_matches_reference(sae, x, z_ref, rec_ref)
    assert json.loads((tmp_path / "ours" / ORIGIN_FILE).read_text())["trained_with"] == "batch_topk"


def test_saeuron_with_per_token_input_normalisation_is_refused(tmp_path):
    write_sparsify_style(tmp_path / "s", D, N, K, input_unit_norm=True)
    with pytest.raises(SAEFormatError, match="input_unit_norm"):
        read_layout(tmp_path / "s", "saeuron")


def test_saelens_layouts_that_cannot_be_represented_are_refused(tmp_path):
    out = export_layout(make_sae("scalar", "batchtopk"), "saelens", tmp_path / "a")
    cfg = json.loads((out / "cfg.json").read_text())
    (out / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(SAEFormatError, match="normalize_activations='layer_norm'"):
        read_layout(out, "saelens")
    from safetensors.torch import load_file, save_file

    (out / "cfg.json").write_text(json.dumps(cfg))
    w = load_file(str(out / "sae_weights.safetensors"))
    w["threshold"] = torch.linspace(0, 1, N)
    save_file(w, str(out / "sae_weights.safetensors"))
    with pytest.raises(SAEFormatError, match="threshold per latent"):
        read_layout(out, "saelens")
    (out / "cfg.json").write_text(json.dumps({**cfg, "architecture": "standard"}))
    with pytest.raises(SAEFormatError, match="not a k-sparse SAE"):
        read_layout(out, "saelens")


def test_missing_files_and_unknown_formats_fail_with_one_line(tmp_path):
    with pytest.raises(SAEFormatError, match="not a directory"):
        read_layout(tmp_path / "nope", "saelens")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFormatError, match="cfg.json is missing"):
        read_layout(tmp_path / "empty", "saelens")
    with pytest.raises(SAEFormatError, match="unknown import format"):
        read_layout(tmp_path / "empty", "onnx")


def test_saelens_and_sparsify_layouts_written_by_those_tools_import_with_their_codes(tmp_path):
    t = write_saelens_style(tmp_path / "sl", D, N, K, "up_blocks.0")
    sae = import_layout(tmp_path / "sl", "saelens", tmp_path / "a")
    assert sae.config.hook_point == "up_blocks.0" and sae.config.backbone == "tiny-unet"
    x = rand(80, D, seed=31)
    z_ref, rec_ref = reference_saelens(t, x, K)
    assert_matches_reference(sae, x, z_ref, rec_ref)
    t = write_sparsify_style(tmp_path / "sp" / "mid_block", D, N, K, saeuron=False)
    sae = import_layout(tmp_path / "sp", "sparsify", tmp_path / "b")
    z_ref, rec_ref = reference_sparsify(t, x, K)
    assert sae.config.hook_point == "mid_block"
    assert_matches_reference(sae, x, z_ref, rec_ref, support=False)


def test_backbone_licences_in_the_card():
    from revelio_svc.registry.card import backbone_licence

    assert backbone_licence("builtin:shapes-unet").startswith("Apache-2.0")
    assert backbone_licence("stable-diffusion-v1-5/stable-diffusion-v1-5") == "CreativeML OpenRAIL-M"
    assert "Non-Commercial" in backbone_licence("stabilityai/sdxl-turbo")
    assert "see the model card of `org/other`" in backbone_licence("org/other")
