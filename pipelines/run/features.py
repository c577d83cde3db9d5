"""The features stage: a cohort folder -> cells.parquet, patients.parquet, qc.csv, gallery.

Work is split per patient: :mod:`pipelines.run.tasks` holds the task (read, cache, compute) and
its content-addressed cache under ``FEATURES/cache``, so an interrupted or repeated run
reuses finished work. Results stream into the Parquet writer in patient order, so memory
stays flat in the number of images and the output is the same whatever the number of
processes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import cellfeat
from cellfeat.data import Cohort
from cellfeat.measure import QC_COLUMN
from cellfeat.pixels import PIXEL_SCORE

from .cluster import dask_results, retried_keys
from ..io import atomic_path, write_csv, write_parquet
from .tasks import (CELL_COLUMNS, PATIENT_RULER, RULER_COLUMNS, FeatureSettings, cache_store,
                    process_patient, save_npy)

__all__ = ["run_features", "FeatureSettings", "CELL_COLUMNS", "PIXEL_SCORE"]


def run_features(cohort: Cohort, out_dir, *, settings: FeatureSettings = FeatureSettings(),
                 n_jobs: int = -1, progress: bool = True, gallery: bool = True,
                 client=None, dask_mode: str = "shared", cache_dir=None,
                 computed: dict | None = None) -> dict:
    """Run the features stage over every patient folder of ``cohort``.

    Writes ``cells.parquet``, ``patients.parquet``, ``qc.csv``, ``issues.csv``,
    ``settings.json``, ``gallery.png`` and ``crops/<ID>.npy`` (nucleus-centred crops, one per
    cell row, zeros where QC failed) under ``out_dir``; returns counts. With a Dask
    ``client`` the per-patient tasks run on its cluster (see :mod:`pipelines.run.cluster`);
    otherwise on ``n_jobs`` local processes. ``cache_dir`` (default ``out_dir/cache``) holds
    the per-patient results by content, so several output folders can share one.
    ``computed`` maps a patient ID to ``(key, (cells, meta, crops), cached, seconds)`` where
    the caller already computed (or found cached) that patient's work in memory, in
    ``seconds``: it is stored in the cache (unless it came from there), not computed again,
    and its seconds count in the stage's time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    patients = [(pid, files) for pid, files in cohort.images.items() if files]
    n_images = sum(len(f) for _, f in patients)
    t0 = time.perf_counter()
    submitted: dict = {}
    computed, earlier = computed or {}, 0.0
    if computed and [pid for pid, _ in patients] == list(computed):
        results = []
        for key, result, cached, seconds in computed.values():
            if not cached:
                cache_store(cache_dir, key, *result)
            results.append(result)
            earlier += seconds
    elif client is not None:
        results = dask_results(client, patients, settings, cache_dir, mode=dask_mode,
                               submitted=submitted)
    else:
        tasks = (delayed(process_patient)(pid, files, settings, cache_dir)
                 for pid, files in patients)
        # one patient (scoring one new patient) runs here: starting worker processes, each
        # importing the feature code, would cost more than the patient's own images
        n_jobs = n_jobs if len(patients) > 1 else 1
        results = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    provenance = {"Diagnostics_Version": cellfeat.__version__,
                  "Diagnostics_SettingsHash": settings.hash}
    qc_columns, metas, writer = {"ID": [], "FILE": [], QC_COLUMN: [], RULER_COLUMNS[0]: []}, [], None
    bar = tqdm(total=n_images, unit="img", desc="features", disable=not progress)
    cells_path = out_dir / "cells.parquet"
    with atomic_path(cells_path) as tmp:
        crop_dir = out_dir / "crops"
        crop_dir.mkdir(exist_ok=True)
        for cells, meta, crops in results:
            save_npy(crop_dir / f"{meta['ID']}.npy", crops)
            # local tasks hand over Arrow tables (their workers never import pandas); a
            # Dask task computing from shipped bytes, a DataFrame
            table = (cells if isinstance(cells, pa.Table)
                     else pa.Table.from_pandas(cells, preserve_index=False))
            for name, value in provenance.items():
                table = table.append_column(name, pa.array([value] * table.num_rows,
                                                           pa.large_string()))
            if writer is None:
                schema = table.schema.with_metadata({b"cellfeat": json.dumps(
                    {**provenance, "settings": settings.as_dict()}).encode()})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
            for name, values in qc_columns.items():
                values.extend(table.column(name).to_pylist())
            metas.append(meta)
            bar.update(table.num_rows)
        if writer is None:
            pd.DataFrame(columns=CELL_COLUMNS + list(provenance)).to_parquet(tmp, index=False)
        else:
            writer.close()
    bar.close()
    elapsed = time.perf_counter() - t0 + earlier

    qc = pd.DataFrame(qc_columns)
    write_csv(out_dir / "qc.csv", qc, index=False)
    write_csv(out_dir / "issues.csv", cohort.issues, index=False)
    pat = pd.DataFrame(metas, columns=["ID", PIXEL_SCORE, "N_PIXEL_IMAGES", *PATIENT_RULER])
    write_parquet(out_dir / "patients.parquet", pat)
    (out_dir / "settings.json").write_text(json.dumps(
        {**settings.as_dict(), "hash": settings.hash, "version": cellfeat.__version__,
         "cohort": str(cohort.root),
         # the cohort's red-cell ruler (median of its patients', px): what training saw
         "ruler_px": float(pat[PATIENT_RULER[0]].median()) if len(pat) else float("nan")},
        indent=1))
    counts = qc[QC_COLUMN].map(lambda s: s.split(":")[0]).value_counts().to_dict()
    if gallery and len(qc):
        from ..report.plots import cell_gallery

        if client is None and n_jobs != 1:
            # the idle workers would hold their memory while this process draws (the
            # stage's peak: issue 21); a later parallel step starts new ones
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor(reuse=True).shutdown(wait=True)
        cell_gallery(cohort, qc, out_dir / "gallery.png", settings=settings)
    retried = []
    if client is not None:
        retried = [submitted[k] for k in retried_keys(client, list(submitted))]
    return {"patients": len(patients), "images": int(len(qc)), "by_status": counts,
            "seconds": elapsed, "images_per_s": len(qc) / elapsed if elapsed > 0 else np.nan,
            "retried": retried,
            # patients whose smear showed too few whole red cells for a ruler of its own
            "ruler_default": [m["ID"] for m in metas if m.get(PATIENT_RULER[1]) == "default"],
            "ruler_px": (float(pat[PATIENT_RULER[0]].median()) if len(pat) else np.nan)}
