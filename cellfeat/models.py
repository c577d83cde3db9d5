"""Candidate patient-level models, the rule that chooses among them, calibrated calls.

Input form (one row per patient)
--------------------------------
Every pipeline takes a *cohort frame*: a DataFrame indexed by patient ID with the clinical
columns ``AGE`` (years), ``LYMPH_COUNT`` (10⁹/L), ``GENDER`` ("M"/"F"/NA), optionally
``Bag_Heterogeneity_PixelDispersion``, and ``CELLS``: each patient's cell table (a
DataFrame with ``QC_STATUS`` and the feature columns of :mod:`cellfeat.features`). Build
it with :func:`cohort_frame`. Rows are patients, so ``cross_val_score``, ``GridSearchCV``
and ``clone`` work unchanged and a split never puts one patient's cells on both sides.

Candidates (:data:`CANDIDATES`, built by :func:`make_pipeline`), simplest first
-------------------------------------------------------------------------------
The order of :data:`CANDIDATES` *is* the complexity order used to break ties (fewer inputs,
then linear before stacked before trees before MIL/CNN):

``clinical-logreg``          age, log lymphocyte count (gender only if inner CV keeps it),
                             logistic regression, C chosen by inner CV (the baseline)
``meanstd-logreg``           image only: per-patient mean and SD of every cell feature,
                             L2 logistic regression, C by inner CV (the image fallback)
``clinical+meanstd-logreg``  both, in one regularised logistic regression
``late-fusion``              out-of-fold logit of ``meanstd-logreg`` stacked with the
                             clinical variables in a logistic regression
``gated-mixture``            clinical and image experts mixed by a gate on clinical data
                             (after Sahasrabudhe et al. 2021)
``bags-logreg|xgb|lgbm``     image only: full bag statistics + heterogeneity scores
``clinical+bags-...``        both
``clinical+misvm-xgb``       MI-SVM instance scores (cross-fitted) stacked with clinical data
``cnn``                      the CNN image expert alone (needs torch; :mod:`cellfeat.cnn`)
``clinical+bags+cnn-xgb``    clinical + bag statistics of hand-crafted and CNN cell features

:data:`DEFAULT_CANDIDATES` is the small set the selection rule chooses from by default;
it was fixed before any outer-fold result of this version was seen.

From score to call
------------------
Raw candidates handle class imbalance with class weights. :class:`CalibratedDecision`
turns one into a call a lab can act on, from *inner* out-of-fold predictions on the
training patients only: Platt scaling gives a calibrated P(tumoral); the decision
threshold is the training prevalence of tumoral patients (for a calibrated probability
this is the threshold that maximises balanced accuracy: call tumoral when
p/(1-p) > π/(1-π)); the triage threshold is the highest one that still sends a target
share of the tumoral training patients to cytometry. :class:`ModelChoice` is the
selection rule: every candidate gets the same inner folds, the best inner-CV balanced
accuracy wins, ties go to the simpler (earlier) candidate. The nested-CV estimate of
:mod:`cellfeat.evaluation` runs this very estimator inside each outer fold, and the saved
model is the same estimator fitted on all training patients.

Stacking (``late-fusion``, ``clinical+misvm-xgb``, ``gated-mixture``) follows
scikit-learn's ``StackingClassifier``: the second stage learns from out-of-fold
first-stage outputs, and at prediction time the first stage is the model refitted on all
training patients. A refitted model has seen ~1.5x the patients of a fold model, so its
outputs on new patients can be slightly more confident than the out-of-fold outputs the
second stage was fitted to; the outer CV measures the whole construction, drift included.
Checked for ``MILFeatures`` (MI-SVM, C = 0.1) on the 120 dev patients (feature set of
commit 17d9b2e), 3 of 5 stratified folds, class means of the out-of-fold training features
vs the refitted SVM's features on held-out patients: ``MIL_Score_Max`` reactive −0.29 vs
−0.41, tumoral 0.50 vs 0.48 (training SD 0.85 / 1.08); ``MIL_Score_TopKMean`` −0.72 vs
−0.79, −0.01 vs −0.02; ``MIL_Score_Mean`` shifts down for both classes (−1.75 vs −1.93,
−1.32 vs −1.44; SD 0.33), a shared offset of up to half an SD that keeps the class gap
(0.43 vs 0.50). So the refit is on the out-of-fold scale for the max and top-k scores and
slightly offset for the mean score; the outer CV of the stacked candidate includes it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .bags import BagAggregator
from .evaluation import platt_apply, platt_fit, triage_threshold
from .extract import QC_COLUMN
from .heterogeneity import PIXEL_SCORE, HeterogeneityScores
from .mil import MISVM, InstanceScoreBagFeatures

__all__ = ["cohort_frame", "ClinicalFeatures", "CellBagFeatures", "MILFeatures",
           "BalancedXGBClassifier", "GatedMixture", "make_pipeline", "CANDIDATES",
           "CNN_CANDIDATES", "available_candidates", "CLINICAL_NAMES", "ImageLogit",
           "CalibratedDecision", "ModelChoice", "ClinicalLogReg", "DEFAULT_CANDIDATES", "INTERNAL_CV_DEPTH",
           "REFERENCE_CANDIDATES", "cv_depth"]

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


def _first_cells(X: pd.DataFrame) -> pd.DataFrame:
    """The first non-empty cell table with an ID column: enough to learn the feature
    columns, which every patient's table shares (see :func:`cohort_frame`)."""
    for pid, c in zip(X.index, X["CELLS"]):
        if len(c):
            return c.assign(ID=pid)
    return pd.DataFrame(columns=["ID", QC_COLUMN])


class ClinicalFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> ``Clinical_Age``, ``Clinical_LogLymphCount`` (natural log of
    10⁹/L), ``Clinical_GenderMale`` (1/0, NaN if unknown). Missing values stay NaN.

    Parameters
    ----------
    gender : bool, default=True
        Include ``Clinical_GenderMale``; ``clinical-logreg`` lets inner CV decide.
    """

    def __init__(self, *, gender=True):
        self.gender = gender

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        gender = X["GENDER"].astype("string").str.upper()
        count = pd.to_numeric(X["LYMPH_COUNT"], errors="coerce")
        out = pd.DataFrame({
            "Clinical_Age": pd.to_numeric(X["AGE"], errors="coerce").astype(float),
            "Clinical_LogLymphCount": np.log(count.where(count > 0)).astype(float),
            "Clinical_GenderMale": gender.map({"M": 1.0, "F": 0.0}).astype(float),
        }, index=X.index)
        return out if self.gender else out.drop(columns="Clinical_GenderMale")

    def get_feature_names_out(self, input_features=None):
        names = CLINICAL_NAMES if self.gender else CLINICAL_NAMES[:2]
        return np.asarray(names, dtype=object)


class CellBagFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> bag statistics (:class:`BagAggregator`) and heterogeneity scores
    (:class:`HeterogeneityScores`, standardised on the training cells), plus the pixel
    dispersion column when the frame has it."""

    def __init__(self, *, heterogeneity=True, stats=("Mean", "Std", "Q10", "Q50", "Q90")):
        self.heterogeneity = heterogeneity
        self.stats = stats

    def fit(self, X, y=None):
        cells = _long_cells(X) if self.heterogeneity else _first_cells(X)
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

    def _bag_stats(self, X) -> pd.DataFrame:
        """:class:`BagAggregator`'s table computed patient by patient with NumPy (no long
        table): a patient's statistics depend on its own cells only."""
        feats = self.aggregator_.features_
        rows = np.full((len(X), len(self.stats) * len(feats) + 2), np.nan)
        qs = [int(s[1:]) / 100 for s in self.stats if s.startswith("Q")]
        for i, cells in enumerate(X["CELLS"]):
            n = len(cells)
            ok = (cells[QC_COLUMN] == "ok").to_numpy() if n else np.zeros(0, bool)
            rows[i, -2:] = (n, 1.0 - ok.sum() / n if n else np.nan)
            if not ok.any():
                continue
            v = cells.loc[ok, feats].to_numpy(float)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                per = {"Mean": np.nanmean(v, axis=0), "Std": np.nanstd(v, axis=0)}
                if qs:
                    per.update(zip([s for s in self.stats if s.startswith("Q")],
                                   np.nanquantile(v, qs, axis=0)))
            rows[i, :-2] = np.concatenate([per[s] for s in self.stats])
        out = pd.DataFrame(rows, index=X.index,
                           columns=list(self.aggregator_.get_feature_names_out()))
        out["Bag_NCells"] = out["Bag_NCells"].fillna(0)
        return out

    def transform(self, X):
        check_is_fitted(self, "aggregator_")
        parts = [self._bag_stats(X)]
        if self.heterogeneity:
            cells = _long_cells(X)
            ok = cells[cells[QC_COLUMN] == "ok"]
            parts.append(self.scores_.transform(ok).reindex(X.index))
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
    patients it did not train on. ``predict`` is the mixture's 0.5 call (both experts are
    class-weighted); no threshold is tuned on the out-of-fold mixture that fitted the
    gate, which would be optimistic: calibration and thresholds come from
    :class:`CalibratedDecision` around it, on folds the gate never saw. A patient with no
    usable cells gets the clinical expert's call (g = 0). Default experts:
    ``clinical-logreg`` and ``meanstd-logreg``.
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
            "clinical-logreg", calibrated=False)
        img = self.image_expert if self.image_expert is not None else make_pipeline(
            "meanstd-logreg", calibrated=False)
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
        # both experts are fitted with balanced class weights, so 0.5 is their balanced
        # call; a threshold tuned on the out-of-fold mixture that fitted the gate would be
        # optimistic. Calibration and thresholds come from CalibratedDecision around it.
        p = self.predict_proba(X)[:, 1]  # first: it raises NotFittedError before fit
        return self.classes_[(p >= 0.5).astype(int)]


