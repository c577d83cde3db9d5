"""Colour stability of cell features, measured on a sample of each patient's images.

A colour shift (:mod:`cellfeat.augment`: another lab's camera, stain batch or JPEG) moves
every cell's features; a patient-level model sees the move of the patient's bag. This module
measures that move from a small, fixed sample of each patient's images and uses it three
ways:

* :func:`sample_images` is the sample: a seeded rule on file names, blind to labels;
* :func:`bag_drift` is each patient's drift under a shift, δ_{p,f} = the mean over its
  sampled cells of (shifted − original) feature f (cells usable both ways);
* :func:`transferred_bag` estimates a patient's *whole* bag under the shift from its sample
  (the sampled cells as shifted, every other cell moved by δ_p), so that a call on it
  estimates the call on the fully shifted bag at a fraction of the cost;
* :func:`drifted_frame` moves every patient of a cohort frame by one drift (the training
  cohort's mean drift under a shift), and :func:`interval_calls` calls a patient under each
  shift this way: where the calls disagree, a shift of the panel's size could move the
  patient across the threshold, and the call says so;
* :func:`feature_stability` is the per-feature table: the mean drift of the patient mean in
  units of the between-patient SD, its spread over patients, and ICC(A,1) between the
  as-is and the shifted patient means (the reproducibility screen of radiomics: features
  are kept when a perturbation moves them little against how much patients differ);
  :func:`stable_features` applies the fixed bar :data:`STABILITY_BAR`.

Everything here is label-free: the sample, the drifts and the screen use images only.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .extract import QC_COLUMN

__all__ = ["STABILITY_BAR", "SAMPLE_RULE", "sample_images", "bag_drift", "transferred_bag",
           "drifted_frame", "interval_calls", "icc_agreement", "feature_stability",
           "stable_features"]

#: The screening bar, fixed before any feature was measured against it (issue 22): a cell
#: feature is a model input only if, under every shift of the panel (JPEG included), the
#: mean drift of the patient mean is at most a quarter of the between-patient SD of the
#: patient means. Why a quarter: a standardised linear model's logit then moves by at most
#: |β|/4 per feature, and a pure offset of d SD gives ICC(A,1) ≈ 1 / (1 + d²/2), so the bar
#: is ICC ≥ 0.97 for an offset, in the "excellent" band (≥ 0.90) of Koo & Li (2016).
STABILITY_BAR = 0.25

#: The sampling rule in words, as reports and the bundle state it.
SAMPLE_RULE = ("the {k} images of each patient whose SHA-256 of '<seed>/<patient ID>/<file "
               "name>' is smallest (seed {seed}; all images of a patient with fewer), the same "
               "images for every shift; labels are never read")


def sample_images(pid: str, names, k: int, seed: int = 0) -> list[int]:
    """Positions (in ``names``' order, ascending) of the ``k`` images of patient ``pid``
    kept by :data:`SAMPLE_RULE`.

    A hash of the seed, the patient and the file name ranks the images, so the sample
    depends on nothing else: not on labels, not on the order in which files are listed,
    and adding an image to a patient changes its sample by at most that image.

    Examples
    --------
    >>> sample_images("P1", ["a.jpg", "b.jpg", "c.jpg"], 5)
    [0, 1, 2]
    >>> len(sample_images("P1", [f"{i:06d}.jpg" for i in range(50)], 8))
    8
    """
    if k < 1:
        raise ValueError(f"the sample needs at least one image per patient, got k={k}")
    rank = [hashlib.sha256(f"{seed}/{pid}/{n}".encode()).hexdigest() for n in names]
    return sorted(sorted(range(len(rank)), key=rank.__getitem__)[:k])


def bag_drift(original: pd.DataFrame, shifted: pd.DataFrame, features) -> pd.Series:
    """One patient's drift under a shift: per feature f, the mean over cells of
    ``shifted[f] − original[f]``.

    ``original`` and ``shifted`` are the cell rows of the same images in the same order (row
    i of one is row i of the other); only cells usable (``QC_STATUS == "ok"``) both ways
    and with both values finite count. NaN where no cell counts.

    Examples
    --------
    >>> a = pd.DataFrame({"QC_STATUS": ["ok", "ok", "ok"], "F": [1.0, 2.0, 9.0]})
    >>> b = pd.DataFrame({"QC_STATUS": ["ok", "ok", "no_nucleus"], "F": [1.5, 3.0, 0.0]})
    >>> float(bag_drift(a, b, ["F"])["F"])  # ((1.5 - 1) + (3 - 2)) / 2; the third is out
    0.75
    """
    features = list(features)
    if len(original) != len(shifted):
        raise ValueError(f"original and shifted cells differ in number: {len(original)} vs "
                         f"{len(shifted)}")
    if not len(original):
        return pd.Series(np.nan, index=features)
    ok = ((original[QC_COLUMN] == "ok").to_numpy() & (shifted[QC_COLUMN] == "ok").to_numpy())
    d = shifted[features].to_numpy(float)[ok] - original[features].to_numpy(float)[ok]
    with np.errstate(all="ignore"):
        n = np.isfinite(d).sum(axis=0)
        mean = np.where(n > 0, np.nansum(d, axis=0) / np.maximum(n, 1), np.nan)
    return pd.Series(mean, index=features)


def transferred_bag(cells: pd.DataFrame, drift: pd.Series, positions=(),
                    shifted_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """A patient's whole bag under a shift, estimated from its sample.

    Every cell keeps its QC status and has each feature f moved by ``drift[f]`` (NaN drift:
    not moved); the sampled cells (rows ``positions`` of ``cells``) are replaced by their
    measured ``shifted_rows``. When every sampled cell is usable both ways, the mean of the
    result is exactly the original mean plus the drift that :func:`bag_drift` measured, an
    unbiased estimate of the fully shifted bag's mean; quantiles move by the same drift.

    Examples
    --------
    >>> cells = pd.DataFrame({"QC_STATUS": ["ok"] * 3, "F": [1.0, 2.0, 3.0]})
    >>> shifted = pd.DataFrame({"QC_STATUS": ["ok"], "F": [1.5]})
    >>> transferred_bag(cells, pd.Series({"F": 0.5}), [0], shifted)["F"].tolist()
    [1.5, 2.5, 3.5]
    """
    out = cells.copy()
    cols = [f for f in drift.index if f in out.columns and np.isfinite(drift[f])]
    if cols:
        out[cols] = out[cols].to_numpy(float) + drift[cols].to_numpy(float)
    positions = list(positions)
    if positions:
        if shifted_rows is None or len(shifted_rows) != len(positions):
            raise ValueError("need one shifted row per sampled position")
        common = [c for c in out.columns if c in shifted_rows.columns]
        for c in common:  # column by column: keeps each column's dtype
            col = out[c].to_numpy(copy=True)
            col[positions] = shifted_rows[c].to_numpy()
            out[c] = col
    return out


def drifted_frame(X: pd.DataFrame, drift: pd.Series) -> pd.DataFrame:
    """A cohort frame whose every patient is moved by one drift: each cell's feature f by
    ``drift[f]`` (:func:`transferred_bag` without a sample), and a patient-level column of
    ``X`` named in ``drift`` (the pixel dispersion) by its own entry. QC statuses, clinical
    columns and the other columns stay as they are."""
    out = X.copy()
    out["CELLS"] = [transferred_bag(c, drift) if len(c) else c for c in X["CELLS"]]
    for col in drift.index:
        if col in out.columns and col != "CELLS" and np.isfinite(drift[col]):
            out[col] = pd.to_numeric(out[col], errors="coerce") + float(drift[col])
    return out


def interval_calls(models: dict, X: pd.DataFrame, drifts: dict) -> pd.DataFrame:
    """Each patient's routed call as it is and under each drift, and whether they agree.

    Parameters
    ----------
    models : dict
        Route -> fitted :class:`~cellfeat.decision.CalibratedDecision`, as for
        :func:`cellfeat.models.routed_calls`.
    X : cohort frame
    drifts : dict of shift name -> Series
        The drift of each feature under the shift (:func:`drifted_frame`).

    Returns
    -------
    DataFrame indexed like ``X``: ``PROBA_LOW`` and ``PROBA_HIGH`` (the lowest and highest
    P(tumoral) as-is and under the drifts), ``STABLE`` (True when every drift gives the
    as-is call, False when one crosses the threshold, NA without a call) and ``MOVED_BY``
    (the shifts that change the call, comma-separated).
    """
    from .models.routing import routed_calls

    base = routed_calls(models, X)
    probas, moved = [base["PROBA"].to_numpy(float)], [[] for _ in range(len(X))]
    for name, drift in drifts.items():
        c = routed_calls(models, drifted_frame(X, drift))
        probas.append(c["PROBA"].to_numpy(float))
        for i in np.flatnonzero((c["LABEL"].to_numpy() != base["LABEL"].to_numpy())
                                & (base["LABEL"].to_numpy() >= 0)):
            moved[i].append(name)
    p = np.vstack(probas)
    called = base["LABEL"].to_numpy() >= 0
    with np.errstate(all="ignore"):
        low = np.where(called, np.nanmin(np.where(called, p, 0.0), axis=0), np.nan)
        high = np.where(called, np.nanmax(np.where(called, p, 0.0), axis=0), np.nan)
    stable = pd.array([not m if c else pd.NA for m, c in zip(moved, called)], "boolean")
    return pd.DataFrame({"PROBA_LOW": low, "PROBA_HIGH": high, "STABLE": stable,
                         "MOVED_BY": [", ".join(m) for m in moved]}, index=X.index)


def icc_agreement(a, b) -> float:
    """ICC(A,1) of two measurements of the same subjects: two-way, absolute agreement, single
    measure (McGraw & Wong 1996, case A; Shrout & Fleiss ICC(2,1)).

    .. math:: \\mathrm{ICC} = \\frac{MS_R - MS_E}{MS_R + MS_E + 2 (MS_C - MS_E)/n}

    with MS_R the between-subject, MS_C the between-measurement and MS_E the residual mean
    squares of the n × 2 table. 1 when b = a; an offset of d subject-SDs with no other
    change gives about 1 / (1 + d²/2). NaN for fewer than 2 complete subjects or no
    between-subject spread.

    Examples
    --------
    >>> a = np.array([1.0, 2.0, 3.0, 4.0])
    >>> icc_agreement(a, a)
    1.0
    >>> round(icc_agreement(a, a + 1.0), 3)  # offset of 1/sd(a) = 0.775 SD
    0.769
    """
    x = np.column_stack([np.asarray(a, float), np.asarray(b, float)])
    x = x[np.isfinite(x).all(axis=1)]
    n = len(x)
    if n < 2:
        return np.nan
    grand = x.mean()
    ms_r = 2 * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_c = n * ((x.mean(axis=0) - grand) ** 2).sum()
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0) + grand
    ms_e = (resid ** 2).sum() / (n - 1)
    den = ms_r + ms_e + 2 * (ms_c - ms_e) / n
    if not ms_r > 0 or not den > 0:
        return np.nan
    return float((ms_r - ms_e) / den)


def feature_stability(means: pd.DataFrame, drifts: dict, bar: float = STABILITY_BAR
                      ) -> pd.DataFrame:
    """The per-feature stability table.

    Parameters
    ----------
    means : DataFrame, patients × features
        Each patient's mean of each cell feature as it is (usable cells).
    drifts : dict of shift name -> DataFrame, patients × features
        Each patient's drift under that shift (:func:`bag_drift`), same patients.
    bar : float
        :data:`STABILITY_BAR`.

    Returns
    -------
    DataFrame indexed by feature: ``between_sd`` (SD of the patient means, ddof 1), per
    shift ``drift_<shift>`` (mean drift over patients / between_sd, signed),
    ``spread_<shift>`` (SD over patients of the drift / between_sd) and ``icc_<shift>``
    (:func:`icc_agreement` of the means and the means + drift); ``max_abs_drift`` (over
    shifts), ``min_icc`` and ``stable`` (``max_abs_drift <= bar``; False when the feature
    has no between-patient spread or no measured drift).
    """
    sd = means.std(ddof=1)
    table = pd.DataFrame({"between_sd": sd})
    scale = sd.where(sd > 0)
    worst = pd.Series(0.0, index=means.columns)
    icc_min = pd.Series(np.inf, index=means.columns)
    for name, d in drifts.items():
        d = d.reindex(index=means.index, columns=means.columns)
        z = d.mean() / scale
        table[f"drift_{name}"] = z
        table[f"spread_{name}"] = d.std(ddof=1) / scale
        icc = pd.Series({f: icc_agreement(means[f], means[f] + d[f]) for f in means.columns})
        table[f"icc_{name}"] = icc
        worst = np.fmax(worst, z.abs().fillna(np.inf))
        icc_min = np.fmin(icc_min, icc)
    table["max_abs_drift"] = worst.replace(np.inf, np.nan)
    table["min_icc"] = icc_min.replace(np.inf, np.nan)
    table["stable"] = (table["max_abs_drift"] <= bar).fillna(False).astype(bool)
    return table


def stable_features(table: pd.DataFrame) -> list[str]:
    """The features that pass the bar, in the table's order."""
    return [f for f, ok in table["stable"].items() if ok]
