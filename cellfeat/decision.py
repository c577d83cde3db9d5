"""From a score to a call: calibration, the decision threshold and the triage threshold.

This is what turns any candidate's score into something a lab can act on, and it sits below
both the models (:mod:`cellfeat.models`) and their evaluation (:mod:`cellfeat.evaluation`):

- :func:`platt_fit` / :func:`platt_apply`: Platt (1999) scaling of a score into a calibrated
  P(tumoral);
- :func:`triage_threshold`: the highest threshold that still sends a target share of the
  tumoral patients to cytometry;
- :func:`call`: PROBA against a threshold, at the precision both are printed with
  (:data:`DECIMALS`), so that a call never contradicts the numbers a person reads;
- :class:`CalibratedDecision`: a candidate wrapped with all three, learnt from its inner
  out-of-fold predictions on the training patients only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.utils.validation import check_is_fitted

__all__ = ["DECIMALS", "platt_fit", "platt_apply", "triage_threshold", "call", "logit",
           "rows", "log_losses", "CalibratedDecision"]

#: Decimals of PROBA and of every threshold wherever they are printed (CSV, report, page,
#: montage titles) and compared (:func:`call`): 0.001 is finer than any calibration can
#: claim, and a call is then exactly what the printed numbers say.
DECIMALS = 3


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


def call(proba, threshold) -> np.ndarray:
    """True where PROBA reaches the threshold *as both are printed* (:data:`DECIMALS`).

    Examples
    --------
    >>> call([0.6914, 0.6916, 0.7], 0.69166).tolist()  # printed 0.691, 0.692, 0.700 vs 0.692
    [False, True, True]
    """
    return np.round(np.asarray(proba, float), DECIMALS) >= np.round(float(threshold), DECIMALS)


def log_losses(y, proba) -> np.ndarray:
    """Per-patient log-loss −[y ln p + (1 − y) ln(1 − p)], p clipped to [1e-6, 1 − 1e-6]."""
    y, p = np.asarray(y, float), np.clip(np.asarray(proba, float), 1e-6, 1 - 1e-6)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def logit(p):
    """log(p / (1 - p)), with p clipped to [1e-6, 1 - 1e-6] so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def rows(X, idx):
    """Rows ``idx`` of a DataFrame (by position) or of an array."""
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]



class CalibratedDecision(ClassifierMixin, BaseEstimator):
    """A candidate made into a calibrated probability, a decision and a triage call.

    ``fit`` cross-fits ``estimator`` on ``repeats`` × ``cv`` stratified folds of the training
    patients (inner out-of-fold predictions, one per patient and repeat), then refits it on
    all of them, and learns from the inner out-of-fold logits only:

    - ``platt_`` (a, b): P(tumoral) = 1 / (1 + exp(-(a·logit(p_raw) + b))), Platt (1999)
      scaling with his smoothed targets (:func:`platt_fit`), on the pooled repeats;
    - ``threshold_``: the prevalence π of tumoral patients in the training labels, at
      :data:`DECIMALS`; for a calibrated p, calling tumoral when p ≥ π maximises expected
      balanced accuracy (the odds p/(1-p) are weighed against the prior odds π/(1-π));
    - ``triage_threshold_``: the highest threshold that still sends at least
      ``target_sensitivity`` of the tumoral training patients to cytometry
      (:func:`triage_threshold` on the pooled inner out-of-fold probabilities), and never
      above ``threshold_``: a patient called tumoral is always sent to cytometry, even if
      that sends more tumoral training patients than the target asks;
    - ``inner_losses_``: each training patient's log-loss of its calibrated inner
      out-of-fold P(tumoral), averaged over the repeats: what :class:`ModelChoice
      <cellfeat.models.ModelChoice>` compares candidates by (a proper scoring rule);
      ``oof_proba_`` (repeats, n) holds those probabilities. These are in-sample for the
      calibration's two parameters, so they are for ranking candidates, not for quoting.

    ``predict`` is :func:`call` of ``predict_proba(X)[:, 1]`` against ``threshold_``;
    :meth:`triage` says ``"cytometry"`` or ``"none"`` the same way.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 1)); y = (X[:, 0] + rng.normal(size=60) > 0).astype(int)
    >>> m = CalibratedDecision(LogisticRegression()).fit(X, y)
    >>> bool(np.all(m.predict(X) == call(m.predict_proba(X)[:, 1], m.threshold_)))
    True
    >>> bool(m.triage_threshold_ <= m.threshold_)
    True
    """

    def __init__(self, estimator, *, cv=3, repeats=2, random_state=0, target_sensitivity=0.95):
        self.estimator = estimator
        self.cv = cv
        self.repeats = repeats
        self.random_state = random_state
        self.target_sensitivity = target_sensitivity

    def fit(self, X, y):
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"CalibratedDecision needs two classes, got {self.classes_}")
        yb = (y == self.classes_[1]).astype(int)
        raw = np.empty((self.repeats, len(y)))
        folds = RepeatedStratifiedKFold(n_splits=self.cv, n_repeats=self.repeats,
                                        random_state=self.random_state)
        for k, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y)):
            m = clone(self.estimator).fit(rows(X, tr), y[tr])
            raw[k // self.cv, te] = logit(m.predict_proba(rows(X, te))[:, 1])
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.platt_ = platt_fit(raw.ravel(), np.tile(yb, self.repeats))
        self.oof_proba_ = platt_apply(self.platt_, raw)
        self.inner_losses_ = log_losses(yb, self.oof_proba_).mean(axis=0)
        self.threshold_ = round(float(yb.mean()), DECIMALS)
        triage = triage_threshold(np.tile(yb, self.repeats), self.oof_proba_.ravel(),
                                  self.target_sensitivity)
        self.triage_threshold_ = min(round(triage, DECIMALS), self.threshold_)
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "platt_")
        p = platt_apply(self.platt_, logit(self.estimator_.predict_proba(X)[:, 1]))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[call(self.predict_proba(X)[:, 1], self.threshold_).astype(int)]

    def triage(self, X) -> np.ndarray:
        """``"cytometry"`` where P(tumoral) reaches ``triage_threshold_``, else ``"none"``."""
        p = self.predict_proba(X)[:, 1]
        return np.where(call(p, self.triage_threshold_), "cytometry", "none")
