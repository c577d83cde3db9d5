"""cellfeat.intervals: pseudo-values and the corrected repeated-CV interval on cases worked by
hand, and the coverage of the truth on synthetic cohorts whose model choice is unstable."""

import numpy as np
import pytest
from scipy import stats

from cellfeat.intervals import (balanced_accuracy_pseudovalues, cv_interval,
                                roc_auc_pseudovalues)

# --- pseudo-values ----------------------------------------------------------------------------


def test_balanced_accuracy_pseudovalues_by_hand():
    # 2 reactive (1 called right) and 2 tumoral (both right): recalls ½ and 1, BA ¾;
    # n / (2 n_y) = 4 / 4 = 1, so the reactive pseudo-values are ¾ + (1 − ½), ¾ + (0 − ½)
    ba, pv = balanced_accuracy_pseudovalues([0, 0, 1, 1], [0, 1, 1, 1])
    assert ba == 0.75
    np.testing.assert_allclose(pv, [1.25, 0.25, 0.75, 0.75])


def test_pseudovalue_variance_is_the_binomial_variance_of_a_balanced_accuracy():
    # 3 reactive (2 right), 5 tumoral (4 right): Var = ¼ (ρ₀(1−ρ₀)/n₀ + ρ₁(1−ρ₁)/n₁)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 1, 1, 0])
    ba, pv = balanced_accuracy_pseudovalues(y, pred)
    assert ba == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert pv.mean() == pytest.approx(ba)
    binomial = ((2 / 3) * (1 / 3) / 3 + (4 / 5) * (1 / 5) / 5) / 4
    assert np.sum((pv - ba) ** 2) / len(y) ** 2 == pytest.approx(binomial)