def _logit(p):
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _rows(X, idx):
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


class ImageLogit(TransformerMixin, BaseEstimator):
    """Cohort frame -> ``Image_Logit``, the logit of an image-only model's P(tumoral).

    ``fit_transform`` returns out-of-fold logits (``cv`` stratified folds) for the training
    patients, so the model stacked on top never sees a logit the image model produced on
    its own training patients; ``transform`` uses the image model refitted on all of them.
    A patient with no usable cell gets NaN (imputed downstream).

    Parameters
    ----------
    estimator : classifier taking the cohort frame, default ``meanstd-logreg``
    cv : int, default=3
    random_state : int, default=0
    """

    def __init__(self, estimator=None, *, cv=3, random_state=0):
        self.estimator = estimator
        self.cv = cv
        self.random_state = random_state

    def _est(self):
        if self.estimator is not None:
            return clone(self.estimator)
        return make_pipeline("meanstd-logreg", calibrated=False)

    def _out(self, X, logit):
        has = np.array([len(c) > 0 and (c[QC_COLUMN] == "ok").any() for c in X["CELLS"]])
        return pd.DataFrame({"Image_Logit": np.where(has, logit, np.nan)}, index=X.index)

    def fit(self, X, y):
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y):
        y = np.asarray(y)
        oof = np.empty(len(y))
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        for tr, te in folds.split(np.zeros(len(y)), y):
            m = self._est().fit(_rows(X, tr), y[tr])
            oof[te] = _logit(m.predict_proba(_rows(X, te))[:, 1])
        self.estimator_ = self._est().fit(X, y)
        return self._out(X, oof)

    def transform(self, X):
        check_is_fitted(self, "estimator_")
        return self._out(X, _logit(self.estimator_.predict_proba(X)[:, 1]))

    def get_feature_names_out(self, input_features=None):
        return np.asarray(["Image_Logit"], dtype=object)


