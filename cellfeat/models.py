"""Candidate patient-level models as unfitted scikit-learn ``Pipeline`` objects.

Input form (one row per patient)
--------------------------------
Every pipeline takes a *cohort frame*: a DataFrame indexed by patient ID with the clinical
columns ``AGE`` (years), ``LYMPH_COUNT`` (10⁹/L), ``GENDER`` ("M"/"F"/NA), optionally
``Bag_Heterogeneity_PixelDispersion``, and ``CELLS``: each patient's cell table (a
DataFrame with ``QC_STATUS`` and the feature columns of :mod:`cellfeat.features`). Build
it with :func:`cohort_frame`. Rows are patients, so ``cross_val_score``, ``GridSearchCV``
and ``clone`` work unchanged and a split never puts one patient's cells on both sides.

Candidates (:data:`CANDIDATES`, built by :func:`make_pipeline`)
---------------------------------------------------------------
``clinical-logreg``      age, log lymphocyte count, gender -> logistic regression (baseline)
``bags-logreg|xgb|lgbm`` image only: bag statistics + heterogeneity scores
``clinical+bags-...``    both
``clinical+misvm-xgb``   MI-SVM instance scores (cross-fitted) stacked with clinical data
``gated-mixture``        clinical and image experts mixed by a gate on clinical data
                         (after Sahasrabudhe et al. 2021)
``cnn``                  the CNN image expert alone (needs torch; :mod:`cellfeat.cnn`)
``clinical+bags+cnn-xgb`` clinical + bag statistics of hand-crafted and CNN cell features

Class imbalance is handled with class weights; the decision threshold is tuned for
balanced accuracy by internal cross-validation on the training patients only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, TunedThresholdClassifierCV
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .bags import BagAggregator
from .extract import QC_COLUMN
from .heterogeneity import PIXEL_SCORE, HeterogeneityScores
from .mil import MISVM, InstanceScoreBagFeatures

__all__ = ["cohort_frame", "ClinicalFeatures", "CellBagFeatures", "MILFeatures",
           "BalancedXGBClassifier", "GatedMixture", "make_pipeline", "CANDIDATES",
           "CNN_CANDIDATES", "available_candidates", "CLINICAL_NAMES"]

CLINICAL_NAMES = ("Clinical_Age", "Clinical_LogLymphCount", "Clinical_GenderMale")


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


def _long_cells(X: pd.DataFrame) -> pd.DataFrame:
    parts = [c.assign(ID=pid) for pid, c in zip(X.index, X["CELLS"]) if len(c)]
    if not parts:
        return pd.DataFrame(columns=["ID", QC_COLUMN])
    return pd.concat(parts, ignore_index=True)


class ClinicalFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> ``Clinical_Age``, ``Clinical_LogLymphCount`` (natural log of
    10⁹/L), ``Clinical_GenderMale`` (1/0, NaN if unknown). Missing values stay NaN."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        gender = X["GENDER"].astype("string").str.upper()
        count = pd.to_numeric(X["LYMPH_COUNT"], errors="coerce")
        return pd.DataFrame({
            "Clinical_Age": pd.to_numeric(X["AGE"], errors="coerce").astype(float),
            "Clinical_LogLymphCount": np.log(count.where(count > 0)).astype(float),
            "Clinical_GenderMale": gender.map({"M": 1.0, "F": 0.0}).astype(float),
        }, index=X.index)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(CLINICAL_NAMES, dtype=object)


class CellBagFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> bag statistics (:class:`BagAggregator`) and heterogeneity scores
    (:class:`HeterogeneityScores`, standardised on the training cells), plus the pixel
    dispersion column when the frame has it."""

    def __init__(self, *, heterogeneity=True, stats=("Mean", "Std", "Q10", "Q50", "Q90")):
        self.heterogeneity = heterogeneity
        self.stats = stats

    def fit(self, X, y=None):
        cells = _long_cells(X)
        self.aggregator_ = BagAggregator(stats=self.stats).fit(cells)
        if self.heterogeneity:
            ok = cells[cells[QC_COLUMN] == "ok"]
            self.scores_ = HeterogeneityScores(features=self.aggregator_.features_).fit(ok)
        self.names_ = list(self.aggregator_.get_feature_names_out())
        if self.heterogeneity:
            self.names_ += list(self.scores_.get_feature_names_out())
            if PIXEL_SCORE in X:
                self.names_.append(PIXEL_SCORE)
        return self

    def transform(self, X):
        check_is_fitted(self, "aggregator_")
        cells = _long_cells(X)
        parts = [self.aggregator_.transform(cells)]
        if self.heterogeneity:
            ok = cells[cells[QC_COLUMN] == "ok"]
            parts.append(self.scores_.transform(ok))
        out = pd.concat(parts, axis=1).reindex(X.index)
        out["Bag_NCells"] = out["Bag_NCells"].fillna(0)
        if self.heterogeneity and PIXEL_SCORE in self.names_:
            out[PIXEL_SCORE] = X[PIXEL_SCORE].astype(float) if PIXEL_SCORE in X else np.nan
        return out[self.names_].astype(float)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.names_, dtype=object)


class MILFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> MIL instance-score bag features (:class:`InstanceScoreBagFeatures`).

    Usable cells' features are imputed with the training medians; a patient with no usable
    cell gets NaN scores. ``fit_transform`` is cross-fitted (see
    :class:`InstanceScoreBagFeatures`). ``estimator`` is any bag classifier of
    :mod:`cellfeat.mil` (default ``MISVM(random_state=0)``; ``SIL`` with a tree learner is
    the single-instance baseline)."""

    def __init__(self, estimator=None, *, cv=3):
        self.estimator = estimator
        self.cv = cv

    def _bags(self, X):
        bags, has = [], []
        for cells in X["CELLS"]:
            ok = cells[cells[QC_COLUMN] == "ok"] if len(cells) else cells
            if len(ok):
                v = ok[self.features_].to_numpy(float)
                v = np.where(np.isfinite(v), v, self.medians_)
                bags.append(v)
                has.append(True)
            else:
                has.append(False)
        return bags, np.array(has, bool)

    def _setup(self, X):
        cells = _long_cells(X)
        ok = cells[cells[QC_COLUMN] == "ok"]
        self.features_ = [c for c in ok.columns if c not in ("ID", QC_COLUMN)
                          and pd.api.types.is_numeric_dtype(ok[c])]
        med = np.nanmedian(ok[self.features_].to_numpy(float), axis=0)
        self.medians_ = np.where(np.isfinite(med), med, 0.0)

    def _wrap(self, X, has, values):
        out = np.full((len(X), 4), np.nan)
        out[has] = values
        return pd.DataFrame(out, index=X.index, columns=InstanceScoreBagFeatures.names)

    def fit(self, X, y):
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y):
        self._setup(X)
        bags, has = self._bags(X)
        self.stack_ = InstanceScoreBagFeatures(self.estimator or MISVM(random_state=0),
                                               cv=self.cv)
        return self._wrap(X, has, self.stack_.fit_transform(bags, np.asarray(y)[has]))

    def transform(self, X):
        check_is_fitted(self, "stack_")
        bags, has = self._bags(X)
        return self._wrap(X, has, self.stack_.transform(bags) if bags else np.empty((0, 4)))

    def cell_scores(self, X) -> list[np.ndarray]:
        """Each patient's MI-SVM cell scores, aligned with its usable (QC "ok") cell rows;
        an empty array for a patient without usable cells. High = tumoral-looking."""
        check_is_fitted(self, "stack_")
        bags, has = self._bags(X)
        scores = iter(self.stack_.estimator_.instance_decision_function(bags) if bags else [])
        return [next(scores) if h else np.empty(0) for h in has]

    def get_feature_names_out(self, input_features=None):
        return np.asarray(InstanceScoreBagFeatures.names, dtype=object)


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


class GatedMixture(ClassifierMixin, BaseEstimator):
    """A clinical expert and an image expert mixed by a gate on clinical data.

    p(x) = g(x) · p_image(x) + (1 − g(x)) · p_clinical(x), with g a logistic function of
    the clinical features (after Sahasrabudhe et al., "Deep multi-instance learning using
    multi-modal data for diagnosis of lymphocytosis", IEEE JBHI 2021). The experts are fit
    first; the gate is fit by maximum likelihood (L2 penalty ``gate_alpha``) on out-of-fold
    expert probabilities (``cv`` folds), so it learns when each expert is trustworthy on
    patients it did not train on. The decision threshold is chosen on the same out-of-fold
    mixture for balanced accuracy. A patient with no usable cells gets the clinical
    expert's call (g = 0).
    """

    def __init__(self, clinical_expert=None, image_expert=None, *, cv=3, gate_alpha=1.0,
                 random_state=0):
        self.clinical_expert = clinical_expert
        self.image_expert = image_expert
        self.cv = cv
        self.gate_alpha = gate_alpha
        self.random_state = random_state

    def _experts(self):
        clin = self.clinical_expert if self.clinical_expert is not None else make_pipeline(
            "clinical-logreg", tuned=False)
        img = self.image_expert if self.image_expert is not None else make_pipeline(
            "bags-logreg", tuned=False)
        return clone(clin), clone(img)

    def _gate_inputs(self, X):
        Z = ClinicalFeatures().transform(X).to_numpy(float)
        Z = np.where(np.isfinite(Z), Z, self.gate_center_)
        Z = (Z - self.gate_center_) / self.gate_scale_
        has_cells = np.array([len(c) > 0 and (c[QC_COLUMN] == "ok").any() for c in X["CELLS"]])
        return np.column_stack([np.ones(len(Z)), Z]), has_cells

    @staticmethod
    def _mix(w, G, p_img, p_clin, has_cells):
        g = 1 / (1 + np.exp(-G @ w))
        g = np.where(has_cells, g, 0.0)
        return g * p_img + (1 - g) * p_clin

    def fit(self, X, y):
        y = np.asarray(y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError("Only binary classification is supported; y has "
                             f"{len(self.classes_)} class(es)")
        yb = (y == self.classes_[1]).astype(float)
        Zc = ClinicalFeatures().transform(X).to_numpy(float)
        self.gate_center_ = np.nan_to_num(np.nanmedian(Zc, axis=0))
        sd = np.nanstd(Zc, axis=0)
        self.gate_scale_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        oof = np.zeros((len(y), 2))
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        for tr, te in folds.split(np.zeros(len(y)), y):
            clin, img = self._experts()
            oof[te, 0] = clin.fit(X.iloc[tr], y[tr]).predict_proba(X.iloc[te])[:, 1]
            oof[te, 1] = img.fit(X.iloc[tr], y[tr]).predict_proba(X.iloc[te])[:, 1]
        G, has = self._gate_inputs(X)
        eps = 1e-6

        def nll(w):
            p = np.clip(self._mix(w, G, oof[:, 1], oof[:, 0], has), eps, 1 - eps)
            return -(yb * np.log(p) + (1 - yb) * np.log(1 - p)).mean() + \
                self.gate_alpha * (w[1:] @ w[1:]) / len(y)

        self.gate_coef_ = minimize(nll, np.zeros(G.shape[1]), method="L-BFGS-B").x
        p = self._mix(self.gate_coef_, G, oof[:, 1], oof[:, 0], has)
        grid = np.unique(np.round(p, 4))
        scores = [balanced_accuracy_score(yb, p >= t) for t in grid]
        self.threshold_ = float(grid[int(np.argmax(scores))]) if len(grid) else 0.5
        self.clinical_expert_, self.image_expert_ = self._experts()
        self.clinical_expert_.fit(X, y)
        self.image_expert_.fit(X, y)
        return self

    def gate(self, X) -> np.ndarray:
        """Weight of the image expert for each patient, in [0, 1]."""
        check_is_fitted(self, "gate_coef_")
        G, has = self._gate_inputs(X)
        return np.where(has, 1 / (1 + np.exp(-G @ self.gate_coef_)), 0.0)

    def predict_proba(self, X):
        check_is_fitted(self, "gate_coef_")
        G, has = self._gate_inputs(X)
        p_clin = self.clinical_expert_.predict_proba(X)[:, 1]
        p_img = self.image_expert_.predict_proba(X)[:, 1]
        p = self._mix(self.gate_coef_, G, p_img, p_clin, has)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        p = self.predict_proba(X)[:, 1]  # first: it raises NotFittedError before fit
        return self.classes_[(p >= self.threshold_).astype(int)]


def _logreg(C):
    return LogisticRegression(C=C, class_weight="balanced", max_iter=2000)


def _lgbm():
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=4, max_depth=2,
                          min_child_samples=5, subsample=0.8, subsample_freq=1,
                          colsample_bytree=0.5, class_weight="balanced", random_state=0,
                          n_jobs=1, verbose=-1)


def _head(kind: str):
    if kind == "logreg":
        return [("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()), ("model", _logreg(0.05))]
    if kind == "xgb":
        return [("model", BalancedXGBClassifier())]
    if kind == "lgbm":
        return [("model", _lgbm())]
    raise ValueError(kind)


def _features(inputs: str):
    tokens = inputs.split("+")
    parts = []
    if "clinical" in tokens:
        parts.append(("clinical", ClinicalFeatures()))
    if "bags" in tokens:
        parts.append(("bags", CellBagFeatures()))
    if "misvm" in tokens:
        parts.append(("misvm", MILFeatures(MISVM(C=0.1, random_state=0))))
    return FeatureUnion(parts) if len(parts) > 1 else parts[0][1]


CANDIDATES = (
    "clinical-logreg",
    "bags-logreg", "bags-xgb", "bags-lgbm",
    "clinical+bags-logreg", "clinical+bags-xgb", "clinical+bags-lgbm",
    "clinical+misvm-xgb",
    "gated-mixture",
    "cnn", "clinical+bags+cnn-xgb",
)
#: Candidates that need torch (the ``cnn`` extra).
CNN_CANDIDATES = ("cnn", "clinical+bags+cnn-xgb")


def available_candidates() -> tuple[str, ...]:
    """:data:`CANDIDATES` that can run here (the CNN ones only when torch imports)."""
    from .cnn import torch_available

    return tuple(c for c in CANDIDATES if c not in CNN_CANDIDATES or torch_available())


def make_pipeline(name: str, *, tuned: bool = True, threshold_cv: int = 3):
    """An unfitted candidate pipeline (see the module docstring for the names).

    Parameters
    ----------
    name : str
        One of :data:`CANDIDATES`.
    tuned : bool, default=True
        Wrap the final classifier in ``TunedThresholdClassifierCV`` (balanced accuracy,
        ``threshold_cv`` folds on the training patients). ``gated-mixture`` tunes its own.

    Examples
    --------
    >>> pipe = make_pipeline("clinical+bags-xgb")
    >>> [step for step, _ in pipe.steps]
    ['features', 'model']
    """
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    if name == "gated-mixture":
        return Pipeline([("model", GatedMixture())])
    if name == "cnn":
        from .cnn import CNNExpert

        return Pipeline([("model", CNNExpert())])
    inputs, kind = name.rsplit("-", 1)
    head = _head(kind)
    clf = Pipeline(head) if len(head) > 1 else head[0][1]
    if tuned:
        clf = TunedThresholdClassifierCV(clf, scoring="balanced_accuracy", cv=threshold_cv,
                                         random_state=0)
    steps = [("features", _features(inputs)), ("model", clf)]
    if "cnn" in inputs.split("+"):  # CNN cell embeddings join the cell tables first
        from .cnn import CNNEmbedding

        steps.insert(0, ("cnn", CNNEmbedding()))
    return Pipeline(steps)