def test_roc_auc_pseudovalues_by_hand():
    # reactive 0.1, 0.6; tumoral 0.4, 0.9: 3 of 4 pairs ordered right (AUC ¾); placements
    # 1, ½ (reactive: share of tumoral above) and ½, 1 (tumoral: share of reactive below);
    # pseudo-value ¾ + 4/2 (V − ¾)
    auc, pv = roc_auc_pseudovalues([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert auc == 0.75
    np.testing.assert_allclose(pv, [1.25, 0.25, 0.25, 1.25])


def test_roc_auc_counts_a_tie_as_half_and_matches_delong_variance():
    # tumoral 0.5 ties reactive 0.5: that pair counts ½; AUC = (1 + ½ + 1 + 1) / 4 = 7/8
    y = np.array([0, 0, 1, 1])
    s = np.array([0.2, 0.5, 0.5, 0.9])
    auc, pv = roc_auc_pseudovalues(y, s)
    assert auc == 0.875
    # DeLong: S10 / n1 + S01 / n0 with placements V10 = (¾, 1), V01 = (1, ¾), sample
    # variances with divisor n_y (the plug-in form), i.e. 1/64 each: 1/128 + 1/128
    assert np.sum((pv - auc) ** 2) / len(y) ** 2 == pytest.approx(1 / 64)


def test_roc_auc_within_groups_counts_only_pairs_of_the_same_group():
    """Fold 0: tumoral 0.9 above reactive 0.2 (right); fold 1: tumoral 0.3 below reactive
    0.8 (wrong): AUC ½ over the 2 same-fold pairs (pooling all 4 pairs would give ¾, the
    two cross-fold pairs being scored by different models). P = 2, one patient of the
    other class each: pseudo-values ½ + 4 · 1/2 · (V − ½) = 3/2 (fold 0) and −½ (fold 1)."""
    y, s, g = [0, 1, 0, 1], [0.2, 0.9, 0.8, 0.3], [0, 0, 1, 1]
    auc, pv = roc_auc_pseudovalues(y, s, groups=g)
    assert auc == 0.5
    np.testing.assert_allclose(pv, [1.5, 1.5, -0.5, -0.5])
    assert roc_auc_pseudovalues(y, s)[0] == 0.75
    # a group with one class only has no pair: its patients sit at the AUC
    auc, pv = roc_auc_pseudovalues([0, 1, 1], [0.2, 0.9, 0.1], groups=[0, 0, 1])
    assert auc == 1.0 and pv[2] == 1.0


def test_a_figure_needs_both_classes():
    ba, pv = balanced_accuracy_pseudovalues([1, 1, 1], [1, 0, 1])
    assert np.isnan(ba) and np.isnan(pv).all()
    auc, pv = roc_auc_pseudovalues([0, 0], [0.3, 0.4])
    assert np.isnan(auc) and np.isnan(pv).all()


# --- the interval, worked by hand --------------------------------------------------------------

Y8 = np.array([0, 0, 1, 1, 0, 0, 1, 1])
FOLD8 = np.array([[0, 0, 0, 0, 1, 1, 1, 1]])
# fold 0 all right; fold 1 calls one reactive patient tumoral
PRED8 = np.array([[0, 0, 1, 1, 1, 0, 1, 1]])


def test_interval_by_hand():
    """Pooled recalls ¾ (reactive) and 1: BA = 7/8. Pseudo-values (n / 2n_y = 1): right
    reactive 7/8 + ¼ = 9/8, wrong reactive 7/8 − ¾ = 1/8, tumoral 7/8. Fold means 1 and ¾;
    σ² = ((1 − 7/8)² + (¾ − 7/8)²) / 1 = 1/32; two folds of 4: n_test/n_train = 1, J = 2;
    V = σ² (1/2 + 1) = 3/64; t with 1 degree of freedom."""
    ci = cv_interval(Y8, PRED8, FOLD8)
    assert ci.estimate == pytest.approx(7 / 8)
    assert ci.se == pytest.approx(np.sqrt(3 / 64))
    assert ci.df == 1 and ci.n_cells == 2
    # t(0.975, 1 df) = 12.7: the half-width 2.75 over-runs both ends of [0, 1]: clipped
    assert ci.ci == (0.0, 1.0)
    assert ci.per_repeat == (pytest.approx(7 / 8),)
    # at level 0.2 the half-width t(0.6, 1 df) · √(3/64) = 0.0703 stays inside
    ci = cv_interval(Y8, PRED8, FOLD8, level=0.2)
    half = stats.t.ppf(0.6, 1) * np.sqrt(3 / 64)
    assert ci.ci == pytest.approx((7 / 8 - half, 7 / 8 + half))


def test_paired_difference_of_a_procedure_with_itself_is_zero_with_no_spread():
    ci = cv_interval(Y8, PRED8, FOLD8, reference=PRED8)
    assert (ci.estimate, ci.low, ci.high, ci.se) == (0, 0, 0, 0)


def test_paired_difference_by_hand():
    """Reference: everyone called tumoral, recalls 0 and 1, BA ½, and every pseudo-value ½
    (n / 2n_y · (c − ρ_y) is 0 for all). Differences per patient: right reactive 9/8 − ½ =
    5/8, wrong reactive 1/8 − ½ = −3/8, tumoral 7/8 − ½ = 3/8; fold means ½ and ¼, gain
    3/8, σ² = 2 (1/8)² = 1/32 as in the unpaired case."""
    ref = np.ones_like(PRED8)
    ci = cv_interval(Y8, PRED8, FOLD8, reference=ref)
    assert ci.estimate == pytest.approx(7 / 8 - 1 / 2)
    assert ci.se == pytest.approx(np.sqrt(3 / 64))


def test_subgroup_leaves_out_a_repeat_where_it_holds_one_class_and_empty_folds():
    """Repeat 0: the subgroup is patients 0–3 (fold 0 only: one cell). Repeat 1: patients
    2, 3, 6, 7, all tumoral: BA undefined there, so the repeat is left out. One cell left:
    no interval, but the estimate is repeat 0's BA (all four called right: 1)."""
    fold = np.vstack([FOLD8, FOLD8])
    pred = np.vstack([PRED8, PRED8])
    subset = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1]], bool)
    ci = cv_interval(Y8, pred, fold, subset=subset)
    assert ci.estimate == 1.0
    assert ci.per_repeat[0] == 1.0 and np.isnan(ci.per_repeat[1])
    assert ci.n_cells == 1 and np.isnan(ci.low) and np.isnan(ci.se)


