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
from cellfeat.data import Cohort, ImageReadError, read_image
from cellfeat.extract import DETAIL_COLUMN, QC_COLUMN, failed_row, measure_image
from cellfeat.features import FEATURE_NAMES, FEATURES_REVISION
from cellfeat.heterogeneity import dispersion_from_sums

from .io import atomic_path, settings_hash, write_csv, write_parquet

PIXEL_SCORE = "Bag_Heterogeneity_PixelDispersion"
CELL_COLUMNS = ["ID", "FILE", QC_COLUMN, DETAIL_COLUMN, *FEATURE_NAMES]


@dataclass(frozen=True)
class FeatureSettings:
    method: str = "otsu"
    channel: str = "stain"

    def as_dict(self) -> dict:
        return {"method": self.method, "channel": self.channel,
                "features": list(FEATURE_NAMES), "revision": FEATURES_REVISION,
                "columns": CELL_COLUMNS}

    @property
    def hash(self) -> str:
        return settings_hash(self.as_dict())


def _decode(data: bytes, path: Path) -> np.ndarray:
    import cv2

    from cellfeat.data import _read_with_pil, to_rgb8

    if not data:
        raise ImageReadError("unreadable: empty file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return _read_with_pil(path)
    return to_rgb8(img, bgr=True)


def process_patient(pid: str, files: list[Path], settings: FeatureSettings,
                    cache_dir: Path | None) -> tuple[pd.DataFrame, dict]:
    """Features of one patient's images (reads the cache first, writes it after)."""
    blobs = []
    for f in files:
        try:
            blobs.append(Path(f).read_bytes())
        except OSError as exc:
            blobs.append(exc)
    key = hashlib.sha256(settings.hash.encode() + pid.encode())
    for f, b in zip(files, blobs):
        key.update(Path(f).name.encode())
        key.update(hashlib.sha256(b).digest() if isinstance(b, bytes) else b"<error>")
    cache = cache_dir / f"{pid}-{key.hexdigest()[:24]}.parquet" if cache_dir else None
    # the .json is written last: its presence means the .parquet beside it is complete
    if cache is not None and cache.with_suffix(".json").exists():
        try:
            return pd.read_parquet(cache), json.loads(cache.with_suffix(".json").read_text())
        except (OSError, ValueError):  # a damaged entry is recomputed, never trusted
            pass

    rows, n_px, total, total_sq, shape = [], 0, None, 0.0, None
    for f, b in zip(files, blobs):
        if isinstance(b, Exception):
            row = failed_row(f"unreadable: {b}", FEATURE_NAMES)
        else:
            try:
                image = _decode(b, Path(f))
            except ImageReadError as exc:
                row = failed_row(str(exc), FEATURE_NAMES)
            else:
                row, _ = measure_image(image, method=settings.method, channel=settings.channel)
                # pixel dispersion over the patient's images of the first shape seen
                shape = shape or image.shape
                if image.shape == shape:
                    q = image.reshape(-1).astype(np.float64) / 255.0
                    total = q if total is None else total + q
                    total_sq += float(q @ q)
                    n_px += 1
        rows.append({"ID": pid, "FILE": Path(f).name, **row})
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
    meta = {"ID": pid, PIXEL_SCORE: dispersion_from_sums(n_px, total, total_sq) if n_px else None,
            "N_PIXEL_IMAGES": n_px}
    if cache is not None:
        with atomic_path(cache) as tmp:
            cells.to_parquet(tmp, index=False)
        with atomic_path(cache.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(meta))
    return cells, meta


def run_features(cohort: Cohort, out_dir, *, settings: FeatureSettings = FeatureSettings(),
                 n_jobs: int = -1, progress: bool = True, gallery: bool = True,
                 log=print) -> dict:
    """Run the features stage over every patient folder of ``cohort``.

    Writes ``cells.parquet``, ``patients.parquet``, ``qc.csv``, ``issues.csv``,
    ``settings.json`` and ``gallery.png`` under ``out_dir``; returns counts.
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
    tasks = (delayed(process_patient)(pid, files, settings, cache_dir) for pid, files in patients)
    results = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    provenance = {"Diagnostics_Version": cellfeat.__version__,
                  "Diagnostics_SettingsHash": settings.hash}
    qc_parts, metas, writer = [], [], None
    bar = tqdm(total=n_images, unit="img", desc="features", disable=not progress)
    cells_path = out_dir / "cells.parquet"
    with atomic_path(cells_path) as tmp:
        for cells, meta in results:
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
    return {"patients": len(patients), "images": int(len(qc)), "by_status": counts,
            "seconds": elapsed, "images_per_s": len(qc) / elapsed if elapsed > 0 else np.nan}
