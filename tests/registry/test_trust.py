"""A registered model's code file (what MLflow's own loaders run) is checked against the installed package's
copy before revelio uses the model: a tampered file is refused with a clear message, never used."""
from __future__ import annotations

import pytest

from revelio_svc import registry
from revelio_svc.cli import main
from revelio_svc.registry import UntrustedModelError
from revelio_svc.registry.trust import ENTRY_CODE

pytest_plugins = ("tests.registry.fixtures",)

EVIL = ENTRY_CODE + "\nimport os; os.system('echo owned')\n"


def _code_files(root):
    return [p for p in root.rglob("revelio_pyfunc.py") if (p.parent / "MLmodel").is_file()]


def test_an_untouched_model_loads_and_its_code_is_the_packages(registered, tmp_path):
    assert registry.load_sae("revelio-sae@champion").n_latents == 32
    (code,) = _code_files(tmp_path / "cache")
    assert code.read_text() == ENTRY_CODE


def test_a_tampered_code_file_in_the_artifact_store_is_refused(registered, tmp_path, capsys):
    stored = _code_files(tmp_path / "tracking" / "artifacts")
    assert len(stored) == 1
    stored[0].write_text(EVIL)  # someone with write access to the artifact store
    with pytest.raises(UntrustedModelError, match="revelio_pyfunc.py differs from the one this revelio"):
        registry.load_sae("revelio-sae@champion")
    # the command line: one line, exit 1, and a pull leaves no copy behind to be served from
    dest = tmp_path / "pulled"
    capsys.readouterr()  # MLflow's log lines of the registration
    assert main(["registry", "pull", "revelio-sae@champion", "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("revelio registry: ") and "differs" in err and "Traceback" not in err
    assert not dest.exists()


def test_a_tampered_cached_or_pulled_copy_is_refused(registered, tmp_path):
    dest = registry.pull("revelio-sae@champion", tmp_path / "pulled")
    assert registry.load_sae(str(dest)).n_latents == 32
    (dest / "revelio_pyfunc.py").write_text(EVIL)
    with pytest.raises(UntrustedModelError, match="differs"):
        registry.load_sae(str(dest))
    # a cached copy: loaded once (cached), then changed on disk
    registry.load_sae("revelio-sae/1")
    (cached,) = _code_files(tmp_path / "cache")
    cached.write_text(EVIL)
    with pytest.raises(UntrustedModelError):
        registry.load_sae("revelio-sae/1")


def test_other_ways_to_run_code_are_refused_too(registered, tmp_path):
    import yaml

    dest = registry.pull("revelio-sae@champion", tmp_path / "pulled")
    ml = yaml.safe_load((dest / "MLmodel").read_text())
    for change, needle in (({"code": "code"}, "code directories"),
                           ({"loader_module": "mlflow.pyfunc.model"}, "loaded by 'mlflow.pyfunc.model'"),
                           ({"model_code_path": "/elsewhere/other.py"}, "names no code file")):
        bad = {**ml, "flavors": {**ml["flavors"], "python_function": {**ml["flavors"]["python_function"], **change}}}
        (dest / "MLmodel").write_text(yaml.safe_dump(bad))
        with pytest.raises(UntrustedModelError, match=needle):
            registry.load_sae(str(dest))
