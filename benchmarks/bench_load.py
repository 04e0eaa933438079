"""Where a user waits for a model: the classifier load from the registry, its first prediction, the atlas.

Builds what it measures in a temporary folder: a short chain on the default backbone (`builtin:shapes-unet`,
the default hook point and timestep, a few hundred shapes, a briefly trained token SAE and its probe),
registered as `revelio-classifier` in a fresh SQLite MLflow store. Then, each in a fresh Python process and
alternating between the code under test and a baseline:

- `load_classifier("models:/revelio-classifier@champion")`: first load (empty model cache) and repeat load
  (the same cache), split into the import of `revelio_svc.registry` and the call, plus the first and the
  second `predict` of one image after it (the first must not pay back what the load saved);
- the UNet alone: diffusers (`import diffusers` + `UNet2DModel.from_pretrained`) against
  `backbones.unet2d_native.load_native_unet` (built on the meta device, tensors assigned from safetensors);
- with `--atlas`: the demo's image atlas of 2000 points drawn cold and again (cached per model version).

The baseline is the same measurement run against another revision's `revelio_svc` (`--baseline-rev REV`,
e.g. the commit before the change, extracted with `git archive` into the temporary folder); without it, or
without git, only this code is measured.
Targets (issue #25): repeat load <= 0.5 s, first load <= 1.5 s; atlas first draw <= 10 s.

    python benchmarks/bench_load.py [--rounds 3] [--baseline-rev REV] [--atlas] [--images 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {"first": 1.5, "repeat": 0.5, "atlas_first": 10.0}
URI = "models:/revelio-classifier@champion"

LOAD = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
t1 = time.perf_counter()
from revelio_svc.registry import load_classifier
t2 = time.perf_counter()
clf = load_classifier(sys.argv[1])
t3 = time.perf_counter()
img = np.load(sys.argv[2])
clf.predict([img])
t4 = time.perf_counter()
clf.predict([img[::-1].copy()])
t5 = time.perf_counter()
mods = [m for m in ("mlflow", "diffusers", "sklearn", "gradio") if m in sys.modules]
print(json.dumps({"import_torch_s": t1 - t0, "import_registry_s": t2 - t1, "load_s": t3 - t2,
                  "first_predict_s": t4 - t3, "second_predict_s": t5 - t4, "heavy_modules": mods}))
"""

UNET = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
path = sys.argv[2]
if sys.argv[1] == "diffusers":
    from diffusers import UNet2DModel
    t2 = time.perf_counter()
    m = UNet2DModel.from_pretrained(path, torch_dtype=torch.float32)
else:
    from revelio_svc.backbones.unet2d_native import load_native_unet
    t2 = time.perf_counter()
    m = load_native_unet(path)
t3 = time.perf_counter()
print(json.dumps({"import_s": t2 - t1, "build_s": t3 - t2, "total_s": t3 - t1}))
"""


def _run(code: str, args: list[str], env: dict[str, str], cwd: Path | None = None) -> dict:
    # run from another folder: `python -c` puts the working directory first on sys.path, which would shadow
    # the PYTHONPATH that selects the code under test
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False,
                         cwd=cwd or tempfile.gettempdir())
    if out.returncode != 0:
        sys.exit(f"benchmark step failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build(work: Path, n_images: int, latent_pooling: str = "max") -> tuple[str, Path]:
    """Train and register a small classifier on the default backbone; returns (tracking uri, test image)."""
    import mlflow
    import numpy as np

    from revelio_svc.config import load_config, replace
    from revelio_svc.features.extract import extract
    from revelio_svc.inference.classifier import Classifier
    from revelio_svc.registry import register_model
    from revelio_svc.sae.trainer import train_sae
    from revelio_svc.stages import train_probe_stage

    cfg = load_config(ROOT / "mlproject" / "configs" / "default.yaml", [
        f"data.n_images={n_images}", "extract.hook_points=[up_blocks.1]", "extract.timesteps=[10]",
        "extract.pooling=[mean, tokens]", "extract.token_hook_points=[up_blocks.1]", "extract.token_timesteps=[10]",
        "extract.batch_size=64", f"extract.shard_size={n_images}", "sae.steps=30", "sae.batch_size=1024",
        "sae.eval_every=1000", "sae.checkpoint_every=100000", "probe.shots=[all]", "probe.seeds=1",
        # max pooling and a dense probe by default: what the baseline revision can read, so both load the
        # same model (--latent-pooling top8 builds the default model's pooling, which only this code reads)
        f"sae.latent_pooling={latent_pooling}", "probe.latents_per_class=0",
        "probe.controls=false", f"output_dir={work / 'out'}"])
    store_uri = extract(cfg, progress=False).store_uri
    cfg = replace(cfg, **{"sae.store": store_uri, "probe.store": store_uri})
    sae_dir = train_sae(cfg, progress=False).output_dir
    cfg = replace(cfg, **{"probe.sae": sae_dir})
    probe_dir = train_probe_stage(cfg).probe_dir
    clf_dir = work / "classifier"
    Classifier.build(cfg, sae_dir, probe_dir, store_uri).save(clf_dir)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient(tracking_uri=uri).create_experiment("bench", artifact_location=str(work / "artifacts"))
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        register_model("classifier", clf_dir, {"accuracy": 1.0})
    from revelio_svc.data import load_dataset

    img = work / "image.npy"
    np.save(img, load_dataset(cfg.data).image(0))
    return uri, img


def baseline_tree(work: Path, rev: str) -> Path | None:
    dst = work / "baseline"
    dst.mkdir()
    try:
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "revelio_svc"], capture_output=True,
                              check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=arch, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"baseline: skipped (git archive {rev} failed: {e})")
        return None
    return dst


def measure_loads(uri: str, img: Path, trees: dict[str, Path], rounds: int, work: Path) -> dict:
    rows: dict[str, dict[str, list]] = {name: {} for name in trees}
    for r in range(rounds):
        for name, tree in (trees.items() if r % 2 == 0 else reversed(list(trees.items()))):
            cache = work / f"cache-{name}-{r}"
            env = {**os.environ, "PYTHONPATH": str(tree), "XDG_CACHE_HOME": str(cache), "MLFLOW_TRACKING_URI": uri,
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                   "GIT_PYTHON_REFRESH": "quiet", "HF_HUB_OFFLINE": "1"}
            for when in ("first", "repeat"):
                res = _run(LOAD, [URI, str(img)], env)
                for k, v in res.items():
                    rows[name].setdefault(f"{when}_{k}", []).append(v)
            shutil.rmtree(cache, ignore_errors=True)
    out = {}
    for name, cols in rows.items():
        out[name] = {k: (round(statistics.median(v), 3) if isinstance(v[0], float) else v[-1]) for k, v in cols.items()}
    return out


ATLAS = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from revelio_svc.inference.classifier import Classifier
from revelio_svc.app.service import DemoService
clf = Classifier.load(sys.argv[1])
t0 = time.perf_counter()
xy = DemoService(clf, cache_dir=sys.argv[2], browse_images=2000).atlas("images")
t1 = time.perf_counter()
again = DemoService(clf, cache_dir=sys.argv[2], browse_images=2000).atlas("images")  # another process's view
t2 = time.perf_counter()
print(json.dumps({"n_points": int(len(xy)), "first_draw_s": t1 - t0, "cached_s": t2 - t1,
                  "same": bool((xy == again).all())}))
"""


