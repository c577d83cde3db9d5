"""Stacked candidates: a second stage learnt on out-of-fold outputs of a first.

``ImageLogit`` gives the out-of-fold logit of an image-only model (``late-fusion`` stacks it
with the clinical variables); ``GatedMixture`` mixes a clinical and an image expert by a gate
on the clinical data. Both default to the clinical baseline and ``meanstd-logreg`` (the
package docstring discusses the refit-vs-out-of-fold drift of stacking).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ..decision import logit, rows
from ..extract import QC_COLUMN
from .inputs import ClinicalFeatures
from .learners import ClinicalLogReg, pipeline_steps

__all__ = ["GatedMixture", "ImageLogit"]


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
        clin = self.clinical_expert if self.clinical_expert is not None else Pipeline(
            [("model", ClinicalLogReg())])
        img = self.image_expert if self.image_expert is not None else Pipeline(
            pipeline_steps("meanstd", "logreg"))
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
        return Pipeline(pipeline_steps("meanstd", "logreg"))

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
            m = self._est().fit(rows(X, tr), y[tr])
            oof[te] = logit(m.predict_proba(rows(X, te))[:, 1])
        self.estimator_ = self._est().fit(X, y)
        return self._out(X, oof)

    def transform(self, X):
        check_is_fitted(self, "estimator_")
        return self._out(X, logit(self.estimator_.predict_proba(X)[:, 1]))

    def get_feature_names_out(self, input_features=None):
        return np.asarray(["Image_Logit"], dtype=object)

