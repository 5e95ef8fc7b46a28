"""Every ``dhs`` command answers ``--help`` (exit 0) and unknown commands fail with a hint."""

import pytest

from jobs import cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


def test_unknown_command_names_the_choices(capsys):
    assert cli.main(["injekt"]) == 2
    assert "inject" in capsys.readouterr().err
