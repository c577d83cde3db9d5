"""pipelines: the stages end to end on a small synthetic cohort, through the CLI."""

import shutil

import numpy as np
import pandas as pd
import pytest

from cellfeat.data import load_cohort
from pipelines.run.cli import main
from pipelines.run.features import FeatureSettings, run_features

pytestmark = pytest.mark.slow  # the stages end to end through the CLI (about 80 s)


@pytest.fixture(scope="module")
def messy(synthetic_root, tmp_path_factory):
    """The synthetic cohort plus the junk real exports carry."""
    root = tmp_path_factory.mktemp("messy") / "cohort"
    shutil.copytree(synthetic_root, root)
    p = next(iter(sorted((root / "trainset").glob("P*"))))
    (p / "zero.jpg").write_bytes(b"")
    (p / "text.JPG").write_text("I am not a jpeg")
    (p / "half.jpg").write_bytes((p / "000000.jpg").read_bytes()[:300])
    (p / ".DS_Store").write_bytes(b"\0")
    return root


def test_features_account_for_every_image(messy, tmp_path):
    cohort = load_cohort(messy)
    res = run_features(cohort, tmp_path, n_jobs=1, progress=False)
    qc = pd.read_csv(tmp_path / "qc.csv")
    files = sorted(f"{pid}/{f.name}" for pid, fs in cohort.images.items() for f in fs)
    assert sorted(qc["ID"] + "/" + qc["FILE"]) == files  # each image exactly once
    assert sum(res["by_status"].values()) == len(files) == res["images"]
    bad = qc[qc["FILE"].isin(["zero.jpg", "text.JPG", "half.jpg"])]
    assert bad["QC_STATUS"].str.startswith("unreadable").all()
    cells = pd.read_parquet(tmp_path / "cells.parquet")
    assert len(cells) == len(files)
    assert cells.loc[cells["QC_STATUS"] != "ok"].filter(like="Nucleus_").isna().all().all()
    assert (cells["Diagnostics_SettingsHash"] == FeatureSettings().hash).all()
    assert (tmp_path / "gallery.png").stat().st_size > 10_000
    issues = pd.read_csv(tmp_path / "issues.csv")
    assert ".DS_Store" in " ".join(issues["path"])


def test_features_cache_and_jobs_give_identical_tables(synthetic_root, tmp_path):
    cohort = load_cohort(synthetic_root)
    kw = dict(progress=False, gallery=False)
    run_features(cohort, tmp_path / "a", n_jobs=1, **kw)
    # simulate an interrupted run: half the cache entries are gone, one is half-written
    entries = sorted((tmp_path / "a" / "cache").glob("*.json"))
    for e in entries[::2]:
        e.unlink()
    entries[1].with_suffix(".parquet").write_bytes(b"garbage")
    entries[1].unlink()
    run_features(cohort, tmp_path / "a", n_jobs=2, **kw)
    run_features(cohort, tmp_path / "b", n_jobs=2, **kw)
    a = pd.read_parquet(tmp_path / "a" / "cells.parquet")
    b = pd.read_parquet(tmp_path / "b" / "cells.parquet")
    pd.testing.assert_frame_equal(a, b)


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """A small bundle and report; what train wrote, as into a log file (not a terminal,
    no --quiet), is kept in train.log."""
    import contextlib
    import io

    d = tmp_path_factory.mktemp("run")
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        rc = main(["train", str(synthetic_root), "--features", str(d / "f"), "--model",
                   str(d / "m.skops"), "--report", str(d / "report"), "--folds", "3",
                   "--repeats", "1", "--candidates", "clinical+mean-ridge", "--jobs", "1"])
    (d / "train.log").write_text(log.getvalue())
    assert rc == 0
    return d


def test_train_log_reads_top_to_bottom(trained):
    """Issue 30: in a log no progress bar is redrawn; one line per step, in the order the
    steps run, and the first screen, as the report's README starts, last."""
    from pipelines.bundle import load_bundle
    from pipelines.report.markdown import first_screen

    log = (trained / "train.log").read_bytes().decode()  # read_text would turn \r into \n
    assert "\r" not in log
    lines = log.splitlines()
    steps = ["cohort ", "features: ", "train: rule = ", "  candidates (simplest first): ",
             "  colour screen: ", "  colour copies: ", "  nested CV: ", "  nested CV took ",
             "  colour stability, ", "  model: ", "  train took "]
    at = [next(i for i, x in enumerate(lines) if x.startswith(s)) for s in steps]
    assert at == sorted(at)
    _, meta = load_bundle(trained / "m.skops")
    screen = first_screen(meta)
    assert lines[-len(screen):] == screen
    assert len(lines) < 40