class CalibratedDecision(ClassifierMixin, BaseEstimator):
    """A candidate made into a calibrated probability, a decision and a triage call.

    ``fit`` cross-fits ``estimator`` on ``cv`` stratified folds of the training patients
    (inner out-of-fold predictions), then refits it on all of them, and learns from the
    inner out-of-fold logits only:

    - ``platt_`` (a, b): P(tumoral) = 1 / (1 + exp(-(a·logit(p_raw) + b))), Platt (1999)
      scaling with his smoothed targets (:func:`cellfeat.evaluation.platt_fit`);
    - ``threshold_``: the prevalence π of tumoral patients in the training labels; for a
      calibrated p, calling tumoral when p ≥ π maximises expected balanced accuracy
      (the odds p/(1-p) are weighed against the prior odds π/(1-π));
    - ``triage_threshold_``: the highest threshold that still sends at least
      ``target_sensitivity`` of the tumoral training patients to cytometry
      (:func:`cellfeat.evaluation.triage_threshold`);
    - ``inner_score_``: balanced accuracy of the calibrated inner out-of-fold calls, the
      figure :class:`ModelChoice` ranks candidates by; ``oof_proba_`` holds them.

    ``predict`` is ``predict_proba(X)[:, 1] >= threshold_``; :meth:`triage` says
    ``"cytometry"`` or ``"none"``.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 1)); y = (X[:, 0] + rng.normal(size=60) > 0).astype(int)
    >>> m = CalibratedDecision(LogisticRegression()).fit(X, y)
    >>> bool(np.all(m.predict(X) == (m.predict_proba(X)[:, 1] >= m.threshold_)))
    True
    """

    def __init__(self, estimator, *, cv=3, random_state=0, target_sensitivity=0.95):
        self.estimator = estimator
        self.cv = cv
        self.random_state = random_state
        self.target_sensitivity = target_sensitivity

    def fit(self, X, y):
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"CalibratedDecision needs two classes, got {self.classes_}")
        yb = (y == self.classes_[1]).astype(int)
        raw = np.empty(len(y))
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        for tr, te in folds.split(np.zeros(len(y)), y):
            m = clone(self.estimator).fit(_rows(X, tr), y[tr])
            raw[te] = _logit(m.predict_proba(_rows(X, te))[:, 1])
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.platt_ = platt_fit(raw, yb)
        self.oof_proba_ = platt_apply(self.platt_, raw)
        self.threshold_ = float(yb.mean())
        self.triage_threshold_ = triage_threshold(yb, self.oof_proba_, self.target_sensitivity)
        self.inner_score_ = float(balanced_accuracy_score(yb, self.oof_proba_ >= self.threshold_))
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "platt_")
        p = platt_apply(self.platt_, _logit(self.estimator_.predict_proba(X)[:, 1]))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)]

    def triage(self, X) -> np.ndarray:
        """``"cytometry"`` where P(tumoral) ≥ ``triage_threshold_``, else ``"none"``."""
        p = self.predict_proba(X)[:, 1]
        return np.where(p >= self.triage_threshold_, "cytometry", "none")


class ModelChoice(ClassifierMixin, BaseEstimator):
    """The selection rule as one estimator: what ``cellfeat train`` saves and what the
    nested CV of :func:`cellfeat.evaluation.nested_cv` evaluates in every outer fold.

    Every candidate is wrapped in :class:`CalibratedDecision` with the *same* inner folds
    (``cv``, ``random_state``) and fitted; the candidate with the highest
    ``inner_score_`` (calibrated inner out-of-fold balanced accuracy) among ``eligible``
    wins; a tie (within 1e-9) goes to the candidate listed first, so list them simplest
    first (:data:`CANDIDATES` order). All fitted candidates are kept in ``models_`` (their
    own calls, e.g. fallbacks, come from the same fits).

    Parameters
    ----------
    candidates : list of (name, estimator)
    eligible : list of str, optional
        Names the rule may pick (default: all); others are fitted for comparison only.
    cv, random_state, target_sensitivity : see :class:`CalibratedDecision`
    """

    def __init__(self, candidates, *, eligible=None, cv=3, random_state=0,
                 target_sensitivity=0.95):
        self.candidates = candidates
        self.eligible = eligible
        self.cv = cv
        self.random_state = random_state
        self.target_sensitivity = target_sensitivity

    def fit(self, X, y):
        names = [n for n, _ in self.candidates]
        eligible = list(self.eligible) if self.eligible is not None else names
        unknown = [n for n in eligible if n not in names]
        if unknown or not eligible:
            raise ValueError(f"eligible candidates {unknown or eligible} not among {names}")
        self.models_ = {n: CalibratedDecision(est, cv=self.cv, random_state=self.random_state,
                                              target_sensitivity=self.target_sensitivity
                                              ).fit(X, y) for n, est in self.candidates}
        self.inner_scores_ = {n: m.inner_score_ for n, m in self.models_.items()}
        best = max(self.inner_scores_[n] for n in eligible)
        self.chosen_ = next(n for n in names if n in eligible
                            and self.inner_scores_[n] >= best - 1e-9)
        self.model_ = self.models_[self.chosen_]
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(X)

    def predict(self, X):
        return self.model_.predict(X)

    def triage(self, X) -> np.ndarray:
        return self.model_.triage(X)


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


