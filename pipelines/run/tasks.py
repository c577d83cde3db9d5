"""The per-patient task of the features stage: read, look up the cache, compute, store.

One patient's images are the unit of caching, of parallel tasks (local processes or a Dask
cluster, :mod:`pipelines.run.cluster`) and of the pixel-space heterogeneity score. Each
patient's result is cached under ``FEATURES/cache`` by a hash of its image bytes and the
settings. This module imports neither :mod:`pipelines.run.features` (the stage, which runs
these tasks) nor :mod:`pipelines.run.cluster`, so both can import it.

The task that worker processes run (:func:`process_patient`) hands its cells over as an
Arrow table and never imports pandas (about 80 MiB resident in every worker, issue 21);
:func:`compute_patient` and :func:`cache_load` give the same cells as a DataFrame.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellfeat.data import ImageReadError, decode_image
from cellfeat.features import FEATURE_NAMES, FEATURES_REVISION
from cellfeat.measure import DETAIL_COLUMN, QC_COLUMN, failed_row, measure_image, nucleus_crop
from cellfeat.pixels import PIXEL_SCORE, PixelSums
from cellfeat.ruler import RULER_RED_CELLS, red_cell_diameters, ruler_of, to_canonical

from ..io import atomic_path, settings_hash

__all__ = ["FeatureSettings", "CELL_COLUMNS", "RULER_COLUMNS", "PATIENT_RULER", "decode_all",
           "patient_ruler", "read_blobs", "patient_key",
           "save_npy", "cache_load", "cache_store", "compute_patient", "compute_table",
           "read_patient", "process_patient"]

#: The red-cell ruler of each image (issue 29, :mod:`cellfeat.ruler`): the source of its
#: patient's ruler (text), then the image's own median red-cell diameter (px, NaN without
#: a measurable red cell), how many red cells it measured (NaN: not measured, the
#: patient's ruler already had :data:`cellfeat.ruler.RULER_RED_CELLS`), and the patient
#: ruler used (px).
RULER_COLUMNS = ["Diagnostics_RedCell_RulerSource", "Diagnostics_RedCell_DiameterPx",
                 "Diagnostics_RedCell_Count", "Diagnostics_RedCell_RulerPx"]
#: Per patient (``patients.parquet``): the ruler (px), its source and its red cells.
PATIENT_RULER = ("RULER_PX", "RULER_SOURCE", "RULER_RED_CELLS")
CELL_COLUMNS = ["ID", "FILE", QC_COLUMN, DETAIL_COLUMN, RULER_COLUMNS[0], *FEATURE_NAMES,
                *RULER_COLUMNS[1:]]


@dataclass(frozen=True)
class FeatureSettings:
    method: str = "otsu"
    channel: str = "stain"
    crop_window: int = 96
    crop_size: int = 32

    def as_dict(self) -> dict:
        return {"method": self.method, "channel": self.channel, "crop_window": self.crop_window,
                "crop_size": self.crop_size,
                "features": list(FEATURE_NAMES), "revision": FEATURES_REVISION,
                "columns": CELL_COLUMNS}

    @property
    def hash(self) -> str:
        return settings_hash(self.as_dict())


def read_blobs(files) -> list:
    """Each file's bytes, or the OSError that reading it raised."""
    blobs = []
    for f in files:
        try:
            blobs.append(Path(f).read_bytes())
        except OSError as exc:
            blobs.append(exc)
    return blobs


def patient_key(pid: str, names, blobs, settings: FeatureSettings) -> str:
    """Content address of one patient's work: settings, file names and bytes."""
    key = hashlib.sha256(settings.hash.encode() + pid.encode())
    for name, b in zip(names, blobs):
        key.update(str(name).encode())
        key.update(hashlib.sha256(b).digest() if isinstance(b, bytes) else b"<error>")
    return f"{pid}-{key.hexdigest()[:24]}"


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write one array atomically, never pickled."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _cache_load(cache_dir: Path | None, key: str, read_cells):
    # (cells as read_cells reads the .parquet, meta, crops) for key, or None. The .json is
    # written last: its presence means the files beside it are complete; a damaged entry
    # is recomputed.
    import pyarrow as pa

    if cache_dir is None or not (cache_dir / f"{key}.json").exists():
        return None
    try:
        return (read_cells(cache_dir / f"{key}.parquet"),
                json.loads((cache_dir / f"{key}.json").read_text()),
                np.load(cache_dir / f"{key}.npy", allow_pickle=False))
    except (OSError, ValueError, pa.ArrowException):
        return None


