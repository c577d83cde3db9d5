"""The features stage: a cohort folder -> cells.parquet, patients.parquet, qc.csv, gallery.

Work is split per patient (the unit of caching, of parallel tasks and of the pixel-space
heterogeneity score). Each patient's result is cached under ``FEATURES/cache`` by a hash of
its image bytes and the settings, so an interrupted or repeated run reuses finished work.
Results stream into the Parquet writer in patient order, so memory stays flat in the
number of images and the output is the same whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import cellfeat
from cellfeat.data import Cohort, ImageReadError, decode_image
from cellfeat.extract import DETAIL_COLUMN, QC_COLUMN, failed_row, measure_image, nucleus_crop
from cellfeat.features import FEATURE_NAMES, FEATURES_REVISION
from cellfeat.heterogeneity import dispersion_from_sums

from .io import atomic_path, settings_hash, write_csv, write_parquet

PIXEL_SCORE = "Bag_Heterogeneity_PixelDispersion"
CELL_COLUMNS = ["ID", "FILE", QC_COLUMN, DETAIL_COLUMN, *FEATURE_NAMES]


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


def cache_load(cache_dir: Path | None, key: str):
    """The cached ``(cells, meta, crops)`` for ``key``, or None. The .json is written last:
    its presence means the files beside it are complete; a damaged entry is recomputed."""
    if cache_dir is None or not (cache_dir / f"{key}.json").exists():
        return None
    try:
        return (pd.read_parquet(cache_dir / f"{key}.parquet"),
                json.loads((cache_dir / f"{key}.json").read_text()),
                np.load(cache_dir / f"{key}.npy", allow_pickle=False))
    except (OSError, ValueError):
        return None


def cache_store(cache_dir: Path | None, key: str, cells: pd.DataFrame, meta: dict,
                crops: np.ndarray) -> None:
    if cache_dir is None:
        return
    with atomic_path(cache_dir / f"{key}.parquet") as tmp:
        cells.to_parquet(tmp, index=False)
    save_npy(cache_dir / f"{key}.npy", crops)
    with atomic_path(cache_dir / f"{key}.json") as tmp:
        tmp.write_text(json.dumps(meta))


def compute_patient(pid: str, names, blobs, settings: FeatureSettings):
    """Features of one patient's images from their bytes (no file access: a task that can
    run anywhere)."""
    import cv2

    # One OpenCV thread per task: the work is many small calls, where OpenCV's thread pool
    # costs more than it saves (segmentation 1.03 -> 0.82 ms/image measured on dev images),
    # and parallelism comes from running tasks side by side.
    cv2.setNumThreads(1)
    rows, n_px, total, total_sq, shape = [], 0, None, 0.0, None
    crops = np.zeros((len(names), settings.crop_size, settings.crop_size, 3), np.uint8)
    for j, (name, b) in enumerate(zip(names, blobs)):
        if isinstance(b, Exception):
            row = failed_row(f"unreadable: {b}", FEATURE_NAMES)
        else:
            try:
                image = decode_image(b)
            except ImageReadError as exc:
                row = failed_row(str(exc), FEATURE_NAMES)
            else:
                row, seg = measure_image(image, method=settings.method, channel=settings.channel)
                if row[QC_COLUMN] == "ok":
                    crops[j] = nucleus_crop(image, seg, window=settings.crop_window,
                                            size=settings.crop_size)
                # pixel dispersion over the patient's images of the first shape seen
                shape = shape or image.shape
                if image.shape == shape:
                    # sums in 0-255 units, exact: integers far below 2**53 in float64
                    if total is None:
                        total = np.zeros(image.shape, np.float64)
                    cv2.accumulate(image, total)
                    total_sq += cv2.norm(image, cv2.NORM_L2SQR)
                    n_px += 1
        rows.append({"ID": pid, "FILE": str(name), **row})
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
    # the score is defined on pixel values / 255
    score = (dispersion_from_sums(n_px, total.ravel() / 255.0, total_sq / 255.0 ** 2)
             if n_px else None)
    meta = {"ID": pid, PIXEL_SCORE: score, "N_PIXEL_IMAGES": n_px}
    return cells, meta, crops


def read_patient(pid: str, files, settings: FeatureSettings, cache_dir: Path | None):
    """Read one patient's files and look its work up in the cache.

    Returns ``(key, names, blobs, hit)``; ``hit`` is the cached result or None.
    """
    names = [Path(f).name for f in files]
    blobs = read_blobs(files)
    key = patient_key(pid, names, blobs, settings)
    return key, names, blobs, cache_load(cache_dir, key)


def process_patient(pid: str, files: list[Path], settings: FeatureSettings,
                    cache_dir: Path | None) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Read, check the cache, compute, store: the task of the local and shared-path runs."""
    key, names, blobs, hit = read_patient(pid, files, settings, cache_dir)
    if hit is not None:
        return hit
    cells, meta, crops = compute_patient(pid, names, blobs, settings)
    cache_store(cache_dir, key, cells, meta, crops)
    return cells, meta, crops


