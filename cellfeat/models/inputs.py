"""Patient-level inputs: transformers from the cohort frame to one numeric row per patient.

``ClinicalFeatures`` (age, log lymphocyte count, gender), ``CellBagFeatures`` (bag statistics
and heterogeneity scores of the cell features) and ``MILFeatures`` (MI-SVM instance scores
pooled per patient, cross-fitted). Candidates combine them in a ``FeatureUnion``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..bags import BagAggregator
from ..extract import QC_COLUMN
from ..heterogeneity import PIXEL_SCORE, HeterogeneityScores
from ..mil import MISVM, InstanceScoreBagFeatures
from ..zone import in_zone, zone_limit
from .frame import first_cells, long_cells

__all__ = ["CLINICAL_NAMES", "ACQUISITION_NAMES", "ClinicalFeatures", "CellBagFeatures",
           "MILFeatures", "ZoneMeans"]

CLINICAL_NAMES = ("Clinical_Age", "Clinical_LogLymphCount", "Clinical_GenderMale")
#: Bag columns that describe the acquisition, not the cells (see ``CellBagFeatures``).
ACQUISITION_NAMES = ("Bag_NCells", "Bag_QCFailedShare")


class ClinicalFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> ``Clinical_Age``, ``Clinical_LogLymphCount`` (natural log of
    10⁹/L), ``Clinical_GenderMale`` (1/0, NaN if unknown). Missing values stay NaN.

    Parameters
    ----------
    gender : bool, default=True
        Include ``Clinical_GenderMale``; ``clinical-logreg`` lets inner CV decide.
    """

    def __init__(self, *, gender=True):
        self.gender = gender

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        gender = X["GENDER"].astype("string").str.upper()
        count = pd.to_numeric(X["LYMPH_COUNT"], errors="coerce")
        out = pd.DataFrame({
            "Clinical_Age": pd.to_numeric(X["AGE"], errors="coerce").astype(float),
            "Clinical_LogLymphCount": np.log(count.where(count > 0)).astype(float),
            "Clinical_GenderMale": gender.map({"M": 1.0, "F": 0.0}).astype(float),
        }, index=X.index)
        return out if self.gender else out.drop(columns="Clinical_GenderMale")

    def get_feature_names_out(self, input_features=None):
        names = CLINICAL_NAMES if self.gender else CLINICAL_NAMES[:2]
        return np.asarray(names, dtype=object)


class CellBagFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> bag statistics (:class:`BagAggregator`) and heterogeneity scores
    (:class:`HeterogeneityScores`, standardised on the training cells), plus the pixel
    dispersion column when the frame has it.

    Parameters
    ----------
    heterogeneity : bool, default=True
        Add the heterogeneity scores (and the pixel dispersion).
    stats : tuple of str
        Bag statistics of each cell feature (see :class:`BagAggregator`).
    features : list of str, optional
        The cell features to aggregate (default: every numeric column of the cell tables).
        The pixel-dispersion score (``Bag_Heterogeneity_PixelDispersion``, a patient-level
        column of the frame, not a cell feature) enters with the heterogeneity scores when
        the frame has it and ``features`` is None or names it: a list of the inputs that
        pass the colour-stability screen (:mod:`cellfeat.stability`) leaves it out unless
        it passed.
    acquisition : bool, default=False
        Also output ``Bag_NCells`` and ``Bag_QCFailedShare``: how many images the analyser
        saved for the patient and the share that segmentation rejected. They describe the
        acquisition, not the cells: the number of saved images tracks the lymphocyte count
        and depends on another lab's analyser settings, so they are not model inputs by
        default; they stay QC information (``N_CELLS``, ``N_CELLS_USED`` of the scores).
    """

    def __init__(self, *, heterogeneity=True, stats=("Mean", "Std", "Q10", "Q50", "Q90"),
                 features=None, acquisition=False):
        self.heterogeneity = heterogeneity
        self.stats = stats
        self.features = features
        self.acquisition = acquisition

    def fit(self, X, y=None):
        cells = long_cells(X) if self.heterogeneity else first_cells(X)
        features = (None if self.features is None else
                    [f for f in self.features if f != PIXEL_SCORE])
        pixel = self.features is None or PIXEL_SCORE in self.features
        self.aggregator_ = BagAggregator(stats=self.stats, features=features).fit(cells)
        if self.heterogeneity:
            ok = cells[cells[QC_COLUMN] == "ok"]
            self.scores_ = HeterogeneityScores(features=self.aggregator_.features_).fit(ok)
        self.names_ = [n for n in self.aggregator_.get_feature_names_out()
                       if self.acquisition or n not in ACQUISITION_NAMES]
        if self.heterogeneity:
            self.names_ += list(self.scores_.get_feature_names_out())
            if PIXEL_SCORE in X and pixel:
                self.names_.append(PIXEL_SCORE)
        return self

    def _bag_stats(self, X) -> pd.DataFrame:
        """:class:`BagAggregator`'s table computed patient by patient with NumPy (no long
        table): a patient's statistics depend on its own cells only."""
        feats = self.aggregator_.features_
        rows = np.full((len(X), len(self.stats) * len(feats) + 2), np.nan)
        qs = [int(s[1:]) / 100 for s in self.stats if s.startswith("Q")]
        for i, cells in enumerate(X["CELLS"]):
            n = len(cells)
            ok = (cells[QC_COLUMN] == "ok").to_numpy() if n else np.zeros(0, bool)
            rows[i, -2:] = (n, 1.0 - ok.sum() / n if n else np.nan)
            if not ok.any():
                continue
            v = cells.loc[ok, feats].to_numpy(float)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                per = {"Mean": np.nanmean(v, axis=0), "Std": np.nanstd(v, axis=0)}
                if qs:
                    per.update(zip([s for s in self.stats if s.startswith("Q")],
                                   np.nanquantile(v, qs, axis=0)))
            rows[i, :-2] = np.concatenate([per[s] for s in self.stats])
        out = pd.DataFrame(rows, index=X.index,
                           columns=list(self.aggregator_.get_feature_names_out()))
        out["Bag_NCells"] = out["Bag_NCells"].fillna(0)
        return out

    def transform(self, X):
        check_is_fitted(self, "aggregator_")
        parts = [self._bag_stats(X)]
        if self.heterogeneity:
            cells = long_cells(X)
            ok = cells[cells[QC_COLUMN] == "ok"]
            parts.append(self.scores_.transform(ok).reindex(X.index))
        out = pd.concat(parts, axis=1).reindex(X.index)
        out["Bag_NCells"] = out["Bag_NCells"].fillna(0)
        if self.heterogeneity and PIXEL_SCORE in self.names_:
            out[PIXEL_SCORE] = X[PIXEL_SCORE].astype(float) if PIXEL_SCORE in X else np.nan
        return out[self.names_].astype(float)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.names_, dtype=object)