def _impute_scale():
    return [("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler())]


def _head(kind: str):
    if kind == "logreg":
        return [*_impute_scale(), ("model", _logreg_cv())]
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
    if "meanstd" in tokens:
        parts.append(("meanstd", CellBagFeatures(heterogeneity=False, stats=("Mean", "Std"))))
    if "bags" in tokens:
        parts.append(("bags", CellBagFeatures()))
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


def _late_fusion():
    """Clinical variables + the out-of-fold logit of ``meanstd-logreg`` -> logistic
    regression (C = 1 on five standardised inputs: little to regularise)."""
    feats = FeatureUnion([("clinical", ClinicalFeatures()), ("image", ImageLogit())])
    return Pipeline([("features", feats), *_impute_scale(), ("model", _logreg(1.0))])


#: Every candidate, simplest first: this order breaks ties in :class:`ModelChoice`.
CANDIDATES = (
    "clinical-logreg",
    "meanstd-logreg", "clinical+meanstd-logreg", "late-fusion", "gated-mixture",
    "bags-logreg", "clinical+bags-logreg",
    "bags-xgb", "bags-lgbm", "clinical+bags-xgb", "clinical+bags-lgbm",
    "clinical+misvm-xgb",
    "cnn", "clinical+bags+cnn-xgb",
)
#: What ``cellfeat train`` lets the rule choose from unless told otherwise: the baseline,
#: three low-variance clinical + image models and one tree model on the full bag table.
DEFAULT_CANDIDATES = ("clinical-logreg", "clinical+meanstd-logreg", "late-fusion",
                      "gated-mixture", "clinical+bags-xgb")
#: Fitted beside the rule for their own CV figures (fallbacks), never chosen by default.
REFERENCE_CANDIDATES = ("meanstd-logreg",)
#: Candidates that need torch (the ``cnn`` extra).
CNN_CANDIDATES = ("cnn", "clinical+bags+cnn-xgb")
#: Most cross-validation levels inside one candidate's fit (late fusion: the image logit's
#: 3 folds, then the image model's 3-fold choice of C; gated mixture: the gate's 3 folds,
#: then the clinical expert's 3-fold choice of gender and C). The data-size guard counts
#: them; :func:`cv_depth` gives each candidate's own.
INTERNAL_CV_DEPTH = (3, 3)
_SHALLOW = {"clinical-logreg": (3,), "meanstd-logreg": (3,), "clinical+meanstd-logreg": (3,),
            "bags-logreg": (3,), "clinical+bags-logreg": (3,), "clinical+misvm-xgb": (3,),
            "bags-xgb": (), "bags-lgbm": (), "clinical+bags-xgb": (), "clinical+bags-lgbm": ()}


def cv_depth(names) -> tuple[int, ...]:
    """Folds of the deepest chain of CV levels inside the fits of ``names`` (unknown or
    unlisted names count as :data:`INTERNAL_CV_DEPTH`)."""
    return max((_SHALLOW.get(n, INTERNAL_CV_DEPTH) for n in names), key=len, default=())


def available_candidates() -> tuple[str, ...]:
    """:data:`CANDIDATES` that can run here (the CNN ones only when torch imports)."""
    from .cnn import torch_available

    return tuple(c for c in CANDIDATES if c not in CNN_CANDIDATES or torch_available())


def make_pipeline(name: str, *, calibrated: bool = True, tuned: bool | None = None,
                  threshold_cv: int = 3):
    """An unfitted candidate (see the module docstring for the names).

    Parameters
    ----------
    name : str
        One of :data:`CANDIDATES`.
    calibrated : bool, default=True
        Wrap the candidate in :class:`CalibratedDecision` (Platt scaling, prevalence
        threshold and triage threshold from ``threshold_cv`` inner folds). False gives the
        raw pipeline, whose ``predict`` is the class-weighted model's own 0.5 call.
    tuned : bool, optional
        Old name of ``calibrated``.

    Examples
    --------
    >>> pipe = make_pipeline("clinical+bags-xgb", calibrated=False)
    >>> [step for step, _ in pipe.steps]
    ['features', 'model']
    """
    if tuned is not None:
        calibrated = tuned
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    if name == "clinical-logreg":
        raw = Pipeline([("model", ClinicalLogReg())])
    elif name == "late-fusion":
        raw = _late_fusion()
    elif name == "gated-mixture":
        raw = Pipeline([("model", GatedMixture())])
    elif name == "cnn":
        from .cnn import CNNExpert

        raw = Pipeline([("model", CNNExpert())])
    else:
        inputs, kind = name.rsplit("-", 1)
        head = _head(kind)
        clf = Pipeline(head) if len(head) > 1 else head[0][1]
        steps = [("features", _features(inputs)), ("model", clf)]
        if "cnn" in inputs.split("+"):  # CNN cell embeddings join the cell tables first
            from .cnn import CNNEmbedding

            steps.insert(0, ("cnn", CNNEmbedding()))
        raw = Pipeline(steps)
    return CalibratedDecision(raw, cv=threshold_cv) if calibrated else raw
