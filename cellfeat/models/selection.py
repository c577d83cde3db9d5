"""The selection rule: which candidate the saved model is, decided on training patients only."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..decision import CalibratedDecision, call
from ..zone import zone_limit
from .routing import routed_calls

__all__ = ["ModelChoice", "one_se_choice"]


def one_se_choice(losses: dict, order) -> tuple[str, dict]:
    """The simplest candidate whose loss is within one standard error of the best's.

    ``losses`` maps a name to its per-patient losses (the same patients for every name);
    ``order`` lists the names simplest first. The best is the lowest mean loss; each
    candidate's gap to it is the mean of its per-patient differences d_i = l_i − l_best,i,
    with standard error SE = sd(d) / √n (paired: the patients are shared, so the noise
    they share cancels). The first candidate in ``order`` with mean(d) ≤ SE wins: a
    simpler model is kept unless the data say, by more than one SE, that a more complex
    one predicts better (the one-standard-error rule of Breiman et al. 1984, on paired
    differences). Returns the name and, per name, ``{"loss", "gap", "gap_se"}``.

    Examples
    --------
    >>> l = {"simple": np.array([0.5, 0.5, 0.5, 0.5]), "complex": np.array([0.4, 0.6, 0.3, 0.6])}
    >>> one_se_choice(l, ["simple", "complex"])[0]  # gap 0.025, SE 0.075: keep the simple
    'simple'
    >>> l["complex"] = l["complex"] - 0.2
    >>> one_se_choice(l, ["simple", "complex"])[0]
    'complex'
    """
    order = [n for n in order if n in losses]
    means = {n: float(np.mean(losses[n])) for n in order}
    best = min(order, key=lambda n: (means[n], order.index(n)))
    table = {}
    for n in order:
        d = np.asarray(losses[n], float) - np.asarray(losses[best], float)
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        table[n] = {"loss": means[n], "gap": float(d.mean()), "gap_se": se}
    chosen = next(n for n in order if table[n]["gap"] <= table[n]["gap_se"] + 1e-12)
    return chosen, table


class ModelChoice(ClassifierMixin, BaseEstimator):
    """The selection rule as one estimator: what ``cellfeat train`` saves and what the
    nested CV of :func:`cellfeat.evaluation.nested_cv` evaluates in every outer fold.

    Every candidate is wrapped in :class:`~cellfeat.decision.CalibratedDecision` with the
    *same* inner folds (``repeats`` × ``cv``, ``random_state``) and fitted. The rule
    compares the candidates listed in ``eligible`` by the log-loss of their calibrated
    inner out-of-fold P(tumoral), patient by patient, and keeps the simplest one within one
    standard error of the best (:func:`one_se_choice`; list candidates simplest first, as
    :data:`~cellfeat.models.CANDIDATES` does). Log-loss is a proper scoring rule: unlike
    balanced accuracy at one threshold it rewards every patient's probability, so it moves
    less from one split to the next.

    When the inputs are a cohort frame, calls are *routed*
    (:func:`~cellfeat.models.routing.routed_calls`): the chosen model for patients with
    every input, the ``fallbacks`` for patients without usable cells or without age and
    count. ``zone_limit_`` is the top of the overlap zone learnt from the training patients
    (:func:`cellfeat.zone.zone_limit`; None when the inputs carry no count). Routed calls
    also carry the rails of :mod:`cellfeat.models.routing`: above the zone limit the
    clinical fallback's P(tumoral) is a floor and every patient is sent to cytometry, and a
    patient beyond the bar of ``atypicality_`` is sent too; ``calls(X, rails=False)`` gives
    the calls without them, for paired comparison.

    Parameters
    ----------
    candidates : list of (name, estimator)
    eligible : list of str, optional
        Names the rule may pick (default: all); others are fitted for comparison only.
    fallbacks : dict, optional
        Route name (``"clinical"``, ``"image"``) -> candidate name. Without it every row
        goes to the chosen model.
    cv, repeats, random_state, target_sensitivity : see ``CalibratedDecision``
    atypicality : :class:`~cellfeat.atypia.Atypicality`, optional
        Unfitted; fitted on the training patients beside the candidates (cohort frames
        only).

    Attributes
    ----------
    models_ : dict of name -> fitted CalibratedDecision
    chosen_ : str
    selection_ : dict of name -> {"loss", "gap", "gap_se"} (inner, for ranking only)
    routes_ : dict of route -> fitted CalibratedDecision (``"main"`` is the chosen one)
    zone_limit_ : float or None
    atypicality_ : fitted Atypicality or None
    """

    def __init__(self, candidates, *, eligible=None, fallbacks=None, cv=3, repeats=2,
                 random_state=0, target_sensitivity=0.95, atypicality=None):
        self.candidates = candidates
        self.atypicality = atypicality
        self.eligible = eligible
        self.fallbacks = fallbacks
        self.cv = cv
        self.repeats = repeats
        self.random_state = random_state
        self.target_sensitivity = target_sensitivity

    def fit(self, X, y):
        names = [n for n, _ in self.candidates]
        eligible = list(self.eligible) if self.eligible is not None else names
        fallbacks = dict(self.fallbacks or {})
        unknown = [n for n in [*eligible, *fallbacks.values()] if n not in names]
        if unknown or not eligible:
            raise ValueError(f"candidates {unknown or eligible} not among {names}")
        self.models_ = {n: CalibratedDecision(est, cv=self.cv, repeats=self.repeats,
                                              random_state=self.random_state,
                                              target_sensitivity=self.target_sensitivity
                                              ).fit(X, y) for n, est in self.candidates}
        self.chosen_, self.selection_ = one_se_choice(
            {n: self.models_[n].inner_losses_ for n in eligible}, names)
        self.model_ = self.models_[self.chosen_]
        self.classes_ = self.model_.classes_
        self.routes_ = {"main": self.model_, **{r: self.models_[n] for r, n in fallbacks.items()}}
        self.zone_limit_ = None
        if isinstance(X, pd.DataFrame) and "LYMPH_COUNT" in X:
            self.zone_limit_ = zone_limit(pd.to_numeric(X["LYMPH_COUNT"], errors="coerce"),
                                          np.asarray(y) == self.classes_[1])
        self.atypicality_ = None
        if self.atypicality is not None and isinstance(X, pd.DataFrame) and "CELLS" in X:
            self.atypicality_ = clone(self.atypicality).fit(X, y)
        return self

    def _routed(self, X) -> bool:
        return bool(self.fallbacks) and isinstance(X, pd.DataFrame) and "CELLS" in X

    def calls(self, X, *, rails: bool = True) -> pd.DataFrame:
        """Routed calls of each patient: ``ROUTE``, ``PROBA``, ``THRESHOLD``,
        ``TRIAGE_THRESHOLD``, ``LABEL``, ``CYTOMETRY``, ``FLOOR``, ``ABOVE_ZONE``,
        ``ATYPICAL`` (see ``routed_calls``); ``rails=False``: without the count floor, the
        zone's triage rail and the atypicality flag."""
        check_is_fitted(self, "model_")
        if self._routed(X):
            if not rails:
                return routed_calls(self.routes_, X)
            return routed_calls(self.routes_, X, zone_limit=self.zone_limit_,
                                atypicality=getattr(self, "atypicality_", None))
        p = self.model_.predict_proba(X)[:, 1]
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame({"ROUTE": "main", "PROBA": p, "THRESHOLD": self.model_.threshold_,
                             "TRIAGE_THRESHOLD": self.model_.triage_threshold_,
                             "LABEL": call(p, self.model_.threshold_).astype(int),
                             "CYTOMETRY": call(p, self.model_.triage_threshold_).astype(int)},
                            index=index)

    def predict_proba(self, X):
        p = self.calls(X)["PROBA"].to_numpy()
        return np.column_stack([1 - p, p])

    def predict(self, X):
        label = self.calls(X)["LABEL"].to_numpy()
        if (label < 0).any():
            raise ValueError("some patients have no input any model can use (no usable "
                             "cell and no age or count): no call")
        return self.classes_[label]

    def triage(self, X) -> np.ndarray:
        return np.where(self.calls(X)["CYTOMETRY"].to_numpy() == 1, "cytometry", "none")