def cache_load(cache_dir: Path | None, key: str):
    """The cached ``(cells, meta, crops)`` for ``key`` (cells a DataFrame), or None."""
    import pandas as pd

    return _cache_load(cache_dir, key, pd.read_parquet)


def cache_store(cache_dir: Path | None, key: str, cells, meta: dict,
                crops: np.ndarray) -> None:
    """Store one patient's result; ``cells`` an Arrow table or a DataFrame."""
    import pyarrow.parquet as pq

    if cache_dir is None:
        return
    with atomic_path(cache_dir / f"{key}.parquet") as tmp:
        if hasattr(cells, "to_parquet"):
            cells.to_parquet(tmp, index=False)
        else:
            pq.write_table(cells, tmp)
    save_npy(cache_dir / f"{key}.npy", crops)
    with atomic_path(cache_dir / f"{key}.json") as tmp:
        tmp.write_text(json.dumps(meta))



def compute_patient(pid: str, names, blobs, settings: FeatureSettings, *, ruler=None):
    """Features of one patient's images from their bytes (no file access: a task that can
    run anywhere): ``(cells, meta, crops)``, cells a DataFrame of :data:`CELL_COLUMNS`.
    ``ruler``: the patient's ``(diameter px, source, red cells)`` when measured elsewhere
    (on more of its images than ``blobs``); by default measured on ``blobs``."""
    import pandas as pd

    rows, meta, crops = _measure_patient(pid, names, blobs, settings, ruler)
    return pd.DataFrame(rows, columns=CELL_COLUMNS), meta, crops


