"""cellfeat.models and cellfeat.evaluation: candidates are ordinary sklearn estimators."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from cellfeat.data import load_cohort, read_image
from cellfeat.evaluation import nested_cv
from cellfeat.extract import CellFeatureExtractor, nucleus_crop
from cellfeat.models import (CANDIDATES, CNN_CANDIDATES, ClinicalFeatures, available_candidates,
                             cohort_frame, make_pipeline)
from cellfeat.segment import segment_nucleus


@pytest.fixture(scope="module")
def frame(synthetic_root):
    c = load_cohort(synthetic_root)
    rows, crops = [], {}
    ex = CellFeatureExtractor().fit()
    for pid, files in c.images.items():
        t = ex.transform(files)
        t.insert(0, "ID", pid)
        rows.append(t)
        patch = np.zeros((len(files), 32, 32, 3), np.uint8)
        for j, f in enumerate(files):
            img = read_image(f)
            seg = segment_nucleus(img)
            if seg.ok:
                patch[j] = nucleus_crop(img, seg)
        crops[pid] = patch
    cells = pd.concat(rows, ignore_index=True)
    return cohort_frame(c.clinical, cells, crops=crops).loc[c.labelled]


# the CNN candidates train a network for about 30 s: the full tier only
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in CNN_CANDIDATES
                                  else n for n in CANDIDATES])
def test_candidates_fit_predict_clone(frame, name):
    if name not in available_candidates():
        pytest.skip(f"{name} needs torch")
    y = frame["LABEL"].astype(int).to_numpy()
    pipe = make_pipeline(name, calibrated=False)  # the calibrated wrapper: test_evaluation
    fitted = clone(pipe).fit(frame, y)
    proba = fitted.predict_proba(frame)
    assert proba.shape == (len(frame), 2) and np.allclose(proba.sum(axis=1), 1)
    assert set(fitted.predict(frame)) <= {0, 1}


def test_cross_val_score_works_on_cohort_frame(frame):
    y = frame["LABEL"].astype(int).to_numpy()
    scores = cross_val_score(make_pipeline("meanstd-logreg"), frame, y, cv=3,
                             scoring="balanced_accuracy")
    # the synthetic classes differ in nucleus size spread by construction, but 15 % of
    # tumoral patients look reactive and the folds hold 8 patients: well above chance (0.5)
    # is what 24 patients can show
    assert len(scores) == 3 and scores.mean() > 0.6


def test_clinical_features_by_hand():
    X = pd.DataFrame({"AGE": [70.0, np.nan], "LYMPH_COUNT": [np.e, -1.0],
                      "GENDER": ["m", None], "CELLS": [None, None]})
    out = ClinicalFeatures().transform(X)
    assert out.iloc[0].tolist() == [70.0, 1.0, 1.0]
    assert out.iloc[1].isna().all()


def test_unknown_candidate():
    with pytest.raises(ValueError, match="unknown candidate"):
        make_pipeline("magic")


@pytest.mark.slow  # about 17 s
def test_nested_cv_on_cohort_frames(frame):
    """Real candidates through the rule on the synthetic cohort (image signal built in:
    nucleus-size spread differs by class; clinical signal too: tumoral patients older,
    with higher counts). Every held-out patient gets the chosen candidate's call."""
    y = frame["LABEL"].astype(int).to_numpy()
    cands = [(n, make_pipeline(n, calibrated=False)) for n in ("clinical-logreg", "meanstd-logreg")]
    res = nested_cv(cands, frame, y, folds=3, repeats=1, inner_folds=3)
    s = res.summary()
    assert set(s.index) == {"clinical-logreg", "meanstd-logreg", "nested", "nested (no rails)"}
    assert set(res.chosen) <= {"clinical-logreg", "meanstd-logreg"} and len(res.chosen) == 3
    chosen_rows = res.fold_scores[res.fold_scores["chosen"]]
    assert chosen_rows["candidate"].tolist() == res.chosen
    assert s.loc["meanstd-logreg", "balanced_accuracy"] > 0.7  # synthetic image signal
    assert s.loc["nested", "balanced_accuracy"] > 0.7


def test_bag_statistics_equal_the_aggregator(frame):
    """CellBagFeatures' per-patient NumPy statistics = BagAggregator on the long table."""
    from cellfeat.bags import BagAggregator
    from cellfeat.models import CellBagFeatures
    from cellfeat.models.frame import long_cells

    fast = CellBagFeatures(heterogeneity=False).fit(frame).transform(frame)
    slow = BagAggregator().fit(long_cells(frame)).transform(long_cells(frame))
    pd.testing.assert_frame_equal(fast, slow.reindex(frame.index)[fast.columns].astype(float),
                                  check_names=False, rtol=1e-9)