def test_small_folds_of_a_subgroup_weigh_less():
    """Subgroup: fold 0 holds 4 patients, fold 1 only 2 (patients 4 and 6; 4 called wrong).
    Pooled: reactive recall ⅔, tumoral 1, BA 5/6; pseudo-values n/2n_y = 6/6 = 1: right
    reactive 5/6 + ⅓ = 7/6, wrong reactive 5/6 − ⅔ = 1/6, tumoral 5/6. Fold means 1 and ½,
    weights m/m̄ = 4/3 and 2/3: σ² = 4/3 (1/6)² + 2/3 (1/3)² = 1/9."""
    subset = np.array([[1, 1, 1, 1, 1, 0, 1, 0]], bool)
    ci = cv_interval(Y8, PRED8, FOLD8, subset=subset)
    assert ci.estimate == pytest.approx(5 / 6)
    assert ci.se == pytest.approx(np.sqrt(1 / 9 * (1 / 2 + 1)))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="disagree"):
        cv_interval(Y8, PRED8, FOLD8[:, :7])
    with pytest.raises(ValueError, match="reference"):
        cv_interval(Y8, PRED8, FOLD8, reference=PRED8[:, :7])
    with pytest.raises(ValueError, match="metric"):
        cv_interval(Y8, PRED8, FOLD8, metric="accuracy")


# --- coverage on synthetic cohorts with a known truth ---------------------------------------
#
# A cohort of 120 patients like dev (≈ 31 % reactive). The count decides above 8 ×10⁹/L
# (only tumoral patients there) and is weak below it, where age helps a little and three
# of eight image-like features carry most of the signal (weaker above 8). The procedure
# picks one of four logistic models by the log-loss of one inner 3-fold split (so the
# choice changes from fold to fold), Platt-calibrates it on that split's out-of-fold scores
# and calls tumoral at P ≥ the training prevalence. The comparator is the clinical model
# with the same recipe. The overlap zone is learnt per fit: counts at or below the highest
# count of a reactive training patient. The truth is the figure of the procedure fitted on
# the whole cohort, measured on 20,000 fresh patients from the same generator.

N_IMG, LIMIT = 8, np.log(8.0)
IMG_SIGNAL = np.array([1.3, 0.9, 0.6] + [0.0] * (N_IMG - 3))
C_OF = {"clinical": 1.0, "clin+img strong": 0.05, "clin+img weak": 1.0, "img in zone": 0.3}


def _patients(n, rng):
    y = (rng.random(n) < 0.69).astype(int)
    logc = np.where(y == 1, rng.normal(np.log(14), 0.9, n), rng.uniform(np.log(1.5), LIMIT, n))
    age = np.where(y == 1, rng.normal(68, 12, n), rng.normal(52, 17, n))
    tumoral_shift = np.where(logc <= LIMIT, 0.5, 0.25)[:, None] * IMG_SIGNAL
    img = rng.normal(size=(n, N_IMG)) + np.where(y[:, None] == 1, tumoral_shift,
                                                 -0.5 * IMG_SIGNAL)
    return {"y": y, "logc": logc, "age": age, "img": img}


def _rows(d, idx):
    return {k: v[idx] for k, v in d.items()}


def _logistic(X, y, C):
    """L2-penalised logistic regression (intercept free) by Newton steps: (mean, sd, w)."""
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = np.column_stack([np.ones(len(X)), (X - mu) / sd])
    pen = np.r_[0.0, np.full(X.shape[1], 1 / C)]
    w = np.zeros(Z.shape[1])
    for _ in range(30):
        q = 1 / (1 + np.exp(-Z @ w))
        H = (Z * (q * (1 - q))[:, None]).T @ Z + np.diag(pen + 1e-8)
        step = np.linalg.solve(H, Z.T @ (q - y) + pen * w)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return mu, sd, w


def _score(model, X):
    mu, sd, w = model
    return w[0] + (X - mu) / sd @ w[1:]


def _inputs(name, d, log_limit):
    clin = np.column_stack([d["age"], d["logc"]])
    if name == "clinical":
        return clin
    if name == "img in zone":
        zone = (d["logc"] <= log_limit)[:, None]
        return np.column_stack([clin, zone, d["img"] * zone])
    return np.column_stack([clin, d["img"]])


def _fit(d, rng, names=tuple(C_OF)):
    y, log_limit = d["y"], d["logc"][d["y"] == 0].max()
    inner = np.empty(len(y), int)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        inner[rng.permutation(idx)] = np.arange(len(idx)) % 3
    best = (np.inf, None, None)
    for name in names:
        X = _inputs(name, d, log_limit)
        oof = np.empty(len(y))
        for k in range(3):
            oof[inner == k] = _score(_logistic(X[inner != k], y[inner != k], C_OF[name]),
                                     X[inner == k])
        q = np.clip(1 / (1 + np.exp(-oof)), 1e-6, 1 - 1e-6)
        loss = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
        best = min(best, (loss, name, oof), key=lambda t: t[0])
    _, name, oof = best
    return {"name": name, "log_limit": log_limit, "prevalence": y.mean(),
            "platt": _logistic(oof[:, None], y, 1e4),
            "model": _logistic(_inputs(name, d, log_limit), y, C_OF[name])}


