"""Per-patient aggregation of cell rows: a diagnosis is made for a bag of cells.

:class:`BagAggregator` turns a long cell table (one row per image, a bag ID column, a QC
column and the cell features) into one row per patient: mean, standard deviation and the
10/50/90 % quantiles of each feature over the patient's usable cells, the number of cells
and the share that failed QC. Names follow ``Bag_<Stat>_<feature>``, e.g.
``Bag_Std_Nucleus_Shape_Area``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["BagAggregator", "STATS"]

STATS = ("Mean", "Std", "Q10", "Q50", "Q90")


class BagAggregator(TransformerMixin, BaseEstimator):
    """Aggregate a long cell table into one row of bag statistics per patient.

    Parameters
    ----------
    bag_col : str, default="ID"
        Column with the bag (patient) ID.
    qc_col : str or None, default="QC_STATUS"
        Column whose value is "ok" for a usable cell; other rows only count towards
        ``Bag_NCells`` and ``Bag_QCFailedShare``. None: every row is usable.
    features : list of str, optional
        Feature columns; default every numeric column other than ``bag_col`` and ``qc_col``
        (learnt at ``fit`` as ``features_``).
    stats : tuple of str, default=("Mean", "Std", "Q10", "Q50", "Q90")

    Input
    -----
    A DataFrame with ``bag_col`` (and ``qc_col``) plus feature columns, or a 2-D numeric
    array whose first column is the (numeric) bag ID, then no QC column; NaN features are
    skipped by the statistics.

    Output
    ------
    DataFrame indexed by bag ID (first-appearance order), columns ``Bag_<Stat>_<feature>``
    for each feature and stat, then ``Bag_NCells`` and ``Bag_QCFailedShare``.

    Notes
    -----
    A bag with one usable cell has ``Std`` = 0 by contract (population standard deviation,
    ddof=0, is defined for one value), not NaN. A bag with no usable cell has NaN
    statistics, ``Bag_NCells`` counting its rows and ``Bag_QCFailedShare`` = 1: the reason
    is in the cell table's QC column.

    Examples
    --------
    >>> import pandas as pd
    >>> cells = pd.DataFrame({"ID": ["a", "a", "b"], "QC_STATUS": ["ok", "ok", "ok"],
    ...                       "size": [1.0, 3.0, 5.0]})
    >>> BagAggregator(stats=("Mean", "Std")).fit_transform(cells).to_dict("index")
    {'a': {'Bag_Mean_size': 2.0, 'Bag_Std_size': 1.0, 'Bag_NCells': 2, 'Bag_QCFailedShare': 0.0}, 'b': {'Bag_Mean_size': 5.0, 'Bag_Std_size': 0.0, 'Bag_NCells': 1, 'Bag_QCFailedShare': 0.0}}
    """

    def __init__(self, *, bag_col="ID", qc_col="QC_STATUS", features=None, stats=STATS):
        self.bag_col = bag_col
        self.qc_col = qc_col
        self.features = features
        self.stats = stats

    def _frame(self, X, reset: bool) -> tuple[pd.DataFrame, str | None]:
        if isinstance(X, pd.DataFrame):
            if self.bag_col not in X.columns:
                raise ValueError(f"cell table has no bag column {self.bag_col!r}")
            qc = self.qc_col if self.qc_col in X.columns else None
            return X, qc
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_features=2,
                          ensure_all_finite="allow-nan")
        df = pd.DataFrame(X[:, 1:], columns=[f"x{i}" for i in range(X.shape[1] - 1)])
        df.insert(0, self.bag_col, X[:, 0])
        return df, None

    def fit(self, X, y=None):
        unknown = set(self.stats) - set(STATS)
        if unknown:
            raise ValueError(f"unknown stats {sorted(unknown)}; choose from {STATS}")
        df, qc = self._frame(X, reset=True)
        if self.features is not None:
            missing = [f for f in self.features if f not in df.columns]
            if missing:
                raise ValueError(f"cell table lacks feature columns {missing[:5]}")
            self.features_ = list(self.features)
        else:
            skip = {self.bag_col, qc}
            self.features_ = [c for c in df.columns if c not in skip
                              and pd.api.types.is_numeric_dtype(df[c])]
        return self

    def transform(self, X) -> pd.DataFrame:
        check_is_fitted(self, "features_")
        df, qc = self._frame(X, reset=False)
        bags = pd.Index(pd.unique(df[self.bag_col]), name=self.bag_col)
        usable = (df[qc] == "ok").to_numpy() if qc else np.ones(len(df), bool)
        good = df.loc[usable, [self.bag_col, *self.features_]]
        grouped = good.groupby(self.bag_col, sort=False)[self.features_]
        parts = []
        for stat in self.stats:
            if stat == "Mean":
                v = grouped.mean()
            elif stat == "Std":
                v = grouped.std(ddof=0)
            else:
                v = grouped.quantile(int(stat[1:]) / 100)
            parts.append(v.reindex(bags).add_prefix(f"Bag_{stat}_"))
        out = pd.concat(parts, axis=1)
        counts = df.groupby(self.bag_col, sort=False).size().reindex(bags)
        n_ok = pd.Series(usable, index=df.index).groupby(df[self.bag_col], sort=False).sum()
        out["Bag_NCells"] = counts.astype(int)
        out["Bag_QCFailedShare"] = 1.0 - n_ok.reindex(bags).to_numpy() / counts.to_numpy()
        out.index.name = self.bag_col
        return out

    def get_feature_names_out(self, input_features=None):
        names = [f"Bag_{s}_{f}" for s in self.stats for f in self.features_]
        return np.asarray(names + ["Bag_NCells", "Bag_QCFailedShare"], dtype=object)