def compute_table(pid: str, names, blobs, settings: FeatureSettings):
    """:func:`compute_patient` with the cells as an Arrow table (the same columns, types
    and values as the DataFrame's Parquet file), without importing pandas."""
    import pyarrow as pa

    rows, meta, crops = _measure_patient(pid, names, blobs, settings, None)
    # built from buffers: pyarrow.array() imports pandas to inspect its input
    columns = {}
    for c in CELL_COLUMNS:
        values = [r[c] for r in rows]
        if c in _TEXT_COLUMNS:  # large_string, as pandas's str columns become
            data = [str(v).encode() for v in values]
            offsets = np.zeros(len(data) + 1, np.int64)
            np.cumsum([len(d) for d in data], out=offsets[1:])
            columns[c] = pa.Array.from_buffers(pa.large_string(), len(data), [
                None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
        else:  # float64, NaN stored as null, as pandas writes it
            v = np.asarray(values, np.float64)
            valid = np.packbits(~np.isnan(v), bitorder="little")
            columns[c] = pa.Array.from_buffers(pa.float64(), len(v), [
                pa.py_buffer(valid), pa.py_buffer(v)])
    return pa.table(columns), meta, crops


_TEXT_COLUMNS = frozenset(CELL_COLUMNS[:5])


def _measure_patient(pid: str, names, blobs, settings: FeatureSettings, ruler):
    # (one dict per image, the patient's meta, crops): what both forms of the cells hold
    import cv2
    from threadpoolctl import threadpool_limits

    # One OpenCV thread and one BLAS thread per task: the work is many small calls, where a
    # thread pool costs more than it saves (OpenCV: segmentation 1.03 -> 0.82 ms/image;
    # BLAS: features 2.4 -> 1.7 ms/image on dev images, in one process with the other core
    # busy), and parallelism comes from running tasks side by side. Worker processes get
    # one BLAS thread from joblib already; this also holds when a patient is computed in
    # the calling process (scoring one patient) or on a Dask worker.
    cv2.setNumThreads(1)
    with threadpool_limits(1, user_api="blas"):
        return _measure_images(pid, names, blobs, settings, ruler)


def decode_all(blobs) -> list:
    """Each blob decoded (RGB uint8), or the reason it was not: the OSError that reading it
    raised, or the :class:`~cellfeat.data.ImageReadError` of decoding."""
    out = []
    for b in blobs:
        if isinstance(b, Exception):
            out.append(b)
            continue
        try:
            out.append(decode_image(b))
        except ImageReadError as exc:
            out.append(exc)
    return out


def patient_ruler(images, transform=None) -> tuple:
    """``(ruler, per image)``: the patient's ``(diameter px, source, red cells)``
    (:func:`cellfeat.ruler.ruler_of`) and each image's red-cell diameters.

    Images are measured in their order until :data:`cellfeat.ruler.RULER_RED_CELLS` red
    cells are found (one smear, one magnification: more cells only add cost); an image left
    unmeasured, or not decoded, has None. ``transform`` (item -> image or not) is applied
    to the items measured only (a shift of the stability check)."""
    per, found = [], 0
    for item in images:
        im = item if transform is None or found >= RULER_RED_CELLS else transform(item)
        if found >= RULER_RED_CELLS or not isinstance(im, np.ndarray):
            per.append(None)
            continue
        per.append(red_cell_diameters(im))
        found += len(per[-1])
    return ruler_of([d for d in per if d is not None]), per


def _measure_images(pid: str, names, blobs, settings: FeatureSettings, ruler=None):
    # One smear, one magnification: every image of the patient is decoded once and held
    # (a few MB) while the red cells of all of them give the patient's ruler; then each is
    # resampled to the canonical ruler and segmented (issue 29).
    rows, pixels = [], PixelSums()
    crops = np.zeros((len(names), settings.crop_size, settings.crop_size, 3), np.uint8)
    images = decode_all(blobs)
    own, per = patient_ruler(images)
    diameter, source, n_red = own if ruler is None else ruler
    for j, (name, image) in enumerate(zip(names, images)):
        if isinstance(image, OSError):
            row = failed_row(f"unreadable: {image}", FEATURE_NAMES)
        elif isinstance(image, Exception):
            row = failed_row(str(image), FEATURE_NAMES)
        else:
            canon, ruler_px = to_canonical(image, diameter)
            row, seg = measure_image(canon, method=settings.method, channel=settings.channel,
                                     ruler=ruler_px)
            if row[QC_COLUMN] == "ok":
                crops[j] = nucleus_crop(canon, seg, window=settings.crop_window,
                                        size=settings.crop_size)
            # every decodable image, as pixel_dispersion(decoded images) would take it
            pixels.add(image)
        d = per[j]  # None: not measured (the ruler had its red cells), NaN in the table
        rows.append({"ID": pid, "FILE": str(name), **row, RULER_COLUMNS[0]: source,
                     RULER_COLUMNS[1]: float(np.median(d)) if d is not None and len(d) else np.nan,
                     RULER_COLUMNS[2]: float(len(d)) if d is not None else np.nan,
                     RULER_COLUMNS[3]: float(diameter)})
    meta = {"ID": pid, PIXEL_SCORE: pixels.value() if pixels.n else None,
            "N_PIXEL_IMAGES": pixels.n, PATIENT_RULER[0]: float(diameter),
            PATIENT_RULER[1]: source, PATIENT_RULER[2]: int(n_red)}
    return rows, meta, crops


def read_patient(pid: str, files, settings: FeatureSettings, cache_dir: Path | None, *,
                 table: bool = False):
    """Read one patient's files and look its work up in the cache.

    Returns ``(key, names, blobs, hit)``; ``hit`` is the cached result (cells a DataFrame,
    or an Arrow table with ``table``) or None.
    """
    names = [Path(f).name for f in files]
    blobs = read_blobs(files)
    key = patient_key(pid, names, blobs, settings)
    if table:
        hit = _cache_load(cache_dir, key, _read_table)
    else:
        hit = cache_load(cache_dir, key)
    return key, names, blobs, hit


def _read_table(path):
    # ParquetFile.read, not pyarrow.parquet.read_table, which imports pandas (the workers'
    # hits of the cache never need it)
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        return f.read()


def process_patient(pid: str, files: list[Path], settings: FeatureSettings,
                    cache_dir: Path | None):
    """Read, check the cache, compute, store: the task of the local and shared-path runs.
    Returns ``(cells as an Arrow table, meta, crops)``."""
    key, names, blobs, hit = read_patient(pid, files, settings, cache_dir, table=True)
    if hit is not None:
        return hit
    cells, meta, crops = compute_table(pid, names, blobs, settings)
    cache_store(cache_dir, key, cells, meta, crops)
    return cells, meta, crops
