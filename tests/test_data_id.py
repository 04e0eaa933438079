"""data.id only means something for hf and imagefolder: set with a generated dataset, it is refused."""
from __future__ import annotations

import pytest

from revelio_svc.cli import main
from revelio_svc.config import ConfigError, load_config


@pytest.mark.parametrize("source", ["shapes", "digits"])
def test_data_id_with_a_generated_dataset_is_refused(source):
    with pytest.raises(ConfigError, match=r"^data\.id: is only read when data\.source is hf or imagefolder, "
                                          rf"but data\.source='{source}'"):
        load_config(None, [f"data.source={source}", "data.id=my-pets"])


def test_a_command_refuses_it_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "--set", "data.id=my-pets"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.id" in err and "remove data.id='my-pets'" in err


def test_data_id_still_names_hf_and_imagefolder_datasets(tmp_path):
    from revelio_svc.tracking.runs import run_name

    cfg = load_config(None, ["data.source=imagefolder", f"data.id={tmp_path}"])
    assert str(tmp_path) in run_name(cfg, "extract")
    assert run_name(load_config(None, []), "extract").startswith("extract · shapes · ")
    with pytest.raises(ConfigError, match="data.id: is required"):
        load_config(None, ["data.source=hf"])
