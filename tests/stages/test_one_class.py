"""A dataset with a single class: `train-probe` says so in one line, and `revelio run` refuses before it
spends time on the SAE."""
from __future__ import annotations

import numpy as np
from PIL import Image

from revelio_svc.cli import main


def _one_class_folder(root):
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "cat" / f"{i}.png")
    return root


def _args(tiny_unet_dir, root, out) -> list[str]:
    sets = ["data.source=imagefolder", f"data.id={root}", "data.image_size=16", f"backbone.id={tiny_unet_dir}",
            "backbone.device=cpu", "extract.hook_points=[up_blocks.1]", "extract.timesteps=[10]",
            "extract.pooling=[mean, tokens]", "extract.batch_size=6", "extract.shard_size=6",
            "sae.expansion=2", "sae.k=2", "sae.steps=20", "sae.batch_size=64", "probe.concept=label",
            "probe.shots=[all]", "probe.seeds=1", "probe.controls=false", f"output_dir={out}"]
    return [a for s in sets for a in ("--set", s)]


def test_one_class_folder_is_a_one_line_error_and_run_refuses_before_the_sae(tiny_unet_dir, tmp_path, mlflow_tmp,
                                                                               capsys):
    import mlflow

    root, out = _one_class_folder(tmp_path / "images"), tmp_path / "out"
    args = _args(tiny_unet_dir, root, out)
    assert main(["extract", "--no-mlflow", *args]) == 0
    capsys.readouterr()
    rc = main(["train-probe", *args, "--set", "probe.input=features"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("revelio train-probe:")]  # the error: one line
    assert line.startswith("revelio train-probe: invalid configuration: probe.concept: the train rows")
    assert "1 class of 'label' ('cat')" in line and "one sub-folder per class" in line

    rc = main(["run", *args])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "1 class of 'label' ('cat')" in err, err
    assert not (out / "sae").exists()  # refused before the SAE trained
    runs = mlflow.search_runs(experiment_names=["revelio"], output_format="list")
    stages = {r.data.tags.get("stage"): r.info.status for r in runs}
    assert "train_sae" not in stages and stages["extract"] == "FINISHED" and stages["main"] == "FAILED", stages
