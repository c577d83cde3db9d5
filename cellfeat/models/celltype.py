"""A per-cell type score learnt from the patients' labels, and its share per patient.

Haematologists read a lymphocytosis by the kind of cells in it: reactive and activated
lymphocytes (larger, with abundant, basophilic cytoplasm and looser chromatin) against the
small, mature, monomorphic cells of CLL. Nobody labels cells here, only patients; so every
usable cell inherits its patient's label and a regularised logistic regression on the
standardised cell features learns how much each cell looks like a reactive patient's
cell. Patients count equally (each patient's cells share a weight of one) and the two
classes count equally, so a patient with 200 images does not outweigh one with 20. The
score of a cell is the model's log-odds of *reactive* (high = reactive-looking); what a
patient gets is the share of its cells above fixed cut-offs and the quantiles of its
cells' scores: "how many of this patient's cells look reactive".

``fit_transform`` is cross-fitted (as :class:`cellfeat.models.ImageLogit` and
:class:`cellfeat.mil.InstanceScoreBagFeatures`): each training patient's output comes from
a cell model fitted on the other folds' patients only, so a second-stage model never
learns from scores the cell model made on its own training cells; ``transform`` uses the
model refitted on all training patients. Nothing of a test patient shapes the model when
the transformer sits inside a pipeline that is cross-validated by patient.

Input: a cohort frame (:func:`cellfeat.models.cohort_frame`), one row per patient with a
``CELLS`` table (``QC_STATUS`` and the feature columns of :mod:`cellfeat.features`).

Reference for the weak-label, single-instance approach: Carbonneau M.-A. et al.,
"Multiple instance learning: a survey of problem characteristics and applications",
Pattern Recognition 77, 329-353 (2018) (SIL: instances inherit their bag's label).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ..extract import QC_COLUMN

__all__ = ["CellTypeScore", "weighted_quantile"]


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q) -> np.ndarray:
    """Quantiles of ``values`` where each value counts with its weight: the smallest value
    whose cumulative weight reaches ``q`` of the total (a lower quantile, no
    interpolation). Equal weights give ``np.quantile(..., method="inverted_cdf")``.

    >>> float(weighted_quantile(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0]), 0.5))
    2.0
    >>> float(weighted_quantile(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0]), 0.6))
    3.0
    """
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    idx = np.searchsorted(cum, np.asarray(q, float) * cum[-1], side="left")
    return v[np.minimum(idx, len(v) - 1)]


def _fit_cell_model(bags: list[np.ndarray], y: np.ndarray, C: float, cutoffs) -> dict:
    """One fitted cell model, as plain arrays (what a model bundle can hold): medians for
    imputation, standardisation, logistic weights, and the score cut-offs of its training
    cells."""
    cells = np.concatenate(bags)
    med = np.nanmedian(cells, axis=0)
    medians = np.where(np.isfinite(med), med, 0.0)
    x = np.where(np.isfinite(cells), cells, medians)
    mean, sd = x.mean(axis=0), x.std(axis=0)
    scale = np.where(sd > 0, sd, 1.0)
    # each patient's cells share a weight of one, and each class counts for half of the
    # patients: no patient outweighs another by its number of images
    n_class = np.bincount(y, minlength=2).astype(float)
    per_patient = len(y) / (2 * n_class[y])
    w = np.concatenate([np.full(len(b), p / len(b)) for b, p in zip(bags, per_patient)])
    cell_y = np.concatenate([np.full(len(b), lab) for b, lab in zip(bags, y)])
    # cell label 1 = a reactive patient's cell: the score reads "reactive-looking"
    fit = LogisticRegression(C=C, max_iter=2000).fit((x - mean) / scale, 1 - cell_y,
                                                     sample_weight=w)
    model = {"medians": medians, "mean": mean, "scale": scale, "coef": fit.coef_[0].copy(),
             "intercept": float(fit.intercept_[0])}
    # cut-offs: quantiles of the training cells' scores, each patient counting once
    equal = np.concatenate([np.full(len(b), 1.0 / len(b)) for b in bags])
    model["thresholds"] = weighted_quantile(_cell_score(model, cells), equal, cutoffs)
    return model


def _cell_score(model: dict, cells: np.ndarray) -> np.ndarray:
    """The log-odds of *reactive* of each cell (rows of ``cells``) under ``model``."""
    x = np.where(np.isfinite(cells), cells, model["medians"])
    return ((x - model["mean"]) / model["scale"]) @ model["coef"] + model["intercept"]


class CellTypeScore(TransformerMixin, BaseEstimator):
    """Cohort frame -> share of reactive-looking cells per patient and quantiles of the
    per-cell reactive score.

    The cell score is the log-odds of *reactive* from an L2 logistic regression on the
    standardised features of every usable (QC ``"ok"``) cell, each cell labelled with its
    patient's label, patients and classes weighted equally (module docstring). Missing
    feature values are imputed with the training cells' medians.

    Parameters
    ----------
    C : float, default=0.1
        Inverse L2 strength of the cell model; the weights sum to the number of training
        patients, so C reads as in a patient-level logistic regression (the image models
        of :mod:`cellfeat.models` use C = 0.1).
    cutoffs : tuple of float, default=(0.5, 0.9)
        Fixed cut-offs, as quantile levels of the training cells' scores (each patient's
        cells weighing one): ``CellType_ReactiveShare_AboveQ90`` is the share of a
        patient's cells scoring above 90 % of the training cells. Levels rather than raw
        log-odds, whose scale depends on C.
    quantiles : tuple of float, default=(0.1, 0.5, 0.9)
        Quantiles of each patient's cell scores to output.
    cv : int, default=3
        Folds of the cross-fitted ``fit_transform`` (fewer when a class has fewer patients
        with cells); ``fit_transform`` raises ``ValueError`` when ``cv < 2`` or a class has
        fewer than 2 such patients, where only in-sample scores would be possible.
    random_state : int, default=0
        Seed of the stratified folds.
    features : sequence of str, optional
        Cell feature columns; default every numeric column of the cell tables but
        ``QC_STATUS``.

    Attributes
    ----------
    features_ : list of str
    model_ : dict of arrays
        The cell model fitted on all training patients with usable cells: ``medians``,
        ``mean``, ``scale``, ``coef``, ``intercept``, ``thresholds``.
    thresholds_ : ndarray
        The score cut-offs (log-odds) of ``model_``, one per ``cutoffs`` level.
    coef_ : pandas.Series
        The cell model's weights per standardised feature (high = reactive-looking).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> def cells(big):
    ...     area = np.r_[rng.normal(90, 5, big), rng.normal(50, 5, 10 - big)]
    ...     return pd.DataFrame({"QC_STATUS": "ok", "Cell_Shape_Area": area})
    >>> X = pd.DataFrame({"CELLS": [cells(6 - 5 * (i % 2)) for i in range(12)]})
    >>> y = np.arange(12) % 2  # 1 = tumoral: few large cells
    >>> out = CellTypeScore(cv=3).fit_transform(X, y)
    >>> bool((out["CellType_ReactiveShare_AboveQ50"][y == 0] >
    ...       out["CellType_ReactiveShare_AboveQ50"][y == 1].max()).all())
    True
    """

    def __init__(self, *, C=0.1, cutoffs=(0.5, 0.9), quantiles=(0.1, 0.5, 0.9), cv=3,
                 random_state=0, features=None):
        self.C = C
        self.cutoffs = cutoffs
        self.quantiles = quantiles
        self.cv = cv
        self.random_state = random_state
        self.features = features

    # ---- input
    def _setup(self, X):
        if self.features is not None:
            self.features_ = list(self.features)
            return
        cols = []
        for cells in X["CELLS"]:
            if len(cells):
                cols = [c for c in cells.columns if c not in ("ID", QC_COLUMN)
                        and pd.api.types.is_numeric_dtype(cells[c])]
                break
        if not cols:
            raise ValueError("no cell table with numeric feature columns in X['CELLS']")
        self.features_ = cols

    def _bags(self, X) -> tuple[list[np.ndarray], np.ndarray]:
        """Each patient's usable cells (n_i, p) and which patients have any."""
        bags, has = [], []
        for cells in X["CELLS"]:
            ok = cells[cells[QC_COLUMN] == "ok"] if len(cells) else cells
            if len(ok):
                bags.append(ok[self.features_].to_numpy(float))
            has.append(bool(len(ok)))
        return bags, np.array(has, bool)

    # ---- output
    def _names(self):
        return ([f"CellType_ReactiveShare_AboveQ{round(100 * c)}" for c in self.cutoffs]
                + [f"CellType_ReactiveScore_Q{round(100 * q)}" for q in self.quantiles])

    def _patient_features(self, model: dict, bags) -> np.ndarray:
        out = np.empty((len(bags), len(self.cutoffs) + len(self.quantiles)))
        for i, b in enumerate(bags):
            s = _cell_score(model, b)
            out[i, :len(self.cutoffs)] = (s[:, None] > model["thresholds"][None, :]).mean(axis=0)
            out[i, len(self.cutoffs):] = np.quantile(s, self.quantiles)
        return out

    def _wrap(self, X, has, values) -> pd.DataFrame:
        out = np.full((len(X), len(self._names())), np.nan)
        out[has] = values
        return pd.DataFrame(out, index=X.index, columns=self._names())

    # ---- fitting
    def _fit_model(self, bags, y) -> dict:
        return _fit_cell_model(bags, y, self.C, np.asarray(self.cutoffs, float))

    def _check_y(self, X, y) -> np.ndarray:
        y = np.asarray(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} patients but y has {len(y)} labels")
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) != 2 or not set(classes.tolist()) <= {0, 1}:
            raise ValueError(f"CellTypeScore needs two classes labelled 0 (reactive) and 1 "
                             f"(tumoral); got {classes.tolist()}")
        return y.astype(int)

    def fit(self, X, y):
        """Fit the cell model on all usable cells of the training patients."""
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y):
        """Fit on all training patients and return *out-of-fold* patient features: each
        patient's come from a cell model fitted on the other folds' patients."""
        y = self._check_y(X, y)
        self._setup(X)
        bags, has = self._bags(X)
        yb = y[has]
        counts = np.bincount(yb, minlength=2)
        if self.cv < 2 or counts.min() < 2:
            # in-sample scores would hand the next model scores of its own training cells
            raise ValueError(f"out-of-fold cell-type scores need cv >= 2 and at least 2 "
                             f"patients with usable cells in each class; got cv={self.cv} "
                             f"and class counts {counts.tolist()}")
        self.model_ = self._fit_model(bags, yb)
        self.thresholds_ = self.model_["thresholds"]
        oof = np.empty((len(bags), len(self._names())))
        folds = StratifiedKFold(min(self.cv, counts.min()), shuffle=True,
                                random_state=self.random_state)
        for tr, te in folds.split(np.zeros(len(yb)), yb):
            model = self._fit_model([bags[i] for i in tr], yb[tr])
            oof[te] = self._patient_features(model, [bags[i] for i in te])
        return self._wrap(X, has, oof)

    def transform(self, X):
        check_is_fitted(self, "model_")
        bags, has = self._bags(X)
        values = self._patient_features(self.model_, bags) if bags else np.empty((0, 0))
        return self._wrap(X, has, values)

    def cell_scores(self, X) -> list[np.ndarray]:
        """Each patient's reactive score per usable (QC ``"ok"``) cell, in cell-table
        order; an empty array for a patient without usable cells."""
        check_is_fitted(self, "model_")
        bags, has = self._bags(X)
        scores = iter(_cell_score(self.model_, b) for b in bags)
        return [next(scores) if h else np.empty(0) for h in has]

    @property
    def coef_(self) -> pd.Series:
        """The cell model's weights per standardised feature (high = reactive-looking)."""
        check_is_fitted(self, "model_")
        return pd.Series(self.model_["coef"], index=self.features_)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self._names(), dtype=object)
