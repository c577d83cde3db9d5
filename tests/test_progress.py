"""pipelines.run.progress: bars on a terminal only, one line per step in a log (issue 30)."""

import io
from types import SimpleNamespace

import pytest

from cellfeat.data import load_cohort
from cellfeat.synthetic import write_cohort
from pipelines.run.cli import main
from pipelines.run.progress import show_progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("quiet, progress, terminal, shown", [
    (False, False, True, True),    # a person watching
    (False, False, False, False),  # a log file or a pipe
    (False, True, False, True),    # asked for
    (True, True, True, False),     # --quiet wins
    (True, False, True, False),
])
def test_bars_only_on_a_terminal_unless_asked(quiet, progress, terminal, shown):
    stream = _Terminal() if terminal else io.StringIO()
    assert show_progress(SimpleNamespace(quiet=quiet, progress=progress), stream) is shown


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("p") / "cohort", n_train=2, n_test=1,
                        cells=(3, 4), seed=3)


@pytest.mark.slow  # the features stage, twice
def test_a_stage_writing_into_a_log_draws_no_bar(small_cohort, tmp_path, capsys):
    """Without --quiet and with stderr not a terminal (pytest's capture, like a file), the
    features stage writes no carriage-return redraw, and says what it did in one line; with
    --progress it draws its bar."""
    args = ["features", str(small_cohort), "--jobs", "1", "--features"]
    assert main(args + [str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    n = load_cohort(small_cohort).summary()["images"]
    assert f"features: {n} images of 3 patients in" in err
    assert main(args + [str(tmp_path / "b"), "--progress"]) == 0
    assert "\r" in capsys.readouterr().err
