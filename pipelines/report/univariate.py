"""Which features carry signal: patient-level, out-of-fold univariate AUC with its spread.

For every patient-level feature (the bag statistics of every cell feature, e.g.
``Bag_Mean_Cell_Shape_Area`` and ``Bag_Std_Cell_Shape_Area``, and every bag feature such as
``Bag_Heterogeneity_PixelDispersion``) :func:`univariate_auc` answers "how well does this
one number, alone, separate tumoral from reactive patients it was not fitted on?".

A single feature has no parameter but its *direction* (is a high value tumoral or
reactive?). Reading the direction off all patients and then quoting max(AUC, 1 − AUC) is
optimistic: a feature with no signal still scores above 0.5. Here the direction is
learnt on the training patients of each fold (the side of 0.5 of the training AUC) and
applied to the held-out patients; their scores are pooled over the folds of one repeat
into one out-of-fold AUC, and the folds are repeated with other shuffles. So a feature
without signal has an out-of-fold AUC around or below 0.5. When the direction never
flips, the pooled AUC equals the in-sample one; how far it can be trusted shows in the
spread of the AUC over the held-out folds (each about a fifth of the patients), which
is what a new cohort of that size would see. The report reads:

``AUC_OOF``
    mean over repeats of the pooled out-of-fold AUC (orientation learnt in-fold), in
    [0, 1];
``AUC_OOF_SD``, ``AUC_OOF_Q05``, ``AUC_OOF_Q95``
    standard deviation and 5/95 % quantiles of the AUC of each held-out fold, over all
    folds and repeats;
``DIRECTION``
    ``"higher in tumoral"`` or ``"lower in tumoral"``, on all patients;
``DIRECTION_AGREEMENT``
    share of training folds whose learnt direction is that one (1 = stable);
``AUC_IN_SAMPLE``
    max(AUC, 1 − AUC) on all patients, for reference only (optimistic);
``N``
    patients with a value;
``NULL_AUC_AT_RANK``
    the permutation null at the feature's rank: with the labels shuffled (the same folds,
    the same directions learnt in-fold), the 95th percentile over shuffles of the k-th
    highest ``AUC_OOF`` of the table, k the feature's rank. Among a hundred features, a
    few pure-noise ones reach 0.6-0.7 by chance; a feature is read as carrying signal
    only above the noise at its own rank and above 0.5 (``ABOVE_NULL``).

This module reads no report code: the report (Markdown or HTML) calls
:func:`univariate_auc` on the patient table it already has, or
:func:`patient_table` + :func:`univariate_auc` from the cell table. Run alone::

    python -m pipelines.report.univariate FEATURES_DIR DATA --out build/univariate.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.model_selection import StratifiedKFold

__all__ = ["univariate_auc", "permutation_null", "patient_table", "auc", "main"]

COLUMNS = ["FEATURE", "N", "AUC_OOF", "AUC_OOF_SD", "AUC_OOF_Q05", "AUC_OOF_Q95",
           "DIRECTION", "DIRECTION_AGREEMENT", "AUC_IN_SAMPLE", "NULL_AUC_AT_RANK",
           "ABOVE_NULL"]


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of score ``x`` for labels ``y`` in {0, 1} (Mann-Whitney, ties count 1/2);
    NaN when a class is absent."""
    y = np.asarray(y).astype(bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return np.nan
    r = rankdata(x)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def univariate_auc(table: pd.DataFrame, y, *, folds: int = 5, repeats: int = 10,
                   seed: int = 0, min_patients: int = 10,
                   permutations: int = 100) -> pd.DataFrame:
    """Out-of-fold univariate AUC of every column of a patient-level table.

    Parameters
    ----------
    table : DataFrame, one row per patient (index: patient ID)
        Numeric feature columns (non-numeric ones are skipped), e.g. from
        :func:`patient_table`. NaN values: that patient is left out for that feature only.
    y : Series or array of {0, 1}
        Labels (1 = tumoral), aligned with ``table`` (a Series is aligned by index).
    folds, repeats, seed : int
        Stratified ``folds``-fold splits of the patients, ``repeats`` times with shuffles
        ``seed``, ``seed + 1``, ...: the same splits for every feature.
    min_patients : int
        Features with fewer patients with a value are reported with NaN AUCs.
    permutations : int
        Label shuffles of the permutation null (``NULL_AUC_AT_RANK``); 0 leaves it out.

    Returns
    -------
    DataFrame
        One row per feature, columns :data:`COLUMNS` (see the module docstring), sorted by
        ``AUC_OOF`` (highest first).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 30)
    >>> t = pd.DataFrame({"signal": y + rng.normal(0, 0.5, 60), "noise": rng.normal(size=60)})
    >>> out = univariate_auc(t, y, repeats=3)
    >>> out["FEATURE"].tolist(), bool(out["AUC_OOF"].iloc[0] > 0.8)
    (['signal', 'noise'], True)
    >>> out.set_index("FEATURE").loc["signal", "DIRECTION"]
    'higher in tumoral'
    """
    if isinstance(y, pd.Series):
        y = y.reindex(table.index)
    y = np.asarray(y, dtype=float)
    if len(y) != len(table):
        raise ValueError(f"{len(y)} labels for {len(table)} patients")
    if np.isnan(y).any() or not set(np.unique(y)) <= {0.0, 1.0}:
        raise ValueError("labels must be 0 or 1 for every patient")
    y = y.astype(int)
    splits = [list(StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(y, y))
              for r in range(repeats)]
    columns = {name: table[name].to_numpy(float) for name in table.columns
               if pd.api.types.is_numeric_dtype(table[name])}
    rows = [_one_feature(name, x, y, splits, min_patients) for name, x in columns.items()]
    out = pd.DataFrame(rows, columns=COLUMNS)
    out = out.sort_values("AUC_OOF", ascending=False, na_position="last", kind="stable") \
             .reset_index(drop=True)
    if permutations:
        null = permutation_null(columns, y, splits, min_patients, permutations, seed)
        out["NULL_AUC_AT_RANK"] = null[:len(out)]
        # the ranks' null compares order statistics: where most features carry a little
        # signal, every rank's AUC sits above its null, those below 0.5 too; an AUC under
        # 0.5 out of fold (direction learnt in-fold) is never read as signal
        out["ABOVE_NULL"] = (out["AUC_OOF"] > out["NULL_AUC_AT_RANK"]) & (out["AUC_OOF"] > 0.5)
    return out


def permutation_null(columns: dict, y, splits, min_patients: int, permutations: int,
                     seed: int, level: float = 0.95) -> np.ndarray:
    """For each rank k, the ``level`` quantile over label shuffles of the k-th highest
    out-of-fold AUC among ``columns``: what noise reaches at that rank. Each shuffle
    keeps the folds, so only the link between features and labels is broken."""
    rng = np.random.default_rng(seed + 10_007)
    # a shuffle changes the labels, not the features: each feature's ranks within every
    # training fold are computed once (what ``permutations`` x ``_one_feature`` spent most
    # of its time on; the AUCs are the same to the bit)
    prepared = [_training_ranks(x, splits) for x in columns.values()]
    ranked = []
    for _ in range(permutations):
        yp = rng.permutation(y)
        aucs = [_oof_auc(x, ok, yp, folds, min_patients) for x, ok, folds in prepared]
        ranked.append(np.sort(np.nan_to_num(np.asarray(aucs, float), nan=-np.inf))[::-1])
    q = np.quantile(np.asarray(ranked), level, axis=0)
    return np.where(np.isfinite(q), q, np.nan)


def _training_ranks(x, splits):
    """``x``, its finite mask, and per repeat the folds (training and test positions of the
    patients with a value) with the ranks of ``x`` on the training positions."""
    ok = np.isfinite(x)
    folds = [[(tr[ok[tr]], te[ok[te]], rankdata(x[tr[ok[tr]]])) for tr, te in repeat]
             for repeat in splits]
    return x, ok, folds


def _oof_auc(x, ok, y, folds, min_patients) -> float:
    """``AUC_OOF`` of :func:`_one_feature` (direction learnt on each training fold, AUC of
    the pooled held-out scores, mean over repeats), from :func:`_training_ranks`."""
    if int(ok.sum()) < min_patients or len(np.unique(y[ok])) < 2:
        return np.nan
    pooled = []
    for repeat in folds:
        score = np.full(len(y), np.nan)
        for tr, te, r in repeat:
            yt = y[tr].astype(bool)
            n1 = int(yt.sum())
            n0 = len(yt) - n1
            a = float((r[yt].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else np.nan
            score[te] = (1.0 if not np.isfinite(a) or a >= 0.5 else -1.0) * x[te]
        pooled.append(auc(score[ok], y[ok]))
    return float(np.nanmean(pooled))


def _one_feature(name, x, y, splits, min_patients) -> dict:
    ok = np.isfinite(x)
    n = int(ok.sum())
    row = dict.fromkeys(COLUMNS, np.nan)
    row.update(FEATURE=name, N=n)
    if n < min_patients or len(np.unique(y[ok])) < 2:
        return row
    a_all = auc(x[ok], y[ok])
    sign_all = 1.0 if a_all >= 0.5 else -1.0
    row["DIRECTION"] = "higher in tumoral" if sign_all > 0 else "lower in tumoral"
    row["AUC_IN_SAMPLE"] = max(a_all, 1 - a_all)
    pooled, per_fold, agree = [], [], []
    for repeat in splits:
        score = np.full(len(y), np.nan)
        for tr, te in repeat:
            tr, te = tr[ok[tr]], te[ok[te]]
            a = auc(x[tr], y[tr]) if len(tr) else np.nan
            sign = 1.0 if not np.isfinite(a) or a >= 0.5 else -1.0
            agree.append(sign == sign_all)
            score[te] = sign * x[te]
            per_fold.append(auc(score[te], y[te]) if len(te) else np.nan)
        pooled.append(auc(score[ok], y[ok]))
    per_fold = np.asarray(per_fold, float)
    per_fold = per_fold[np.isfinite(per_fold)]
    row.update(AUC_OOF=float(np.nanmean(pooled)),
               DIRECTION_AGREEMENT=float(np.mean(agree)))
    if len(per_fold):
        row.update(AUC_OOF_SD=float(per_fold.std()),
                   AUC_OOF_Q05=float(np.quantile(per_fold, 0.05)),
                   AUC_OOF_Q95=float(np.quantile(per_fold, 0.95)))
    return row


def patient_table(cells: pd.DataFrame, *, features=None, stats=("Mean", "Std"),
                  bag_features: pd.DataFrame | None = None) -> pd.DataFrame:
    """Patient-level table: bag statistics of the cell features, plus bag features.

    Parameters
    ----------
    cells : DataFrame
        The cell table (``cells.parquet``): ``ID``, ``QC_STATUS`` and feature columns.
    features : list of str, optional
        Cell features to aggregate; default :data:`cellfeat.features.FEATURE_NAMES` present
        in ``cells``.
    stats : tuple of str
        Statistics of :class:`cellfeat.bags.BagAggregator` (default mean and std), giving
        columns ``Bag_<Stat>_<feature>``.
    bag_features : DataFrame, optional
        Patient-level features indexed by ID (e.g. ``patients.parquet`` indexed by ID),
        joined as they are.
    """
    from cellfeat.bags import BagAggregator
    from cellfeat.features import FEATURE_NAMES

    if features is None:
        features = [f for f in FEATURE_NAMES if f in cells.columns]
    bags = BagAggregator(stats=tuple(stats), features=list(features)).fit_transform(
        cells[["ID", "QC_STATUS", *features]])
    if bag_features is not None:
        bags = bags.join(bag_features.select_dtypes("number"), how="left")
    return bags


def main(argv=None) -> int:
    """``python -m pipelines.report.univariate FEATURES_DIR DATA --out CSV``: the table for the
    labelled patients of a cohort whose features were computed into FEATURES_DIR."""
    from cellfeat.data import load_cohort

    ap = argparse.ArgumentParser(prog="python -m pipelines.report.univariate", description=__doc__.split("\n")[0])
    ap.add_argument("features", type=Path, help="feature folder (cells.parquet, patients.parquet)")
    ap.add_argument("data", type=Path, help="cohort folder (for the labels)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    cohort = load_cohort(args.data)
    cells = pd.read_parquet(args.features / "cells.parquet")
    extra = None
    if (args.features / "patients.parquet").exists():
        extra = pd.read_parquet(args.features / "patients.parquet").set_index("ID")
    labelled = cohort.clinical.loc[cohort.labelled]
    table = patient_table(cells[cells["ID"].isin(labelled.index)], bag_features=extra)
    table = table.reindex(labelled.index)
    out = univariate_auc(table, labelled["LABEL"].astype(int), repeats=args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False, float_format="%.4g")
    print(out.head(20).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
