"""Which model makes each patient's call: the main model, or a fallback when inputs are missing.

A patient with usable cells and a known age and count goes to the main model; one whose age
or count is missing to the image-only model; one without a usable cell to the clinical-only
model; one with neither gets no call. (An unknown *gender* is imputed by every model and
does not change the route.) :func:`routed_calls` is the one implementation of this rule:
the saved :class:`~cellfeat.models.ModelChoice` calls it, so the nested cross-validation of
the rule measures exactly what ``cellfeat score`` does with the saved models.

Given the overlap-zone limit and the atypicality model, it also applies three rails that
hold by construction, whatever the models say (issue 28):

- *the count where it decides*: above the zone limit every training patient was tumoral,
  so cell inputs must not overturn the count's evidence there: the P(tumoral) of a patient
  called from its cells (main or image route) is at least the clinical model's (``FLOOR``
  marks where that raised it);
- *no sparing above the zone*: sparing cytometry is never supported where no training
  patient was reactive, so every called patient above the limit is sent (``TRIAGE`` is
  ``none`` only inside the zone);
- *atypical patients to cytometry*: a patient beyond the bar of
  :class:`~cellfeat.atypia.Atypicality` is sent, whatever its P(tumoral).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..decision import call
from ..extract import QC_COLUMN
from ..zone import in_zone

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


def routed_calls(models: dict, X: pd.DataFrame, *, zone_limit: float | None = None,
                 atypicality=None) -> pd.DataFrame:
    """Calibrated P(tumoral), thresholds and calls of each patient by the model of its route.

    Parameters
    ----------
    models : dict
        ``"main"`` and optionally ``"image"`` and ``"clinical"``: fitted
        :class:`~cellfeat.decision.CalibratedDecision` (a missing fallback falls back to the
        main model, which imputes what is missing).
    X : cohort frame
    zone_limit : float, optional
        The overlap-zone limit learnt from the training patients (:mod:`cellfeat.zone`).
        Given, a main- or image-route patient above it gets P(tumoral) = max(its model,
        the clinical model) (when ``models`` has ``"clinical"``), and every called patient
        above it is sent to cytometry (see the module docstring).
    atypicality : fitted :class:`~cellfeat.atypia.Atypicality`, optional
        Given, patients beyond its bar are sent to cytometry.

    Returns
    -------
    DataFrame indexed like ``X``: ``ROUTE``, ``PROBA``, ``THRESHOLD``, ``TRIAGE_THRESHOLD``
    (NaN where the route is :data:`NO_CALL`), ``LABEL`` (1 tumoral, 0 reactive, -1 no call)
    and ``CYTOMETRY`` (1 sent to cytometry, 0 not, -1 no call), both by
    :func:`~cellfeat.decision.call`; ``FLOOR`` (the count's floor raised P(tumoral)),
    ``ABOVE_ZONE`` (count above ``zone_limit``) and ``ATYPICAL`` (beyond the atypicality
    bar; False without the model).
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
    called = route != NO_CALL
    above = np.zeros(len(X), bool)
    floor = np.zeros(len(X), bool)
    if zone_limit is not None:
        count = pd.to_numeric(X["LYMPH_COUNT"], errors="coerce").to_numpy(float)
        above = ~in_zone(count, zone_limit) & called
        # the image route too: its age is missing, the count is not, and the clinical
        # model imputes the age (its training median)
        idx = np.flatnonzero(above & np.isin(route, ("main", "image")))
        if len(idx) and models.get("clinical") is not None:
            p_clin = models["clinical"].predict_proba(X.iloc[idx])[:, 1]
            p = out["PROBA"].to_numpy()[idx]
            floor[idx] = p_clin > p
            out.iloc[idx, 1] = np.maximum(p, p_clin)
    label = np.full(len(X), -1)
    send = np.full(len(X), -1)
    p = out["PROBA"].to_numpy()
    for key in ROUTES:
        idx = route == key
        if idx.any():
            model = models.get(key) or models["main"]
            label[idx] = call(p[idx], model.threshold_)
            send[idx] = call(p[idx], model.triage_threshold_)
    atypical = np.zeros(len(X), bool)
    if atypicality is not None:
        atypical = atypicality.score(X)["ATYPICAL"].to_numpy(bool)
    send[called & (above | atypical)] = 1
    out["LABEL"] = label
    out["CYTOMETRY"] = send
    out["FLOOR"] = floor
    out["ABOVE_ZONE"] = above
    out["ATYPICAL"] = atypical
    return out