def test_train_writes_bundle_and_report(trained):
    import json

    from pipelines.bundle import load_bundle

    m = json.loads((trained / "report" / "metrics.json").read_text())
    # the comparator, the fallbacks and the reference model always get rows of their own
    # on the same folds
    assert set(m["candidates"]) == {"clinical-logreg", "clinical+mean-ridge", "mean-ridge",
                                    "clinical+zonemean-ridge", "nested", "nested (no rails)"}
    assert m["selection"]["candidates"] == ["clinical+mean-ridge"]
    assert m["selection"]["comparator"] == "clinical-logreg"
    assert set(m["nested_choices"]) <= set(m["selection"]["candidates"])
    for k in ("balanced_accuracy", "balanced_accuracy_std", "balanced_accuracy_ci_low",
              "roc_auc", "sensitivity", "specificity", "brier"):
        assert k in m["candidates"]["nested"]
    assert m["nested"]["balanced_accuracy"] == m["candidates"]["nested"]["balanced_accuracy"]
    gain = m["images_vs_clinical"]
    assert gain["ci95"][0] <= gain["delta"] <= gain["ci95"][1] and "auc_delta" in gain
    assert m["versus_clinical"]["nested"]["delta"] == gain["delta"]
    t = m["triage"]
    assert t["target_sensitivity"] == 0.95 and 0 <= t["specificity"] <= 1
    # the saved model is what the rule picked on all patients, with its thresholds
    models, meta = load_bundle(trained / "m.skops")
    assert meta["chosen"] == m["chosen"] == m["selection"]["chosen"]
    assert models["main"].threshold_ == meta["decision"]["threshold"]
    assert models["main"].triage_threshold_ == meta["decision"]["triage_threshold"] == t["threshold"]
    # issue 19: the overlap zone, learnt from the training patients, in metrics.json
    z = m["zone"]
    assert {"rule", "limit", "n_reactive", "n_tumoral", "nested", "clinical", "gain"} <= set(z)
    assert {"ba", "auc", "ci95"} <= set(z["nested"]) and {"ba", "auc"} <= set(z["clinical"])
    assert z["gain"]["delta"] == pytest.approx(z["nested"]["ba"] - z["clinical"]["ba"])
    assert z["limit"] == meta["zone"]["limit"]
    assert "inner_balanced_accuracy" not in m["selection"]  # no in-sample figure up front
    readme = (trained / "report" / "README.md").read_text()
    # issue 30: the report starts with the first screen, the lines train ends its log with
    from pipelines.report.markdown import first_screen

    screen = first_screen(meta)
    assert readme.splitlines()[2:2 + len(screen)] == [f"- {x}" for x in screen]
    first = readme.splitlines()[2:7]
    assert first[0].startswith("- nested-CV estimate of the whole procedure")
    assert "in the overlap zone" in first[1] and "gain over the clinical comparator" in first[2]
    assert "in the zone" in first[2] and "target 95 %" in first[3]
    assert "How the model was chosen" in readme and "spared cytometry" in readme
    for f in ("README.md", "roc.png", "confusion.png", "calibration.png", "triage.png",
              "image_vs_clinical.png"):
        assert (trained / "report" / f).exists()


