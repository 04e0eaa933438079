"""One list syntax for --set and --section.key options; unknown options name the known keys."""
from __future__ import annotations

import pytest

from revelio_svc.cli import build_parser, main
from revelio_svc.cli.main import load


def _cfg(argv):
    return load(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["--set", "extract.timesteps=10,100"],
    ["--set", "extract.timesteps=[10,100]"],
    ["--set", "extract.timesteps=[10, 100]"],
    ["--extract.timesteps", "10,100"],
    ["--extract.timesteps", "[10,100]"],
])
def test_one_list_syntax_for_set_and_options(argv):
    assert _cfg(["extract", *argv]).extract.timesteps == (10, 100)


def test_comma_lists_of_strings():
    cfg = _cfg(["train-probe", "--set", "extract.hook_points=mid_block,up_blocks.1", "--probe.shots", "1,5,all"])
    assert cfg.extract.hook_points == ("mid_block", "up_blocks.1")
    assert cfg.probe.shots == ("1", "5", "all")


def test_a_bad_item_of_a_comma_list_is_named(capsys):
    assert main(["extract", "--set", "extract.timesteps=10,x"]) == 2
    assert "extract.timesteps[1]" in capsys.readouterr().err


def test_unknown_option_gives_the_same_known_keys_message_as_set(capsys):
    assert main(["train-sae", "--set", "sae.kk=3"]) == 2
    via_set = capsys.readouterr().err
    assert main(["train-sae", "--sae.kk", "3"]) == 2
    via_option = capsys.readouterr()
    assert via_option.err == via_set
    assert via_option.err.startswith("revelio train-sae: invalid configuration: unknown key sae.kk")
    assert "known keys:" in via_option.err and "usage:" not in via_option.err
    assert main(["train-sae", "--sae.kk=3"]) == 2
    assert capsys.readouterr().err == via_set


def test_an_option_of_another_command_says_which_sections_it_reads(capsys):
    assert main(["demo", "--sae.k", "3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("revelio demo: invalid configuration: --sae.k is not an option of `revelio demo`, "
                           "which reads the sections demo, tracking")


def test_other_unknown_arguments_still_fail_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["extract", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
