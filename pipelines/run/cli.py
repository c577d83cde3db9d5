"""The ``cellfeat`` command: synthetic | features | train | score | demo.

Errors are one line naming the file/row and the fix; ``--debug`` shows the traceback
instead. Exit statuses (also in ``--help``): 0 done, 1 the stage stopped on a problem with the
data, the model file or the settings, 2 the command line itself is wrong (argparse's usage
error), 3 an unexpected error (a bug: rerun with ``--debug`` and report the traceback),
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..io import StageError

EPILOG = """examples:
  cellfeat synthetic build/synthetic            # write the built-in synthetic cohort
  cellfeat features ../shared/data/dlmi         # per-cell features (cached, resumable)
  cellfeat train ../shared/data/dlmi            # CV-compare candidates, save the model
  cellfeat score ../shared/data/dlmi --out build/predictions.csv
  cellfeat score exports/P0042 --age 72 --count 5.3 --sex F   # one patient's images, no CSV
  cellfeat demo                                 # all of the above on synthetic data

--debug and --quiet may come before or after the stage name.

exit status:
  0    done
  1    the stage stopped on a problem with the data, the model file or the settings;
       the one-line message names the file or row and what to do
  2    the command line is wrong (unknown option, missing argument)
  3    unexpected error: a bug; rerun with --debug and report the traceback
  130  interrupted (finished work is cached and reused by the next run)
"""

SCORE_DESCRIPTION = """\
Score every patient of DATA whose label is unknown (or all with --all); write OUT, a
challenge submission beside it, one montage PNG per patient and a page for people
(<OUT stem>_report.html).

One patient, no CSV: give the folder that holds that patient's images (its name is the
patient ID) with --age and --count, and --sex if known:
  cellfeat score exports/P0042 --age 72 --count 5.3 --sex F --model models/cellfeat.skops
Its features go to build/features/P0042/scored/ (--features) and its outputs to
build/predictions*.csv (--out), never inside the image folder.
"""

EXIT_STAGE_ERROR, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 3, 130


def _global_args(p, default):
    """--debug/--quiet on the main parser (default False) and on each stage's parser
    (default SUPPRESS, so that an option given before the stage name is not reset)."""
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the traceback of an error instead of one line")
    p.add_argument("--quiet", action="store_true", default=default,
                   help="no progress bars, even with --progress")


def _progress_arg(p):
    p.add_argument("--progress", action="store_true",
                   help="draw progress bars even when stderr is not a terminal (by default "
                   "they are drawn only on a terminal; a log gets one line per step)")


def _number(flag, low, high):
    """argparse type: a finite number in [low, high) (above low, excluded, when high is
    None: a count)."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = low <= v < high if high is not None else v > low
        if not (ok and v == v):
            where = f"from {low} to {high}" if high is not None else f"above {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({where})")
        return v
    parse.__name__ = flag  # argparse names the type in its message
    return parse


def _cohort_arg(p, reference_help=None, data_help=None):
    p.add_argument("data", type=Path, help=data_help or "cohort folder: the challenge layout "
                   "(trainset/, testset/) or patient sub-folders beside one clinical CSV")
    p.add_argument("--reference-date", default=None if reference_help else "2020-01-01",
                   metavar="YYYY-MM-DD", help=reference_help or
                   "date at which ages are computed from DOB (default: %(default)s)")