def measure_atlas(work: Path, trees: dict[str, Path], env: dict[str, str]) -> dict:
    """The demo's image atlas (2000 points: dataset latents + embedding), cold, then from its cache."""
    out = {}
    for name, tree in trees.items():
        cache = work / f"demo-cache-{len(out)}"
        shutil.rmtree(cache, ignore_errors=True)  # a reused --work keeps the last run's cache: start cold
        out[name] = _run(ATLAS, [str(work / "classifier"), str(cache)], {**env, "PYTHONPATH": str(tree)})
        out[name]["loadavg"] = round(os.getloadavg()[0], 2)
    return out


def measure_unet(rounds: int, env: dict[str, str]) -> dict:
    from revelio_svc.backbones.hub import resolve_local

    path = str(resolve_local("builtin:shapes-unet"))
    res: dict[str, list[dict]] = {"diffusers": [], "native": []}
    for r in range(rounds):
        for how in (("diffusers", "native") if r % 2 == 0 else ("native", "diffusers")):
            res[how].append(_run(UNET, [how, path], env))
    return {how: {k: round(statistics.median(x[k] for x in v), 3) for k in v[0]} for how, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=2000,
                    help="shapes in the chain that builds the classifier (the default model's 2000)")
    ap.add_argument("--baseline-rev", default=None, help="git revision whose revelio_svc is the baseline")
    ap.add_argument("--atlas", action="store_true", help="also time the demo's atlas (2000 points)")
    ap.add_argument("--no-unet", action="store_true", help="skip the UNet-alone comparison")
    ap.add_argument("--latent-pooling", default="max",
                    help="the classifier's sae.latent_pooling (max: the baseline can read it; top8: the default's)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the built classifier here (and reuse one built there by an earlier run)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    load = os.getloadavg()
    result: dict = {"loadavg_start": [round(x, 2) for x in load]}
    with tempfile.TemporaryDirectory(prefix="revelio-bench-load-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        if (work / "image.npy").is_file() and (work / "mlflow.db").is_file():
            uri, img = f"sqlite:///{work / 'mlflow.db'}", work / "image.npy"
            print(f"reusing the classifier registered in {work}")
        else:
            uri, img = build(work, args.images, args.latent_pooling)
            print(f"built and registered the classifier in {time.perf_counter() - t:.1f} s")
        trees = {"this": ROOT}
        if args.baseline_rev:
            base = baseline_tree(work, args.baseline_rev)
            if base is not None:
                trees[f"baseline ({args.baseline_rev})"] = base
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        if not args.no_unet:
            result["unet"] = measure_unet(args.rounds, env)
            print("UNet alone:", json.dumps(result["unet"]))
        result["load"] = measure_loads(uri, img, trees, args.rounds, work)
        for name, row in result["load"].items():
            print(f"{name}:", json.dumps(row))
        if args.atlas:
            result["atlas"] = measure_atlas(work, trees, env)
            for name, row in result["atlas"].items():
                print(f"atlas, {name}:", json.dumps(row))
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    this = result["load"]["this"]
    print(f"targets: first load <= {TARGETS_S['first']} s, repeat <= {TARGETS_S['repeat']} s "
          f"(import of revelio_svc.registry + load_classifier; this code: first "
          f"{this['first_import_registry_s'] + this['first_load_s']:.2f} s, repeat "
          f"{this['repeat_import_registry_s'] + this['repeat_load_s']:.2f} s)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
