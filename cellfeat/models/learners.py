"""The learners candidates are built from: class-weighted logistic regressions (C fixed or
chosen by inner CV), XGBoost with class balance, LightGBM, and the clinical baseline
``ClinicalLogReg``; :func:`pipeline_steps` puts inputs and a learner together.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, OneToOneFeatureMixin, TransformerMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..heterogeneity import PIXEL_SCORE
from ..mil import MISVM
from .celltype import CellTypeScore
from .inputs import CLINICAL_NAMES, CellBagFeatures, ClinicalFeatures, MILFeatures, ZoneMeans

__all__ = ["BalancedXGBClassifier", "ClinicalLogReg", "TrainingRange", "RIDGE_C", "head", "input_union",
           "pipeline_steps"]


class BalancedXGBClassifier(ClassifierMixin, BaseEstimator):
    """XGBoost with ``scale_pos_weight`` set from the training labels (#neg / #pos), the
    class-weight equivalent that ``XGBClassifier`` lacks. Small, shallow trees by default:
    the cohorts have about a hundred patients."""

    def __init__(self, *, n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8,
                 colsample_bytree=0.5, random_state=0):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.random_state = random_state

    def fit(self, X, y):
        from xgboost import XGBClassifier

        # NaN is allowed: XGBoost learns a default direction for missing values
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:  # scale_pos_weight balances two classes only
            raise ValueError("Only binary classification is supported (scale_pos_weight "
                             f"balances two classes); y has {len(self.classes_)} class(es)")
        pos = (y == self.classes_[-1]).sum()
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth,
            learning_rate=self.learning_rate, subsample=self.subsample,
            colsample_bytree=self.colsample_bytree, random_state=self.random_state,
            scale_pos_weight=(len(y) - pos) / max(pos, 1), n_jobs=1, tree_method="hist",
            eval_metric="logloss")
        self.model_.fit(X, np.searchsorted(self.classes_, y))
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan")
        return self.model_.predict_proba(X)

    def predict(self, X):
        proba = self.predict_proba(X)  # first: it raises NotFittedError before fit
        return self.classes_[proba.argmax(axis=1)]

    @property
    def feature_importances_(self):
        return self.model_.feature_importances_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.classifier_tags.multi_class = False
        return tags



def _logreg(C):
    return LogisticRegression(C=C, class_weight="balanced", max_iter=2000)


def _lgbm():
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=4, max_depth=2,
                          min_child_samples=5, subsample=0.8, subsample_freq=1,
                          colsample_bytree=0.5, class_weight="balanced", random_state=0,
                          n_jobs=1, verbose=-1)


def _logreg_cv():
    # C by inner CV on log-loss (smooth, so ties are rare); the grid spans strong to weak
    return LogisticRegressionCV(Cs=np.logspace(-3, 1, 9), cv=StratifiedKFold(
        3, shuffle=True, random_state=0), scoring="neg_log_loss", class_weight="balanced",
        max_iter=5000, l1_ratios=(0.0,), use_legacy_attributes=False)


def _impute_scale(clip: bool = False):
    clipped = [("clip", TrainingRange())] if clip else []
    return [("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            *clipped, ("scale", StandardScaler())]


class TrainingRange(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Clip every input to the range the training rows spanned: x ↦ min(max(x, low_j),
    high_j), with ``low_``/``high_`` the per-column minimum and maximum seen by ``fit``.

    A linear model extrapolates without limit: one patient whose cell means lie ten
    between-patient SDs outside anything it was fitted on can reach P = 0.000 through one
    input (issue 28). Clipped, each input contributes at most what it did for some training
    patient; inside the range nothing changes. It bounds each input, not the sum: a patient
    with many inputs at their extremes at once can still be called with certainty, which
    is what :mod:`cellfeat.atypia` flags. (Clipping *cells* to the training cells' range
    was tried and missed an atypical patient: each cell was plausible, the bag was not.
    This clips the patient-level inputs.) NaN stays NaN.

    Examples
    --------
    >>> TrainingRange().fit([[0.0], [2.0]]).transform([[-1.0], [1.0], [5.0]]).ravel().tolist()
    [0.0, 1.0, 2.0]
    """

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
            self.low_, self.high_ = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
        return self

    def transform(self, X):
        check_is_fitted(self, "low_")
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan")
        low = np.where(np.isnan(self.low_), -np.inf, self.low_)
        high = np.where(np.isnan(self.high_), np.inf, self.high_)
        return np.clip(X, low, high)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


#: The fixed penalty of the ``ridge`` learner: the per-patient mean of every cell feature is
#: about fifty standardised inputs for about a hundred patients, so the penalty must be
#: strong; C = 0.1 is fixed (issue 19's measurement on dev: clinical + means, 5×5-fold CV,
#: in-zone balanced accuracy 0.876), not chosen again in every fold, which keeps the
#: candidate cheap and its calls stable from one training set to the next.
RIDGE_C = 0.1


def head(kind: str):
    """The learner of a candidate named ``inputs-kind``: ``logreg`` (L2 logistic regression,
    C by inner CV on log-loss), ``ridge`` (L2 logistic regression, C = :data:`RIDGE_C`),
    ``xgb``, ``lgbm``; all class-weighted, the linear ones on imputed, standardised inputs."""
    if kind == "logreg":
        return [*_impute_scale(clip=True), ("model", _logreg_cv())]
    if kind == "ridge":
        return [*_impute_scale(clip=True), ("model", _logreg(RIDGE_C))]
    if kind == "xgb":
        return [("model", BalancedXGBClassifier())]
    if kind == "lgbm":
        return [("model", _lgbm())]
    raise ValueError(kind)


def input_union(inputs: str, features=None):
    """The patient-level inputs of a candidate named ``inputs-kind``, from the cell
    ``features`` (registry names; default every numeric column of the cell tables)."""
    tokens = inputs.split("+")
    parts = []
    if "clinical" in tokens:
        parts.append(("clinical", ClinicalFeatures()))
    if "mean" in tokens:
        parts.append(("mean", CellBagFeatures(heterogeneity=False, stats=("Mean",),
                                              features=features)))
    if "zonemean" in tokens:
        parts.append(("zonemean", ZoneMeans(features=features)))
    if "celltype" in tokens:  # cell features only: the pixel score is a patient's
        cell = None if features is None else [f for f in features if f != PIXEL_SCORE]
        parts.append(("celltype", CellTypeScore(features=cell)))
    if "meanstd" in tokens:
        parts.append(("meanstd", CellBagFeatures(heterogeneity=False, stats=("Mean", "Std"),
                                                 features=features)))
    if "bags" in tokens:
        parts.append(("bags", CellBagFeatures(features=features)))
    if "misvm" in tokens:
        parts.append(("misvm", MILFeatures(MISVM(C=0.1, random_state=0))))
    return FeatureUnion(parts) if len(parts) > 1 else parts[0][1]



class ClinicalLogReg(ClassifierMixin, BaseEstimator):
    """The clinical baseline: age, log lymphocyte count and, only if inner CV keeps it,
    gender -> class-weighted logistic regression with C chosen by inner CV.

    The settings (gender off/on) × ``Cs`` are scored by ``cv``-fold stratified CV log-loss
    on the training patients (median imputation and standardisation learnt inside each
    fold); the lowest loss wins, a tie going to the earlier setting: no gender before
    gender, strong penalty before weak. ``gender_`` and ``C_`` record the choice. Works
    on the numeric clinical columns directly, so its many small fits stay cheap.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"AGE": np.linspace(20, 90, 40), "LYMPH_COUNT": np.geomspace(2, 80, 40),
    ...                   "GENDER": ["M", "F"] * 20})
    >>> m = ClinicalLogReg().fit(X, (X["AGE"] > 55).astype(int))
    >>> m.predict(X.iloc[[0, -1]]).tolist()
    [0, 1]
    """

    def __init__(self, *, Cs=(0.01, 0.1, 1.0, 10.0, 100.0), cv=3, random_state=0):
        self.Cs = Cs
        self.cv = cv
        self.random_state = random_state

    @staticmethod
    def _model(C):
        return Pipeline([*_impute_scale(), ("model", _logreg(C))])

    def fit(self, X, y):
        from sklearn.metrics import log_loss

        y = np.asarray(y)
        self.classes_ = np.unique(y)
        Z = ClinicalFeatures().transform(X).to_numpy(float)
        settings = [(g, C) for g in (False, True) for C in self.Cs]
        folds = list(StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
                     .split(Z, y))
        losses = []
        for g, C in settings:
            cols = slice(None) if g else slice(0, 2)
            oof = np.empty(len(y))
            for tr, te in folds:
                m = self._model(C).fit(Z[tr, cols], y[tr])
                oof[te] = m.predict_proba(Z[te, cols])[:, 1]
            losses.append(log_loss(y == self.classes_[-1], oof, labels=[False, True]))
        best = int(np.argmin(np.round(losses, 12)))
        self.gender_, self.C_ = settings[best]
        self.cv_log_loss_ = dict(zip([f"gender={g},C={C}" for g, C in settings], losses))
        self.features_ = list(CLINICAL_NAMES if self.gender_ else CLINICAL_NAMES[:2])
        self.model_ = self._model(self.C_).fit(Z[:, :len(self.features_)], y)
        self.n_features_in_ = 3
        return self

    def _z(self, X):
        return ClinicalFeatures().transform(X).to_numpy(float)[:, :len(self.features_)]

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(self._z(X))

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @property
    def coef_(self):
        """Coefficients per standardised input, named by ``features_``."""
        return self.model_[-1].coef_



def pipeline_steps(inputs: str, kind: str, features=None) -> list:
    """``[("features", inputs), ("model", learner)]`` for a candidate named ``inputs-kind``
    (e.g. ``"clinical+bags"``, ``"xgb"``) on the cell ``features``."""
    steps = head(kind)
    clf = Pipeline(steps) if len(steps) > 1 else steps[0][1]
    return [("features", input_union(inputs, features)), ("model", clf)]