def test_clinical_logreg_drops_a_useless_gender():
    """Gender drawn independently of the label: inner CV should leave it out."""
    from cellfeat.models import ClinicalLogReg

    rng = np.random.default_rng(0)
    age = rng.normal(60, 12, 200)
    y = (rng.random(200) < 1 / (1 + np.exp(-(age - 60) / 6))).astype(int)
    X = pd.DataFrame({"AGE": age, "LYMPH_COUNT": np.exp(rng.normal(1.5, 0.5, 200)),
                      "GENDER": rng.choice(["M", "F"], 200)})
    m = ClinicalLogReg().fit(X, y)
    assert m.gender_ is False and m.features_ == ["Clinical_Age", "Clinical_LogLymphCount"]


def test_mil_cell_scores_align_with_usable_cells(frame):
    from cellfeat.models import MILFeatures

    y = frame["LABEL"].astype(int).to_numpy()
    mil = MILFeatures().fit(frame, y)
    scores = mil.cell_scores(frame)
    for cells, s in zip(frame["CELLS"], scores):
        assert len(s) == int((cells["QC_STATUS"] == "ok").sum())
    # tumoral patients' most tumoral-looking cell scores higher on average
    top = np.array([s.max() for s in scores])
    assert top[y == 1].mean() > top[y == 0].mean()


@pytest.mark.parametrize("name", [n for n in CANDIDATES if n not in CNN_CANDIDATES])
def test_acquisition_figures_are_not_model_inputs(frame, name):
    """Issue 19: how many images the analyser saved and how many segmentation rejected
    (Bag_NCells, Bag_QCFailedShare) track the count and another lab's analyser settings.
    Adding QC-failed cells to every bag changes both, and must change no call."""
    y = frame["LABEL"].astype(int).to_numpy()
    fitted = make_pipeline(name, calibrated=False).fit(frame, y)
    more = frame.copy()
    more["CELLS"] = [pd.concat([c, c.head(3).assign(QC_STATUS="no_nucleus")], ignore_index=True)
                     for c in frame["CELLS"]]
    np.testing.assert_allclose(fitted.predict_proba(more), fitted.predict_proba(frame),
                               rtol=1e-12, atol=0)


class _Fixed:
    """A fitted-decision stand-in: P(tumoral) from a column, thresholds as training writes."""

    def __init__(self, column, threshold=0.692, triage=0.3):
        self.column, self.threshold_, self.triage_threshold_ = column, threshold, triage

    def predict_proba(self, X):
        p = X[self.column].to_numpy(float)
        return np.column_stack([1 - p, p])


def test_routed_calls_let_the_count_decide_above_the_zone():
    """Issue 28 point 1, by hand: three patients with cells, counts 5, 9 and 9 against a zone
    limit of 7.7; the cell model says 0.1, 0.1 and 0.9, the clinical model 0.8, 0.8 and 0.5.
    In the zone the cell model's 0.1 stands (reactive, spared); above it P(tumoral) is
    max(cells, clinical) = 0.8 and 0.9 and both go to cytometry whatever P says. Without the
    zone limit (the calls before issue 28) the second patient was reactive at 0.1 and spared
    cytometry above the zone."""
    from cellfeat.models import routed_calls

    cells = pd.DataFrame({"QC_STATUS": ["ok"]})
    X = pd.DataFrame({"AGE": [70.0] * 3, "LYMPH_COUNT": [5.0, 9.0, 9.0], "GENDER": ["F"] * 3,
                      "CELLS": [cells] * 3, "P_CELLS": [0.1, 0.1, 0.9],
                      "P_CLIN": [0.8, 0.8, 0.5]}, index=["a", "b", "c"])
    models = {"main": _Fixed("P_CELLS"), "clinical": _Fixed("P_CLIN")}
    out = routed_calls(models, X, zone_limit=7.7)
    assert out["PROBA"].tolist() == [0.1, 0.8, 0.9]
    assert out["LABEL"].tolist() == [0, 1, 1]
    assert out["CYTOMETRY"].tolist() == [0, 1, 1]
    assert out["FLOOR"].tolist() == [False, True, False]
    bare = routed_calls(models, X)
    assert bare["PROBA"].tolist() == [0.1, 0.1, 0.9] and bare["CYTOMETRY"].tolist() == [0, 0, 1]
