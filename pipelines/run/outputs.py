"""Where a run may write: never over a file cellfeat did not write, never inside the cohort.

``--out``, ``--model``, ``--features`` and ``--report`` are typed by hand, and one slip
(``--out cohort/trainset/trainset_true.csv``) used to overwrite the lab's own data without a
word. So before a stage writes anything, :func:`check_outputs` looks at every path it is
about to write and refuses, in one line, a path inside the cohort folder, a folder where a
file is expected (or the reverse), and an existing file that is not recognisably an
earlier output of the same kind (a predictions table with cellfeat's header, a cellfeat
model bundle, a report page cellfeat generated, a feature or report folder cellfeat
wrote). An earlier output is replaced, so a run can be repeated; anything else needs
``--force``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from ..io import StageError

__all__ = ["check_outputs", "PREDICTION_HEADER", "SUBMISSION_HEADER", "GENERATOR"]

#: The first line of the tables ``cellfeat score`` writes (see stages.score_frame).
PREDICTION_HEADER = ("ID,LABEL,PROBA,THRESHOLD,TRIAGE,ZONE,N_CELLS,N_CELLS_USED,STATUS,MODEL,"
                     "IN_TRAINING,PROBA_LOW,PROBA_HIGH,STABLE,ATYPICAL")
#: Headers of earlier cellfeat versions, whose files a new run may still replace.
EARLIER_PREDICTION_HEADERS = (PREDICTION_HEADER.rsplit(",PROBA_LOW", 1)[0],
                              PREDICTION_HEADER.rsplit(",ATYPICAL", 1)[0])
SUBMISSION_HEADER = "Id,Predicted"
#: The generator tag of every HTML page cellfeat writes (templates/base.html.j2).
GENERATOR = '<meta name="generator" content="cellfeat">'
#: What the features stage writes into its folder, and the report into its own.
FEATURE_FILES = ("cells.parquet", "patients.parquet", "qc.csv", "issues.csv", "settings.json",
                 "gallery.png", "crops", "cache", "scored")
REPORT_FILES = ("README.md", "metrics.json", "index.html")
#: A file being written by pipelines.io.atomic_path, and a per-patient cache entry
#: (pipelines.tasks.patient_key) or one being written.
_TEMPORARY = re.compile(r"\..+\.tmp\Z")
_CACHE_ENTRY = re.compile(r"(.+-[0-9a-f]{24}\.(json|parquet|npy)|\..+\.tmp)\Z")


def _head(path: Path, n: int = 65536) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _csv_with_header(*headers):
    def ours(path: Path) -> bool:
        first = _head(path, max(map(len, headers)) + 2).split(b"\n")[0].rstrip(b"\r")
        return first in {h.encode() for h in headers}
    return ours


def _bundle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf, zf.open("schema.json") as f:
            return b'"cellfeat_version"' in f.read(1 << 20)
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def _page(path: Path) -> bool:
    return GENERATOR.encode() in _head(path, 4096)


def _feature_folder(path: Path) -> bool:
    """A folder cellfeat's features stage wrote (its settings.json, or that of the
    ``scored`` folder inside it that scoring writes), one an interrupted first run left
    (only its cache and crops folders, the cache holding only cache entries), or one
    holding none of the names that stage writes."""
    for settings in (path / "settings.json", path / "scored" / "settings.json"):
        if settings.is_file():
            return b'"revision"' in _head(settings) and b'"hash"' in _head(settings)
    # the temporary files of pipelines.io.atomic_path that a killed run leaves behind
    entries = {p.name: p for p in path.iterdir() if not _TEMPORARY.match(p.name)}
    if not set(entries) & set(FEATURE_FILES):
        return True
    if set(entries) <= {"cache", "crops", "scored"} and all(p.is_dir() for p in entries.values()):
        cache = path / "cache"
        return not cache.is_dir() or all(_CACHE_ENTRY.match(f.name) for f in cache.iterdir())
    return False


def _report_folder(path: Path) -> bool:
    metrics = path / "metrics.json"
    if metrics.is_file():
        return b'"candidates"' in _head(metrics)
    return not any((path / name).exists() for name in REPORT_FILES)


def _montages(path: Path) -> bool:
    return all(p.suffix == ".png" and p.is_file() for p in path.iterdir())


FILE_KINDS = {"predictions": _csv_with_header(PREDICTION_HEADER, *EARLIER_PREDICTION_HEADERS),
              "submission": _csv_with_header(SUBMISSION_HEADER),
              "page": _page, "bundle": _bundle}
FOLDER_KINDS = {"features": _feature_folder, "report": _report_folder, "montages": _montages}


def check_outputs(targets, *, cohort=None, force: bool = False) -> None:
    """Raise :class:`StageError` (one line) unless every ``(option, path, kind)`` of
    ``targets`` may be written: ``kind`` is one of :data:`FILE_KINDS` (a file) or
    :data:`FOLDER_KINDS` (a folder). ``force`` allows replacing what is not cellfeat's and
    writing inside ``cohort``; a folder where a file is expected is refused even then."""
    root = Path(cohort).resolve() if cohort is not None else None
    for option, path, kind in targets:
        path = Path(path)
        folder = kind in FOLDER_KINDS
        if path.exists() and path.is_dir() != folder:
            want = "a folder" if folder else "a file name"
            raise StageError(f"{path}: is {'a file' if folder else 'a folder'}; {option} needs "
                             f"{want}")
        if force:
            continue
        if root is not None and path.resolve().is_relative_to(root):
            raise StageError(f"{path}: {option} points inside the cohort folder {cohort}; "
                             f"write elsewhere (or pass --force)")
        if path.exists() and not (FOLDER_KINDS if folder else FILE_KINDS)[kind](path):
            raise StageError(f"{path}: exists and was not written by cellfeat as {option}; "
                             f"choose another path or pass --force to replace it")