def _features_args(p, required=False):
    p.add_argument("--features", type=Path, default=None,
                   help="feature folder (default: build/features/<name of DATA>)")
    p.add_argument("--method", choices=("otsu", "kmeans"), default="otsu",
                   help="nucleus segmentation method (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=-1,
                   help="worker processes for feature extraction (default: all cores)")
    p.add_argument("--scheduler", default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
                   metavar="tcp://HOST:PORT",
                   help="run feature extraction on this Dask scheduler (default: "
                   "$DASK_SCHEDULER_ADDRESS, else local processes)")
    p.add_argument("--dask-mode", choices=("shared", "bytes"), default="shared",
                   help="shared: workers read images and the cache at the same paths; bytes: "
                   "the client reads images and ships them (default: %(default)s)")
    _progress_arg(p)
    p.add_argument("--force", action="store_true",
                   help="write even inside the cohort folder or over files cellfeat did not "
                   "write (by default an output path is refused in both cases)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellfeat", description="Explainable triage of reactive vs tumoral lymphocytosis "
        "from blood-smear lymphocyte images and clinical data.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_args(parser, False)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    common = argparse.ArgumentParser(add_help=False)
    _global_args(common, argparse.SUPPRESS)

    def stage(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    p = stage("synthetic", help="write a synthetic cohort (challenge layout + masks)",
                       description="Write a deterministic synthetic cohort: same seed, same bytes.")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--train", type=int, default=60, help="labelled patients (default: 60)")
    p.add_argument("--test", type=int, default=6, help="unlabelled patients (default: 6)")
    p.add_argument("--cells", type=int, nargs=2, default=(16, 40), metavar=("MIN", "MAX"),
                   help="images per patient (default: 16 40)")
    p.add_argument("--seed", type=int, default=0)

    p = stage("features", help="per-cell features of every image of a cohort",
                       description="Segment every image, compute per-cell features, write "
                       "cells.parquet, patients.parquet, qc.csv, issues.csv and gallery.png.")
    _cohort_arg(p)
    _features_args(p)

    p = stage("train", help="cross-validate candidate models, save the chosen one",
                       description="Compare candidate pipelines by repeated patient-level "
                       "cross-validation, choose by nested CV, refit on all labelled patients "
                       "and save a model bundle and a report.")
    _cohort_arg(p)
    _features_args(p)
    p.add_argument("--model", type=Path, default=Path("models/cellfeat.skops"),
                   help="model bundle to write (default: %(default)s)")
    p.add_argument("--report", type=Path, default=None,
                   help="report folder (default: reports/<timestamp>, linked as reports/latest)")
    p.add_argument("--folds", type=int, default=5, help="CV folds (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=4, help="CV repeats (default: %(default)s)")
    p.add_argument("--target-sensitivity", type=float, default=0.95, metavar="S",
                   help="triage: pick, out of fold on the training patients, the highest "
                   "threshold that still sends at least S of tumoral patients to cytometry "
                   "(default: %(default)s)")
    p.add_argument("--candidates", nargs="+", default=None,
                   help="candidates the selection rule may choose, any order (default: "
                   "cellfeat.models.DEFAULT_CANDIDATES: clinical+mean-ridge, "
                   "clinical+bags-xgb); the clinical comparator clinical-logreg, the fallbacks "
                   "and the reference models always get figures on the same folds")
    p.add_argument("--cnn", action="store_true",
                   help="add the CNN candidates (needs torch; about 30 extra minutes of CPU "
                   "on 120 patients with the default CV; they did not beat the hand-crafted "
                   "pipeline in our measurements, so they are off by default)")
    p.add_argument("--seed", type=int, default=0)

    p = stage("score", help="score new patients with a saved model",
                       description=SCORE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _cohort_arg(p, "date at which ages are computed from DOB (default: the model's own "
                "reference date, stored in the bundle at training; give the sampling date "
                "only if the training cohort's ages were computed at it too)",
                data_help="a cohort folder (the challenge layout, or patient sub-folders beside "
                "one clinical CSV), or one patient's folder of images with --age and --count")
    one = p.add_argument_group("one patient's folder of images (no clinical CSV)")
    one.add_argument("--age", type=_number("--age", 0, 130), default=None, metavar="YEARS",
                     help="the patient's age in years at sampling")
    one.add_argument("--count", type=_number("--count", 0, None), default=None,
                     metavar="X10^9/L", help="the lymphocyte count, 10^9/L (e.g. 5.3)")
    one.add_argument("--sex", type=str.upper, choices=("M", "F"), default=None,
                     help="M or F, any case (default: unknown; every model imputes it)")
    _features_args(p)
    p.add_argument("--model", type=Path, default=Path("models/cellfeat.skops"),
                   help="model bundle written by `cellfeat train` (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("build/predictions.csv"),
                   help="predictions CSV; <OUT>_submission.csv and <OUT>_montages/ go beside "
                   "it (default: %(default)s)")
    p.add_argument("--all", action="store_true", help="score labelled patients too")

    p = stage("demo", help="synthetic cohort -> features -> train -> score",
                       description="Run the whole workflow on the built-in synthetic cohort.")
    p.add_argument("--dir", type=Path, default=Path("build/demo"), help="working folder")
    _progress_arg(p)
    p.add_argument("--seed", type=int, default=0)
    return parser


def _one_patient_usage(args) -> str | None:
    """What is wrong with a `score` command line for one patient's folder, in one line."""
    if args.stage != "score":
        return None
    given = {f: getattr(args, a) is not None
             for f, a in (("--age", "age"), ("--count", "count"), ("--sex", "sex"))}
    missing = [f for f in ("--age", "--count") if not given[f]]
    example = f"e.g. cellfeat score {args.data} --age 72 --count 5.3 [--sex F]"
    if any(given.values()) and missing:
        return (f"score: {' and '.join(missing)} missing: one patient's folder is scored "
                f"from its images with both --age (years) and --count (10^9/L); {example}")
    if not any(given.values()):
        from cellfeat.data import holds_images

        if holds_images(args.data):
            return (f"score: {args.data} holds images, not patient folders beside a "
                    f"clinical CSV: to score it as one patient give --age and --count; "
                    f"{example}")
    elif args.all:
        return "score: --all scores a cohort's labelled patients; one patient's folder has none"
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    usage = _one_patient_usage(args)
    if usage:
        print(f"error: {usage}", file=sys.stderr)
        return EXIT_USAGE
    from . import stages

    try:
        return getattr(stages, f"stage_{args.stage}")(args) or 0
    except KeyboardInterrupt:
        print("interrupted; finished work is cached and will be reused", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        from cellfeat.data import CohortError

        if isinstance(exc, (StageError, CohortError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_STAGE_ERROR
        print(f"error: {type(exc).__name__}: {exc} (unexpected: run with --debug for the "
              f"traceback and report it)", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
