import subprocess
import sys

import pytest

from revelio_svc.cli import COMMANDS, build_parser, main

EXPECTED = {"pretrain", "extract", "train-sae", "train-probe", "tune", "sweep", "eval", "eval-frontier", "run", "registry",
            "demo"}


def test_every_command_of_the_interface_exists():
    assert EXPECTED <= set(COMMANDS)


@pytest.mark.parametrize("cmd", sorted(EXPECTED))
def test_command_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--set" in out


def test_top_level_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "revelio_svc.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for cmd in EXPECTED:
        assert cmd in out


def test_bad_override_exits_2_with_message(capsys):
    assert main(["extract", "--set", "extract.hook_points=[nope]", "--set", "extract.token_hook_points=[]",
                 "--set", "sae.k=x"]) == 2
    err = capsys.readouterr().err
    assert "sae.k" in err


def test_mlproject_is_derived_from_the_command_table():
    from pathlib import Path

    from revelio_svc.cli.mlproject import ENTRY_POINTS, render

    assert (Path(__file__).resolve().parents[1] / "MLproject").read_text() == render()
    assert set(ENTRY_POINTS.values()) <= set(COMMANDS)


@pytest.mark.parametrize("overrides", ["", "sae.k=32", "sae.k=32 sae.normalize=scalar",
                                       "extract.timesteps=[10, 50] probe.concept=colour"])
def test_mlflow_hands_every_override_to_the_entry_point(overrides, monkeypatch):
    # MLflow shell-quotes each parameter value itself: a template that quotes it again splits a value with
    # spaces into stray arguments (`make run SET="a=1 b=2"` failed that way)
    import shlex
    from pathlib import Path

    from mlflow.projects._project_spec import load_project

    import mlproject.entry as entry

    root = Path(__file__).resolve().parents[1]
    ep = load_project(str(root)).get_entry_point("main")
    argv = shlex.split(ep.compute_command({"config": "c.yaml", "overrides": overrides}, None))
    assert argv[:4] == ["python", "-m", "mlproject.entry", "run"]
    seen = []
    monkeypatch.setattr(entry, "revelio_main", lambda args: seen.append(args) or 0)
    assert entry.main(argv[3:]) == 0
    expected = ["run", "--config", "c.yaml"]
    for item in shlex.split(overrides):
        expected += ["--set", item]
    assert seen == [expected]


def test_every_config_field_is_a_command_line_option(capsys):
    import dataclasses

    from revelio_svc.config import Config

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    cfg = Config()
    for section in dataclasses.fields(Config):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                assert f"--{section.name}.{f.name}" in out, f"{section.name}.{f.name}"


def test_options_override_set_which_overrides_the_file(tmp_path):
    from revelio_svc.cli.main import load

    conf = tmp_path / "c.yaml"
    conf.write_text("sae:\n  k: 8\n  expansion: 2\nextract:\n  timesteps: [10]\n")
    args = build_parser().parse_args(["train-sae", "--config", str(conf), "--set", "sae.k=16", "--set", "sae.seed=3",
                                      "--sae.k", "24", "--extract.timesteps", "[10, 100]"])
    cfg = load(args)
    assert (cfg.sae.k, cfg.sae.expansion, cfg.sae.seed, cfg.extract.timesteps) == (24, 2, 3, (10, 100))
    assert main(["train-sae", "--sae.variant", "nope"]) == 2
