"""The cohort frame: one row per patient, each patient's cell table in a ``CELLS`` column.

Every candidate of :mod:`cellfeat.models` takes this frame (see the package docstring), so
scikit-learn's splitters, ``clone`` and ``cross_val_score`` work on patients and a split never
puts one patient's cells on both sides.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..extract import QC_COLUMN
from ..heterogeneity import PIXEL_SCORE

__all__ = ["cohort_frame", "long_cells", "first_cells"]


def cohort_frame(clinical: pd.DataFrame, cells: pd.DataFrame,
                 patients: pd.DataFrame | None = None, crops: dict | None = None) -> pd.DataFrame:
    """Build the cohort frame from a clinical table (index ID) and a long cell table.

    Parameters
    ----------
    clinical : DataFrame indexed by ID with AGE, LYMPH_COUNT, GENDER (and LABEL).
    cells : DataFrame with an ``ID`` column, ``QC_STATUS`` and feature columns.
    patients : DataFrame with ``ID`` and per-patient scores (e.g. pixel dispersion).
    crops : dict of ID to uint8 array (n_cells, s, s, 3), optional
        Nucleus-centred crops aligned with each patient's cell rows, for the CNN expert;
        stored in a ``CROPS`` column.

    Returns
    -------
    DataFrame indexed like ``clinical``; ``CELLS`` holds each patient's cell rows (an empty
    table for a patient with no images).
    """
    feature_cols = [c for c in cells.columns if c not in ("ID", "FILE")
                    and not c.startswith("Diagnostics_")]
    groups = {pid: g[feature_cols].reset_index(drop=True) for pid, g in cells.groupby("ID", sort=False)}
    empty = pd.DataFrame(columns=feature_cols)
    out = clinical.copy()
    out["CELLS"] = [groups.get(pid, empty) for pid in out.index]
    if crops is not None:
        none = np.zeros((0, 1, 1, 3), np.uint8)
        out["CROPS"] = [crops.get(pid, none) for pid in out.index]
    if patients is not None and PIXEL_SCORE in patients:
        out[PIXEL_SCORE] = patients.set_index("ID")[PIXEL_SCORE].reindex(out.index).astype(float)
    return out


def long_cells(X: pd.DataFrame) -> pd.DataFrame:
    parts = [c.assign(ID=pid) for pid, c in zip(X.index, X["CELLS"]) if len(c)]
    if not parts:
        return pd.DataFrame(columns=["ID", QC_COLUMN])
    return pd.concat(parts, ignore_index=True)


def first_cells(X: pd.DataFrame) -> pd.DataFrame:
    """The first non-empty cell table with an ID column: enough to learn the feature
    columns, which every patient's table shares (see :func:`cohort_frame`)."""
    for pid, c in zip(X.index, X["CELLS"]):
        if len(c):
            return c.assign(ID=pid)
    return pd.DataFrame(columns=["ID", QC_COLUMN])

