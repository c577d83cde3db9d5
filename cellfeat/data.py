"""Read a patient cohort: one clinical table plus each patient's image files.

This is the only module of the library that knows how a cohort lies on disk. It accepts
the public challenge layout (``ROOT/trainset/trainset_true.csv`` + ``ROOT/trainset/P*/``,
``ROOT/testset/testset_data.csv`` + ``ROOT/testset/P*/``) and any folder holding patient
sub-folders and exactly one clinical CSV; and one patient's folder of images with its
clinical values given apart (:func:`load_patient`). Real exports have quirks (mixed date formats,
lower-case genders, stray files); each is handled explicitly and every file, row and folder
is accounted for in :attr:`Cohort.issues`: nothing is dropped silently. Problems that make
the whole cohort untrustworthy (duplicate or path-like IDs, a missing required column)
raise :class:`CohortError` naming the file and row.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np


class _Pandas:
    """pandas, imported on first use: the feature workers decode images with this module
    and never read a clinical table, and pandas costs each of them about 80 MiB resident
    (issue 21)."""

    def __getattr__(self, name):
        import pandas

        return getattr(pandas, name)


pd = _Pandas()

__all__ = [
    "IMAGE_SUFFIXES",
    "CohortError",
    "Cohort",
    "load_cohort",
    "load_patient",
    "holds_images",
    "parse_dob",
    "age_at",
    "read_image",
    "decode_image",
    "to_rgb8",
    "image_size",
    "ImageReadError",
    "MAX_IMAGE_SIDE",
]

#: File suffixes read as images (compared case-insensitively).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})

#: Images with a longer side (pixels) are refused from their header, before any decoding:
#: a small file can announce a huge image (a 198 KiB PNG of 8000x8000 px decodes to 192 MB
#: and more as it is converted), and no smear crop is that large.
MAX_IMAGE_SIDE = 2048

#: Default reference date at which age is computed from the date of birth.
DEFAULT_REFERENCE_DATE = "2020-01-01"

REQUIRED_COLUMNS = ("ID", "GENDER", "LYMPH_COUNT")
CHALLENGE_SPLITS = (("trainset", "trainset_true.csv"), ("testset", "testset_data.csv"))

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DOB_SLASH = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")  # M/D/YYYY
_DOB_DASH = re.compile(r"^(\d{1,2})-(\d{1,2})-(\d{4})$")  # DD-MM-YYYY
_ISSUE_COLUMNS = ["level", "kind", "patient", "path", "detail"]


class CohortError(ValueError):
    """A cohort that cannot be trusted as a whole; the message names the culprit."""


class ImageReadError(ValueError):
    """An image file that cannot be decoded into a faithful 8-bit RGB array."""


@dataclass
class Cohort:
    """A loaded cohort.

    Attributes
    ----------
    clinical : pandas.DataFrame
        Index ``ID`` (str). Columns ``LABEL`` (Int64: 0 reactive, 1 tumoral, <NA> unknown),
        ``GENDER`` ("M", "F" or <NA>), ``AGE`` (float years, NaN if unknown),
        ``LYMPH_COUNT`` (float, 10⁹/L, NaN if unknown), ``SPLIT`` (sub-folder the patient
        came from, "" for a flat layout), ``IN_CSV`` (False for a folder with no CSV row).
    images : dict of str to list of pathlib.Path
        Each patient's image files, sorted by name; an empty list where none were found.
    issues : pandas.DataFrame
        One row per thing that was ignored or could not be used, with columns
        ``level`` ("info" or "warning"), ``kind``, ``patient``, ``path``, ``detail``.
    root : pathlib.Path
    reference_date : str
        Date (ISO) at which ``AGE`` was computed from ``DOB``.
    """

    clinical: pd.DataFrame
    images: dict[str, list[Path]]
    issues: pd.DataFrame
    root: Path
    reference_date: str = DEFAULT_REFERENCE_DATE
    csv_files: list[Path] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(len(v) for v in self.images.values())

    @property
    def labelled(self) -> pd.Index:
        """IDs of the patients whose label is known."""
        return self.clinical.index[self.clinical["LABEL"].notna()]

    @property
    def unlabelled(self) -> pd.Index:
        return self.clinical.index[self.clinical["LABEL"].isna()]

    def summary(self) -> dict:
        """Counts that add up: patients, images, issues by kind."""
        lab = self.clinical["LABEL"]
        return {
            "patients": int(len(self.clinical)),
            "labelled": int(lab.notna().sum()),
            "reactive": int((lab == 0).sum()),
            "tumoral": int((lab == 1).sum()),
            "unlabelled": int(lab.isna().sum()),
            "images": int(self.n_images),
            "issues": self.issues["kind"].value_counts().to_dict(),
        }

    def subset(self, ids) -> "Cohort":
        """The same cohort restricted to the patients ``ids`` (in the clinical table's
        order); issues about other patients are dropped, cohort-wide ones kept."""
        keep = self.clinical.index.isin(list(ids))
        clinical = self.clinical[keep]
        who = self.issues["patient"].fillna("").astype(str)
        issues = self.issues[who.isin(clinical.index) | (who == "")]
        return replace(self, clinical=clinical, issues=issues.reset_index(drop=True),
                       images={pid: self.images.get(pid, []) for pid in clinical.index})


def parse_dob(value: str) -> date:
    """Parse a date of birth written ``M/D/YYYY`` (slashes) or ``DD-MM-YYYY`` (dashes).

    Both forms occur in one column of the real export. Anything else raises ``ValueError``:
    guessing the order of day and month would silently shift ages.

    >>> parse_dob("11/3/1933"), parse_dob("28-04-1943")
    (datetime.date(1933, 11, 3), datetime.date(1943, 4, 28))
    """
    text = str(value).strip()
    m = _DOB_SLASH.match(text)
    if m:
        month, day, year = (int(g) for g in m.groups())
        return date(year, month, day)
    m = _DOB_DASH.match(text)
    if m:
        day, month, year = (int(g) for g in m.groups())
        return date(year, month, day)
    raise ValueError(f"date of birth {text!r} is neither M/D/YYYY nor DD-MM-YYYY")


def age_at(dob: date, reference: str | date = DEFAULT_REFERENCE_DATE) -> float:
    """Age in years (365.25-day years) at ``reference``."""
    ref = date.fromisoformat(reference) if isinstance(reference, str) else reference
    return (ref - dob).days / 365.25


def read_image(path, *, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Read and decode an image file into an 8-bit RGB array of shape (H, W, 3).

    See :func:`decode_image` for the conversions; raises :class:`ImageReadError`.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"unreadable: {exc.strerror or exc}") from exc
    return decode_image(data, max_side=max_side)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of image file bytes, read from the header alone (PIL opens lazily:
    no pixel is decoded); raises :class:`ImageReadError` for bytes PIL cannot identify."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the decompression-bomb warning: sized below
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception as exc:  # PIL raises many types for bytes it cannot identify
        raise ImageReadError(f"unreadable: {type(exc).__name__}: {exc}") from None


def decode_image(data: bytes, *, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Decode image file bytes into an 8-bit RGB array of shape (H, W, 3).

    The size is read from the header first: an image with a side above ``max_side`` is
    refused (``rejected: image WxH larger than ... px``) before any pixel is decoded, and
    the decoded image must have the size its header announced. Grayscale, RGBA (alpha
    dropped: smears are opaque), palette, 16-bit (scaled by 1/257) and CMYK images are
    converted; anything that cannot be converted faithfully raises :class:`ImageReadError`
    with the reason.
    """
    import cv2

    if not data:
        raise ImageReadError("unreadable: empty file")
    width, height = image_size(data)
    if max(width, height) > max_side:
        raise ImageReadError(f"rejected: image {width}x{height} larger than {max_side} px")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    img = _decode_with_pil(data) if img is None else to_rgb8(img, bgr=True)
    if img.shape[:2] != (height, width):
        raise ImageReadError(f"unreadable: decoded as {img.shape[1]}x{img.shape[0]}, its "
                             f"header says {width}x{height}")
    return img


