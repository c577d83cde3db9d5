"""Patient-level evaluation: nested CV of the selection rule, paired gains, triage figures.

The procedure evaluated is :class:`cellfeat.models.ModelChoice`, the same estimator the
``train`` stage fits on all training patients and saves. In each outer fold of a repeated
stratified K-fold it is fitted on the outer training patients only: every candidate gets
the same inner folds, is calibrated and thresholded on its inner out-of-fold predictions,
and the rule picks one. Its calls on the outer test patients form the *nested* estimate,
the figure to quote; each candidate's own calls in the same folds give paired rows for
comparison (same patients, same folds, same calibration recipe).

Spread and confidence: each repeat yields one out-of-fold prediction per patient; we
report the mean and standard deviation of the per-repeat figures, and a 95 % percentile
interval from bootstrapping patients (the repeat-averaged figure on each resample), which
reflects how much the figure could move on other patients. Paired differences bootstrap
the same resampled patients for both models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold

from .models.candidates import cv_depth
from .models.selection import ModelChoice

__all__ = ["CVResult", "nested_cv", "binary_metrics", "bootstrap_ci", "paired_delta",
           "triage_curve", "reliability",
           "min_class_size", "check_cohort_size"]


# --- triage and calibration figures (the thresholds themselves: cellfeat.decision) -----

def triage_curve(y, proba) -> pd.DataFrame:
    """For every threshold: share of tumoral patients sent to cytometry (sensitivity) and
    share of reactive patients spared it (specificity)."""
    y, p = np.asarray(y).astype(int), np.asarray(proba, float)
    ts = np.unique(np.concatenate([p, [np.inf]]))
    return pd.DataFrame({"threshold": ts,
                         "sensitivity": [(p[y == 1] >= t).mean() for t in ts],
                         "reactive_spared": [(p[y == 0] < t).mean() for t in ts]})


def reliability(y, proba, *, bins: int = 5) -> pd.DataFrame:
    """Reliability table: equal-width bins of predicted P(tumoral), mean prediction and
    observed share of tumoral patients in each (empty bins left out)."""
    y, p = np.asarray(y).astype(int), np.asarray(proba, float)
    idx = np.clip(np.digitize(p, np.linspace(0, 1, bins + 1)) - 1, 0, bins - 1)
    rows = [{"bin": b, "n": int((idx == b).sum()), "predicted": float(p[idx == b].mean()),
             "observed": float(y[idx == b].mean())} for b in range(bins) if (idx == b).any()]
    return pd.DataFrame(rows)


# --- figures and their uncertainty ----------------------------------------------------------

def binary_metrics(y, pred, proba=None) -> dict:
    """Balanced accuracy, sensitivity (tumoral recall), specificity, ROC AUC, Brier score."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    sens = float((pred[y == 1] == 1).mean()) if (y == 1).any() else np.nan
    spec = float((pred[y == 0] == 0).mean()) if (y == 0).any() else np.nan
    auc = brier = np.nan
    if proba is not None:
        proba = np.asarray(proba, float)
        brier = float(np.mean((proba - y) ** 2))
        if len(np.unique(y)) == 2:
            auc = float(roc_auc_score(y, proba))
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)), "sensitivity": sens,
            "specificity": spec, "roc_auc": auc, "brier": brier}


def _percentiles(stats, level):
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def _boot_indices(y, n_boot, seed):
    """Patient resamples that keep both classes (a figure per class needs both)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(int)
    out = []
    while len(out) < n_boot:
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(y):
            out.append(idx)
    return out


def bootstrap_ci(y, preds: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level=0.95,
                 stat=None):
    """Percentile CI of a repeat-averaged figure, resampling patients.

    ``preds`` has shape (repeats, n_patients); ``stat(y, pred)`` defaults to balanced
    accuracy.
    """
    stat = stat or balanced_accuracy_score
    y = np.asarray(y).astype(int)
    preds = np.atleast_2d(preds)
    vals = [np.mean([stat(y[i], p[i]) for p in preds]) for i in _boot_indices(y, n_boot, seed)]
    return _percentiles(vals, level)


def paired_delta(y, a, b, *, stat=None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Paired difference stat(a) − stat(b) of two models' out-of-fold outputs on the same
    patients and folds (arrays (repeats, n)); the CI resamples the same patients for both."""
    stat = stat or balanced_accuracy_score
    y = np.asarray(y).astype(int)
    a, b = np.atleast_2d(a), np.atleast_2d(b)

    def d(i):
        return np.mean([stat(y[i], pa[i]) - stat(y[i], pb[i]) for pa, pb in zip(a, b)])

    vals = [d(i) for i in _boot_indices(y, n_boot, seed)]
    delta = d(np.arange(len(y)))
    return {"delta": float(delta), "ci95": list(_percentiles(vals, level)),
            "p_not_better": float(np.mean(np.asarray(vals) <= 0))}


