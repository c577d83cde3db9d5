"""Atypical patients: how far a patient's cells lie from every training patient's.

A model fitted on one cohort has no evidence about patients unlike any of it: a leukaemia
with cerebriform nuclei, a bag of neutrophils sent by mistake, a smear the segmentation
cannot read. Each cell of such a patient may look plausible on its own; the bag does not.
:class:`Atypicality` measures three things per patient, each learnt from the training
patients only, and flags a patient beyond the bar of any of them, so that ``score`` sends
it to cytometry instead of extrapolating:

1. ``QC_FAILED_SHARE``: the share of its images that segmentation rejected
   (``QC_STATUS`` other than ``ok``);
2. ``DISTANCE``: the Mahalanobis distance of its model inputs (the patient means of the
   cell features the model reads) from the training patients, after robust
   standardisation (median and interquartile range) and with a Ledoit-Wolf shrunk
   covariance (Ledoit & Wolf 2004), which stays well conditioned with ~50 inputs for ~100
   patients;
3. ``EXCEEDANCE``: how far its farthest input lies outside the training patients' range,
   in robust between-patient SDs (0 inside the range); ``OUTSIDE`` names every input
   outside the range, farthest first.

The bars are set by construction, not by eye: the distance and the exceedance are
computed for every training patient *out of fold* (``cv`` folds, each fitted without the
patient), and each bar is the split-conformal quantile of those out-of-fold values at
level 1 - alpha/3 (Vovk et al. 2005; Lei et al. 2018): a new patient exchangeable with the
training patients exceeds one bar with probability at most alpha/3, so it is flagged by
any of the three with probability at most ``alpha`` (the union bound). The QC bar is the
same quantile of the training patients' own shares (nothing is fitted there).

Examples
--------
>>> import pandas as pd
>>> rng = np.random.default_rng(0)
>>> def patient(shift, n=20):
...     return pd.DataFrame({"QC_STATUS": ["ok"] * n, "A": rng.normal(shift, 1, n),
...                          "B": rng.normal(0, 1, n)})
>>> X = pd.DataFrame({"CELLS": [patient(rng.normal(0, .3)) for _ in range(80)]})
>>> a = Atypicality(features=["A", "B"]).fit(X)
>>> new = pd.DataFrame({"CELLS": [patient(0.0), patient(6.0)]}, index=["usual", "odd"])
>>> a.score(new)["ATYPICAL"].tolist()
[False, True]
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .extract import QC_COLUMN

__all__ = ["Atypicality", "conformal_bar", "robust_scale", "PARTS"]

#: The three parts of the figure, in the order a reason names them.
PARTS = ("qc", "distance", "range")


def conformal_bar(values, level: float) -> float:
    """The split-conformal quantile of ``values`` at ``level``: the ⌈level·(n + 1)⌉-th
    smallest finite value (the largest when that rank exceeds n, so a small cohort still
    gets a bar; NaN when there is no finite value). A new value exchangeable with the n
    given ones exceeds it with probability at most 1 - level when the rank is within n.

    Examples
    --------
    >>> conformal_bar(np.arange(1, 100), 0.95)  # rank ceil(0.95 * 100) = 95
    95.0
    >>> conformal_bar([1.0, 2.0], 0.99)          # rank 3 > 2: the largest
    2.0
    """
    v = np.sort(np.asarray(values, float)[np.isfinite(np.asarray(values, float))])
    if not len(v):
        return float("nan")
    k = int(np.ceil(level * (len(v) + 1) - 1e-9))
    return float(v[min(max(k, 1), len(v)) - 1])


def robust_scale(values, axis=0) -> np.ndarray:
    """The interquartile range / 1.349 (the SD of a normal sample), NaN ignored; where it
    is 0 the SD, and where that is 0 too, 1 (a constant input cannot be scaled)."""
    v = np.asarray(values, float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q1, q3 = np.nanpercentile(v, [25, 75], axis=axis)
        s = (q3 - q1) / 1.349
        sd = np.nanstd(v, axis=axis)
    s = np.where(np.isfinite(s) & (s > 0), s, sd)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def _qc_failed_share(X: pd.DataFrame) -> np.ndarray:
    """Each patient's share of images with a QC status other than ``ok`` (NaN: no image)."""
    out = np.full(len(X), np.nan)
    for i, cells in enumerate(X["CELLS"]):
        if len(cells):
            out[i] = float((cells[QC_COLUMN] != "ok").mean())
    return out