def test_train_screens_the_inputs_by_colour_stability(trained):
    """Issue 22: the inputs that pass the bar are in the bundle and are what its models use;
    the report shows the per-feature table and the flips with and without the screen."""
    import json

    from cellfeat.features import FEATURE_NAMES
    from cellfeat.stability import STABILITY_BAR
    from pipelines.bundle import load_bundle

    models, meta = load_bundle(trained / "m.skops")
    c = meta["colour_stability"]
    assert c["bar"] == STABILITY_BAR and c["sample"]["k"] >= 1 and c["features"]
    assert set(FEATURE_NAMES) <= set(c["features"]) | set(c["dropped"])
    assert not set(c["features"]) & set(c["dropped"])
    # the colour shifts and the rescalings (issue 29)
    assert set(c["drift"]) == {"warm-wb", "blue-dark-stain", "cool-wb", "pale-pink-stain",
                               "jpeg-70", "scale-0.8", "scale-1.25", "scale-0.75",
                               "scale-1.33"}
    # every image model of the bundle was built on exactly the screened list
    for route in ("main", "image"):
        lists = [v for k, v in models[route].get_params(deep=True).items()
                 if k.endswith("__features") and isinstance(v, (list, tuple))]
        assert lists and all(list(v) == c["features"] for v in lists)
    res = json.loads((trained / "report" / "stability.json").read_text())
    table = pd.read_csv(trained / "report" / "feature_stability.csv", index_col=0)
    assert set(FEATURE_NAMES) <= set(table.index)
    assert sorted(table.index[table["stable"]]) == sorted(c["features"])
    assert (table.loc[table["stable"], "max_abs_drift"] <= c["bar"]).all()
    assert {"overall", "shifts", "all_features", "interval"} <= set(res)
    readme = (trained / "report" / "README.md").read_text()
    assert "### Which features survive another lab's colours" in readme
    assert "every cell feature as input (no screen)" in readme
    m = json.loads((trained / "report" / "metrics.json").read_text())
    assert m["colour_stability"]["features"] == c["features"]


def test_train_report_has_the_univariate_signal_of_every_feature(trained):
    # issue 12: each cell feature's patient mean and SD, plus the bag features, in the table
    from cellfeat.features import FEATURE_NAMES

    uni = pd.read_csv(trained / "report" / "univariate_auc.csv")
    want = {f"Bag_{s}_{f}" for f in FEATURE_NAMES for s in ("Mean", "Std")}
    assert want <= set(uni["FEATURE"])
    assert uni["AUC_OOF"].dropna().between(0, 1).all()
    readme = (trained / "report" / "README.md").read_text()
    assert "## Which features carry signal on their own?" in readme
    assert "`Bag_Mean_Cell_Shape_Area`" in readme