# --- data-size guard ------------------------------------------------------------------------

def min_class_size(splits) -> int:
    """Fewest patients of each class a cohort needs so that every level of nested
    stratified K-fold (``splits`` = n_splits per level, outermost first) can split.

    Level k needs at least ``splits[k]`` patients per class; its smallest training part
    keeps m − ⌈m / k⌉ of m. Worked bottom-up, e.g. (5, 3, 3, 3) -> 3, 5, 8, 10.
    """
    need = 0
    for k in reversed(list(splits)):
        m = max(k, 2)
        while m - -(-m // k) < need:
            m += 1
        need = m
    return need


def check_cohort_size(y, splits) -> None:
    """Raise ValueError naming the numbers when a class is too small for ``splits``."""
    y = np.asarray(y).astype(int)
    counts = {c: int((y == c).sum()) for c in (0, 1)}
    need = min_class_size(splits)
    if min(counts.values()) < need:
        raise ValueError(
            f"{counts[0]} reactive and {counts[1]} tumoral patients: nested cross-validation "
            f"{' > '.join(map(str, splits))} folds deep needs at least {need} of each class; "
            f"label more patients or use fewer folds")


# --- nested CV ------------------------------------------------------------------------------

@dataclass
class CVResult:
    """Out-of-fold outputs of :func:`nested_cv`.

    For every candidate name and for ``"nested"`` (the rule): ``proba`` (calibrated
    P(tumoral)), ``pred`` (call at that fold's decision threshold) and ``triage`` (1 =
    sent to cytometry at that fold's triage threshold), each of shape (repeats, n_patients).
    ``chosen`` lists the candidate the rule picked in each outer fold; ``fold_scores`` has
    one row per (fold, candidate) with its inner score, thresholds and outer figures.
    """

    ids: list
    y: np.ndarray
    target_sensitivity: float = 0.95
    proba: dict = field(default_factory=dict)
    pred: dict = field(default_factory=dict)
    triage: dict = field(default_factory=dict)
    chosen: list = field(default_factory=list)
    fold_scores: pd.DataFrame | None = None

    def summary(self, *, n_boot: int = 1000) -> pd.DataFrame:
        """One row per model: mean ± sd over repeats, bootstrap CI, AUC, Brier, triage."""
        rows = {}
        for name in self.pred:
            m = pd.DataFrame([binary_metrics(self.y, p, q)
                              for p, q in zip(self.pred[name], self.proba[name])])
            t = pd.DataFrame([binary_metrics(self.y, p) for p in self.triage[name]])
            lo, hi = bootstrap_ci(self.y, self.pred[name], n_boot=n_boot)
            rows[name] = {
                "balanced_accuracy": m["balanced_accuracy"].mean(),
                "balanced_accuracy_std": m["balanced_accuracy"].std(ddof=1) if len(m) > 1 else 0.0,
                "balanced_accuracy_ci_low": lo, "balanced_accuracy_ci_high": hi,
                "roc_auc": m["roc_auc"].mean(), "sensitivity": m["sensitivity"].mean(),
                "specificity": m["specificity"].mean(), "brier": m["brier"].mean(),
                "triage_sensitivity": t["sensitivity"].mean(),
                "triage_reactive_spared": t["specificity"].mean(),
            }
        return pd.DataFrame(rows).T

    def versus(self, name: str, reference: str, *, n_boot: int = 1000) -> dict:
        """Paired BA and AUC differences ``name`` − ``reference`` with 95 % CIs."""
        ba = paired_delta(self.y, self.pred[name], self.pred[reference], n_boot=n_boot)
        auc = paired_delta(self.y, self.proba[name], self.proba[reference], n_boot=n_boot,
                           stat=roc_auc_score)
        return {"model": name, "reference": reference, "delta": ba["delta"], "ci95": ba["ci95"],
                "p_not_better": ba["p_not_better"], "auc_delta": auc["delta"],
                "auc_ci95": auc["ci95"]}

    def triage_summary(self, name: str = "nested", *, n_boot: int = 1000) -> dict:
        """Out-of-fold triage of ``name``: each fold's threshold was chosen on its training
        patients only, so these are held-out figures, with bootstrap CIs."""
        sens = lambda y, p: (p[y == 1] == 1).mean()  # noqa: E731
        spec = lambda y, p: (p[y == 0] == 0).mean()  # noqa: E731
        tr = self.triage[name]
        th = self.fold_scores
        th = th[th["candidate"] == name]["triage_threshold"] if name != "nested" else \
            self.fold_scores[self.fold_scores["chosen"]]["triage_threshold"]
        return {"target_sensitivity": self.target_sensitivity,
                "sensitivity": float(np.mean([sens(self.y, p) for p in tr])),
                "sensitivity_ci95": list(bootstrap_ci(self.y, tr, n_boot=n_boot, stat=sens)),
                "specificity": float(np.mean([spec(self.y, p) for p in tr])),
                "specificity_ci95": list(bootstrap_ci(self.y, tr, n_boot=n_boot, stat=spec)),
                "fold_thresholds_median": float(np.median(th)),
                "fold_thresholds_range": [float(th.min()), float(th.max())]}


def nested_cv(candidates, X: pd.DataFrame, y, *, eligible=None, folds: int = 5,
              repeats: int = 2, inner_folds: int = 3, seed: int = 0,
              target_sensitivity: float = 0.95, n_jobs: int = 1, callback=None,
              internal_depth=None) -> CVResult:
    """Repeated stratified K-fold of :class:`cellfeat.models.ModelChoice`.

    Parameters
    ----------
    candidates : list of (name, estimator) or dict, simplest first
        Unfitted estimators taking ``X``.
    X : DataFrame, one row per patient.
    y : array of {0, 1}
    eligible : list of str, optional
        Candidates the rule may choose (default all); the others get paired rows only.
    folds, repeats : int
        Outer CV: ``repeats`` × ``folds`` splits.
    inner_folds : int
        Inner CV of calibration, thresholds and choice (as in the saved model).
    internal_depth : tuple of int, optional
        Folds of the CV levels inside a candidate's fit, for the data-size guard
        (default :func:`cellfeat.models.cv_depth` of the candidate names).
    n_jobs : int
        Outer folds fitted in parallel (joblib).
    callback : callable, optional
        Called with no argument after each finished outer fold, for progress.
    """
    from joblib import Parallel, delayed

    cands = list(candidates.items()) if isinstance(candidates, dict) else list(candidates)
    y = np.asarray(y).astype(int)
    depth = cv_depth([n for n, _ in cands]) if internal_depth is None else tuple(internal_depth)
    check_cohort_size(y, (folds, inner_folds, *depth))
    outer = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats,
                                         random_state=seed).split(np.zeros(len(y)), y))
    rule = ModelChoice(cands, eligible=eligible, cv=inner_folds, random_state=seed,
                       target_sensitivity=target_sensitivity)

    def task(k):
        from sklearn.base import clone

        tr, te = outer[k]
        fitted = clone(rule).fit(X.iloc[tr], y[tr])
        out = {}
        for name, m in fitted.models_.items():
            p = m.predict_proba(X.iloc[te])[:, 1]
            out[name] = (p, m.threshold_, m.triage_threshold_, m.inner_score_)
        return k, fitted.chosen_, out

    names = [n for n, _ in cands] + ["nested"]
    res = CVResult(ids=list(X.index), y=y, target_sensitivity=target_sensitivity)
    for n in names:
        res.proba[n] = np.full((repeats, len(y)), np.nan)
        res.pred[n] = np.full((repeats, len(y)), -1)
        res.triage[n] = np.full((repeats, len(y)), -1)
    rows, chosen = [], {}
    for k, best, out in Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(task)(k) for k in range(len(outer))):
        r, te = k // folds, outer[k][1]
        chosen[k] = best
        for name, (p, thr, tri, inner) in out.items():
            for key in (name, "nested") if name == best else (name,):
                res.proba[key][r, te] = p
                res.pred[key][r, te] = p >= thr
                res.triage[key][r, te] = p >= tri
            rows.append({"split": k, "repeat": r, "candidate": name, "chosen": name == best,
                         "inner_balanced_accuracy": inner, "threshold": thr,
                         "triage_threshold": tri,
                         "outer_balanced_accuracy": balanced_accuracy_score(y[te], p >= thr)})
        if callback:
            callback()
    res.chosen = [chosen[k] for k in range(len(outer))]
    res.fold_scores = pd.DataFrame(rows).sort_values(["split", "candidate"]).reset_index(drop=True)
    return res
