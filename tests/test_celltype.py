"""cellfeat.models.celltype: the per-cell reactive score learns the planted cell type, its
cross-fitted output does not leak, and it keeps the estimator contract on cohort frames.

The cohorts here are drawn so that the answer is known: reactive patients carry a share of
large cells (``Cell_Shape_Area`` about 90 against 50), tumoral patients few or none, and the
other features are noise.
"""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cellfeat.models.celltype import CellTypeScore, weighted_quantile


def planted_cohort(n=24, seed=0, n_noise=3):
    """Patients alternate reactive (0) / tumoral (1); a reactive patient's cells are large
    with probability 0.6, a tumoral patient's with probability 0.1. Each table also has a
    failed-QC row (NaN features) and one patient (P03) has only failed rows."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    tables = []
    for i in range(n):
        k = int(rng.integers(8, 30))
        large = rng.random(k) < (0.1 if y[i] else 0.6)
        t = pd.DataFrame({"QC_STATUS": "ok",
                          "Cell_Shape_Area": np.where(large, rng.normal(90, 6, k),
                                                      rng.normal(50, 6, k)),
                          **{f"Noise_{j}": rng.normal(0, 1, k) for j in range(n_noise)}})
        t.loc[k] = ["no_nucleus"] + [np.nan] * (1 + n_noise)
        if i == 3:
            t["QC_STATUS"] = "blank_image"
        tables.append(t)
    X = pd.DataFrame({"AGE": 60.0, "LYMPH_COUNT": 5.0, "GENDER": "F", "CELLS": tables},
                     index=[f"P{i:02d}" for i in range(n)])
    return X, y


def test_weighted_quantile_by_hand():
    v = np.array([3.0, 1.0, 2.0, 4.0])
    # equal weights: the inverted-CDF quantile (lower, no interpolation)
    for q in (0.1, 0.25, 0.5, 0.75, 1.0):
        assert weighted_quantile(v, np.ones(4), q) == np.quantile(v, q, method="inverted_cdf")
    # the value 4 holds half the weight: it is the median and above
    assert weighted_quantile(v, np.array([1.0, 1.0, 1.0, 3.0]), 0.5) == 3.0
    assert weighted_quantile(v, np.array([1.0, 1.0, 1.0, 3.0]), 0.51) == 4.0


def test_learns_the_planted_cell_type():
    X, y = planted_cohort()
    est = CellTypeScore().fit(X, y)
    # the only informative feature gets the largest weight, positive: large = reactive
    assert est.coef_.abs().idxmax() == "Cell_Shape_Area" and est.coef_["Cell_Shape_Area"] > 0
    # per cell: large cells score above small ones
    scores = est.cell_scores(X)
    areas = [t.loc[t["QC_STATUS"] == "ok", "Cell_Shape_Area"].to_numpy() for t in X["CELLS"]]
    s, a = np.concatenate(scores), np.concatenate(areas)
    assert roc_auc_score(a > 70, s) > 0.99
    # per patient, out of fold: reactive patients have a larger share of cells above the
    # training cells' median score (about 0.6 of their cells are large, against 0.1)
    out = est.fit_transform(X, y)
    share = out["CellType_ReactiveShare_AboveQ50"]
    ok = share.notna().to_numpy()
    assert roc_auc_score(1 - y[ok], share[ok]) > 0.9
    assert list(out.columns) == list(est.get_feature_names_out()) == [
        "CellType_ReactiveShare_AboveQ50", "CellType_ReactiveShare_AboveQ90",
        "CellType_ReactiveScore_Q10", "CellType_ReactiveScore_Q50", "CellType_ReactiveScore_Q90"]
    # a patient without a usable cell gets NaN, with a reason the caller can see (no cells)
    assert out.loc["P03"].isna().all() and out.drop(index="P03").notna().all().all()


def test_patients_count_equally():
    # one tumoral patient (P01) brings 3000 large cells, more than all reactive patients'
    # large cells together: were each cell weighted alike, "large" would read tumoral (a
    # weight of -0.62 on area, measured with that mutation); with each patient's cells
    # sharing a weight of one, the other 23 patients still say large = reactive
    X, y = planted_cohort(n=24, seed=0, n_noise=0)
    rng = np.random.default_rng(5)
    tables = list(X["CELLS"])
    tables[1] = pd.DataFrame({"QC_STATUS": "ok", "Cell_Shape_Area": rng.normal(90, 6, 3000)})
    assert y[1] == 1
    assert CellTypeScore().fit(X.assign(CELLS=tables), y).coef_["Cell_Shape_Area"] > 0


def test_cut_offs_are_training_quantiles():
    # the cut-off at level q is the q-quantile of the training cells' scores with each
    # patient's cells weighing one (so, over training patients, the share above the 0.5
    # cut-off averages about one half)
    X, y = planted_cohort()
    est = CellTypeScore().fit(X, y)
    scores = [s for s in est.cell_scores(X) if len(s)]
    w = np.concatenate([np.full(len(s), 1 / len(s)) for s in scores])
    np.testing.assert_allclose(est.thresholds_,
                               weighted_quantile(np.concatenate(scores), w, [0.5, 0.9]))
    share = est.transform(X)["CellType_ReactiveShare_AboveQ50"].dropna()
    assert share.mean() == pytest.approx(0.5, abs=0.05)


def test_fit_transform_is_out_of_fold():
    # pure-noise cells and weak regularisation: a cell model scoring its own training
    # patients separates them (in-sample), out-of-fold scores do not. An in-sample
    # fit_transform would fail the first assertion.
    X, y = planted_cohort(n=40, seed=4, n_noise=60)
    X = X.assign(CELLS=[t.drop(columns="Cell_Shape_Area") for t in X["CELLS"]])
    est = CellTypeScore(C=10.0)
    oof = est.fit_transform(X, y)["CellType_ReactiveScore_Q50"]
    insample = est.transform(X)["CellType_ReactiveScore_Q50"]
    ok = oof.notna().to_numpy()
    auc_oof = roc_auc_score(1 - y[ok], oof[ok])
    auc_in = roc_auc_score(1 - y[ok], insample[ok])
    assert auc_in > 0.9
    assert 0.2 < auc_oof < 0.8 and auc_oof < auc_in - 0.2


def test_refuses_what_it_cannot_fit_out_of_fold():
    X, y = planted_cohort(n=6)
    with pytest.raises(ValueError, match="out-of-fold"):
        CellTypeScore(cv=1).fit(X, y)
    with pytest.raises(ValueError, match="two classes labelled 0"):
        CellTypeScore().fit(X, np.array([0, 2] * 3))
    # only 1 reactive patient with usable cells (P01..P05: P03 has none)
    with pytest.raises(ValueError, match="at least 2"):
        CellTypeScore().fit(X.iloc[:4], y[:4])


# The estimator contract (scikit-learn's common checks with the expected failures of a
# cohort-frame input, and the same properties on cohort frames: fit returns self,
# NotFittedError, input and parameters untouched, idempotent, picklable, row order and
# subset invariance, label errors) is checked with the other cohort-frame estimators in
# tests/test_estimator_checks.py.
