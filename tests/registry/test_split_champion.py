"""The champion set stays one set: a classifier registered alone (a few-shot one from the demo) cannot be
promoted over a champion that belongs to a set, while promoting a set member still moves the whole set."""
from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from revelio_svc import registry
from revelio_svc.cli import main
from revelio_svc.registry import RegistryError

pytest_plugins = ("tests.registry.fixtures",)

TAGS = {"dataset": "shapes", "backbone": "tiny", "hook_point": "up_blocks.1", "timestep": "10"}
NAMES = ("revelio-sae", "revelio-probe", "revelio-classifier")


def champions() -> dict[str, str]:
    return {n: str(MlflowClient().get_registered_model(n).aliases.get("champion")) for n in NAMES}


def test_a_classifier_registered_alone_cannot_split_the_champion_set(fresh_mlflow, trained, classifier_dir,
                                                                      tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, _, sae_dir, probe_dir, sae_m, probe_m = trained
    dirs = {"sae": sae_dir, "probe": probe_dir, "classifier": classifier_dir}
    metrics = {"sae": sae_m, "probe": probe_m, "classifier": probe_m}
    with mlflow.start_run():
        first = registry.register_set(dirs, metrics, TAGS)
    assert all(r.champion for r in first.values()) and champions() == dict.fromkeys(NAMES, "1")

    # what the demo's few-shot tab did: a classifier alone under the pipeline's name
    with mlflow.start_run():
        lone = registry.register_model("classifier", classifier_dir, {"accuracy": 0.9}, TAGS, "accuracy")
    assert lone.version == "2" and not lone.champion
    assert "belongs to the set" in lone.reason and "registry promote" not in lone.reason  # no bad advice
    with pytest.raises(RegistryError, match="would split the champion set"):
        registry.promote("revelio-classifier/2")
    capsys.readouterr()  # MLflow's log lines of the registrations above
    assert main(["registry", "promote", "revelio-classifier/2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("revelio registry: revelio-classifier/2 was registered alone") and "Traceback" not in err
    assert champions() == dict.fromkeys(NAMES, "1")  # nothing moved
    assert registry.promote("revelio-classifier/2", "fewshot") == "2"  # another alias is harmless

    # a set member promoted by hand moves its whole set: the champions stay one consistent set
    with mlflow.start_run():
        second = registry.register_set(dirs, metrics, TAGS)
    assert not any(r.champion for r in second.values())  # no per-image evaluation to compare: by hand
    assert registry.promote(f"revelio-classifier/{second['classifier'].version}") == "3"
    assert champions() == {"revelio-sae": "2", "revelio-probe": "2", "revelio-classifier": "3"}
    members = MlflowClient().get_model_version("revelio-classifier", "3").tags["set"]
    assert members == "revelio-sae/2,revelio-probe/2,revelio-classifier/3"
