"""Colour stability of cell features, measured on a sample of each patient's images.

A colour shift (:mod:`cellfeat.augment`: another lab's camera, stain batch or JPEG) moves
every cell's features; a patient-level model sees the move of the patient's bag. This module
measures that move from a small, fixed sample of each patient's images and uses it three
ways:

* :func:`sample_images` is the sample: a seeded rule on file names, blind to labels;
* :func:`bag_drift` is each patient's drift under a shift, δ_{p,f} = the mean over its
  sampled cells of (shifted − original) feature f (cells usable both ways);
* :func:`shrunk_drifts` estimates each patient's own drift from its few sampled cells,
  shrunk toward the cohort's by how much of it is sampling noise, and
  :func:`transferred_bag` estimates a patient's *whole* bag under the shift from its
  sample (the sampled cells as shifted, every other cell moved by that drift), so that a
  call on it estimates the call on the fully shifted bag at a fraction of the cost;
* :func:`drifted_frame` moves every patient of a cohort frame by one drift (the training
  cohort's mean drift under a shift), and :func:`interval_calls` calls a patient under each
  shift this way, widened by what this drift model missed on training patients
  (:func:`residual_margin`): where that interval straddles the threshold, a shift of the
  panel's size could move the patient across it, and the call says so;
* :func:`feature_stability` is the per-feature table: the mean drift of the patient mean in
  units of the between-patient SD, its spread over patients, and ICC(A,1) between the
  as-is and the shifted patient means (the reproducibility screen of radiomics: features
  are kept when a perturbation moves them little against how much patients differ);
  :func:`stable_features` applies the fixed bar :data:`STABILITY_BAR`.

Everything here is label-free: the sample, the drifts and the screen use images only.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
from scipy.special import expit

from .decision import logit
from .extract import QC_COLUMN

__all__ = ["STABILITY_BAR", "MARGIN_QUANTILE", "SAMPLE_RULE", "sample_images", "cell_deltas", "bag_drift",
           "shrunk_drifts", "transferred_bag",
           "drifted_frame", "residual_margin", "interval_calls", "icc_agreement", "feature_stability",
           "stable_features"]

#: The screening bar, fixed before any feature was measured against it (issue 22): a cell
#: feature is a model input only if, under every shift of the panel (JPEG included), the
#: mean drift of the patient mean is at most a quarter of the between-patient SD of the
#: patient means. Why a quarter: a standardised linear model's logit then moves by at most
#: |β|/4 per feature, and a pure offset of d SD gives ICC(A,1) ≈ 1 / (1 + d²/2), so the bar
#: is ICC ≥ 0.97 for an offset, in the "excellent" band (≥ 0.90) of Koo & Li (2016).
STABILITY_BAR = 0.25

#: Which quantile of the drift model's residual (:func:`residual_margin`) widens a scored
#: patient's stability interval: fixed before it was measured, so that the interval holds
#: what the panel did to 19 of 20 training calls beyond what the drift model foresaw.
MARGIN_QUANTILE = 0.95

#: The sampling rule in words, as reports and the bundle state it.
SAMPLE_RULE = ("the {k} images of each patient whose SHA-256 of '<seed>/<patient ID>/<file "
               "name>' is smallest (seed {seed}; all images of a patient with fewer), the same "
               "images for every shift; labels are never read")


def sample_images(pid: str, names, k: int, seed: int = 0) -> list[int]:
    """Positions (in ``names``' order, ascending) of the ``k`` images of patient ``pid``
    kept by :data:`SAMPLE_RULE`.

    A hash of the seed, the patient and the file name ranks the images, so the sample
    depends on nothing else: not on labels, not on the order in which files are listed,
    and adding an image to a patient changes its sample by at most that image.

    Examples
    --------
    >>> sample_images("P1", ["a.jpg", "b.jpg", "c.jpg"], 5)
    [0, 1, 2]
    >>> len(sample_images("P1", [f"{i:06d}.jpg" for i in range(50)], 8))
    8
    """
    if k < 1:
        raise ValueError(f"the sample needs at least one image per patient, got k={k}")
    rank = [hashlib.sha256(f"{seed}/{pid}/{n}".encode()).hexdigest() for n in names]
    return sorted(sorted(range(len(rank)), key=rank.__getitem__)[:k])


def cell_deltas(original: pd.DataFrame, shifted: pd.DataFrame, features) -> pd.DataFrame:
    """Per cell and feature, ``shifted − original`` (rows paired by position), NaN where
    the cell is not usable (``QC_STATUS == "ok"``) both ways or a value is missing."""
    features = list(features)
    if len(original) != len(shifted):
        raise ValueError(f"original and shifted cells differ in number: {len(original)} vs "
                         f"{len(shifted)}")
    ok = ((original[QC_COLUMN] == "ok").to_numpy() & (shifted[QC_COLUMN] == "ok").to_numpy())
    d = shifted[features].to_numpy(float) - original[features].to_numpy(float)
    d[~ok] = np.nan
    return pd.DataFrame(d, columns=features)


def shrunk_drifts(deltas: dict) -> pd.DataFrame:
    """Each patient's own drift, estimated from its sampled cells and shrunk toward the
    cohort's mean drift by how much of it is sampling noise (empirical Bayes).

    With m_p the mean of patient p's n_p cell deltas (:func:`cell_deltas`) of a feature,
    s_w² their pooled within-patient variance, v_p = s_w² / n_p the sampling variance of m_p,
    m̄ the mean of the m_p and τ² = max(0, var_p(m_p) − mean_p(v_p)) the spread of the
    patients' true drifts (method of moments, as DerSimonian & Laird 1986 estimate
    between-study variance), the estimate is

    .. math:: b_p = \bar m + \frac{\tau^2}{\tau^2 + v_p} (m_p - \bar m)

    (Efron & Morris 1975). A few cells whose segmentation jumps under the shift make s_w²
    large and pull b_p toward the cohort's drift, instead of moving a whole bag by what 8
    cells happened to do. A patient without a usable cell pair gets m̄.

    Parameters
    ----------
    deltas : dict of patient ID -> DataFrame (cells × features)

    Returns
    -------
    DataFrame, patients × features.
    """
    ids = list(deltas)
    if not ids:
        return pd.DataFrame()
    cols = list(next(iter(deltas.values())).columns)
    n = np.array([np.isfinite(deltas[p].to_numpy(float)).sum(axis=0) for p in ids], float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a patient without a usable pair
        m = np.array([np.nanmean(deltas[p].to_numpy(float), axis=0) if len(deltas[p])
                      else np.full(len(cols), np.nan) for p in ids])
        ss = np.array([np.nansum((deltas[p].to_numpy(float) - m[i]) ** 2, axis=0)
                       for i, p in enumerate(ids)])
        dof = np.clip(n - 1, 0, None).sum(axis=0)
        s2w = np.where(dof > 0, ss.sum(axis=0) / np.maximum(dof, 1), 0.0)
        v = np.where(n > 0, s2w / np.maximum(n, 1), np.inf)
        has = np.isfinite(m)
        mbar = np.nanmean(np.where(has, m, np.nan), axis=0)
        k = has.sum(axis=0)
        var_m = np.array([np.var(m[has[:, j], j], ddof=1) if k[j] > 1 else 0.0
                          for j in range(len(cols))])
        mean_v = np.array([np.mean(v[has[:, j], j]) if k[j] else 0.0 for j in range(len(cols))])
        tau2 = np.clip(var_m - mean_v, 0.0, None)
        lam = np.where(has, tau2 / (tau2 + v), 0.0)
        lam = np.where(np.isfinite(lam), lam, 1.0)  # tau2 > 0 and v = 0: no noise, keep m_p
        b = mbar + lam * (np.where(has, m, mbar) - mbar)
    return pd.DataFrame(b, index=ids, columns=cols)


def bag_drift(original: pd.DataFrame, shifted: pd.DataFrame, features) -> pd.Series:
    """One patient's drift under a shift: per feature f, the mean over cells of
    ``shifted[f] − original[f]``.

    ``original`` and ``shifted`` are the cell rows of the same images in the same order (row
    i of one is row i of the other); only cells usable (``QC_STATUS == "ok"``) both ways
    and with both values finite count. NaN where no cell counts.

    Examples
    --------
    >>> a = pd.DataFrame({"QC_STATUS": ["ok", "ok", "ok"], "F": [1.0, 2.0, 9.0]})
    >>> b = pd.DataFrame({"QC_STATUS": ["ok", "ok", "no_nucleus"], "F": [1.5, 3.0, 0.0]})
    >>> float(bag_drift(a, b, ["F"])["F"])  # ((1.5 - 1) + (3 - 2)) / 2; the third is out
    0.75
    """
    d = cell_deltas(original, shifted, features).to_numpy(float)
    with np.errstate(all="ignore"):
        n = np.isfinite(d).sum(axis=0)
        mean = np.where(n > 0, np.nansum(d, axis=0) / np.maximum(n, 1), np.nan)
    return pd.Series(mean, index=list(features))


def transferred_bag(cells: pd.DataFrame, drift: pd.Series, positions=(),
                    shifted_rows: pd.DataFrame | None = None,
                    residuals: pd.DataFrame | None = None, seed=0) -> pd.DataFrame:
    """A patient's whole bag under a shift, estimated from its sample.

    Every cell keeps its QC status and has each feature f moved by ``drift[f]`` (NaN drift:
    not moved); the sampled cells (rows ``positions`` of ``cells``) are replaced by their
    measured ``shifted_rows``. With the sample's own mean drift (:func:`bag_drift`) and
    every sampled cell usable both ways, the mean of the result is the original mean plus
    that drift; with :func:`shrunk_drifts`, the unsampled cells move by the patient's
    estimated systematic drift and the sampled ones by what was measured.

    A shift also moves each cell a little differently (its segmentation, its texture), which
    spreads the bag: with ``residuals`` (the sampled cells' deltas minus their mean, one row
    per cell, :func:`cell_deltas`), every unsampled cell also gets one of these rows, drawn
    with replacement (``seed``), so that spread and quantiles move as in a shifted bag and
    the mean carries the noise of a whole bag (σ/√n), not of the sample (σ/√k).

    Examples
    --------
    >>> cells = pd.DataFrame({"QC_STATUS": ["ok"] * 3, "F": [1.0, 2.0, 3.0]})
    >>> shifted = pd.DataFrame({"QC_STATUS": ["ok"], "F": [1.5]})
    >>> transferred_bag(cells, pd.Series({"F": 0.5}), [0], shifted)["F"].tolist()
    [1.5, 2.5, 3.5]
    """
    cols = [c for c in cells.columns if c in drift.index]
    d = drift.reindex(cols).to_numpy(float)
    d = np.where(np.isfinite(d), d, 0.0)
    positions = list(positions)
    if positions and (shifted_rows is None or len(shifted_rows) != len(positions)):
        raise ValueError("need one shifted row per sampled position")
    others = {}
    for c in cells.columns:
        if c in cols:
            continue
        col = cells[c]
        if positions and c in shifted_rows.columns:
            col = col.copy()
            col.iloc[positions] = shifted_rows[c].to_numpy()
        others[c] = col
    values = cells[cols].to_numpy(float) + d
    if residuals is not None and len(residuals):
        r = residuals.reindex(columns=cols).to_numpy(float)
        r = np.where(np.isfinite(r), r, 0.0)
        rest = np.setdiff1d(np.arange(len(cells)), positions)
        pick = np.random.default_rng(seed).integers(0, len(r), size=len(rest))
        values[rest] += r[pick]
    if positions:
        values[positions] = shifted_rows[cols].to_numpy(float)
    # built from two blocks, not column by column: a fragmented table makes every later
    # row selection (bag statistics) several times slower
    out = pd.concat([pd.DataFrame(others, index=cells.index),
                     pd.DataFrame(values, index=cells.index, columns=cols)], axis=1)
    return out[list(cells.columns)]


def drifted_frame(X: pd.DataFrame, drift: pd.Series) -> pd.DataFrame:
    """A cohort frame whose every patient is moved by one drift: each cell's feature f by
    ``drift[f]`` (:func:`transferred_bag` without a sample), and a patient-level column of
    ``X`` named in ``drift`` (the pixel dispersion) by its own entry. QC statuses, clinical
    columns and the other columns stay as they are."""
    out = X.copy()
    out["CELLS"] = [transferred_bag(c, drift) if len(c) else c for c in X["CELLS"]]
    for col in drift.index:
        if col in out.columns and col != "CELLS" and np.isfinite(drift[col]):
            out[col] = pd.to_numeric(out[col], errors="coerce") + float(drift[col])
    return out


def residual_margin(p_model, p_seen, q: float = MARGIN_QUANTILE) -> float:
    """The ``q``-quantile of |logit(p_seen) − logit(p_model)| over all finite pairs: how far,
    in log-odds, a patient's P(tumoral) under a shift strays beyond what the drift model
    (:func:`drifted_frame` with the cohort's mean drift) predicted for it. 0 when no pair.

    Examples
    --------
    >>> residual_margin([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    0.0
    >>> # one pair of 20 strays by logit(0.9) = 2.197; the 0.99 quantile interpolates at
    >>> # position 0.99 * 19 = 18.81 between 0 and it: 0.81 * 2.197
    >>> round(residual_margin([0.5] * 20, [0.5] * 19 + [0.9], q=0.99), 2)
    1.78
    """
    d = np.abs(logit(p_seen) - logit(p_model)).ravel()
    d = d[np.isfinite(d)]
    return float(np.quantile(d, q)) if d.size else 0.0


def interval_calls(models: dict, X: pd.DataFrame, drifts: dict, margin: float = 0.0, *,
                   zone_limit: float | None = None) -> pd.DataFrame:
    """Each patient's stability interval: the range of P(tumoral) that a shift of the panel's
    size could give it, and whether that range keeps the call.

    The patient is called as it is and with its cells moved by each shift's drift
    (:func:`drifted_frame`, the training cohort's mean drift); each of these P(tumoral)
    is widened by ``margin`` in log-odds (:func:`residual_margin`: what the drift model
    leaves unexplained for most patients) and the interval is their hull.

    Parameters
    ----------
    models : dict
        Route -> fitted :class:`~cellfeat.decision.CalibratedDecision`, as for
        :func:`cellfeat.models.routed_calls`.
    X : cohort frame
    drifts : dict of shift name -> Series
        The drift of each feature under the shift (:func:`drifted_frame`).
    margin : float, default 0
        Log-odds added on both sides of every P(tumoral).
    zone_limit : float, optional
        The overlap-zone limit: above it each call is floored at the clinical model's
        P(tumoral), as :func:`cellfeat.models.routed_calls` does.

    Returns
    -------
    DataFrame indexed like ``X``: ``PROBA_LOW`` and ``PROBA_HIGH`` (the interval),
    ``STABLE`` (True when both ends get the same call at the route's threshold, compared as
    printed; False when the interval straddles it; NA without a call) and ``MOVED_BY``
    (the shifts whose own call differs from the as-is call, comma-separated).
    """
    from .decision import call
    from .models.routing import routed_calls

    base = routed_calls(models, X, zone_limit=zone_limit)
    called = base["LABEL"].to_numpy() >= 0
    logits, moved = [logit(base["PROBA"])], [[] for _ in range(len(X))]
    for name, drift in drifts.items():
        c = routed_calls(models, drifted_frame(X, drift), zone_limit=zone_limit)
        logits.append(logit(c["PROBA"]))
        for i in np.flatnonzero((c["LABEL"].to_numpy() != base["LABEL"].to_numpy()) & called):
            moved[i].append(name)
    ell = np.vstack(logits)
    with np.errstate(all="ignore"):
        low = np.where(called, expit(np.min(ell, axis=0) - margin), np.nan)
        high = np.where(called, expit(np.max(ell, axis=0) + margin), np.nan)
    thr = base["THRESHOLD"].to_numpy(float)
    same = np.array([bool(call(np.array([lo]), t)[0] == call(np.array([hi]), t)[0])
                     if c else False for lo, hi, t, c in zip(low, high, thr, called)])
    stable = pd.array([s if c else pd.NA for s, c in zip(same, called)], "boolean")
    return pd.DataFrame({"PROBA_LOW": low, "PROBA_HIGH": high, "STABLE": stable,
                         "MOVED_BY": [", ".join(m) for m in moved]}, index=X.index)


def icc_agreement(a, b) -> float:
    """ICC(A,1) of two measurements of the same subjects: two-way, absolute agreement, single
    measure (McGraw & Wong 1996, case A; Shrout & Fleiss ICC(2,1)).

    .. math:: \\mathrm{ICC} = \\frac{MS_R - MS_E}{MS_R + MS_E + 2 (MS_C - MS_E)/n}

    with MS_R the between-subject, MS_C the between-measurement and MS_E the residual mean
    squares of the n × 2 table. 1 when b = a; an offset of d subject-SDs with no other
    change gives about 1 / (1 + d²/2). NaN for fewer than 2 complete subjects or no
    between-subject spread.

    Examples
    --------
    >>> a = np.array([1.0, 2.0, 3.0, 4.0])
    >>> icc_agreement(a, a)
    1.0
    >>> round(icc_agreement(a, a + 1.0), 3)  # offset of 1/sd(a) = 0.775 SD
    0.769
    """
    x = np.column_stack([np.asarray(a, float), np.asarray(b, float)])
    x = x[np.isfinite(x).all(axis=1)]
    n = len(x)
    if n < 2:
        return np.nan
    grand = x.mean()
    ms_r = 2 * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_c = n * ((x.mean(axis=0) - grand) ** 2).sum()
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0) + grand
    ms_e = (resid ** 2).sum() / (n - 1)
    den = ms_r + ms_e + 2 * (ms_c - ms_e) / n
    if not ms_r > 0 or not den > 0:
        return np.nan
    return float((ms_r - ms_e) / den)


def feature_stability(means: pd.DataFrame, drifts: dict, bar: float = STABILITY_BAR
                      ) -> pd.DataFrame:
    """The per-feature stability table.

    Parameters
    ----------
    means : DataFrame, patients × features
        Each patient's mean of each cell feature as it is (usable cells).
    drifts : dict of shift name -> DataFrame, patients × features
        Each patient's drift under that shift (:func:`bag_drift`), same patients.
    bar : float
        :data:`STABILITY_BAR`.

    Returns
    -------
    DataFrame indexed by feature: ``between_sd`` (SD of the patient means, ddof 1), per
    shift ``drift_<shift>`` (mean drift over patients / between_sd, signed),
    ``spread_<shift>`` (SD over patients of the drift / between_sd) and ``icc_<shift>``
    (:func:`icc_agreement` of the means and the means + drift); ``max_abs_drift`` (over
    shifts), ``min_icc`` and ``stable`` (``max_abs_drift <= bar``; False when the feature
    has no between-patient spread or no measured drift).
    """
    sd = means.std(ddof=1)
    table = pd.DataFrame({"between_sd": sd})
    scale = sd.where(sd > 0)
    worst = pd.Series(0.0, index=means.columns)
    icc_min = pd.Series(np.inf, index=means.columns)
    for name, d in drifts.items():
        d = d.reindex(index=means.index, columns=means.columns)
        z = d.mean() / scale
        table[f"drift_{name}"] = z
        table[f"spread_{name}"] = d.std(ddof=1) / scale
        icc = pd.Series({f: icc_agreement(means[f], means[f] + d[f]) for f in means.columns})
        table[f"icc_{name}"] = icc
        worst = np.fmax(worst, z.abs().fillna(np.inf))
        icc_min = np.fmin(icc_min, icc)
    table["max_abs_drift"] = worst.replace(np.inf, np.nan)
    table["min_icc"] = icc_min.replace(np.inf, np.nan)
    table["stable"] = (table["max_abs_drift"] <= bar).fillna(False).astype(bool)
    return table


def stable_features(table: pd.DataFrame) -> list[str]:
    """The features that pass the bar, in the table's order."""
    return [f for f, ok in table["stable"].items() if ok]
