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

__all__ = [
    "pixel_dispersion", "pixel_dispersion_naive", "dispersion_from_sums", "PixelSums",
    "feature_dispersion", "covariance_trace", "covariance_logdet", "outlier_share",
    "HeterogeneityScores", "SCORE_NAMES", "PIXEL_SCORE",
]

#: Output name of :func:`pixel_dispersion` (a column of the features stage's patients table).
PIXEL_SCORE = "Bag_Heterogeneity_PixelDispersion"


def dispersion_from_sums(n: int, total: np.ndarray, total_sq: float) -> float:
    """Dispersion S from running sums: n, Σ q_i (vector) and Σ ‖q_i‖² (scalar).

    Uses Σ_i ‖q_i − q̄‖² = Σ ‖q_i‖² − ‖Σ q_i‖²/n, so a bag can be streamed image by image.
    See :func:`pixel_dispersion` for S. The subtraction cancels: the absolute error is about
    √(ε·Σ‖q_i‖²)/√n (ε the float64 epsilon), ~1e-8 for a bag of 224×224 images, far below
    the spread between patients.
    """
    if n < 1:
        return np.nan
    centred = max(float(total_sq) - float(np.dot(total, total)) / n, 0.0)
    return float(np.sqrt(n * centred) / n)


class PixelSums:
    """One bag's images streamed into the running sums of :func:`dispersion_from_sums`.

    Memory is one float64 image whatever the number of images, so a patient's images can
    be added as they are decoded. S compares images pixel by pixel, so only images of the
    shape of the first one added enter the sums: :meth:`add` says whether an image was
    used and :attr:`n` counts the images used.

    Attributes
    ----------
    n : int
        Images in the sums.
    shape : tuple or None
        Shape of the first image added.

    Examples
    --------
    >>> sums = PixelSums()
    >>> sums.add(np.zeros((2, 2), np.uint8)), sums.add(np.full((2, 2), 255, np.uint8))
    (True, True)
    >>> sums.add(np.zeros((3, 3), np.uint8))  # another shape: left out
    False
    >>> sums.n, sums.value()  # S = sqrt(4 pixels * 1**2) / 2
    (2, 1.0)
    """

    def __init__(self):
        self.n = 0
        self.shape = None
        self._total = None  # sum of the images, in their own units (0-255 for uint8)
        self._total_sq = 0.0

    def add(self, image: np.ndarray) -> bool:
        """Add one image (0-255 values, any dtype); False, and nothing added, when its shape
        differs from the first image's."""
        image = np.asarray(image)
        if self.shape is None:
            self.shape = image.shape
            self._total = np.zeros(image.shape, np.float64)
        elif image.shape != self.shape:
            return False
        if image.dtype == np.uint8 and image.ndim in (2, 3) and image.size:
            import cv2

            # uint8 sums are integers far below 2**53, so exact in float64; cv2.norm can be
            # off by ~1e-16 relative, and the exact value is the nearest integer
            cv2.accumulate(np.ascontiguousarray(image), self._total)
            self._total_sq += float(round(cv2.norm(image, cv2.NORM_L2SQR)))
        else:
            v = image.astype(np.float64)
            self._total += v
            self._total_sq += float(np.vdot(v, v))
        self.n += 1
        return True

    def value(self) -> float:
        """S of the images added (pixel values / 255); NaN when none was added."""
        if not self.n:
            return np.nan
        # the score is defined on pixel values / 255
        return dispersion_from_sums(self.n, self._total.ravel() / 255.0,
                                    self._total_sq / 255.0 ** 2)


def pixel_dispersion(images) -> float:
    """Pixel-space heterogeneity of one challenge report, computed in O(n·d).

    .. math:: S = \\frac{1}{n} \\Big(\\sum_{i<j} \\lVert q_i - q_j \\rVert^2\\Big)^{1/2}

    over the n flattened images q_i (pixel values / 255), using the identity
    Σ_{i<j} ‖q_i − q_j‖² = n Σ_i ‖q_i − q̄‖². S ≥ 0, 0 for identical images; it is
    dominated by whatever varies most between crops, red cells and background included.

    This is the ``Bag_Heterogeneity_PixelDispersion`` column of the features stage, which
    calls it on each patient's decodable images in file order: the value is the same.

    Parameters
    ----------
    images : iterable of arrays
        One bag's images (an (n, ...) array, a list, or a generator, so that images can be
        decoded one at a time), values 0-255, any dtype. Images whose shape differs from
        the first image's are left out (see :class:`PixelSums`).

    Returns
    -------
    float
        S; NaN for no image. Computed from running sums (:func:`dispersion_from_sums`,
        absolute error ~1e-8 for bags of 224×224 images).
    """
    sums = PixelSums()
    for image in images:
        sums.add(image)
    return sums.value()


def pixel_dispersion_naive(images: np.ndarray) -> float:
    """The O(n²·d) definition of :func:`pixel_dispersion`, for testing it."""
    q = np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0
    n = len(q)
    total = sum(np.sum((q[i] - q[j]) ** 2) for i in range(n) for j in range(i + 1, n))
    return float(np.sqrt(total) / n) if n else np.nan


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
