"""From a score to a call: calibration, the decision threshold and the triage threshold.

This is what turns any candidate's score into something a lab can act on, and it sits below
both the models (:mod:`cellfeat.models`) and their evaluation (:mod:`cellfeat.evaluation`):

- :func:`platt_fit` / :func:`platt_apply`: Platt (1999) scaling of a score into a calibrated
  P(tumoral);
- :func:`triage_threshold`: the highest threshold that still sends a target share of the
  tumoral patients to cytometry;
- :class:`CalibratedDecision`: a candidate wrapped with all three, learnt from its inner
  out-of-fold predictions on the training patients only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

__all__ = ["platt_fit", "platt_apply", "triage_threshold", "logit", "rows",
           "CalibratedDecision"]


def platt_fit(scores, y) -> tuple[float, float]:
    """Platt scaling: (a, b) with P(y=1 | s) = 1 / (1 + exp(-(a s + b))).

    Maximum likelihood with Platt's smoothed targets t+ = (N+ + 1)/(N+ + 2) and
    t- = 1/(N- + 2) (Platt 1999, "Probabilistic outputs for support vector machines"),
    which keeps (a, b) finite when the scores separate the classes.
    """
    s, y = np.asarray(scores, float), np.asarray(y).astype(int)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def nll(w):
        z = w[0] * s + w[1]
        # log(1 + e^z) - t z, written stably
        return float(np.mean(np.logaddexp(0, z) - t * z))

    def grad(w):
        p = 1 / (1 + np.exp(-(w[0] * s + w[1])))
        return np.array([np.mean((p - t) * s), np.mean(p - t)])

    prior = np.log((n_pos + 1) / (n_neg + 1))
    w = minimize(nll, np.array([1.0, prior]), jac=grad, method="L-BFGS-B").x
    return float(w[0]), float(w[1])


def platt_apply(ab, scores) -> np.ndarray:
    a, b = ab
    return 1 / (1 + np.exp(-(a * np.asarray(scores, float) + b)))


def triage_threshold(y, proba, target_sensitivity: float) -> float:
    """Highest threshold t with share(proba ≥ t | tumoral) ≥ ``target_sensitivity``.

    With the tumoral probabilities sorted ascending q_0 ≤ … ≤ q_{n-1}, at most
    m = ⌊n (1 − S)⌋ of them may fall below t, so t = q_m.

    Examples
    --------
    >>> triage_threshold([1, 1, 1, 1, 0], [0.2, 0.5, 0.7, 0.9, 0.1], 0.75)
    0.5
    """
    y, p = np.asarray(y).astype(int), np.asarray(proba, float)
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    q = np.sort(p[y == 1])
    if not len(q):
        raise ValueError("no tumoral patient to set a triage threshold on")
    m = int(np.floor(len(q) * (1 - target_sensitivity) + 1e-9))
    return float(q[m])


def logit(p):
    """log(p / (1 - p)), with p clipped to [1e-6, 1 - 1e-6] so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def rows(X, idx):
    """Rows ``idx`` of a DataFrame (by position) or of an array."""
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]



class CalibratedDecision(ClassifierMixin, BaseEstimator):
    """A candidate made into a calibrated probability, a decision and a triage call.

    ``fit`` cross-fits ``estimator`` on ``cv`` stratified folds of the training patients
    (inner out-of-fold predictions), then refits it on all of them, and learns from the
    inner out-of-fold logits only:

    - ``platt_`` (a, b): P(tumoral) = 1 / (1 + exp(-(a·logit(p_raw) + b))), Platt (1999)
      scaling with his smoothed targets (:func:`platt_fit`);
    - ``threshold_``: the prevalence π of tumoral patients in the training labels; for a
      calibrated p, calling tumoral when p ≥ π maximises expected balanced accuracy
      (the odds p/(1-p) are weighed against the prior odds π/(1-π));
    - ``triage_threshold_``: the highest threshold that still sends at least
      ``target_sensitivity`` of the tumoral training patients to cytometry
      (:func:`triage_threshold`);
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
            m = clone(self.estimator).fit(rows(X, tr), y[tr])
            raw[te] = logit(m.predict_proba(rows(X, te))[:, 1])
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.platt_ = platt_fit(raw, yb)
        self.oof_proba_ = platt_apply(self.platt_, raw)
        self.threshold_ = float(yb.mean())
        self.triage_threshold_ = triage_threshold(yb, self.oof_proba_, self.target_sensitivity)
        self.inner_score_ = float(balanced_accuracy_score(yb, self.oof_proba_ >= self.threshold_))
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "platt_")
        p = platt_apply(self.platt_, logit(self.estimator_.predict_proba(X)[:, 1]))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)]

    def triage(self, X) -> np.ndarray:
        """``"cytometry"`` where P(tumoral) ≥ ``triage_threshold_``, else ``"none"``."""
        p = self.predict_proba(X)[:, 1]
        return np.where(p >= self.triage_threshold_, "cytometry", "none")

