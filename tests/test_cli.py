"""pipelines/cli.py: option placement, exit statuses and the help that documents them."""

import pytest

from pipelines.run import cli
from pipelines.run.cli import EXIT_BUG, EXIT_STAGE_ERROR, EXIT_USAGE, build_parser, main


@pytest.mark.parametrize("argv", [["--debug", "--quiet", "train", "d"],
                                  ["train", "d", "--debug", "--quiet"],
                                  ["--debug", "train", "d", "--quiet"]])
def test_global_options_before_or_after_the_stage(argv):
    # the README and the Makefile's ARGS put them after the stage name
    args = build_parser().parse_args(argv)
    assert args.debug is True and args.quiet is True


def test_global_options_default_off():
    args = build_parser().parse_args(["score", "d"])
    assert args.debug is False and args.quiet is False


def test_debug_after_the_stage_shows_the_traceback(tmp_path):
    from cellfeat.data import CohortError

    (tmp_path / "c.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n../x,1,M,1/1/1950,5\n")
    with pytest.raises(CohortError):
        main(["features", str(tmp_path), "--debug"])


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "d", "--no-such-option"])
    assert e.value.code == EXIT_USAGE == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_stage_error_exits_1_in_one_line(tmp_path, capsys):
    (tmp_path / "c.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n../x,1,M,1/1/1950,5\n")
    assert main(["features", str(tmp_path)]) == EXIT_STAGE_ERROR == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'../x' is not a plain folder name" in err[0]


def test_unexpected_error_exits_3_and_asks_for_debug(monkeypatch, capsys):
    from pipelines.run import stages

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(stages, "stage_synthetic", broken)
    assert main(["synthetic", "out"]) == EXIT_BUG == 3
    err = capsys.readouterr().err
    assert "ZeroDivisionError: boom" in err and "--debug" in err


def test_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in out, code
    assert cli.EXIT_INTERRUPTED == 130


def test_score_help_says_where_the_reference_date_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "reference date, stored in the bundle" in " ".join(capsys.readouterr().out.split())