def _decode_with_pil(data: bytes) -> np.ndarray:
    # OpenCV refuses some valid files (CMYK JPEG variants, some palettes); PIL is the
    # second opinion before a file is called unreadable.
    import io

    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL ships with matplotlib
        raise ImageReadError("unreadable: not a decodable image") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGB" and im.mode not in ("I;16", "I;16B"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ImageReadError(f"unreadable: {type(exc).__name__}: {exc}") from None
    return to_rgb8(arr, bgr=False)


def to_rgb8(img: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Convert a decoded image array to contiguous 8-bit RGB, or raise ImageReadError."""
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) // 257).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ImageReadError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim != 3:
        raise ImageReadError(f"unsupported array shape {img.shape}")
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    if channels == 4:
        img = img[:, :, :3]
    elif channels != 3:
        raise ImageReadError(f"unsupported number of channels: {channels}")
    if bgr:
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------- loading


def load_cohort(root, *, reference_date: str = DEFAULT_REFERENCE_DATE) -> Cohort:
    """Load a cohort folder into a :class:`Cohort`.

    Parameters
    ----------
    root : path-like
        Either the challenge layout (``trainset/`` and/or ``testset/`` sub-folders, each
        with its CSV and patient folders) or a folder of patient sub-folders holding exactly
        one CSV file.
    reference_date : str, default "2020-01-01"
        ISO date at which ages are computed from ``DOB``. Store it with any model trained
        on these ages.

    Returns
    -------
    Cohort

    Raises
    ------
    CohortError
        The folder or CSV is missing, the CSV lacks a required column, an ID is duplicated
        or is not a plain folder name. The message names the file and row.
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"{root}: no such folder")
    date.fromisoformat(reference_date)  # fail early on a bad parameter

    splits = [(root / d, root / d / csv, d) for d, csv in CHALLENGE_SPLITS
              if (root / d / csv).is_file()]
    if not splits:
        csvs = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
        if len(csvs) != 1:
            found = ", ".join(p.name for p in csvs) or "none"
            raise CohortError(
                f"{root}: expected the challenge layout (trainset/trainset_true.csv, "
                f"testset/testset_data.csv) or exactly one clinical CSV beside the patient "
                f"folders; found CSV files: {found}")
        splits = [(root, csvs[0], "")]

    tables, images, issues = [], {}, []
    for folder, csv, split in splits:
        table = _read_clinical_csv(csv, reference_date, issues)
        table["SPLIT"] = split
        folder_images = _scan_patient_folders(folder, csv, issues, root)
        for pid in table.index:
            if pid not in folder_images:
                issues.append(("warning", "row_without_folder", pid, str(folder / pid),
                               f"{csv.name}: no patient folder; no image-based call possible"))
        extra = [pid for pid in folder_images if pid not in table.index]
        for pid in extra:
            issues.append(("warning", "folder_without_row", pid, str(folder / pid),
                           f"no row in {csv.name}; processed with unknown clinical data"))
        if extra:
            add = pd.DataFrame(index=pd.Index(extra, name="ID"))
            add["LABEL"] = pd.array([pd.NA] * len(extra), dtype="Int64")
            add["GENDER"] = pd.array([pd.NA] * len(extra), dtype="string")
            add["AGE"] = np.nan
            add["LYMPH_COUNT"] = np.nan
            add["SPLIT"] = split
            add["IN_CSV"] = False
            table = pd.concat([table, add])
        dup = table.index.intersection(pd.Index(list(images)))
        if len(dup):
            raise CohortError(f"{csv}: patient ID {dup[0]!r} appears in more than one split")
        for pid in table.index:
            images[pid] = folder_images.get(pid, [])
        tables.append(table)

    clinical = pd.concat(tables)
    clinical.index.name = "ID"
    clinical["LABEL"] = clinical["LABEL"].astype("Int64")
    clinical["GENDER"] = clinical["GENDER"].astype("string")
    issue_df = pd.DataFrame(issues, columns=_ISSUE_COLUMNS)
    return Cohort(clinical=clinical, images=images, issues=issue_df, root=root,
                  reference_date=reference_date, csv_files=[s[1] for s in splits])


