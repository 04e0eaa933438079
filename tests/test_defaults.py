"""One set of defaults: what `make run` uses (mlproject/configs/default.yaml) is what every command uses
without --config, what `--help` shows, and where the stand-alone commands look for each other's outputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from revelio_svc.cli import build_parser, main
from revelio_svc.cli.main import load
from revelio_svc.config import Config, load_config, to_dict

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "mlproject" / "configs" / "default.yaml"


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and not k.startswith("search_space"):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_default_yaml_is_the_built_in_defaults():
    built_in = _leaves(to_dict(load_config(None)))
    differ = {k: (v, built_in[k]) for k, v in _leaves(to_dict(load_config(DEFAULT_YAML))).items() if built_in[k] != v}
    assert not differ, f"default.yaml (first) and the dataclass defaults (second) disagree: {differ}"
    assert load_config(DEFAULT_YAML) == load_config(None) == Config()
    # every value the file writes down is the built-in one (it documents the defaults, it does not change them)
    written = _leaves(yaml.safe_load(DEFAULT_YAML.read_text()))
    assert len(written) > 30 and {k: v for k, v in written.items() if built_in[k] != v} == {}


def test_the_readme_commands_after_make_run_find_its_outputs():
    """`revelio train-sae --sae.k 16 --sae.expansion 4` (no --config) reads the store `make run` wrote."""
    from revelio_svc.features.extract import store_uri_for

    made = load_config(DEFAULT_YAML)
    mine = load(build_parser().parse_args(["train-sae", "--sae.k", "16", "--sae.expansion", "4"]))
    assert store_uri_for(mine) == store_uri_for(made)
    assert (mine.sae.normalize, mine.sae.whiten_power, mine.probe.input) == ("whiten", 0.7, "sae")


def test_help_shows_the_defaults_of_default_yaml(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-sae", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    made = load_config(DEFAULT_YAML)
    for key, value in (("sae.k", made.sae.k), ("sae.normalize", made.sae.normalize),
                       ("extract.dtype", made.extract.dtype), ("probe.input", made.probe.input)):
        # the last mention is the option's own help line (the first is the usage line)
        assert f"(default: {value!r})" in out.rsplit(f"--{key} ", 1)[1][:80], key
    assert "(default: 'up_blocks.1')" in out.rsplit("--extract.token_hook_points ", 1)[1][:80]


def test_a_missing_store_names_the_command_that_writes_it(tmp_path, mlflow_tmp, capsys):
    rc = main(["train-sae", "--set", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.startswith("revelio train-sae: no feature store at") and "`revelio extract`" in err
