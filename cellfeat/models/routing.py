"""Which model makes each patient's call: the main model, or a fallback when inputs are missing.

A patient with usable cells and a known age and count goes to the main model; one whose age
or count is missing to the image-only model; one without a usable cell to the clinical-only
model; one with neither gets no call. (An unknown *gender* is imputed by every model and
does not change the route.) :func:`routed_calls` is the one implementation of this rule:
the saved :class:`~cellfeat.models.ModelChoice` calls it, so the nested cross-validation of
the rule measures exactly what ``cellfeat score`` does with the saved models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..decision import call
from ..extract import QC_COLUMN

__all__ = ["ROUTES", "NO_CALL", "REQUIRED_CLINICAL", "usable_cells", "routes", "routed_calls"]

#: Routes in the order they are tried; each names the model that makes the call.
ROUTES = ("main", "image", "clinical")
#: The route of a patient that no model can call.
NO_CALL = "none"
#: Clinical inputs the main and clinical models cannot do without (gender is imputed).
REQUIRED_CLINICAL = ("AGE", "LYMPH_COUNT")


def usable_cells(X: pd.DataFrame) -> np.ndarray:
    """Each patient's number of cells with ``QC_STATUS == "ok"``."""
    return np.array([int((c[QC_COLUMN] == "ok").sum()) if len(c) else 0 for c in X["CELLS"]])


def routes(X: pd.DataFrame) -> np.ndarray:
    """The route of every patient of a cohort frame (:data:`ROUTES` or :data:`NO_CALL`)."""
    has_img = usable_cells(X) > 0
    has_clin = X[list(REQUIRED_CLINICAL)].apply(pd.to_numeric, errors="coerce").notna().all(axis=1)
    has_clin = has_clin.to_numpy()
    return np.select([has_img & has_clin, has_img, has_clin], list(ROUTES), NO_CALL)


def routed_calls(models: dict, X: pd.DataFrame) -> pd.DataFrame:
    """Calibrated P(tumoral), thresholds and calls of each patient by the model of its route.

    Parameters
    ----------
    models : dict
        ``"main"`` and optionally ``"image"`` and ``"clinical"``: fitted
        :class:`~cellfeat.decision.CalibratedDecision` (a missing fallback falls back to the
        main model, which imputes what is missing).
    X : cohort frame

    Returns
    -------
    DataFrame indexed like ``X``: ``ROUTE``, ``PROBA``, ``THRESHOLD``, ``TRIAGE_THRESHOLD``
    (NaN where the route is :data:`NO_CALL`), ``LABEL`` (1 tumoral, 0 reactive, -1 no call)
    and ``CYTOMETRY`` (1 sent to cytometry, 0 not, -1 no call), both by
    :func:`~cellfeat.decision.call`.
    """
    route = routes(X)
    out = pd.DataFrame({"ROUTE": route, "PROBA": np.nan, "THRESHOLD": np.nan,
                        "TRIAGE_THRESHOLD": np.nan}, index=X.index)
    for key in ROUTES:
        idx = np.flatnonzero(route == key)
        if not len(idx):
            continue
        model = models.get(key) or models["main"]
        out.iloc[idx, 1] = model.predict_proba(X.iloc[idx])[:, 1]
        out.iloc[idx, 2] = model.threshold_
        out.iloc[idx, 3] = model.triage_threshold_
    label = np.full(len(X), -1)
    send = np.full(len(X), -1)
    for key in ROUTES:
        idx = route == key
        if idx.any():
            model = models.get(key) or models["main"]
            p = out["PROBA"].to_numpy()[idx]
            label[idx] = call(p, model.threshold_)
            send[idx] = call(p, model.triage_threshold_)
    out["LABEL"] = label
    out["CYTOMETRY"] = send
    return out