def holds_images(folder) -> bool:
    """True when ``folder`` holds image files directly and no CSV file: one patient's
    images (:func:`load_patient`), not a cohort (:func:`load_cohort`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    files = [p for p in folder.iterdir() if p.is_file()]
    return (not any(p.suffix.lower() == ".csv" for p in files)
            and any(p.suffix.lower() in IMAGE_SUFFIXES for p in files))


def load_patient(folder, *, age: float, lymph_count: float, gender: str | None = None,
                 reference_date: str = DEFAULT_REFERENCE_DATE) -> Cohort:
    """One patient's cohort from a folder of that patient's images and its clinical values,
    with no clinical table.

    Parameters
    ----------
    folder : path-like
        A folder holding the patient's image files directly (sub-folders and other files
        are listed in :attr:`Cohort.issues` and not read). Its name is the patient ID and
        must be a plain ID, as in a clinical CSV.
    age : float
        Age in years at sampling, in [0, 130).
    lymph_count : float
        Lymphocyte count, 10⁹/L, positive.
    gender : {"M", "F"} or None, default None
        Any case; None when unknown (every model imputes it).
    reference_date : str, default "2020-01-01"
        Stored as :attr:`Cohort.reference_date` (the age is given, not computed from it).

    Returns
    -------
    Cohort
        One unlabelled patient (``SPLIT`` "", ``IN_CSV`` False) with ``root`` the folder.

    Raises
    ------
    CohortError
        The folder is missing, its name is not a plain ID, it holds no image file, or a
        value is out of range; the message names it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "P7"; d.mkdir()
    >>> _ = (d / "000.jpg").write_bytes(b"")
    >>> c = load_patient(d, age=72, lymph_count=5.3, gender="f")
    >>> r = c.clinical.loc["P7"]
    >>> r["GENDER"], float(r["AGE"]), float(r["LYMPH_COUNT"]), len(c.images["P7"])
    ('F', 72.0, 5.3, 1)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CohortError(f"{folder}: no such folder")
    date.fromisoformat(reference_date)
    pid = folder.resolve().name
    if not _ID_RE.match(pid):
        raise CohortError(f"{folder}: the folder's name {pid!r} is the patient ID and must be "
                          f"a plain one (letters, digits, '_', '-', '.'; starting with a "
                          f"letter or digit): rename the folder")
    age, lymph_count = float(age), float(lymph_count)
    if not 0 <= age < 130:
        raise CohortError(f"{folder}: age {age:g} years is implausible (0 to 130)")
    if not np.isfinite(lymph_count) or lymph_count <= 0:
        raise CohortError(f"{folder}: lymphocyte count {lymph_count:g} must be a positive "
                          f"number (10⁹/L)")
    if gender is not None and str(gender).strip().upper() not in ("M", "F"):
        raise CohortError(f"{folder}: gender {gender!r} is not M or F")
    issues: list = []
    images = _scan_images(folder, pid, issues, folder.resolve())
    if not images:
        subs = sum(p.is_dir() for p in folder.iterdir())
        raise CohortError(f"{folder}: no image files directly in it"
                          + (f" ({subs} sub-folders, not read: give the folder that holds "
                             f"the images)" if subs else ""))
    clinical = pd.DataFrame(
        {"LABEL": pd.array([pd.NA], dtype="Int64"),
         "GENDER": pd.array([None if gender is None else str(gender).strip().upper()],
                            dtype="string"),
         "AGE": [age], "LYMPH_COUNT": [lymph_count], "IN_CSV": [False], "SPLIT": [""]},
        index=pd.Index([pid], name="ID"))
    if gender is None:
        issues.append(("warning", "unknown_gender", pid, str(folder), "gender not given"))
    return Cohort(clinical=clinical, images={pid: images},
                  issues=pd.DataFrame(issues, columns=_ISSUE_COLUMNS), root=folder,
                  reference_date=reference_date)


