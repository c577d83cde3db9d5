"""Tests of cellfeat.models.invariance: colour-shifted copies join the training rows of their
own patients only, and teach the model to ignore what the shifts move."""

import numpy as np
import pandas as pd

from cellfeat.models import make_pipeline
from cellfeat.models.invariance import COPIES, ColourAugmented, with_copies


def _cohort(n=80, seed=0):
    """Two cell features: ``Nucleus_Shape_Area`` carries the label, ``Nucleus_Colour_OD_R_RelRBC``
    carries it too but is also what a colour shift moves."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    cells = [pd.DataFrame({"QC_STATUS": ["ok"] * 5,
                           "Nucleus_Shape_Area": rng.normal(100 + 3 * yi, 5, 5),
                           "Nucleus_Colour_OD_R_RelRBC": rng.normal(1.0 + 0.1 * yi, 0.05, 5)})
             for yi in y]
    frame = pd.DataFrame({"AGE": 60.0, "LYMPH_COUNT": 5.0, "GENDER": "F"},
                         index=[f"P{i}" for i in range(n)])
    frame["CELLS"] = cells
    return frame, y


def _shifted(frame, delta):
    f = frame.copy()
    f["CELLS"] = [c.assign(Nucleus_Colour_OD_R_RelRBC=c["Nucleus_Colour_OD_R_RelRBC"] + delta)
                  for c in frame["CELLS"]]
    return f


def test_copies_train_only_their_own_patients():
    frame, y = _cohort()
    X = with_copies(frame, {"a": _shifted(frame, 0.2), "b": _shifted(frame, -0.2)})
    assert all(len(c) == 2 for c in X[COPIES])
    m = ColourAugmented(make_pipeline("mean-ridge", calibrated=False)).fit(X.iloc[:30], y[:30])
    assert m.n_copies_ == 60  # the 30 patients fitted, two copies each, no one else's
    # a new patient is scored as it is: its copies (or their absence) change nothing
    p = m.predict_proba(X.iloc[30:])
    np.testing.assert_array_equal(p, m.predict_proba(frame.iloc[30:]))
    # without copies it is the plain candidate
    plain = ColourAugmented(make_pipeline("mean-ridge", calibrated=False)).fit(frame, y)
    assert plain.n_copies_ == 0


def test_copies_shrink_what_the_shift_moves():
    frame, y = _cohort()
    X = with_copies(frame, {"a": _shifted(frame, 0.15), "b": _shifted(frame, -0.15)})
    names = ["Nucleus_Shape_Area", "Nucleus_Colour_OD_R_RelRBC"]
    plain = make_pipeline("mean-ridge", calibrated=False, features=names).fit(frame, y)
    aug = ColourAugmented(make_pipeline("mean-ridge", calibrated=False, features=names)).fit(X, y)
    coef = lambda m: dict(zip(names, m[-1][-1].coef_[0]))  # noqa: E731
    # the colour feature's weight falls; the shift moves the call less
    assert abs(coef(aug.estimator_)["Nucleus_Colour_OD_R_RelRBC"]) < \
        0.5 * abs(coef(plain)["Nucleus_Colour_OD_R_RelRBC"])
    move = lambda m: np.abs(m.predict_proba(_shifted(frame, 0.15))[:, 1]  # noqa: E731
                            - m.predict_proba(frame)[:, 1]).mean()
    assert move(aug) < move(plain)


def test_without_copies_keeps_every_call_to_the_bit():
    """The saved model drops the wrapper (pipelines.run.stages.stage_train): its calls must be
    those of the model trained with copies, and no ColourAugmented may remain to be saved."""
    from cellfeat.decision import CalibratedDecision
    from cellfeat.models.invariance import without_copies

    frame, y = _cohort()
    X = with_copies(frame, {"a": _shifted(frame, 0.2)})
    m = CalibratedDecision(ColourAugmented(make_pipeline("mean-ridge", calibrated=False)),
                           cv=3, repeats=1).fit(X, y)
    before = m.predict_proba(frame)
    fitted_candidate = m.estimator_.estimator_
    without_copies(m)
    assert m.estimator_ is fitted_candidate
    assert not isinstance(m.estimator, ColourAugmented)
    np.testing.assert_array_equal(m.predict_proba(frame), before)


def test_augmented_calibrates_on_original_patients_only():
    """The candidate with copies is calibrated out of fold on the patients themselves: a
    patient's copy may train the candidate, never sit in the inner folds that calibrate it
    (the training check once wrapped the copies outside the calibrated decision, and the
    copies became rows of its inner folds)."""
    from cellfeat.models.invariance import augmented

    frame, y = _cohort()
    X = with_copies(frame, {"a": _shifted(frame, 0.2), "b": _shifted(frame, -0.2)})
    m = augmented("mean-ridge").fit(X, y)
    assert m.oof_proba_.shape[1] == len(frame)      # one out-of-fold call per patient
    assert m.estimator_.n_copies_ == 2 * len(frame)  # the final fit did see the copies
    # the other nesting calibrates on patients and their copies: 3 rows per patient
    wrong = ColourAugmented(make_pipeline("mean-ridge")).fit(X, y)
    assert wrong.estimator_.oof_proba_.shape[1] == 3 * len(frame)
