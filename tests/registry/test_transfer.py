"""`revelio registry export|import` through the real CLI: exports of a registered SAE with their model card,
imports of every supported layout as registered versions that train-probe uses, and the round trip."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from revelio_svc import registry
from revelio_svc.config import to_dict
from revelio_svc.features.store import open_store
from revelio_svc.sae import read_sae
from revelio_svc.sae.formats import import_layout
from tests.registry.test_registry import cli
from tests.sae.layouts import write_saelens_style, write_sparsify_style, write_unbox

pytest_plugins = ("tests.registry.fixtures",)

TAGS = {"dataset": "shapes", "backbone": "tiny", "hook_point": "up_blocks.1", "timestep": "10"}


def store_vectors(store_uri: str, n: int = 2000) -> torch.Tensor:
    """Real token vectors of the tiny UNet at up_blocks.1, t=10 (what the SAEs were trained on)."""
    x = open_store(store_uri).feature_set("up_blocks.1", 10, "tokens").load()
    return torch.from_numpy(np.ascontiguousarray(x.reshape(-1, x.shape[-1])[:n], dtype=np.float32))


def register_trained_sae(trained):
    """Registered as the pipeline does: tagged with the train_sae run, whose metrics hold the control gaps."""
    _, _, sae_dir, _, sae_m, _ = trained
    with mlflow.start_run() as train_run:
        mlflow.log_metrics({"fvu": 0.25, "gap.shape.purity_share": 2.0, "gap.shape.sparse_probe_16": 0.17})
    with mlflow.start_run():
        return registry.register_model("sae", sae_dir, sae_m, {**TAGS, "run_id.train_sae": train_run.info.run_id},
                                       "fvu")


def same_codes(a, b, x):
    with torch.no_grad():
        za, zb = a.encode(x), b.encode(x)
        assert torch.equal(za != 0, zb != 0), "different active sets"
        assert float((za - zb).abs().max()) <= 1e-4
        assert float((a(x) - b(x)).abs().max()) <= 1e-4 * max(1.0, float(x.abs().max()))


@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "revelio"])
def test_export_a_registered_sae_with_its_card_and_import_it_back(fresh_mlflow, trained, tmp_path, capsys, fmt):
    reg = register_trained_sae(trained)
    out = tmp_path / "export"
    assert cli(["registry", "export", f"revelio-sae/{reg.version}", str(out), "--format", fmt]) == 0
    assert f"exported revelio-sae/{reg.version} as {fmt}" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    ours = read_sae(trained[2])
    c = ours.config
    for needle in (f"`{c.hook_point}` at t={c.timestep}", "| backbone licence | see the model card of",
                   "revelio train-sae", f"k={c.k}", "| fvu | 0.25 |", "| l0 |", "| gap.shape.purity_share | 2 |",
                   "Against matched controls", f"revelio-sae/{reg.version}"):
        assert needle in card, needle
    assert ("folded exactly" in card) == (fmt != "revelio")
    weights = {"saelens": out, "sparsify": out / "up_blocks.1", "revelio": out}[fmt]
    assert (weights / ("sae_weights.safetensors" if fmt == "saelens" else "sae.safetensors")).is_file()
    # round trip: export → import → identical codes on real store vectors
    if fmt == "revelio":
        back = read_sae(out)
    else:
        assert cli(["registry", "import", str(out), "--format", fmt, "--dest", str(tmp_path / "back")]) == 0
        back = read_sae(tmp_path / "back")
        assert back.config.normalize == "none" and c.normalize != "none"  # folded, not copied
    assert (back.config.hook_point, back.config.timestep, back.config.input) == (c.hook_point, c.timestep, c.input)
    same_codes(ours, back, store_vectors(trained[1]))


def test_export_refuses_a_non_empty_directory_and_an_unknown_format(fresh_mlflow, trained, tmp_path, capsys):
    reg = register_trained_sae(trained)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert cli(["registry", "export", f"revelio-sae/{reg.version}", str(tmp_path / "full"), "--format",
                "saelens"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert cli(["registry", "export", f"revelio-sae/{reg.version}", str(tmp_path / "o"), "--format", "onnx"]) == 2
    assert "--format saelens|sparsify|revelio" in capsys.readouterr().err


def foreign(fmt: str, root: Path, d: int) -> Path:
    """A small SAE on d channels in layout `fmt`, as the tool that owns the layout writes it."""
    n, k = 4 * d, 4
    if fmt == "saelens":
        write_saelens_style(root / "sl", d, n, k, hook_name="up_blocks.1")
        return root / "sl"
    if fmt == "sparsify":
        write_sparsify_style(root / "sp" / "up_blocks.1", d, n, k, saeuron=False)
        return root / "sp"
    if fmt == "saeuron":
        write_sparsify_style(root / "su" / "up_blocks.1", d, n, k)
        return root / "su"
    src = root / "unet.up_blocks.1_k4_hidden32_auxk256_bs4096_lr0.0001" / "final"
    write_unbox(src, d, n, k)
    return src


@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "unbox", "saeuron"])
def test_imported_sae_registers_with_its_origin_and_runs_through_train_probe(fresh_mlflow, trained, tmp_path,
                                                                             capsys, fmt):
    cfg, store_uri = trained[0], trained[1]
    d = read_sae(trained[2]).d_in
    src = foreign(fmt, tmp_path, d)
    # the tiny store has up_blocks.1 outputs; a published unbox SAE names its own block in update mode
    where = ["--hook-point", "up_blocks.1"] if fmt == "unbox" else []
    assert cli(["registry", "import", str(src), "--format", fmt, "--timestep", "10", *where]) == 0
    out = capsys.readouterr().out
    assert f"origin={fmt}" in out
    mv = max(MlflowClient().search_model_versions("name='revelio-sae'"), key=lambda v: int(v.version))
    assert mv.tags["origin"] == fmt and mv.tags["hook_point"] == "up_blocks.1"
    card = mv.description or ""  # the card is the version's description
    assert f"Imported from the `{fmt}` layout" in card and f"revelio registry import {src} --format {fmt}" in card
    assert "No training metrics" in card
    sae = registry.load_sae(f"revelio-sae/{mv.version}")
    expected = import_layout(src, fmt, tmp_path / "direct", timestep=10, hook_point="up_blocks.1")
    same_codes(expected, sae, store_vectors(store_uri, 500))

    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(to_dict(cfg)))
    assert cli(["train-probe", "--config", str(conf), "--set", f"probe.sae=revelio-sae/{mv.version}"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    run = max(MlflowClient().search_runs([MlflowClient().get_experiment_by_name("revelio").experiment_id],
                                         "tags.stage = 'train_probe'"), key=lambda r: r.info.start_time)
    assert run.info.status == "FINISHED" and "accuracy" in run.data.metrics

    # and in the demo: a classifier on the imported SAE explains an uploaded image with its latents
    from revelio_svc.app.service import DemoService
    from revelio_svc.config import replace
    from revelio_svc.inference.classifier import Classifier
    from revelio_svc.stages import train_probe_stage
    from tests.app.helpers import write_png
    from tests.registry.helpers import dataset_images

    sae_dir = registry.materialize(f"revelio-sae/{mv.version}", "sae")
    pcfg = replace(cfg, **{"probe.sae": str(sae_dir)})
    probe_dir = train_probe_stage(pcfg).probe_dir
    Classifier.build(pcfg, sae_dir, probe_dir, store_uri, top_n=4).save(tmp_path / "clf")
    svc = DemoService(registry.load_classifier(str(tmp_path / "clf")), fewshot_dir=tmp_path / "fs")
    exp = svc.explain(str(write_png(tmp_path / "img.png", dataset_images(cfg, [3])[0])))
    assert exp["label"] in svc.clf.class_names and exp["contributions"]
    assert all(0 <= int(c["latent"]) < sae.n_latents for c in exp["contributions"])


class Opaque:
    """Not a tensor nor a plain container: loading it needs full unpickling."""


def test_import_failures_are_one_line_and_register_nothing(fresh_mlflow, trained, tmp_path, capsys):
    src = tmp_path / "unet.up_blocks.1_k4_hidden32" / "final"
    write_unbox(src, 8, 32, 4, stats=False)
    torch.save({"state_dict": {"pre_bias": torch.zeros(8)}, "x": Opaque()}, src / "state_dict.pth")
    assert cli(["registry", "import", str(src), "--format", "unbox"]) == 1
    err = capsys.readouterr().err
    assert "weights_only=True" in err and len(err.strip().splitlines()) == 1
    assert cli(["registry", "import", str(tmp_path / "missing"), "--format", "saelens"]) == 1
    assert "not a directory" in capsys.readouterr().err
    assert not MlflowClient().search_model_versions("name='revelio-sae'")


def test_an_imported_sae_gets_the_control_report(trained, tmp_path):
    """The interpretation against matched controls (what train_sae logs) runs on an imported SAE too."""
    from revelio_svc.interpret import interpret_sae

    d = read_sae(trained[2]).d_in
    src = foreign("saeuron", tmp_path, d)
    sae = import_layout(src, "saeuron", tmp_path / "ours", timestep=10)
    res = interpret_sae(sae, open_store(trained[1]), tmp_path / "interpret", primary_concept="colour")
    gaps = {k: v for k, v in res.metrics.items() if k.startswith("gap.")}
    assert gaps and all(np.isfinite(v) for v in gaps.values() if v is not None)
    assert (tmp_path / "interpret" / "summary.json").is_file()


def test_a_set_registered_by_the_pipeline_describes_its_sae_with_the_card(fresh_mlflow, trained, classifier_dir):
    _, _, sae_dir, probe_dir, sae_m, probe_m = trained
    with mlflow.start_run():
        regs = registry.register_set({"sae": sae_dir, "probe": probe_dir, "classifier": classifier_dir},
                                     {"sae": {**sae_m, "gap.shape.purity_share": 1.5}, "probe": probe_m,
                                      "classifier": probe_m}, TAGS)
    mv = MlflowClient().get_model_version("revelio-sae", regs["sae"].version)
    card = mv.description or ""
    assert card.startswith("# Sparse autoencoder: `up_blocks.1` at t=10")
    assert "| gap.shape.purity_share | 1.5 |" in card and "revelio train-sae" in card and "dataset `shapes`" in card