def _read_clinical_csv(csv: Path, reference_date: str, issues: list) -> pd.DataFrame:
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CohortError(f"{csv}: not a readable CSV ({exc})") from None
    raw.columns = [c.strip().upper() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if "DOB" not in raw.columns and "AGE" not in raw.columns:
        missing.append("DOB or AGE")
    if missing:
        raise CohortError(f"{csv}: missing required column(s): {', '.join(missing)} "
                          f"(columns found: {', '.join(raw.columns)})")

    seen: dict[str, int] = {}
    rows = []
    for i, rec in enumerate(raw.to_dict("records")):
        line = i + 2  # 1-based, after the header line
        where = f"{csv.name} line {line}"
        pid = rec["ID"].strip()
        if not _ID_RE.match(pid) or pid in (".", ".."):
            raise CohortError(f"{csv} line {line}: ID {pid!r} is not a plain folder name "
                              f"(letters, digits, '_', '-', '.'; no path separators)")
        if pid in seen:
            raise CohortError(f"{csv} line {line}: duplicate ID {pid!r} "
                              f"(first seen on line {seen[pid]})")
        seen[pid] = line
        rows.append({
            "ID": pid,
            "LABEL": _parse_label(rec.get("LABEL", ""), f"{csv} line {line}", pid),
            "GENDER": _parse_gender(rec["GENDER"], where, pid, issues),
            "AGE": _parse_age(rec, reference_date, where, pid, issues),
            "LYMPH_COUNT": _parse_count(rec["LYMPH_COUNT"], where, pid, issues),
        })
    table = pd.DataFrame(rows, columns=["ID", "LABEL", "GENDER", "AGE", "LYMPH_COUNT"])
    table = table.set_index("ID")
    table["LABEL"] = pd.array(table["LABEL"].tolist(), dtype="Int64")
    table["AGE"] = table["AGE"].astype(float)
    table["LYMPH_COUNT"] = table["LYMPH_COUNT"].astype(float)
    table["IN_CSV"] = True
    return table


def _parse_label(value: str, where: str, pid: str):
    text = str(value).strip()
    if text in ("", "-1", "-1.0", "NA", "nan"):
        return pd.NA
    if text in ("0", "1", "0.0", "1.0"):
        return int(float(text))
    raise CohortError(f"{where}: LABEL {text!r} for {pid} is not 0 (reactive), 1 (tumoral) "
                      f"or -1/empty (unknown)")


def _parse_gender(value: str, where: str, pid: str, issues: list):
    text = str(value).strip().upper()
    if text in ("M", "F"):
        return text
    issues.append(("warning", "unknown_gender", pid, where, f"GENDER {value!r} is not M or F"))
    return pd.NA


def _parse_age(rec: dict, reference_date: str, where: str, pid: str, issues: list) -> float:
    if "DOB" in rec:
        text = str(rec["DOB"]).strip()
        try:
            dob = parse_dob(text)
        except ValueError as exc:
            issues.append(("warning", "bad_dob", pid, where, str(exc)))
            return np.nan
        if dob > date.fromisoformat(reference_date):
            issues.append(("warning", "dob_after_reference", pid, where,
                           f"born {dob.isoformat()}, after {reference_date}, the reference "
                           f"date at which ages are computed"))
            return np.nan
        age = age_at(dob, reference_date)
    else:
        try:
            age = float(rec["AGE"])
        except ValueError:
            issues.append(("warning", "bad_age", pid, where, f"AGE {rec['AGE']!r} is not a number"))
            return np.nan
    if not 0 <= age < 130:
        issues.append(("warning", "bad_age", pid, where, f"age {age:.1f} years is implausible"))
        return np.nan
    return age


def _parse_count(value: str, where: str, pid: str, issues: list) -> float:
    text = str(value).strip()
    try:
        count = float(text)
    except ValueError:
        issues.append(("warning", "bad_lymph_count", pid, where,
                       f"LYMPH_COUNT {text!r} is not a number" if text else "LYMPH_COUNT is empty"))
        return np.nan
    if not np.isfinite(count) or count <= 0:
        issues.append(("warning", "bad_lymph_count", pid, where,
                       f"LYMPH_COUNT {text!r} must be a positive number (10⁹/L)"))
        return np.nan
    return count


def _outside(path: Path, root: Path) -> bool:
    """True when ``path`` (a link, or inside a linked folder) leads outside the cohort
    folder ``root`` (resolved)."""
    return not path.resolve().is_relative_to(root)


def _scan_patient_folders(folder: Path, csv: Path, issues: list,
                          root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    root = root.resolve()
    for entry in sorted(folder.iterdir()):
        if entry == csv:
            continue
        if _outside(entry, root):
            # a link out of the cohort: its files would be read, and shown in the report,
            # as this patient's
            issues.append(("warning", "link_outside_cohort", entry.name, str(entry),
                           "a link to a place outside the cohort folder: not read"))
            continue
        if not entry.is_dir():
            issues.append(("info", "ignored_file", "", str(entry), "not a patient folder"))
            continue
        if entry.name.startswith("."):
            issues.append(("info", "ignored_folder", "", str(entry), "hidden folder"))
            continue
        if not _ID_RE.match(entry.name):
            issues.append(("warning", "ignored_folder", "", str(entry),
                           "folder name is not a plain patient ID"))
            continue
        imgs = _scan_images(entry, entry.name, issues, root)
        if not imgs:
            issues.append(("warning", "empty_folder", entry.name, str(entry), "no image files"))
        found[entry.name] = imgs
    return found


def _scan_images(folder: Path, pid: str, issues: list, root: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; everything else, and links
    out of ``root`` (resolved), is listed in ``issues``."""
    imgs = []
    # the folder resolved once: a file that is no link lies where its folder does, so only
    # links are resolved one by one (resolving every image was a third of a large cohort's
    # scan); names sort as their paths do within one folder
    inside = folder.resolve().is_relative_to(root)
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        f = folder / e.name
        if _outside(f, root) if (e.is_symlink() or not inside) else False:
            issues.append(("warning", "link_outside_cohort", pid, str(f),
                           "a link to a file outside the cohort folder: not read"))
            continue
        if e.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("._"):
            imgs.append(f)
        else:
            why = "sub-folder" if e.is_dir() else "not an image file name"
            issues.append(("info", "ignored_file", pid, str(f), why))
    return imgs
