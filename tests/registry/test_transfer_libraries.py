"""Proof, not belief: exports load in SAELens (`SAE.load_from_disk`) and sparsify (`SparseCoder.load_from_disk`)
and give our codes and reconstructions on real store vectors (max abs diff ≤ 1e-4 in float32, same active set).

Both libraries are in the `test` extra (pyproject.toml), so `make test` runs these.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import mlflow
import torch
import yaml

from revelio_svc import registry
from revelio_svc.config import to_dict
from revelio_svc.sae import BatchTopKSAEConfig, TopKSAEConfig, build_sae, read_sae
from tests.registry.helpers import REPO, subprocess_env
from tests.registry.test_registry import cli
from tests.registry.test_transfer import TAGS, store_vectors
from tests.sae.layouts import write_unbox

pytest_plugins = ("tests.registry.fixtures",)

TOL = 1e-4


def whitened_sae(x: torch.Tensor, variant: str, seed: int = 0):
    """An SAE with normalize=whiten (centre + matrix) fitted on the store, biases and encoder moved off init."""
    d = x.shape[1]
    cls = BatchTopKSAEConfig if variant == "batchtopk" else TopKSAEConfig
    sae = build_sae(cls(d_in=d, n_latents=4 * d, k=4, normalize="whiten", whiten_power=0.5, hook_point="up_blocks.1",
                        timestep=10, input="tokens"), seed=seed)
    sae.init_from_data(x)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.copy_(0.05 * torch.randn(sae.b_enc.shape, generator=g))
        if variant == "batchtopk":
            pre = sae.pre_activations(sae.normalize(x))
            sae.threshold.fill_(float(pre.topk(4, dim=1).values[:, -1].clamp_min(0).mean()))
    return sae.eval()


def export(sae_dir, tmp_path, fmt: str):
    with mlflow.start_run():
        reg = registry.register_model("sae", sae_dir, {"fvu": 0.5}, TAGS, "fvu")
    out = tmp_path / f"export-{fmt}"
    assert cli(["registry", "export", f"revelio-sae/{reg.version}", str(out), "--format", fmt]) == 0
    return out


def candidates(trained, tmp_path):
    """The SAE the tiny chain trained (normalize=scalar) and whitened TopK / BatchTopK SAEs on the same store."""
    x = store_vectors(trained[1])
    out = [("trained", trained[2])]
    for variant in ("topk", "batchtopk"):
        d = tmp_path / f"whiten-{variant}"
        whitened_sae(x, variant).save(d)
        out.append((f"whiten-{variant}", d))
    return x, out


def dense(values: torch.Tensor, indices: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(values.shape[0], n, dtype=values.dtype).scatter_(1, indices, values)


def check(ours, codes, recon, x):
    with torch.no_grad():
        z, rec = ours.encode(x), ours(x)
    assert codes.dtype == torch.float32 and codes.shape == z.shape
    assert torch.equal(codes != 0, z != 0), "different active sets"
    assert float((codes - z).abs().max()) <= TOL
    assert float((recon - rec).abs().max()) <= TOL * max(1.0, float(x.abs().max()))


def test_saelens_loads_the_export_and_gives_our_codes(fresh_mlflow, trained, tmp_path):
    import sae_lens
    x, sources = candidates(trained, tmp_path)
    for name, sae_dir in sources:
        ours = read_sae(sae_dir)
        theirs = sae_lens.SAE.load_from_disk(str(export(sae_dir, tmp_path / name, "saelens")), device="cpu")
        assert theirs.cfg.d_sae == ours.n_latents and theirs.cfg.metadata.hook_name == "up_blocks.1"
        expected_arch = "jumprelu" if ours.config.variant == "batchtopk" else "topk"
        assert theirs.cfg.architecture() == expected_arch, name
        with torch.no_grad():
            codes = theirs.encode(x)
            check(ours, codes, theirs.decode(codes), x)


def test_sparsify_loads_the_export_and_gives_our_codes(fresh_mlflow, trained, tmp_path):
    from sparsify import SparseCoder

    x, sources = candidates(trained, tmp_path)
    for name, sae_dir in sources:
        ours = read_sae(sae_dir)
        if ours.config.variant == "batchtopk":
            continue  # refused for sparsify (tested in tests/sae/test_formats.py)
        theirs = SparseCoder.load_from_disk(export(sae_dir, tmp_path / name, "sparsify") / "up_blocks.1")
        assert theirs.cfg.k == ours.k and theirs.num_latents == ours.n_latents
        with torch.no_grad():
            top_acts, top_indices, _ = theirs.encode(x)
            codes = dense(top_acts, top_indices, ours.n_latents)
            check(ours, codes, theirs.decode(top_acts, top_indices), x)


def readme_commands() -> list[str]:
    """The command lines of the README's "Use with SAELens / sparsify" block (comments dropped)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Use with SAELens / sparsify", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.split(r"\s{2,}#", line)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_commands_run(fresh_mlflow, trained, tmp_path, monkeypatch, capsys):
    """Every line of the README block, in order, in a fresh folder with the tiny chain's SAE as champion
    (`revelio` lines through the real CLI with the tiny chain's config, `python -c` lines in a subprocess)."""
    lines = readme_commands()
    assert [ln.split()[:3] for ln in lines if ln.startswith("revelio registry")] == [
        ["revelio", "registry", "export"], ["revelio", "registry", "export"], ["revelio", "registry", "import"],
        ["revelio", "registry", "import"]]
    with mlflow.start_run():
        registry.register_model("sae", trained[2], {"fvu": 0.5}, TAGS, "fvu")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for ln in lines:  # the published SAE the README imports, small, in its own layout and folder name
        if "--format unbox" in ln:
            write_unbox(work / shlex.split(ln)[3], 16, 64, 4)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(to_dict(trained[0])))
    for ln in lines:
        args = shlex.split(ln)
        if args[0] == "revelio":
            extra = ["--config", str(conf)] if args[1] == "train-probe" else []
            assert cli(args[1:] + extra) == 0, ln
        else:
            assert args[:2] == ["python", "-c"], ln
            r = subprocess.run([sys.executable, "-c", args[2]], cwd=work, capture_output=True, text=True,
                               env=subprocess_env(), timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            capsys.readouterr()
            print(r.stdout)
    out = capsys.readouterr().out
    assert "held-out accuracy" in out
    assert (work / "sae_saelens" / "README.md").is_file() and (work / "sae_sparsify" / "up_blocks.1").is_dir()
    versions = {v.tags.get("origin", "trained"): v for v in
                mlflow.MlflowClient().search_model_versions("name='revelio-sae'")}
    assert set(versions) == {"trained", "unbox", "saelens"}
    assert versions["unbox"].tags["hook_point"] == "down_blocks.2.attentions.1:update"
    assert versions["unbox"].tags["backbone"] == "stabilityai/sdxl-turbo"