def test_score_is_complete_and_deterministic(synthetic_root, trained, tmp_path):
    args = ["--quiet", "score", str(synthetic_root), "--features", str(trained / "f"),
            "--model", str(trained / "m.skops"), "--jobs", "1"]
    assert main(args + ["--out", str(tmp_path / "a.csv")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.csv")]) == 0
    a = (tmp_path / "a.csv").read_bytes()
    assert a == (tmp_path / "b.csv").read_bytes()
    pred = pd.read_csv(tmp_path / "a.csv")
    cohort = load_cohort(synthetic_root)
    assert sorted(pred["ID"]) == sorted(cohort.unlabelled)
    assert {"ID", "LABEL", "PROBA", "N_CELLS", "N_CELLS_USED", "STATUS"} <= set(pred.columns)
    assert pred["PROBA"].between(0, 1).all()
    assert pred["STATUS"].str.startswith(("ok", "atypical cells: ")).all()
    assert (pred["STATUS"].str.startswith("atypical cells: ") == (pred["ATYPICAL"] == "yes")).all()
    # one probability, explicit thresholds: the call and the triage are read off PROBA
    from pipelines.bundle import load_bundle

    models, meta = load_bundle(trained / "m.skops")
    assert (pred["MODEL"] == "main").all()
    assert (pred["THRESHOLD"] == meta["decision"]["threshold"]).all()
    # the CSV's numbers are printed at 3 decimals and the calls agree with them as printed
    assert (pred["PROBA"] == pred["PROBA"].round(3)).all()
    assert (pred["LABEL"] == (pred["PROBA"] >= pred["THRESHOLD"]).astype(int)).all()
    tri = meta["decision"]["triage_threshold"]
    assert tri <= meta["decision"]["threshold"]
    # issue 22: a call that a shift of the panel's size could move goes to cytometry too
    assert set(pred["STABLE"]) <= {"yes", "no"}
    assert (pred["PROBA_LOW"] <= pred["PROBA"]).all() and (pred["PROBA"] <= pred["PROBA_HIGH"]).all()
    unstable = (pred["STABLE"] == "no").to_numpy()
    # issue 28: above the zone and atypical patients are sent too
    sent = ((pred["PROBA"] >= tri) | unstable | (pred["ZONE"] == "count")
            | (pred["ATYPICAL"] == "yes"))
    assert (pred["TRIAGE"] == np.where(sent, "cytometry", "none")).all()
    assert (pred["STATUS"].str.contains("near the threshold") == unstable).all()
    limit = meta["zone"]["limit"]
    counts = cohort.clinical.loc[pred["ID"], "LYMPH_COUNT"].to_numpy()
    assert (pred["ZONE"] == np.where(counts <= limit, "overlap", "count")).all()
    assert not pred["IN_TRAINING"].any()
    sub = pd.read_csv(tmp_path / "a_submission.csv")
    assert list(sub.columns) == ["Id", "Predicted"] and len(sub) == len(pred)
    assert len(list((tmp_path / "a_montages").glob("*.png"))) == len(pred)


def test_score_statuses_for_missing_inputs(synthetic_root, trained):
    from cellfeat.models import cohort_frame
    from pipelines.bundle import load_bundle
    from pipelines.run.stages import score_frame

    models, _ = load_bundle(trained / "m.skops")
    cells = pd.read_parquet(trained / "f" / "cells.parquet")
    cohort = load_cohort(synthetic_root)
    frame = cohort_frame(cohort.clinical, cells).loc[cohort.labelled[:3]].copy()
    frame.iloc[0, frame.columns.get_loc("AGE")] = np.nan
    frame.iat[1, frame.columns.get_loc("CELLS")] = frame["CELLS"].iloc[1].iloc[:0]
    frame.iloc[2, frame.columns.get_loc("LYMPH_COUNT")] = np.nan
    frame.iat[2, frame.columns.get_loc("CELLS")] = frame["CELLS"].iloc[2].iloc[:0]
    out = score_frame(models, frame)
    assert out["STATUS"].tolist() == ["image only: missing AGE", "clinical only: no images",
                                      "no call: missing LYMPH_COUNT; no images"]
    assert out["PROBA"].notna().tolist() == [True, True, False]
    # each fallback gives its own calibrated probability and threshold, consistent calls
    assert out["MODEL"].tolist() == ["image", "clinical", ""]
    assert out["THRESHOLD"].tolist()[:2] == [models["image"].threshold_,
                                             models["clinical"].threshold_]
    called = out["PROBA"].notna()
    assert (out.loc[called, "LABEL"] == (out.loc[called, "PROBA"] >= out.loc[called, "THRESHOLD"])
            ).all()
    assert out.loc[~called, ["LABEL", "THRESHOLD"]].isna().all().all()
    assert out["TRIAGE"].tolist()[2] == ""


def test_bundle_refuses_tampering(trained, tmp_path):
    from pipelines.bundle import load_bundle
    from pipelines.io import StageError

    data = (trained / "m.skops").read_bytes()
    (tmp_path / "cut.skops").write_bytes(data[: len(data) // 2])
    with pytest.raises(StageError, match="truncated or tampered"):
        load_bundle(tmp_path / "cut.skops")
    with pytest.raises(StageError, match="different feature set"):
        load_bundle(trained / "m.skops", feature_names=["Nucleus_Shape_Area"])
    with pytest.raises(StageError, match="no model bundle"):
        load_bundle(tmp_path / "none.skops")


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "c.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n../x,1,M,1/1/1950,5\n")
    assert main(["features", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'../x' is not a plain folder name" in err[0]
    assert main(["score", str(tmp_path / "nowhere")]) == 1


def test_score_one_patients_folder_without_a_csv(synthetic_root, trained, tmp_path, capsys):
    """Issue 30: `cellfeat score FOLDER --age A --count C [--sex S]`, FOLDER holding one
    patient's images, writes every output and the page, nothing inside FOLDER, and the same
    row as scoring that patient from a cohort whose CSV holds the same values."""
    cohort = load_cohort(synthetic_root)
    pid = cohort.unlabelled[0]
    row = cohort.clinical.loc[pid]
    folder = tmp_path / "exports" / pid
    folder.mkdir(parents=True)
    for f in cohort.images[pid]:
        shutil.copy(f, folder / f.name)
    before = sorted(p.name for p in folder.iterdir())
    common = ["--model", str(trained / "m.skops"), "--jobs", "1"]
    out = tmp_path / "one" / "p.csv"
    assert main(["score", str(folder), "--age", repr(float(row["AGE"])), "--count",
                 repr(float(row["LYMPH_COUNT"])), "--sex", row["GENDER"].lower(),
                 "--features", str(tmp_path / "f1"), "--out", str(out), *common]) == 0
    err = capsys.readouterr().err
    assert f"patient {pid} (the folder's name): {len(before)} images" in err
    assert sorted(p.name for p in folder.iterdir()) == before   # nothing written inside
    for f in ("p.csv", "p_submission.csv", "p_report.html", f"p_montages/{pid}.png"):
        assert (out.parent / f).is_file(), f
    cohort_out = tmp_path / "cohort" / "p.csv"
    assert main(["--quiet", "score", str(synthetic_root), "--features", str(tmp_path / "f2"),
                 "--out", str(cohort_out), *common]) == 0
    one = out.read_text().splitlines()
    from_csv = cohort_out.read_text().splitlines()
    assert one[0] == from_csv[0] and len(one) == 2
    assert one[1] in from_csv[1:] and one[1].startswith(f"{pid},")
    assert pid in (out.parent / "p_report.html").read_text()


@pytest.mark.parametrize("flags, missing", [(["--age", "72"], "--count missing"),
                                            (["--count", "5.3", "--sex", "F"], "--age missing"),
                                            ([], "to score it as one patient give --age and")])
def test_score_one_patients_folder_refuses_a_missing_value(tmp_path, capsys, flags, missing):
    folder = tmp_path / "P1"
    folder.mkdir()
    (folder / "000.jpg").write_bytes(b"")
    assert main(["score", str(folder), *flags, "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "--age 72 --count 5.3" in err[0]
    assert not (tmp_path / "p.csv").exists()


def test_help_answers(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--repeats" in out and "--model" in out
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    out = capsys.readouterr().out
    assert "One patient, no CSV" in out and "--age 72 --count 5.3" in out and "--sex" in out


def test_sigkill_half_way_then_resume(synthetic_root, tmp_path):
    """SIGKILL (no clean-up) in the middle of storing the 5th patient's cache entry, its
    .parquet and .npy written and its .json not yet: the next run recomputes that patient,
    reuses the 4 finished ones and gives the clean run's table. The run kills itself at
    that point, so the kill lands there whatever the machine's load."""
    import signal
    import subprocess
    import sys

    kill_at = 5
    run_and_die = (
        "import os, signal, sys\n"
        "import pipelines.run.features, pipelines.run.tasks as tasks  # features keeps its save_npy\n"
        "save, calls = tasks.save_npy, []\n"
        "def save_npy(path, array):  # in cache_store: after the .parquet, before the .json\n"
        "    save(path, array)\n"
        "    calls.append(path)\n"
        f"    if len(calls) == {kill_at}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "tasks.save_npy = save_npy\n"
        "from pipelines.run.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    args = ["--quiet", "features", str(synthetic_root), "--jobs", "1", "--features"]
    killed, cache = tmp_path / "killed", tmp_path / "killed" / "cache"
    proc = subprocess.run([sys.executable, "-c", run_and_die, *args, str(killed)],
                          stderr=subprocess.DEVNULL)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(cache.glob("*.json"))) == kill_at - 1
    assert len(list(cache.glob("*.parquet"))) == len(list(cache.glob("*.npy"))) == kill_at
    assert not (killed / "cells.parquet").exists()  # never half-written
    cmd = [sys.executable, "-m", "pipelines.run.cli", *args]
    assert subprocess.run(cmd + [str(killed)]).returncode == 0
    assert subprocess.run(cmd + [str(tmp_path / "clean")]).returncode == 0
    a = pd.read_parquet(killed / "cells.parquet")
    b = pd.read_parquet(tmp_path / "clean" / "cells.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert (pd.read_parquet(killed / "patients.parquet")
            .equals(pd.read_parquet(tmp_path / "clean" / "patients.parquet")))


def test_bundle_with_untrusted_type_is_refused(tmp_path):
    import skops.io as sio

    from pipelines.bundle import load_bundle
    from pipelines.io import StageError

    sio.dump({"format": 1, "pipeline": StageError("x")}, tmp_path / "evil.skops")
    with pytest.raises(StageError, match="refused, it holds `pipelines.io.StageError`"):
        load_bundle(tmp_path / "evil.skops")


def test_bundle_from_other_version_is_refused(trained, monkeypatch):
    import pipelines.bundle.files as bundle
    from pipelines.io import StageError

    monkeypatch.setattr(bundle.cellfeat, "__version__", "9.0.0")
    with pytest.raises(StageError, match="made by cellfeat 0.1.0, this is 9.0.0"):
        bundle.load_bundle(trained / "m.skops")


def test_score_all_lists_every_clinical_row_once(synthetic_root, trained, tmp_path, capsys):
    out = tmp_path / "all.csv"
    assert main(["--quiet", "score", str(synthetic_root), "--features", str(trained / "f"),
                 "--model", str(trained / "m.skops"), "--jobs", "1", "--all",
                 "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    cohort = load_cohort(synthetic_root)
    assert sorted(pred["ID"]) == sorted(cohort.clinical.index)
    assert pred["STATUS"].notna().all()
    # the training patients are marked, and the run says their calls are in-sample
    assert sorted(pred.loc[pred["IN_TRAINING"], "ID"]) == sorted(cohort.labelled)
    err = capsys.readouterr().err
    assert f"{len(cohort.labelled)} of the {len(pred)} scored patients were training" in err
    assert "in-sample" in err


# --- score: who is scored, with which ages, and what the submission says ----------------

@pytest.fixture
def altered(synthetic_root, tmp_path):
    """A copy of the synthetic cohort whose test CSV is rewritten by ``edit(rows)``."""
    root = tmp_path / "cohort"
    shutil.copytree(synthetic_root, root)
    csv = root / "testset" / "testset_data.csv"

    def edit(fn):
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        fn(df)
        df.to_csv(csv, index=False)
        return root, df
    return edit


def _score(root, trained, out, *extra):
    return main(["--quiet", "score", str(root), "--features", str(out.parent / "f"),
                 "--model", str(trained / "m.skops"), "--jobs", "1", "--out", str(out), *extra])


def test_score_computes_features_only_for_the_patients_it_scores(synthetic_root, trained,
                                                                   tmp_path):
    feat = tmp_path / "f"
    shutil.copytree(trained / "f", feat)              # the training run's feature folder
    before = (feat / "cells.parquet").read_bytes()
    assert _score(synthetic_root, trained, tmp_path / "p.csv") == 0
    scored = set(load_cohort(synthetic_root).unlabelled)
    assert set(pd.read_parquet(feat / "scored" / "cells.parquet")["ID"]) == scored
    assert set(pd.read_csv(feat / "scored" / "qc.csv")["ID"]) == scored
    assert (feat / "cells.parquet").read_bytes() == before   # training tables untouched
    assert not (feat / "scored" / "cache").exists()          # one cache, shared


def test_submission_lists_every_scored_patient_and_says_which_have_no_call(
        altered, trained, tmp_path, capsys):
    def no_call(df):  # no images and no count: neither the clinical nor the image model
        df.loc[0, "LYMPH_COUNT"] = ""
    root, df = altered(no_call)
    pid = df.loc[0, "ID"]
    shutil.rmtree(root / "testset" / pid)
    (root / "testset" / pid).mkdir()
    assert _score(root, trained, tmp_path / "p.csv") == 0
    sub = pd.read_csv(tmp_path / "p_submission.csv")
    pred = pd.read_csv(tmp_path / "p.csv")
    assert sorted(sub["Id"]) == sorted(df["ID"]) == sorted(pred["ID"])
    row = sub.set_index("Id").loc[pid]
    assert row["Predicted"] == -1
    assert pred.set_index("ID").loc[pid, "STATUS"].startswith("no call")
    assert set(sub.set_index("Id").drop(index=pid)["Predicted"]) <= {0, 1}
    assert f"no call for {pid}" in capsys.readouterr().err


def test_unknown_gender_keeps_the_main_model(synthetic_root, trained):
    from cellfeat.models import cohort_frame
    from pipelines.bundle import load_bundle
    from pipelines.run.stages import score_frame

    models, _ = load_bundle(trained / "m.skops")
    cells = pd.read_parquet(trained / "f" / "cells.parquet")
    cohort = load_cohort(synthetic_root)
    frame = cohort_frame(cohort.clinical, cells).loc[cohort.labelled[:2]].copy()
    frame["GENDER"] = pd.array([pd.NA, "F"], dtype=object)
    out = score_frame(models, frame)
    assert out["MODEL"].tolist() == ["main", "main"]
    assert out["STATUS"].tolist() == ["ok: gender unknown, imputed", "ok"]
    assert out["PROBA"].between(0, 1).all()


def test_score_takes_the_reference_date_from_the_bundle(synthetic_root, trained, tmp_path,
                                                        capsys):
    from pipelines.bundle import load_bundle, save_bundle

    models, meta = load_bundle(trained / "m.skops")
    save_bundle(tmp_path / "old.skops", pipeline=models,
                meta={**meta, "reference_date": "2001-06-30"})
    capsys.readouterr()
    assert main(["--quiet", "score", str(synthetic_root), "--features", str(tmp_path / "f"),
                 "--model", str(tmp_path / "old.skops"), "--jobs", "1",
                 "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "ages computed at 2001-06-30, the model's reference date" in err


def test_score_warns_when_dobs_are_past_the_reference_date(altered, trained, tmp_path, capsys):
    def born_late(df):
        df.loc[0, "DOB"] = "3/14/2023"
    root, df = altered(born_late)
    assert _score(root, trained, tmp_path / "p.csv") == 0
    err = capsys.readouterr().err
    assert "1 patient(s) born after 2020-01-01" in err and df.loc[0, "ID"] in err
    pred = pd.read_csv(tmp_path / "p.csv").set_index("ID")
    # (a call near its threshold also says so: "; near the threshold: ...")
    assert pred.loc[df.loc[0, "ID"], "STATUS"].split(";")[0] == "image only: missing AGE"


# --- issue 20: what train writes is what a bundle may hold; hostile and ordinary inputs ---

def test_meta_keys_are_exactly_what_train_writes(trained):
    # derived, not listed by hand: a key train starts writing fails here (and in
    # save_bundle) instead of being refused by every later load
    from pipelines.bundle import load_bundle
    from pipelines.bundle.trained import META, feature_settings, reference_variables

    _, meta = load_bundle(trained / "m.skops")
    assert set(meta) == set(META.spec)
    for key, spec in META.spec.items():
        if hasattr(spec, "spec"):
            assert set(meta[key]) == set(spec.spec), key
    assert set(meta["decision"]["fallback_thresholds"]) == \
        set(META.spec["decision"].spec["fallback_thresholds"].spec)
    assert set(meta["feature_settings"]) == set(feature_settings().spec)
    assert set(meta["reference"]["variables"]) == reference_variables()


def test_blank_gender_goes_through_the_whole_run(altered, trained, tmp_path):
    # ordinary data: the report used to crash on pd.NA (exit 3, CSV written, no report)
    def blank(df):
        df.loc[0, "GENDER"] = ""
        df.loc[1, "GENDER"] = "X"
    root, df = altered(blank)
    assert _score(root, trained, tmp_path / "p.csv") == 0
    pred = pd.read_csv(tmp_path / "p.csv").set_index("ID")
    # (a call near its threshold under the stability panel adds "; near the threshold ...";
    # an atypical patient's status names the flag first, then the imputed gender)
    status = pred.loc[df.loc[0, "ID"], "STATUS"]
    assert (status.startswith("ok: gender unknown, imputed")
            or (status.startswith("atypical cells: ") and "gender unknown, imputed" in status))
    html = (tmp_path / "p_report.html").read_text(encoding="utf-8")
    assert html.count("sex unknown") == 2


def test_prediction_header_is_what_score_writes(synthetic_root, trained, tmp_path):
    from pipelines.run.outputs import PREDICTION_HEADER, SUBMISSION_HEADER

    assert _score(synthetic_root, trained, tmp_path / "p.csv") == 0
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == PREDICTION_HEADER
    assert (tmp_path / "p_submission.csv").read_text().splitlines()[0] == SUBMISSION_HEADER
    # its own earlier outputs are replaced: a run can be repeated
    assert _score(synthetic_root, trained, tmp_path / "p.csv") == 0


@pytest.mark.parametrize("where", ["clinical csv", "other file", "inside the cohort"])
def test_score_never_overwrites_what_it_did_not_write(where, altered, trained, tmp_path,
                                                       capsys):
    root, _ = altered(lambda df: None)
    target = {"clinical csv": root / "testset" / "testset_data.csv",
              "other file": tmp_path / "notes.csv",
              "inside the cohort": root / "predictions.csv"}[where]
    if where == "other file":
        target.write_text("my own notes\n")
    before = target.read_bytes() if target.exists() else None
    capsys.readouterr()
    assert _score(root, trained, target, "--features", str(tmp_path / "f")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and "--force" in err[0], err
    assert (target.read_bytes() if target.exists() else None) == before
    if where == "other file":       # asked for, it is replaced
        assert _score(root, trained, target, "--force", "--features", str(tmp_path / "f")) == 0
        assert target.read_text().startswith("ID,LABEL")


def test_outputs_that_are_folders_or_point_into_the_cohort_are_one_line_errors(
        altered, trained, tmp_path, capsys):
    root, _ = altered(lambda df: None)
    (tmp_path / "somewhere").mkdir()
    cases = [["score", "--out", str(tmp_path / "somewhere")],        # a folder for a file
             ["score", "--out", str(tmp_path / "p.csv"), "--features", str(root / "f")],
             ["train", "--model", str(tmp_path / "somewhere")]]
    for stage, *opts in cases:
        argv = ["--quiet", stage, str(root), "--jobs", "1"]
        if "--features" not in opts:
            argv += ["--features", str(tmp_path / "f")]
        if stage == "score":
            argv += ["--model", str(trained / "m.skops")]
        capsys.readouterr()
        assert main(argv + opts) == 1, opts
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (root / "f").exists()


def test_train_refuses_a_future_reference_date_before_any_work(synthetic_root, tmp_path,
                                                                capsys):
    # the bundle would be refused at load (and save) for it: say so before the CV runs
    assert main(["--quiet", "train", str(synthetic_root), "--features", str(tmp_path / "f"),
                 "--model", str(tmp_path / "m.skops"), "--reference-date", "2999-01-01",
                 "--jobs", "1"]) == 1
    assert "in the future" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_score_imports_neither_torch_nor_dask(synthetic_root, trained, tmp_path):
    # Issue 21, a cold score: skops's import walks scikit-learn's packages, whose array-API
    # wrappers import torch and dask.array when those extras are installed (seconds); the
    # score stage keeps them out, and one patient's features run in this process (no
    # worker start-up). A fresh interpreter, as a user's command would be.
    import subprocess
    import sys

    out = tmp_path / "p.csv"
    code = ("import sys\n"
            "from pipelines.run.cli import main\n"
            f"rc = main(['--quiet', 'score', {str(synthetic_root)!r}, '--features', "
            f"{str(tmp_path / 'f')!r}, '--model', {str(trained / 'm.skops')!r}, '--out', "
            f"{str(out)!r}])\n"
            "print(rc, sorted(m for m in ('torch', 'dask') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "0 []", res.stdout
    assert out.is_file()


def test_time_split_by_hand():
    from pipelines.run.stages import time_split

    # 10 s features, 1 s frames, 4 s colour check, 20 s nested CV, 15 s the rest:
    # 50 s in all, 50 / (10 + 20) = 1.67x
    line = time_split({"start": 0.0, "features": 10.0, "frames": 11.0, "colour check": 15.0,
                       "nested CV": 35.0, "end": 50.0})
    assert line.startswith("train took 50 s: features 10 s, loading the frames 1 s, ")
    assert "nested CV 20 s" in line and line.endswith("; 1.67x features + nested CV")


def test_score_reads_images_while_the_bundle_loads_and_writes_nothing_it_refuses(
        synthetic_root, tmp_path, capsys):
    """Issue 30: one patient's images are decoded and measured while the bundle loads (the
    --debug line says so before the bundle's verdict), and a refused bundle still stops the
    run with nothing written: no feature folder, no cache entry, no prediction."""
    import skops.io as sio

    from pipelines.io import StageError

    cohort = load_cohort(synthetic_root)
    pid = cohort.unlabelled[0]
    folder = tmp_path / "exports" / pid
    folder.mkdir(parents=True)
    for f in cohort.images[pid]:
        shutil.copy(f, folder / f.name)
    sio.dump({"format": 1, "pipeline": StageError("x")}, tmp_path / "evil.skops")
    with pytest.raises(StageError, match="refused, it holds `pipelines.io.StageError`"):
        main(["--debug", "score", str(folder), "--age", "72", "--count", "5.3", "--model",
              str(tmp_path / "evil.skops"), "--features", str(tmp_path / "feat"), "--out",
              str(tmp_path / "out" / "p.csv")])
    err = capsys.readouterr().err
    assert f"debug: reading {pid}'s {len(cohort.images[pid])} images while the model loads" in err
    assert not (tmp_path / "feat").exists() and not (tmp_path / "out").exists()
    assert main(["score", str(folder), "--age", "72", "--count", "5.3", "--model",
                 str(tmp_path / "evil.skops"), "--features", str(tmp_path / "feat"), "--out",
                 str(tmp_path / "out" / "p.csv")]) == 1
    assert not (tmp_path / "feat").exists() and not (tmp_path / "out").exists()