def _patient_means(X: pd.DataFrame, features) -> np.ndarray:
    """Mean of each feature over each patient's ``ok`` cells (NaN row: no usable cell)."""
    out = np.full((len(X), len(features)), np.nan)
    for i, cells in enumerate(X["CELLS"]):
        if not len(cells):
            continue
        ok = (cells[QC_COLUMN] == "ok").to_numpy()
        if ok.any():
            v = cells.loc[ok, list(features)].to_numpy(float)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[i] = np.nanmean(v, axis=0)
    return out


class _Reference:
    """Centre, scale, precision and range of one set of patient means (no estimator API:
    the out-of-fold loop of :class:`Atypicality` fits it once per fold)."""

    def __init__(self, M: np.ndarray):
        from sklearn.covariance import LedoitWolf

        M = M[np.isfinite(M).any(axis=1)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an input no patient has
            center = np.nanmedian(M, axis=0)
            low, high = np.nanmin(M, axis=0), np.nanmax(M, axis=0)
        # an input without a value in any patient sits at 0 with an empty range
        self.center = np.where(np.isfinite(center), center, 0.0)
        self.scale = robust_scale(M)
        self.precision = LedoitWolf().fit(self._z(M)).precision_
        self.low = np.where(np.isfinite(low), low, self.center)
        self.high = np.where(np.isfinite(high), high, self.center)

    def _z(self, M):
        Z = (M - self.center) / self.scale
        return np.where(np.isfinite(Z), Z, 0.0)  # a missing input sits at the median

    def distance(self, M) -> np.ndarray:
        Z = self._z(M)
        d = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", Z, self.precision, Z), 0.0))
        return np.where(np.isfinite(M).any(axis=1), d, np.nan)

    def exceedance(self, M) -> np.ndarray:
        """(n, d): how far each input lies beyond the range, in robust SDs (0 inside)."""
        with np.errstate(invalid="ignore"):
            e = np.maximum((M - self.high) / self.scale, (self.low - M) / self.scale)
        return np.where(np.isfinite(e), np.maximum(e, 0.0), 0.0)


class Atypicality(BaseEstimator):
    """How atypical each patient is against the training patients, and whether that is
    beyond the bar (see the module docstring for the three parts and their bars).

    Parameters
    ----------
    features : list of str, optional
        The cell features whose patient means are the model inputs (default: every numeric
        column of the cell tables other than the QC columns).
    alpha : float, default=0.05
        Largest share of patients exchangeable with the training ones that may be flagged:
        each part's bar is the conformal quantile at 1 - alpha/3 of its training values.
    cv : int, default=5
        Folds of the out-of-fold distances and exceedances the bars are set from.
    random_state : int, default=0
        Seed of those folds.

    Attributes
    ----------
    features_ : list of str
        The inputs, in order.
    center_, scale_ : ndarray
        Median and robust SD (:func:`robust_scale`) of each input over the training
        patients; ``precision_`` the Ledoit-Wolf precision of the standardised inputs.
    low_, high_ : ndarray
        The training patients' range of each input.
    bars_ : dict
        ``{"qc", "distance", "range"}``: the bar of each part.
    oof_distance_, oof_exceedance_, qc_failed_share_ : ndarray
        The training patients' out-of-fold values the bars were set from.
    cell_center_, cell_scale_ : ndarray
        Median and robust SD of each feature over the training patients' usable cells:
        :meth:`cell_scores` ranks a patient's cells by how far they lie from them.

    Examples
    --------
    See the module docstring.
    """

    def __init__(self, *, features=None, alpha=0.05, cv=5, random_state=0):
        self.features = features
        self.alpha = alpha
        self.cv = cv
        self.random_state = random_state

    def _inputs(self, X) -> list:
        if self.features is not None:
            return list(self.features)
        cells = next((c for c in X["CELLS"] if len(c)), pd.DataFrame())
        return [c for c in cells.columns if c not in (QC_COLUMN, "QC_DETAIL")
                and pd.api.types.is_numeric_dtype(cells[c])]

    def fit(self, X: pd.DataFrame, y=None):
        """Learn the reference and the bars from the training patients of cohort frame
        ``X`` (``y`` is ignored: atypicality does not use the labels)."""
        from sklearn.model_selection import KFold

        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        self.features_ = self._inputs(X)
        M = _patient_means(X, self.features_)
        have = np.isfinite(M).any(axis=1)
        if have.sum() < 2 * self.cv:
            raise ValueError(f"{int(have.sum())} training patients with usable cells: "
                             f"atypicality needs at least {2 * self.cv} for {self.cv} folds")
        ref = _Reference(M[have])
        self.center_, self.scale_, self.precision_ = ref.center, ref.scale, ref.precision
        self.low_, self.high_ = ref.low, ref.high
        Mh = M[have]
        dist, exc = np.empty(len(Mh)), np.empty(len(Mh))
        folds = KFold(self.cv, shuffle=True, random_state=self.random_state).split(Mh)
        for tr, te in folds:
            r = _Reference(Mh[tr])
            dist[te] = r.distance(Mh[te])
            exc[te] = r.exceedance(Mh[te]).max(axis=1)
        self.oof_distance_, self.oof_exceedance_ = dist, exc
        qc = _qc_failed_share(X)
        self.qc_failed_share_ = qc[np.isfinite(qc)]  # patients without an image have none
        level = 1 - self.alpha / len(PARTS)
        self.bars_ = {"qc": conformal_bar(self.qc_failed_share_, level),
                      "distance": conformal_bar(dist, level),
                      "range": conformal_bar(exc, level)}
        cells = [c.loc[c[QC_COLUMN] == "ok", self.features_] for c in X["CELLS"] if len(c)]
        V = pd.concat(cells, ignore_index=True).to_numpy(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            center = np.nanmedian(V, axis=0)
        self.cell_center_ = np.where(np.isfinite(center), center, 0.0)
        self.cell_scale_ = robust_scale(V)
        return self

    def _ref(self) -> _Reference:
        r = _Reference.__new__(_Reference)
        r.center, r.scale, r.precision = self.center_, self.scale_, self.precision_
        r.low, r.high = self.low_, self.high_
        return r

    def score(self, X: pd.DataFrame) -> pd.DataFrame:
        """Each patient's atypicality.

        Returns
        -------
        DataFrame indexed like ``X``: ``QC_FAILED_SHARE``, ``DISTANCE``, ``EXCEEDANCE``
        (NaN without images or usable cells), ``OUTSIDE`` (the inputs outside the training
        range, farthest first, as a tuple of names), ``BEYOND`` (the parts past their bar,
        a tuple among :data:`PARTS`) and ``ATYPICAL`` (True when any part is past its bar).
        """
        check_is_fitted(self, "bars_")
        M = _patient_means(X, self.features_)
        ref = self._ref()
        qc = _qc_failed_share(X)
        dist = ref.distance(M)
        e = ref.exceedance(M)
        usable = np.isfinite(M).any(axis=1)
        exc = np.where(usable, e.max(axis=1) if e.shape[1] else 0.0, np.nan)
        outside = [tuple(self.features_[j] for j in np.argsort(-row, kind="stable") if row[j] > 0)
                   for row in e]
        with np.errstate(invalid="ignore"):
            past = np.column_stack([qc > self.bars_["qc"], dist > self.bars_["distance"],
                                    exc > self.bars_["range"]])
        beyond = [tuple(p for p, b in zip(PARTS, row) if b) for row in past]
        return pd.DataFrame({"QC_FAILED_SHARE": qc, "DISTANCE": dist, "EXCEEDANCE": exc,
                             "OUTSIDE": outside, "BEYOND": beyond,
                             "ATYPICAL": past.any(axis=1)}, index=X.index)

    def cell_scores(self, cells: pd.DataFrame) -> np.ndarray:
        """How far each cell of one cell table lies from the training cells: the root mean
        square over the inputs of (value - training cell median) / training cell robust SD
        (NaN for a cell that failed QC or has no finite input); the page shows a flagged
        patient's highest."""
        check_is_fitted(self, "cell_center_")
        if not len(cells):
            return np.empty(0)
        Z = (cells[self.features_].to_numpy(float) - self.cell_center_) / self.cell_scale_
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = np.sqrt(np.nanmean(Z ** 2, axis=1))
        return np.where((cells[QC_COLUMN] == "ok").to_numpy(), s, np.nan)