def run_features(cohort: Cohort, out_dir, *, settings: FeatureSettings = FeatureSettings(),
                 n_jobs: int = -1, progress: bool = True, gallery: bool = True,
                 client=None, dask_mode: str = "shared") -> dict:
    """Run the features stage over every patient folder of ``cohort``.

    Writes ``cells.parquet``, ``patients.parquet``, ``qc.csv``, ``issues.csv``,
    ``settings.json``, ``gallery.png`` and ``crops/<ID>.npy`` (nucleus-centred crops, one per
    cell row, zeros where QC failed) under ``out_dir``; returns counts. With a Dask
    ``client`` the per-patient tasks run on its cluster (see :mod:`pipelines.cluster`);
    otherwise on ``n_jobs`` local processes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    cache_dir = out_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    patients = [(pid, files) for pid, files in cohort.images.items() if files]
    n_images = sum(len(f) for _, f in patients)
    t0 = time.perf_counter()
    submitted: dict = {}
    if client is not None:
        from .cluster import dask_results

        results = dask_results(client, patients, settings, cache_dir, mode=dask_mode,
                               submitted=submitted)
    else:
        tasks = (delayed(process_patient)(pid, files, settings, cache_dir)
                 for pid, files in patients)
        results = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    provenance = {"Diagnostics_Version": cellfeat.__version__,
                  "Diagnostics_SettingsHash": settings.hash}
    qc_parts, metas, writer = [], [], None
    bar = tqdm(total=n_images, unit="img", desc="features", disable=not progress)
    cells_path = out_dir / "cells.parquet"
    with atomic_path(cells_path) as tmp:
        crop_dir = out_dir / "crops"
        crop_dir.mkdir(exist_ok=True)
        for cells, meta, crops in results:
            save_npy(crop_dir / f"{meta['ID']}.npy", crops)
            cells = cells.assign(**provenance)
            table = pa.Table.from_pandas(cells, preserve_index=False)
            if writer is None:
                schema = table.schema.with_metadata({b"cellfeat": json.dumps(
                    {**provenance, "settings": settings.as_dict()}).encode()})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
            qc_parts.append(cells[["ID", "FILE", QC_COLUMN]])
            metas.append(meta)
            bar.update(len(cells))
        if writer is None:
            pd.DataFrame(columns=CELL_COLUMNS + list(provenance)).to_parquet(tmp, index=False)
        else:
            writer.close()
    bar.close()
    elapsed = time.perf_counter() - t0

    qc = pd.concat(qc_parts, ignore_index=True) if qc_parts else pd.DataFrame(
        columns=["ID", "FILE", QC_COLUMN])
    write_csv(out_dir / "qc.csv", qc, index=False)
    write_csv(out_dir / "issues.csv", cohort.issues, index=False)
    pat = pd.DataFrame(metas, columns=["ID", PIXEL_SCORE, "N_PIXEL_IMAGES"])
    write_parquet(out_dir / "patients.parquet", pat)
    (out_dir / "settings.json").write_text(json.dumps(
        {**settings.as_dict(), "hash": settings.hash, "version": cellfeat.__version__,
         "cohort": str(cohort.root)}, indent=1))
    counts = qc[QC_COLUMN].map(lambda s: s.split(":")[0]).value_counts().to_dict()
    if gallery and len(qc):
        from .plots import cell_gallery

        cell_gallery(cohort, qc, out_dir / "gallery.png", settings=settings)
    retried = []
    if client is not None:
        from .cluster import retried_keys

        retried = [submitted[k] for k in retried_keys(client, list(submitted))]
    return {"patients": len(patients), "images": int(len(qc)), "by_status": counts,
            "seconds": elapsed, "images_per_s": len(qc) / elapsed if elapsed > 0 else np.nan,
            "retried": retried}
