import subprocess
import sys

import pytest

from revelio_svc.cli import COMMANDS, build_parser, main

EXPECTED = {"pretrain", "extract", "train-sae", "train-probe", "tune", "sweep", "run", "registry", "demo"}


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
    assert main(["extract", "--set", "extract.hook_points=[nope]", "--set", "sae.k=x"]) == 2
    err = capsys.readouterr().err
    assert "sae.k" in err