def _calls(fit, d):
    s = _score(fit["model"], _inputs(fit["name"], d, fit["log_limit"]))
    p = 1 / (1 + np.exp(-_score(fit["platt"], s[:, None])))
    return (p >= fit["prevalence"]).astype(int)


def _ba(y, calls):
    return (np.mean(calls[y == 1] == 1) + np.mean(calls[y == 0] == 0)) / 2


def _one_cohort(seed, fresh, repeats=4, folds=5):
    """Out-of-fold calls of the procedure and the comparator, folds, zone, and the truth."""
    rng = np.random.default_rng(seed)
    d = _patients(120, rng)
    y, n = d["y"], len(d["y"])
    calls, ref = np.zeros((repeats, n), int), np.zeros((repeats, n), int)
    fold, zone = np.zeros((repeats, n), int), np.zeros((repeats, n), bool)
    for r in range(repeats):
        for c in (0, 1):
            idx = np.flatnonzero(y == c)
            fold[r, rng.permutation(idx)] = np.arange(len(idx)) % folds
        for k in range(folds):
            train, test = _rows(d, fold[r] != k), _rows(d, fold[r] == k)
            fit = _fit(train, rng)
            calls[r, fold[r] == k] = _calls(fit, test)
            ref[r, fold[r] == k] = _calls(_fit(train, rng, ("clinical",)), test)
            zone[r, fold[r] == k] = test["logc"] <= fit["log_limit"]
    final, final_ref = _fit(d, rng), _fit(d, rng, ("clinical",))
    c, c_ref = _calls(final, fresh), _calls(final_ref, fresh)
    z = fresh["logc"] <= final["log_limit"]
    yf = fresh["y"]
    truth = {"ba": _ba(yf, c), "ba_zone": _ba(yf[z], c[z]),
             "gain": _ba(yf, c) - _ba(yf, c_ref),
             "gain_zone": _ba(yf[z], c[z]) - _ba(yf[z], c_ref[z])}
    return y, calls, ref, fold, zone, truth


def corrected_t(y, calls, fold, reference=None, subset=None):
    return cv_interval(y, calls, fold, reference=reference, subset=subset).ci


def coverage(interval=corrected_t, n_cohorts=200, seed=19):
    """Share of cohorts whose interval holds the truth, for the BA overall and in the zone
    and the gain over the comparator overall and in the zone."""
    fresh = _patients(20_000, np.random.default_rng([seed, 0]))
    hits = {"ba": [], "ba_zone": [], "gain": [], "gain_zone": []}
    for i in range(n_cohorts):
        y, calls, ref, fold, zone, truth = _one_cohort([seed, 1, i], fresh)
        for key, kw in (("ba", {}), ("ba_zone", {"subset": zone}), ("gain", {"reference": ref}),
                        ("gain_zone", {"reference": ref, "subset": zone})):
            low, high = interval(y, calls, fold, **kw)
            hits[key].append(low <= truth[key] <= high)
    return {key: float(np.mean(h)) for key, h in hits.items()}


@pytest.mark.slow
def test_nominal_95_percent_interval_covers_the_final_models_figure_in_at_least_90_percent():
    """200 synthetic cohorts, 4 × 5-fold outer CV each, seeded: the same cohorts on every
    run. At a true coverage of 95 % the observed share has a binomial standard error of
    √(0.95 · 0.05 / 200) = 1.5 points, so 90 % lies 3.2 standard errors below it (a false
    failure: < 0.1 % per figure). Measured on these cohorts: 95.5–96.5 % for the four
    figures; with the old interval plugged in (percentile bootstrap of fixed out-of-fold
    calls, ``evaluation.bootstrap_ci`` / ``paired_delta`` of d54a500) 90.5 % (BA), 89.5 %
    (BA in zone), 86.5 % (gain) and 86 % (gain in zone): this test fails on it."""
    cover = coverage()
    assert min(cover.values()) >= 0.90, cover
