"""pipelines.run.outputs: an output path is refused inside the cohort, over what cellfeat did not
write, or of the wrong kind; cellfeat's own earlier outputs are replaced. The CLI routes
(score over the clinical CSV, a folder for --out) are in ``tests/test_pipelines.py``."""

import pytest

from pipelines.io import StageError
from pipelines.run.outputs import GENERATOR, PREDICTION_HEADER, check_outputs


def test_new_paths_and_cellfeat_own_outputs_may_be_written(tmp_path):
    (tmp_path / "p.csv").write_text(PREDICTION_HEADER + "\nP1,1,0.9,0.5,none,3,3,ok,main\n")
    (tmp_path / "p_report.html").write_text(f"<!DOCTYPE html><head>{GENERATOR}</head>")
    feats = tmp_path / "f"
    (feats / "cache").mkdir(parents=True)
    (feats / "settings.json").write_text('{"revision": 8, "hash": "x"}')
    check_outputs([("--out", tmp_path / "p.csv", "predictions"),
                   ("--out", tmp_path / "p_report.html", "page"),
                   ("--out", tmp_path / "new.csv", "predictions"),
                   ("--features", feats, "features"),
                   ("--report", tmp_path / "report", "report")])


def test_a_folder_an_interrupted_run_left_may_be_resumed(tmp_path):
    feats = tmp_path / "f"
    (feats / "cache").mkdir(parents=True)
    (feats / "crops").mkdir()
    (feats / "cache" / "P1-0123456789abcdef01234567.parquet").write_bytes(b"x")
    (feats / ".cells.parquet.abc123.tmp").write_bytes(b"x")
    check_outputs([("--features", feats, "features")])
    (feats / "cache" / "thesis.docx").write_bytes(b"x")     # not a cache entry
    with pytest.raises(StageError, match="not written by cellfeat"):
        check_outputs([("--features", feats, "features")])


@pytest.mark.parametrize("kind, content", [("predictions", "my,own,table\n"),
                                           ("page", "<html>mine</html>"),
                                           ("bundle", "not a zip")])
def test_other_files_are_replaced_only_with_force(kind, content, tmp_path):
    path = tmp_path / "target"
    path.write_text(content)
    with pytest.raises(StageError, match="not written by cellfeat as --x; choose another"):
        check_outputs([("--x", path, kind)])
    check_outputs([("--x", path, kind)], force=True)


def test_a_feature_folder_holding_foreign_outputs_is_refused(tmp_path):
    (tmp_path / "qc.csv").write_text("mine\n")
    with pytest.raises(StageError, match="--features"):
        check_outputs([("--features", tmp_path, "features")])


def test_inside_the_cohort_only_with_force_and_a_folder_for_a_file_never(tmp_path):
    cohort = tmp_path / "cohort"
    (cohort / "P1").mkdir(parents=True)
    with pytest.raises(StageError, match="points inside the cohort folder"):
        check_outputs([("--out", cohort / "x.csv", "predictions")], cohort=cohort)
    check_outputs([("--out", cohort / "x.csv", "predictions")], cohort=cohort, force=True)
    with pytest.raises(StageError, match="is a folder; --out needs a file name"):
        check_outputs([("--out", cohort / "P1", "predictions")], force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StageError, match="is a file; --features needs a folder"):
        check_outputs([("--features", tmp_path / "file", "features")])
