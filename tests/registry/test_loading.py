"""Loading registered models from anywhere: the tracking URI as MLflow resolves it, fast clear failures,
no database created as a side effect, and a local cache of pulled versions."""
from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest

from revelio_svc import registry
from tests.registry.helpers import PY, subprocess_env

pytest_plugins = ("tests.registry.fixtures",)

TAGS = {"dataset": "shapes", "backbone": "tiny", "hook_point": "up_blocks.1", "timestep": "10"}


def load_in(folder, uri: str | None, tmp_path) -> subprocess.CompletedProcess:
    """`load_sae("revelio-sae@champion")` in a fresh process started in `folder`."""
    code = ("import time\n"
            "from revelio_svc.registry import load_sae\n"
            "t = time.monotonic()\n"
            "try:\n"
            "    sae = load_sae('revelio-sae@champion'); print('LOADED', sae.n_latents)\n"
            "except Exception as e:\n"
            "    print('ERROR', type(e).__name__, str(e))\n"
            "print('SECONDS', time.monotonic() - t)\n")
    env = subprocess_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([PY, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_a_load_from_another_folder_follows_mlflow_tracking_uri(registered, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = load_in(elsewhere, registered, tmp_path)
    assert "LOADED 32" in out.stdout, out.stdout + out.stderr[-2000:]


def test_without_it_the_load_fails_fast_names_the_uri_and_creates_nothing(registered, tmp_path):
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    out = load_in(elsewhere, None, tmp_path)
    assert "ERROR ModelNotFoundError" in out.stdout, out.stdout + out.stderr[-2000:]
    msg = out.stdout
    assert f"sqlite:///{elsewhere / 'mlflow.db'}" in msg and "MLFLOW_TRACKING_URI" in msg
    seconds = float(msg.rsplit("SECONDS", 1)[1])
    assert seconds < 1.0, f"the failed lookup took {seconds:.2f} s"  # after imports: the lookup itself
    assert list(elsewhere.iterdir()) == []  # no mlflow.db left behind


def test_a_pulled_version_is_cached_and_served_from_the_cache(registered, trained, tmp_path, monkeypatch):
    downloads = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                        lambda *a, **kw: downloads.append(kw.get("artifact_uri")) or real(*a, **kw))
    first = registry.load_sae("revelio-sae@champion")
    cached = list((tmp_path / "cache" / "revelio" / "models").rglob(".complete"))
    # a SQLite store whose files are in a local folder: copied from there, no download through MLflow
    assert len(cached) == 1 and cached[0].parent.name == "1" and downloads == []
    entry = cached[0].parent
    fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/revelio-sae/1",
                                                       dst_path=str(tmp_path / "dl")))
    assert sorted(str(p.relative_to(entry)) for p in entry.rglob("*") if p.name != ".complete") == sorted(
        str(p.relative_to(fetched)) for p in fetched.rglob("*"))  # the same files a download gives
    downloads.clear()
    again = registry.load_sae("revelio-sae@champion")
    assert again.n_latents == first.n_latents == 32
    assert downloads == []  # the second load read the cache (bench_registry.py times both)
    # a new version is a new cache entry: moving the alias never serves a stale version from the cache
    with mlflow.start_run():
        registry.register_model("sae", trained[2], {"fvu": 0.4}, TAGS, "fvu")
    registry.promote("revelio-sae/2")
    registry.load_sae("revelio-sae@champion")
    assert sorted(p.parent.name for p in (tmp_path / "cache").rglob(".complete")) == ["1", "2"]


def test_a_registry_load_in_a_fresh_process_never_imports_mlflow(registered, tmp_path):
    code = ("import sys\nfrom revelio_svc.registry import load_sae\n"
            "for _ in range(2):\n    sae = load_sae('revelio-sae@champion')\n"
            "print('LOADED', sae.n_latents, 'mlflow' in sys.modules)\n")
    env = subprocess_env(XDG_CACHE_HOME=str(tmp_path / "cache"), MLFLOW_TRACKING_URI=registered)
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["LOADED", "32", "False"], out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("mlruns", [False, True])
def test_the_default_tracking_uri_is_mlflows_own(tmp_path, mlruns):
    if mlruns:  # an old file store in the folder: MLflow keeps defaulting to it
        (tmp_path / "mlruns" / "0").mkdir(parents=True)
        (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    code = ("from revelio_svc.registry.access import target_uri\nours = target_uri()\n"
            "import mlflow\nprint(ours == mlflow.get_tracking_uri(), ours)\n")
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([PY, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[0] == "True", out.stdout + out.stderr[-2000:]


def test_a_cached_alias_is_resolved_without_an_mlflow_client_and_follows_the_alias(registered, trained,
                                                                                     monkeypatch):
    first = registry.load_sae("revelio-sae@champion")  # fills the cache
    with mlflow.start_run():
        registry.register_model("sae", trained[2], {"fvu": 0.4}, TAGS, "fvu")
    registry.promote("revelio-sae/2")
    registry.load_sae("revelio-sae/2")  # version 2 cached too

    def no_client(*a, **kw):
        raise AssertionError("a cached load built an MLflow client")

    monkeypatch.setattr(mlflow, "MlflowClient", no_client)
    _, info = registry.access.local_copy("revelio-sae@champion")
    assert info["version"] == "2" and info["alias"] == "champion"  # the alias moved: the new version
    _, info = registry.access.local_copy("revelio-sae/1")
    assert info["version"] == "1" and registry.load_sae("revelio-sae/1").n_latents == first.n_latents
    # what the store does not hold still gets the client's full answer (here: the client itself)
    with pytest.raises(AssertionError, match="MLflow client"):
        registry.load_sae("revelio-sae@nosuchalias")
