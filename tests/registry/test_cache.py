"""The model cache is keyed by where the store really is and by the version's run id: two projects that both
use the relative `sqlite:///mlflow.db` never serve each other's models, whichever way a model is loaded."""
from __future__ import annotations

import json
import subprocess

import mlflow
import pytest

from revelio_svc import registry
from revelio_svc.registry.access import COMPLETE, cache_entry, store_location
from revelio_svc.sae import TopKSAEConfig, build_sae
from tests.registry.helpers import PY, isolate_mlflow_env, new_store, reset_mlflow_experiment, subprocess_env

pytest_plugins = ("tests.registry.fixtures",)

TAGS = {"dataset": "shapes", "backbone": "tiny", "hook_point": "up_blocks.1", "timestep": "10"}


def _register_sae_in(project, template_db, monkeypatch, n_latents: int) -> str:
    """A project folder with its own mlflow.db holding one registered SAE of `n_latents` latents."""
    uri = new_store(template_db, project)
    isolate_mlflow_env(monkeypatch, uri)
    reset_mlflow_experiment()
    mlflow.set_experiment("revelio")
    sae_dir = project / "sae"
    build_sae(TopKSAEConfig(d_in=8, n_latents=n_latents, k=2, input="tokens", hook_point="up_blocks.1",
                            timestep=10), seed=0).save(sae_dir)
    with mlflow.start_run():
        registry.register_model("sae", sae_dir, {"fvu": 0.5}, TAGS, "fvu")
    return uri


def _load_with_relative_uri(project, cache) -> str:
    """`load_sae('revelio-sae@champion')` in a fresh process started in `project`, with the relative URI."""
    code = ("from revelio_svc.registry import load_sae\n"
            "print('LOADED', load_sae('revelio-sae@champion').n_latents)\n")
    env = subprocess_env(XDG_CACHE_HOME=str(cache), MLFLOW_TRACKING_URI="sqlite:///mlflow.db")
    out = subprocess.run([PY, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert "LOADED" in out.stdout, out.stdout + out.stderr[-2000:]
    return out.stdout.split("LOADED", 1)[1].split()[0]


@pytest.fixture()
def two_projects(template_db, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a, b = tmp_path / "project_a", tmp_path / "project_b"
    uri_a = _register_sae_in(a, template_db, monkeypatch, n_latents=24)
    uri_b = _register_sae_in(b, template_db, monkeypatch, n_latents=40)
    yield a, b, uri_a, uri_b
    while mlflow.active_run() is not None:
        mlflow.end_run()
    reset_mlflow_experiment()


def test_two_projects_with_the_same_relative_uri_each_get_their_own_model(two_projects, tmp_path, monkeypatch):
    a, b, uri_a, uri_b = two_projects
    cache = tmp_path / "cache"
    # project A first fills the cache; project B, same relative URI, same name and version, must not read it
    assert _load_with_relative_uri(a, cache) == "24"
    assert _load_with_relative_uri(b, cache) == "40"
    entries = sorted(cache.rglob(COMPLETE))
    assert len(entries) == 2  # one per store
    # the Python API with the absolute URI finds the same entries (one key per store, however it is written)
    for project, uri, n in ((a, uri_a, 24), (b, uri_b, 40)):
        isolate_mlflow_env(monkeypatch, uri)
        monkeypatch.chdir(tmp_path)  # elsewhere: the absolute URI names the store
        downloads = []
        real = mlflow.artifacts.download_artifacts
        monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                            lambda *args, **kw: downloads.append(kw) or real(*args, **kw))
        assert registry.load_sae("revelio-sae@champion").n_latents == n
        assert downloads == []  # served from the entry the relative-URI load wrote
        assert store_location(uri) == store_location(f"sqlite:///{(project / 'mlflow.db').relative_to(tmp_path)}")
        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", real)
    assert sorted(cache.rglob(COMPLETE)) == entries


def test_a_cached_copy_of_another_run_is_not_served(two_projects, tmp_path, monkeypatch):
    """An entry whose recorded run id is not the version's (a store rebuilt in place) is fetched again."""
    a, _, uri_a, _ = two_projects
    isolate_mlflow_env(monkeypatch, uri_a)
    assert registry.load_sae("revelio-sae/1").n_latents == 24
    mv = registry.resolve_version("revelio-sae/1")
    entry = cache_entry(mv)
    assert json.loads((entry / COMPLETE).read_text())["run_id"] == mv.run_id
    # plant another model's files under this version's key, recorded as another run's
    other = tmp_path / "other_sae"
    build_sae(TopKSAEConfig(d_in=8, n_latents=56, k=2, input="tokens"), seed=1).save(other)
    payload = registry.access.payload_dir(entry, "sae")
    for f in other.iterdir():
        (payload / f.name).write_bytes(f.read_bytes())
    (entry / COMPLETE).write_text(json.dumps({"run_id": "0" * 32, "source": mv.source}))
    assert registry.load_sae("revelio-sae/1").n_latents == 24  # downloaded again, not the planted copy
    assert json.loads((entry / COMPLETE).read_text())["run_id"] == mv.run_id
