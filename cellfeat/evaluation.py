"""Patient-level evaluation: repeated stratified K-fold, nested model choice, honest spread.

Every candidate is fitted on the same outer training folds (the whole pipeline, so scaling,
heterogeneity standardisation, MIL cross-fitting and threshold tuning happen inside each
fold). Model choice is itself cross-validated: in each outer fold, the candidate with the
best inner-CV balanced accuracy on the outer training patients is "chosen", and its outer
predictions form the nested estimate, the figure to quote for the selection procedure.

Spread and confidence: each repeat yields one out-of-fold prediction per patient; we
report the mean and standard deviation of the per-repeat balanced accuracy, and a 95 %
percentile interval from bootstrapping patients (the repeat-averaged balanced accuracy on
each resample), which reflects how much the figure could move on other patients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

__all__ = ["CVResult", "evaluate_candidates", "binary_metrics", "bootstrap_ci"]


def binary_metrics(y, pred, proba=None) -> dict:
    """Balanced accuracy, sensitivity (tumoral recall), specificity and ROC AUC."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    sens = float((pred[y == 1] == 1).mean()) if (y == 1).any() else np.nan
    spec = float((pred[y == 0] == 0).mean()) if (y == 0).any() else np.nan
    auc = np.nan
    if proba is not None and len(np.unique(y)) == 2:
        auc = float(roc_auc_score(y, proba))
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)), "sensitivity": sens,
            "specificity": spec, "roc_auc": auc}


def bootstrap_ci(y, preds: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level=0.95):
    """Percentile CI of the repeat-averaged balanced accuracy, resampling patients.

    ``preds`` has shape (repeats, n_patients).
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(int)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        stats.append(np.mean([balanced_accuracy_score(y[idx], p[idx]) for p in preds]))
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


@dataclass
class CVResult:
    """Out-of-fold predictions and summaries of :func:`evaluate_candidates`.

    ``proba[name]`` and ``pred[name]`` have shape (repeats, n_patients); ``nested`` is the
    nested-CV estimate under the key ``"nested"`` in the same dicts, and ``chosen`` lists
    the candidate chosen in each outer fold.
    """

    ids: list
    y: np.ndarray
    proba: dict = field(default_factory=dict)
    pred: dict = field(default_factory=dict)
    chosen: list = field(default_factory=list)
    fold_scores: pd.DataFrame | None = None

    def summary(self, *, n_boot: int = 1000) -> pd.DataFrame:
        rows = {}
        for name in self.pred:
            per_repeat = [binary_metrics(self.y, p, q) for p, q in zip(self.pred[name],
                                                                       self.proba[name])]
            m = pd.DataFrame(per_repeat)
            lo, hi = bootstrap_ci(self.y, self.pred[name], n_boot=n_boot)
            rows[name] = {
                "balanced_accuracy": m["balanced_accuracy"].mean(),
                "balanced_accuracy_std": m["balanced_accuracy"].std(ddof=1) if len(m) > 1 else 0.0,
                "balanced_accuracy_ci_low": lo, "balanced_accuracy_ci_high": hi,
                "roc_auc": m["roc_auc"].mean(), "sensitivity": m["sensitivity"].mean(),
                "specificity": m["specificity"].mean(),
            }
        return pd.DataFrame(rows).T


def _fit_predict(est, X, y, tr, te):
    model = clone(est).fit(X.iloc[tr], y[tr])
    return model.predict_proba(X.iloc[te])[:, 1], model.predict(X.iloc[te])


def _inner_score(est, X, y, tr, inner_folds, seed):
    Xi, yi = X.iloc[tr], y[tr]
    cv = StratifiedKFold(inner_folds, shuffle=True, random_state=seed)
    pred = np.empty(len(tr), dtype=y.dtype)
    for a, b in cv.split(np.zeros(len(yi)), yi):
        pred[b] = _fit_predict(est, Xi, yi, a, b)[1]
    return float(balanced_accuracy_score(yi, pred))


def evaluate_candidates(candidates: dict, X: pd.DataFrame, y, *, folds: int = 5,
                        repeats: int = 4, inner_folds: int = 3, seed: int = 0,
                        n_jobs: int = 1, nested: bool = True, callback=None) -> CVResult:
    """Repeated stratified K-fold of every candidate, plus nested model choice.

    Parameters
    ----------
    candidates : dict of str to estimator
        Unfitted estimators taking the cohort frame ``X``.
    X : DataFrame, one row per patient.
    y : array of {0, 1}
    folds, repeats : int
        Outer CV: ``repeats`` × ``folds`` splits.
    inner_folds : int
        Inner CV of the nested model choice.
    n_jobs : int
        Parallel fits (joblib).
    callback : callable, optional
        Called with no argument after each finished (fold, candidate) task, for progress.
    """
    from joblib import Parallel, delayed

    y = np.asarray(y).astype(int)
    outer = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats,
                                         random_state=seed).split(np.zeros(len(y)), y))
    names = list(candidates)

    def task(k, name):
        tr, te = outer[k]
        proba, pred = _fit_predict(candidates[name], X, y, tr, te)
        inner = _inner_score(candidates[name], X, y, tr, inner_folds, seed + k) if nested else np.nan
        return k, name, proba, pred, inner

    jobs = [delayed(task)(k, n) for k in range(len(outer)) for n in names]
    res = CVResult(ids=list(X.index), y=y)
    for n in names:
        res.proba[n] = np.full((repeats, len(y)), np.nan)
        res.pred[n] = np.full((repeats, len(y)), -1)
    rows = []
    for k, name, proba, pred, inner in Parallel(n_jobs=n_jobs, return_as="generator")(jobs):
        r, te = k // folds, outer[k][1]
        res.proba[name][r, te] = proba
        res.pred[name][r, te] = pred
        rows.append({"split": k, "repeat": r, "candidate": name, "inner_balanced_accuracy": inner,
                     "outer_balanced_accuracy": balanced_accuracy_score(y[te], pred)})
        if callback:
            callback()
    res.fold_scores = pd.DataFrame(rows).sort_values(["split", "candidate"]).reset_index(drop=True)
    if nested:
        res.proba["nested"] = np.full((repeats, len(y)), np.nan)
        res.pred["nested"] = np.full((repeats, len(y)), -1)
        for k, (_, te) in enumerate(outer):
            fs = res.fold_scores[res.fold_scores["split"] == k]
            best = fs.sort_values("inner_balanced_accuracy", ascending=False,
                                  kind="stable").iloc[0]["candidate"]
            res.chosen.append(best)
            r = k // folds
            res.proba["nested"][r, te] = res.proba[best][r, te]
            res.pred["nested"][r, te] = res.pred[best][r, te]
    return res
