"""The pixel-space adapter, the model resolver's errors, and `revelio pretrain`."""
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from revelio_svc.backbones import (
    ModelUnavailableError,
    load_backbone,
    noise_seed,
    seeded_noise,
)
from revelio_svc.backbones.pretrain import loss_weights, lr_at, pretrain
from revelio_svc.config import BackboneConfig, load_config


def test_noise_is_per_image_and_timestep():
    a = seeded_noise((3, 4, 4), 0, ["x", "y"], 10)
    b = seeded_noise((3, 4, 4), 0, ["y"], 10)
    torch.testing.assert_close(a[1], b[0])
    assert not torch.allclose(a[0], a[1])
    assert not torch.allclose(seeded_noise((3, 4, 4), 0, ["x"], 11)[0], a[0])
    assert noise_seed(0, "x", 10) != noise_seed(1, "x", 10)


def test_hook_points_in_execution_order(tiny_unet_dir):
    ad = load_backbone(BackboneConfig(id=str(tiny_unet_dir)))
    assert ad.hook_points() == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]


def test_random_init_differs_and_is_seeded(tiny_unet_dir):
    pre = load_backbone(BackboneConfig(id=str(tiny_unet_dir)))
    r1 = load_backbone(BackboneConfig(id=str(tiny_unet_dir), init="random", init_seed=1))
    r2 = load_backbone(BackboneConfig(id=str(tiny_unet_dir), init="random", init_seed=1))
    p0 = dict(pre.model.named_parameters())["conv_in.weight"]
    p1 = dict(r1.model.named_parameters())["conv_in.weight"]
    p2 = dict(r2.model.named_parameters())["conv_in.weight"]
    assert not torch.allclose(p0, p1)
    torch.testing.assert_close(p1, p2)


def test_encode_resizes_to_model_resolution(tiny_unet_dir):
    ad = load_backbone(BackboneConfig(id=str(tiny_unet_dir)))
    x = ad.encode(np.full((2, 40, 40, 3), 255, np.uint8))
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x), atol=1e-5)


def test_missing_builtin_and_directory_errors(tmp_path):
    with pytest.raises(ModelUnavailableError, match="builtin:nope"):
        load_backbone(BackboneConfig(id="builtin:nope"))
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_backbone(BackboneConfig(id=str(tmp_path / "missing")))


def test_hub_id_fails_fast_offline():
    t0 = time.time()
    with pytest.raises(ModelUnavailableError) as e:
        load_backbone(BackboneConfig(id="nonexistent-org/nonexistent-unet"))
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "nonexistent-org/nonexistent-unet" in msg and "local directory" in msg and "download" in msg


def _overrides(out, steps):
    return ["pretrain.block_out_channels=[8, 16]", "pretrain.norm_num_groups=8", "pretrain.batch_size=4",
            f"pretrain.steps={steps}", "pretrain.checkpoint_every=2", "pretrain.sample_every=0",
            "pretrain.warmup_steps=2", "data.image_size=16", f"pretrain.output={out}", "pretrain.save_dtype=float32"]


def _tiny_pretrain(tmp_path, steps, out):
    return load_config(None, _overrides(out, steps))


def test_pretrain_resume_equals_uninterrupted(tmp_path):
    straight = pretrain(_tiny_pretrain(tmp_path, 4, tmp_path / "a")).backbone_dir
    pretrain(_tiny_pretrain(tmp_path, 2, tmp_path / "b"))
    resumed = pretrain(_tiny_pretrain(tmp_path, 4, tmp_path / "b")).backbone_dir
    wa = load_file(straight / "diffusion_pytorch_model.safetensors")
    wb = load_file(resumed / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], msg=k)
    # the saved directory is a loadable backbone
    ad = load_backbone(BackboneConfig(id=str(straight)))
    assert "mid_block" in ad.hook_points()