class ZoneMeans(TransformerMixin, BaseEstimator):
    """Cohort frame -> the per-patient mean of each cell feature *inside the overlap zone*,
    and the zone indicator: images speak only where the count cannot decide.

    ``fit`` learns the zone's limit from the training patients (:func:`cellfeat.zone.zone_limit`)
    and standardises each mean on the training patients in the zone (median and SD); the
    output is ``Zone_Overlap`` (1 in the zone, else 0) and ``ZoneMean_<feature>`` =
    ``Zone_Overlap`` × the standardised mean (0 where the mean is unknown), so a linear
    model on top fits an image term for zone patients only and a count term for all.

    Parameters
    ----------
    features : list of str, optional
        The cell features whose means enter (default: every numeric column).
    """

    def __init__(self, *, features=None):
        self.features = features

    def fit(self, X, y):
        count = pd.to_numeric(X["LYMPH_COUNT"], errors="coerce").to_numpy(float)
        y = np.asarray(y)
        self.limit_ = zone_limit(count, y == np.unique(y)[-1])
        self.means_ = CellBagFeatures(heterogeneity=False, stats=("Mean",),
                                      features=self.features).fit(X)
        m = self.means_.transform(X).to_numpy(float)[self._zone(X)]
        med = np.nanmedian(m, axis=0) if len(m) else np.zeros(m.shape[1])
        sd = np.nanstd(m, axis=0) if len(m) else np.ones(m.shape[1])
        self.center_ = np.where(np.isfinite(med), med, 0.0)
        self.scale_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        return self

    def _zone(self, X) -> np.ndarray:
        return in_zone(pd.to_numeric(X["LYMPH_COUNT"], errors="coerce"), self.limit_)

    def transform(self, X):
        check_is_fitted(self, "limit_")
        z = self._zone(X).astype(float)
        m = (self.means_.transform(X).to_numpy(float) - self.center_) / self.scale_
        m = np.where(np.isfinite(m), m, 0.0) * z[:, None]
        return pd.DataFrame(np.column_stack([z, m]), index=X.index,
                            columns=self.get_feature_names_out())

    def get_feature_names_out(self, input_features=None):
        names = [n.replace("Bag_Mean_", "ZoneMean_", 1) for n in self.means_.names_]
        return np.asarray(["Zone_Overlap", *names], dtype=object)


class MILFeatures(TransformerMixin, BaseEstimator):
    """Cohort frame -> MIL instance-score bag features (:class:`InstanceScoreBagFeatures`).

    Usable cells' features are imputed with the training medians; a patient with no usable
    cell gets NaN scores. ``fit_transform`` is cross-fitted (see
    :class:`InstanceScoreBagFeatures`). ``estimator`` is any bag classifier of
    :mod:`cellfeat.mil` (default ``MISVM(random_state=0)``; ``SIL`` with a tree learner is
    the single-instance baseline)."""

    def __init__(self, estimator=None, *, cv=3):
        self.estimator = estimator
        self.cv = cv

    def _bags(self, X):
        bags, has = [], []
        for cells in X["CELLS"]:
            ok = cells[cells[QC_COLUMN] == "ok"] if len(cells) else cells
            if len(ok):
                v = ok[self.features_].to_numpy(float)
                v = np.where(np.isfinite(v), v, self.medians_)
                bags.append(v)
                has.append(True)
            else:
                has.append(False)
        return bags, np.array(has, bool)

    def _setup(self, X):
        cells = long_cells(X)
        ok = cells[cells[QC_COLUMN] == "ok"]
        self.features_ = [c for c in ok.columns if c not in ("ID", QC_COLUMN)
                          and pd.api.types.is_numeric_dtype(ok[c])]
        med = np.nanmedian(ok[self.features_].to_numpy(float), axis=0)
        self.medians_ = np.where(np.isfinite(med), med, 0.0)

    def _wrap(self, X, has, values):
        out = np.full((len(X), 4), np.nan)
        out[has] = values
        return pd.DataFrame(out, index=X.index, columns=InstanceScoreBagFeatures.names)

    def fit(self, X, y):
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y):
        self._setup(X)
        bags, has = self._bags(X)
        self.stack_ = InstanceScoreBagFeatures(self.estimator or MISVM(random_state=0),
                                               cv=self.cv)
        return self._wrap(X, has, self.stack_.fit_transform(bags, np.asarray(y)[has]))

    def transform(self, X):
        check_is_fitted(self, "stack_")
        bags, has = self._bags(X)
        return self._wrap(X, has, self.stack_.transform(bags) if bags else np.empty((0, 4)))

    def cell_scores(self, X) -> list[np.ndarray]:
        """Each patient's MI-SVM cell scores, aligned with its usable (QC "ok") cell rows;
        an empty array for a patient without usable cells. High = tumoral-looking."""
        check_is_fitted(self, "stack_")
        bags, has = self._bags(X)
        scores = iter(self.stack_.estimator_.instance_decision_function(bags) if bags else [])
        return [next(scores) if h else np.empty(0) for h in has]

    def get_feature_names_out(self, input_features=None):
        return np.asarray(InstanceScoreBagFeatures.names, dtype=object)

