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


MISSING = "/nonexistent/dhs-input"


@pytest.mark.parametrize("argv", [
    ["manifest", "--parent", f"{MISSING}.parquet", "--config", "demo", "--out", "{tmp}/o"],
    ["manifest", "--hosts", MISSING, "--config", "demo", "--out", "{tmp}/o"],
    ["inject", "--manifest", MISSING, "--coadds", MISSING, "--out", "{tmp}/o"],
    ["inject", "--manifest", MISSING, "--hosts", MISSING, "--out", "{tmp}/o"],
    ["train", "--stamps", MISSING, "--out", "{tmp}/o"],
    ["score", "--checkpoint", f"{MISSING}.pt", "--input", MISSING, "--out", "{tmp}/o"],
    ["evaluate", "--scores", MISSING, "--out", "{tmp}/o"],
    ["hosts", "build", "--cutouts", "local:/nonexistent", "--catalog", f"{MISSING}.csv", "--out", "{tmp}/o"],
    ["cutout-cache", "--catalog", f"{MISSING}.csv", "--dest", "{tmp}/o", "--no-progress"],
    ["anchors", "metrics", "--scores", f"{MISSING}.parquet"],
    ["completeness", "--scores", MISSING, "--out", "{tmp}/o", "--fpr", "0.01"],
    ["realism", "--stamps", MISSING, "--out", "{tmp}/o"],
])
def test_a_missing_input_is_one_error_line_and_exit_2(argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "Traceback" not in err[0] and not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="_manifest.json"):
        cli.main(["train", "--stamps", MISSING, "--out", str(tmp_path / "o"), "--debug"])


@pytest.mark.parametrize("argv", [
    ["manifest", "--parent", f"{MISSING}.parquet", "--config", "demo", "--out", "{tmp}/o", "--partitions", "0"],
    ["inject", "--manifest", MISSING, "--coadds", MISSING, "--out", "{tmp}/o", "--partitions", "-2"],
    ["score", "--checkpoint", f"{MISSING}.pt", "--input", MISSING, "--out", "{tmp}/o", "--partitions", "0"],
    ["demo", "--out", "{tmp}/o", "--partitions", "0"],
])
def test_a_partition_count_below_one_is_refused_before_anything_runs(argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "error: argument --partitions" in err and "integer >= 1" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