def test_lr_schedule_warms_up_then_stays_or_anneals(tmp_path):
    const = load_config(None, ["pretrain.lr=0.001", "pretrain.warmup_steps=10", "pretrain.steps=110"]).pretrain
    cos = load_config(None, ["pretrain.lr=0.001", "pretrain.warmup_steps=10", "pretrain.steps=110",
                             "pretrain.lr_schedule=cosine", "pretrain.min_lr=0.0001"]).pretrain
    for pc in (const, cos):  # the same linear warm-up
        assert lr_at(pc, 0) == pytest.approx(1e-4) and lr_at(pc, 9) == pytest.approx(1e-3)
    assert [lr_at(const, s) for s in (10, 60, 109)] == pytest.approx([1e-3] * 3)
    assert lr_at(cos, 10) == pytest.approx(1e-3)
    assert lr_at(cos, 59) == pytest.approx(0.5 * (1e-3 + 1e-4), rel=2e-2)  # about half-way down
    assert lr_at(cos, 109) == pytest.approx(1e-4)  # min_lr at the last step
    lrs = [lr_at(cos, s) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_schedule_config_errors_name_the_field():
    with pytest.raises(ValueError, match="pretrain.lr_schedule"):
        load_config(None, ["pretrain.lr_schedule=step"])
    with pytest.raises(ValueError, match="pretrain.min_lr"):
        load_config(None, ["pretrain.lr=0.001", "pretrain.min_lr=0.01"])


def test_min_snr_weighting_caps_the_low_noise_steps():
    uniform = load_config(None, []).pretrain
    snr = load_config(None, ["pretrain.loss_weighting=min_snr", "pretrain.snr_gamma=5"]).pretrain
    alpha_bar = torch.tensor([0.999, 5 / 6, 0.5, 0.01])  # SNR 999, 5, 1, ~0.01
    assert torch.equal(loss_weights(uniform, alpha_bar), torch.ones(4))
    w = loss_weights(snr, alpha_bar)
    assert w[0] == pytest.approx(5 / 999, rel=1e-4)  # a nearly clean image counts γ/SNR
    assert w[1:].tolist() == pytest.approx([1.0, 1.0, 1.0])  # at SNR ≤ γ the plain ε-error stands
    with pytest.raises(ValueError, match="pretrain.loss_weighting"):
        load_config(None, ["pretrain.loss_weighting=p2"])
    with pytest.raises(ValueError, match="pretrain.snr_gamma"):
        load_config(None, ["pretrain.snr_gamma=0"])


def test_min_snr_run_trains_otherwise_and_is_another_run_for_a_checkpoint(tmp_path):
    plain = pretrain(_tiny_pretrain(tmp_path, 2, tmp_path / "w")).backbone_dir
    with pytest.raises(RuntimeError, match="different pretrain config"):
        pretrain(load_config(None, [*_overrides(tmp_path / "w", 4), "pretrain.loss_weighting=min_snr"]))
    # γ far below every sampled SNR: each image weighs γ/SNR, so the batch's gradient points elsewhere
    snr = pretrain(load_config(None, [*_overrides(tmp_path / "s", 2), "pretrain.loss_weighting=min_snr",
                                      "pretrain.snr_gamma=0.001"])).backbone_dir
    wa = load_file(plain / "diffusion_pytorch_model.safetensors")
    wb = load_file(snr / "diffusion_pytorch_model.safetensors")
    assert any(not torch.allclose(wa[k], wb[k]) for k in wa)  # same data and noise, other gradients


def test_cosine_run_resumes_and_other_schedules_are_not_taken_for_it(tmp_path, monkeypatch):
    import revelio_svc.backbones.pretrain as pt

    cos = ["pretrain.lr_schedule=cosine", "pretrain.min_lr=0.0"]
    straight = pretrain(load_config(None, [*_overrides(tmp_path / "a", 4), *cos])).backbone_dir
    save = pt.save_backbone

    def killed_after_first_checkpoint(*a, **kw):
        save(*a, **kw)
        raise KeyboardInterrupt  # the process dies right after the step-2 checkpoint

    monkeypatch.setattr(pt, "save_backbone", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        pretrain(load_config(None, [*_overrides(tmp_path / "b", 4), *cos]))
    monkeypatch.setattr(pt, "save_backbone", save)
    resumed = pretrain(load_config(None, [*_overrides(tmp_path / "b", 4), *cos])).backbone_dir
    wa = load_file(straight / "diffusion_pytorch_model.safetensors")
    wb = load_file(resumed / "diffusion_pytorch_model.safetensors")
    for k in wa:  # the resumed steps annealed exactly as the uninterrupted run's
        torch.testing.assert_close(wa[k], wb[k], msg=k)
    # the same folder under another schedule length or a constant lr is another run: refused
    with pytest.raises(RuntimeError, match="different pretrain config"):
        pretrain(load_config(None, [*_overrides(tmp_path / "b", 6), *cos]))
    with pytest.raises(RuntimeError, match="different pretrain config"):
        pretrain(_tiny_pretrain(tmp_path, 6, tmp_path / "b"))


def test_pretrain_refuses_other_architecture_checkpoint(tmp_path):
    pretrain(_tiny_pretrain(tmp_path, 2, tmp_path / "c"))
    other = load_config(None, ["pretrain.block_out_channels=[16, 16]", "pretrain.batch_size=4",
                               "pretrain.steps=4", "data.image_size=16", f"pretrain.output={tmp_path / 'c'}"])
    with pytest.raises(RuntimeError, match="different pretrain config"):
        pretrain(other)


def test_pretrain_command_logs_curve_and_samples(tmp_path, mlflow_tmp):
    import mlflow

    from revelio_svc.cli import main
    args = ["pretrain"]
    for o in ["pretrain.block_out_channels=[8, 16]", "pretrain.batch_size=4", "pretrain.steps=20",
              "pretrain.checkpoint_every=10", "pretrain.sample_every=10", "data.image_size=16",
              f"pretrain.output={tmp_path / 'pt'}"]:
        args += ["--set", o]
    assert main(args) == 0
    run = mlflow.search_runs(experiment_names=["revelio"], output_format="list")[0]
    assert run.data.tags["stage"] == "pretrain"
    hist = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(hist) == 2 and all(np.isfinite(m.value) for m in hist)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "samples", "backbone"} <= arts
    mv = mlflow.MlflowClient().get_model_version_by_alias("revelio-backbone", "champion")
    assert mv.run_id == run.info.run_id
    local = mlflow.artifacts.download_artifacts("models:/revelio-backbone@champion", dst_path=str(tmp_path / "dl"))
    from revelio_svc.backbones import load_backbone
    assert "mid_block" in load_backbone(BackboneConfig(id=local)).hook_points()
