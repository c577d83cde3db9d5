"""Bag heterogeneity scores: how varied is a patient's lymphocyte population?

Haematologists call a homogeneous lymphocyte population suspicious of a tumour (a clone of
near-identical cells) and a heterogeneous one reactive. Each score below is one function
of a bag (an (n, d) array of cells) with its formula; :class:`HeterogeneityScores` turns a
long cell table into one row of scores per patient, standardising features with statistics
learnt at ``fit`` (so that cross-validation learns them inside each fold).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.covariance import ledoit_wolf
from sklearn.utils.validation import check_is_fitted, validate_data

# pixel-space dispersion lives in its own sklearn-free module (the feature workers use it)
from .pixels import (PIXEL_SCORE, PixelSums, dispersion_from_sums, pixel_dispersion,
                     pixel_dispersion_naive)

__all__ = [
    "pixel_dispersion", "pixel_dispersion_naive", "dispersion_from_sums", "PixelSums",
    "feature_dispersion", "covariance_trace", "covariance_logdet", "outlier_share",
    "HeterogeneityScores", "SCORE_NAMES", "PIXEL_SCORE",
]


def feature_dispersion(X: np.ndarray) -> float:
    """The dispersion S of :func:`pixel_dispersion` in (standardised) cell-feature space.

    .. math:: S = \\frac{1}{n} \\Big(\\sum_{i<j} \\lVert x_i - x_j \\rVert^2\\Big)^{1/2}
              = \\sqrt{\\operatorname{tr} \\hat\\Sigma}

    with Σ̂ the biased covariance: S is the square root of :func:`covariance_trace`, so the
    two rank patients identically. S ≥ 0, 0 for a single cell.
    """
    X = np.asarray(X, dtype=float)
    n = len(X)
    if n == 0:
        return np.nan
    centred = X - X.mean(axis=0)
    return float(np.sqrt(np.einsum("ij,ij->", centred, centred) * n) / n)


def covariance_trace(X: np.ndarray) -> float:
    """Total variance tr(Σ̂) of the cells' (standardised) features, ≥ 0; 0 for one cell."""
    X = np.asarray(X, dtype=float)
    if len(X) < 2:
        return 0.0 if len(X) == 1 else np.nan
    return float(X.var(axis=0).sum())


def covariance_logdet(X: np.ndarray) -> float:
    """Log-determinant of the Ledoit-Wolf shrunk covariance, divided by d (log generalised
    variance per dimension).

    Shrinkage keeps it finite when cells are fewer than features. Lower is more
    homogeneous; −∞ is avoided by a 1e-12 floor on eigenvalues. NaN for fewer than 2 cells.
    """
    X = np.asarray(X, dtype=float)
    if len(X) < 2:
        return np.nan
    cov, _ = ledoit_wolf(X)
    eig = np.clip(np.linalg.eigvalsh(cov), 1e-12, None)
    return float(np.log(eig).sum() / X.shape[1])


def outlier_share(X: np.ndarray, threshold: float = 3.0) -> float:
    """Share of cells far from the bag's median cell, in [0, 1].

    Distance of cell i: √(mean_k ((x_ik − med_k) / (1.4826·MAD_k))²), a robust z-score
    averaged over features (features with MAD = 0 are skipped). A cell is an outlier when
    its distance exceeds ``threshold``.
    """
    X = np.asarray(X, dtype=float)
    if len(X) == 0:
        return np.nan
    med = np.median(X, axis=0)
    mad = 1.4826 * np.median(np.abs(X - med), axis=0)
    use = mad > 0
    if not use.any():
        return 0.0
    z = (X[:, use] - med[use]) / mad[use]
    d = np.sqrt((z ** 2).mean(axis=1))
    return float((d > threshold).mean())


SCORE_NAMES = (
    "Bag_Heterogeneity_FeatureDispersion",
    "Bag_Heterogeneity_CovTrace",
    "Bag_Heterogeneity_CovLogDet",
    "Bag_Heterogeneity_OutlierShare",
)


class HeterogeneityScores(TransformerMixin, BaseEstimator):
    """Per-bag heterogeneity scores from a long cell table.

    Parameters
    ----------
    bag_col : str, default="ID"
        Column holding the bag (patient) ID.
    features : list of str, optional
        Feature columns to use; default every numeric column except ``bag_col``.
    outlier_threshold : float, default=3.0

    Input
    -----
    ``X``: a DataFrame with ``bag_col`` and feature columns, one row per usable cell, or a
    2-D numeric array whose first column is the (numeric) bag ID. Features are standardised
    with the median and IQR of the cells seen in ``fit``; cells with any NaN or infinite
    feature are ignored.

    Returns (``transform``)
    -----------------------
    DataFrame indexed by bag ID (in first-appearance order) with :data:`SCORE_NAMES`.
    """

    def __init__(self, *, bag_col="ID", features=None, outlier_threshold=3.0):
        self.bag_col = bag_col
        self.features = features
        self.outlier_threshold = outlier_threshold

    def _frame(self, X, reset: bool) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            if self.bag_col not in X.columns:
                raise ValueError(f"cell table has no bag column {self.bag_col!r}")
            return X
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite="allow-nan")
        if X.shape[1] < 2:
            raise ValueError(f"a 2-D array needs the bag ID column and at least one feature "
                             f"column; got {X.shape[1]} feature(s) in all")
        df = pd.DataFrame(X[:, 1:], columns=[f"x{i}" for i in range(X.shape[1] - 1)])
        df.insert(0, self.bag_col, X[:, 0])
        return df

    def fit(self, X, y=None):
        df = self._frame(X, reset=True)
        cols = self.features or [c for c in df.columns if c != self.bag_col
                                 and pd.api.types.is_numeric_dtype(df[c])]
        vals = df[cols].to_numpy(float)
        vals = vals[np.isfinite(vals).all(axis=1)]
        if len(vals) == 0:
            raise ValueError("no cell with finite features to fit on")
        self.features_ = list(cols)
        self.center_ = np.median(vals, axis=0)
        iqr = np.subtract(*np.percentile(vals, [75, 25], axis=0))
        self.scale_ = np.where(iqr > 0, iqr / 1.349, 1.0)
        return self

    def transform(self, X) -> pd.DataFrame:
        check_is_fitted(self, "features_")
        df = self._frame(X, reset=False)
        z = (df[self.features_].to_numpy(float) - self.center_) / self.scale_
        ok = np.isfinite(z).all(axis=1)
        bags = pd.unique(df[self.bag_col])
        codes = pd.Index(bags).get_indexer(df[self.bag_col])
        out = np.full((len(bags), len(SCORE_NAMES)), np.nan)
        for b in range(len(bags)):
            Z = z[(codes == b) & ok]
            if len(Z) == 0:
                continue
            out[b] = (feature_dispersion(Z), covariance_trace(Z), covariance_logdet(Z),
                      outlier_share(Z, self.outlier_threshold))
        return pd.DataFrame(out, index=pd.Index(bags, name=self.bag_col), columns=SCORE_NAMES)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(SCORE_NAMES, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # cells with a NaN or inf feature are left out
        return tags
