"""Training for invariance: each training patient is also seen under other labs' colours.

:class:`ColourAugmented` wraps a candidate: at ``fit`` it appends, for every training
patient, the copies of its row that the cohort frame carries in the :data:`COPIES` column
(the patient's cells under colour shifts, same label), and fits the candidate on all of
them. Only the copies of the patients being fitted are added, so inside cross-validation a
held-out patient's copies never train the model that scores it, and calibration and
thresholds (:class:`~cellfeat.decision.CalibratedDecision`, which wraps this estimator) are
learnt on original patients only. Prediction ignores the copies: a new patient is scored as
it is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..heterogeneity import PIXEL_SCORE

__all__ = ["COPIES", "ColourAugmented", "augmented", "with_copies", "without_copies"]

#: The cohort-frame column holding each patient's colour-shifted copies: a tuple of
#: ``(cells, pixel score)`` pairs, one per shift (empty for a patient without any).
COPIES = "COLOUR_COPIES"


def with_copies(frame: pd.DataFrame, shifted: dict) -> pd.DataFrame:
    """``frame`` with a :data:`COPIES` column from shifted frames of the same patients
    (shift name -> cohort frame, e.g. :func:`pipelines.run.stability.transferred_frames`)."""
    out = frame.copy()
    pix = PIXEL_SCORE in frame
    out[COPIES] = [tuple((f.at[pid, "CELLS"], float(f.at[pid, PIXEL_SCORE]) if pix else np.nan)
                         for f in shifted.values() if pid in f.index)
                   for pid in frame.index]
    return out


class ColourAugmented(ClassifierMixin, BaseEstimator):
    """A candidate fitted on its training patients plus their colour-shifted copies.

    Parameters
    ----------
    estimator : classifier taking a cohort frame
        The candidate (unfitted; cloned at ``fit``).

    Attributes
    ----------
    estimator_ : the fitted candidate
    n_copies_ : int, copies added to the training rows
    classes_ : ndarray

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn.dummy import DummyClassifier
    >>> X = pd.DataFrame({"A": [1.0, 2.0], "CELLS": [pd.DataFrame(), pd.DataFrame()]})
    >>> X[COPIES] = [((pd.DataFrame(), 0.0),), ()]
    >>> ColourAugmented(DummyClassifier()).fit(X, [0, 1]).n_copies_
    1
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y):
        y = np.asarray(y)
        rows, labels = [X.drop(columns=[COPIES], errors="ignore")], [y]
        if COPIES in X:
            depth = max((len(c) for c in X[COPIES]), default=0)
            for k in range(depth):
                has = np.array([len(c) > k for c in X[COPIES]])
                if not has.any():
                    continue
                copy = X.loc[has].drop(columns=[COPIES])
                copy["CELLS"] = [c[k][0] for c in X.loc[has, COPIES]]
                if PIXEL_SCORE in copy:
                    copy[PIXEL_SCORE] = [c[k][1] for c in X.loc[has, COPIES]]
                rows.append(copy)
                labels.append(y[has])
        Xa = pd.concat(rows)
        Xa.index = pd.RangeIndex(len(Xa))  # a copy is another row, not the same patient twice
        self.n_copies_ = len(Xa) - len(X)
        self.estimator_ = clone(self.estimator).fit(Xa, np.concatenate(labels))
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(X)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def augmented(name: str, features=None):
    """Candidate ``name`` (:func:`cellfeat.models.make_pipeline`) as training builds it with
    copies: :class:`ColourAugmented` inside the calibrated decision, so that a patient's
    copies join the candidate's fit and never the inner folds that calibrate on that
    patient."""
    from ..decision import CalibratedDecision
    from .candidates import make_pipeline

    return CalibratedDecision(ColourAugmented(make_pipeline(name, calibrated=False,
                                                            features=features)))


def without_copies(model):
    """``model`` (a :class:`~cellfeat.decision.CalibratedDecision`) with every
    :class:`ColourAugmented` layer replaced by the candidate it fitted, in place; returned.

    Prediction never used the copies (:meth:`ColourAugmented.predict_proba` is its fitted
    candidate's), so the calls are the same to the bit, and a saved model holds only the
    estimator types of one fitted without copies.
    """
    if isinstance(getattr(model, "estimator_", None), ColourAugmented):
        model.estimator_ = model.estimator_.estimator_
    if isinstance(getattr(model, "estimator", None), ColourAugmented):
        model.estimator = model.estimator.estimator
    return model
