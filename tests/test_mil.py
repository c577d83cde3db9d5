"""cellfeat.mil: witnesses get the top scores, label handling, scale, estimator checks."""

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from cellfeat.mil import MISVM, SIL, InstanceScoreBagFeatures, bags_from_table, miSVM

# A 2-D array is read as bags of one instance, so the checks see ordinary classifiers.
EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data": "sample weights are not supported",
    "check_sample_weight_equivalence_on_sparse_data": "sample weights are not supported",
}


@parametrize_with_checks([MISVM(random_state=0), miSVM(random_state=0),
                          MISVM(kernel="rbf", random_state=0),
                          miSVM(kernel="rbf", solver="liblinear", n_components=20,
                                random_state=0)],
                         expected_failed_checks=lambda e: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@parametrize_with_checks([SIL()], expected_failed_checks=lambda e: EXPECTED_FAILED)
def test_sil_sklearn_compatible(estimator, check):
    check(estimator)


def population_problem(n_bags=60, seed=0):
    """Positive bags: most cells shifted along x0 (a population), negatives: noise."""
    rng = np.random.default_rng(seed)
    bags, y = [], []
    for i in range(n_bags):
        b = rng.normal(size=(rng.integers(5, 40), 4))
        if i % 2:
            b[rng.random(len(b)) < 0.7, 0] += 1.5
        bags.append(b)
        y.append(i % 2)
    return bags, np.array(y)


def test_sil_learns_populations_and_ignores_bag_size():
    from lightgbm import LGBMClassifier

    bags, y = population_problem()
    for est in (None, LGBMClassifier(n_estimators=30, verbose=-1, random_state=0)):
        clf = SIL(est).fit(bags, y)
        assert (clf.predict(bags) == y).mean() >= 0.9
        assert clf.predict_proba(bags).shape == (len(bags), 2)
    # every bag weighs the same: repeating a bag's cells three times changes nothing
    from sklearn.linear_model import LogisticRegression

    tripled = [np.repeat(b, 3, axis=0) if i == 0 else b for i, b in enumerate(bags)]
    sil = SIL(LogisticRegression(max_iter=1000, tol=1e-10))
    a = sil.fit(bags, y).decision_function(bags)
    b = sil.fit(tripled, y).decision_function(bags)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # with instance weights the repeated bag would pull the boundary: the control fails

    def unweighted(bs):
        return LogisticRegression(max_iter=1000).fit(
            np.vstack(bs), np.repeat(y, [len(x) for x in bs])).decision_function(np.vstack(bags))
    assert not np.allclose(unweighted(bags), unweighted(tripled), rtol=1e-4, atol=1e-4)


def mil_problem(n_bags=60, size=(5, 15), d=6, witnesses=2, seed=0):
    """Negative bags: noise. Positive bags: noise plus `witnesses` cells shifted along x0."""
    rng = np.random.default_rng(seed)
    bags, y, wit = [], [], []
    for i in range(n_bags):
        n = rng.integers(*size)
        b = rng.normal(size=(n, d))
        w = np.zeros(n, bool)
        if i % 2:
            idx = rng.choice(n, witnesses, replace=False)
            b[idx, 0] += 4
            w[idx] = True
        bags.append(b)
        y.append(i % 2)
        wit.append(w)
    return bags, np.array(y), wit


@pytest.mark.parametrize("cls", [MISVM, miSVM])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_witnesses_get_top_scores(cls, kernel):
    bags, y, wit = mil_problem()
    clf = cls(kernel=kernel, random_state=0).fit(bags, y)
    assert (clf.predict(bags) == y).mean() >= 0.9
    scores = clf.instance_decision_function(bags)
    # witnesses sit at x0 ~ 4 + N(0, 1) among N(0, 1) cells, so an unlucky witness can
    # rank below a noise cell; in at least 90 % of positive bags the witnesses are the
    # top-scoring cells (a random ranking of 2 in ~10 would manage about 2 %).
    hits = [set(np.argsort(-s)[: w.sum()]) == set(np.flatnonzero(w))
            for s, w, label in zip(scores, wit, y) if label]
    assert np.mean(hits) >= 0.9


def test_labels_kept_and_proba():
    bags, y, _ = mil_problem()
    labels = np.where(y == 1, "tumoral", "reactive")
    clf = MISVM(random_state=0).fit(bags, labels)
    assert set(clf.predict(bags)) <= {"tumoral", "reactive"}
    clf2 = miSVM(random_state=0).fit(bags, np.where(y == 1, 1, -1))
    assert set(clf2.predict(bags)) <= {-1, 1}
    clf.calibrate(bags, labels)
    p = clf.predict_proba(bags)
    assert np.allclose(p.sum(axis=1), 1) and ((p >= 0) & (p <= 1)).all()
    assert p[y == 1, 1].mean() > p[y == 0, 1].mean()


def test_long_table_form():
    bags, y, _ = mil_problem(n_bags=6)
    table = pd.concat([pd.DataFrame(b).assign(ID=f"p{i}") for i, b in enumerate(bags)])
    table.columns = [str(c) for c in table.columns]
    ids, back = bags_from_table(table)
    assert ids == [f"p{i}" for i in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(back, bags))


def test_restarts_and_determinism():
    bags, y, _ = mil_problem()
    a = MISVM(restarts=2, random_state=3).fit(bags, y)
    b = MISVM(restarts=2, random_state=3).fit(bags, y)
    assert np.allclose(a.decision_function(bags), b.decision_function(bags))


def test_stacking_features_are_cross_fitted():
    bags, y, _ = mil_problem()
    stack = InstanceScoreBagFeatures(MISVM(random_state=0), cv=3)
    oof = stack.fit_transform(bags, y)
    refit = stack.transform(bags)
    assert oof.shape == refit.shape == (len(bags), 4)
    assert not np.allclose(oof, refit)  # out-of-fold, not in-sample scores
    assert oof[y == 1, 0].mean() > oof[y == 0, 0].mean()


def test_stacking_refuses_in_sample_scores():
    # a class with one bag leaves no out-of-fold score for it: the old code silently
    # returned in-sample scores, which leak the labels into a downstream model
    bags, y, _ = mil_problem(n_bags=9)
    y = y.copy()
    y[y == 1] = 0
    y[1] = 1
    with pytest.raises(ValueError, match="at least 2 bags of each class"):
        InstanceScoreBagFeatures(MISVM(random_state=0)).fit_transform(bags, y)
    bags, y, _ = mil_problem(n_bags=10)
    with pytest.raises(ValueError, match="cv >= 2"):
        InstanceScoreBagFeatures(MISVM(random_state=0), cv=1).fit_transform(bags, y)


@pytest.mark.parametrize("solver", ["libsvm", "liblinear"])
def test_gamma_scale_is_unit_free(solver):
    # gamma="scale" = 1 / (d Var(X)): multiplying every feature by 100 divides gamma by 10^4
    # and leaves the kernel, hence the scores, unchanged (without standardisation; the old
    # default 1 / d did not follow the units)
    bags, y, _ = mil_problem(n_bags=30)
    kw = dict(kernel="rbf", standardize=False, solver=solver, n_components=50, random_state=0)
    a = MISVM(**kw).fit(bags, y)
    b = MISVM(**kw).fit([100 * x for x in bags], y)
    X = np.vstack(bags)
    assert a.gamma_ == pytest.approx(1 / (X.shape[1] * X.var()))
    assert b.gamma_ == pytest.approx(a.gamma_ / 1e4)
    np.testing.assert_allclose(np.concatenate(a.instance_decision_function(bags)),
                               np.concatenate(b.instance_decision_function(
                                   [100 * x for x in bags])), rtol=1e-4, atol=1e-4)


def test_solver_auto_exact_when_small():
    bags, y, wit = mil_problem(n_bags=30)
    n = sum(map(len, bags))
    assert MISVM(kernel="rbf").fit(bags, y).solver_ == "libsvm"
    assert MISVM(kernel="linear").fit(bags, y).solver_ == "liblinear"
    big = MISVM(kernel="rbf")
    big.exact_max_instances = n - 1
    assert big.fit(bags, y).solver_ == "liblinear"
    # the Nystroem approximation with as many components as instances is the exact kernel
    # map: both solvers rank the same witnesses first
    for solver in ("libsvm", "liblinear"):
        clf = miSVM(kernel="rbf", solver=solver, n_components=n, random_state=0).fit(bags, y)
        scores = clf.instance_decision_function(bags)
        hits = [np.argmax(s) in np.flatnonzero(w) for s, w, lab in zip(scores, wit, y) if lab]
        assert np.mean(hits) >= 0.9, solver


@pytest.mark.parametrize("cls", [MISVM, miSVM])
def test_objective_is_the_svm_primal(cls):
    # for a linear kernel w = coef_, so 0.5 |w|^2 + C sum c_i hinge_i can be computed
    # directly; the kernel form used for libsvm must give the same number
    bags, y, _ = mil_problem(n_bags=20)
    clf = cls(kernel="linear", solver="libsvm", C=0.5, random_state=0).fit(bags, y)
    Z = clf._map(np.vstack(bags))
    w = clf.svm_.coef_.ravel()
    scores = clf.svm_.decision_function(Z)
    sizes = [len(b) for b in bags]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if cls is MISVM:  # negatives, and each positive bag's best instance
        idx = [i for b, s0, n in zip(y, starts, sizes) if not b for i in range(s0, s0 + n)]
        idx += [s0 + int(np.argmax(scores[s0:s0 + n])) for b, s0, n in zip(y, starts, sizes)
                if b]
        labels = np.where(np.repeat(y, sizes)[idx] == 1, 1.0, -1.0)
    else:  # every instance, positive bags' instances labelled by the sign of the score,
        # the best one of a bag forced positive
        idx = np.arange(len(Z))
        labels = np.where(np.repeat(y, sizes) == 1, np.where(scores > 0, 1.0, -1.0), -1.0)
        for b, s0, n in zip(y, starts, sizes):
            if b and not (labels[s0:s0 + n] > 0).any():
                labels[s0 + int(np.argmax(scores[s0:s0 + n]))] = 1.0
    cw = clf.svm_class_weight_
    c = np.where(labels > 0, cw[1.0], cw[-1.0])
    expected = 0.5 * w @ w + 0.5 * (c * np.clip(1 - labels * scores[idx], 0, None)).sum()
    assert clf.objective_ == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cls", [MISVM, miSVM])
@pytest.mark.parametrize("solver", ["libsvm", "liblinear"])
def test_heuristic_keeps_its_best_round_and_stops(cls, solver):
    bags, y, _ = mil_problem()
    kw = dict(kernel="rbf", solver=solver, n_components=50, random_state=0)
    one = cls(max_iters=1, **kw).fit(bags, y)
    many = cls(max_iters=50, **kw).fit(bags, y)
    # the first round is among those the longer run compares
    assert many.objective_ <= one.objective_ * (1 + 1e-9)
    assert many.n_iter_ < 50  # stops when a selection repeats


def test_errors():
    with pytest.raises(ValueError, match="Only binary"):
        SIL().fit([np.zeros((2, 2))] * 3, [0, 1, 2])
    with pytest.raises(ValueError, match="class_weight"):
        SIL(class_weight="x").fit([np.zeros((2, 2)), np.ones((2, 2))], [0, 1])
    with pytest.raises(ValueError, match="Only binary"):
        MISVM().fit([np.zeros((2, 2))] * 3, [0, 1, 2])
    with pytest.raises(ValueError, match="same number of features"):
        MISVM().fit([np.zeros((2, 2)), np.zeros((2, 3))], [0, 1])
    with pytest.raises(ValueError, match="kernel"):
        MISVM(kernel="poly").fit([np.zeros((2, 2)), np.ones((2, 2))], [0, 1])
    with pytest.raises(ValueError, match="solver"):
        MISVM(solver="qp").fit([np.zeros((2, 2)), np.ones((2, 2))], [0, 1])
    with pytest.raises(ValueError, match="gamma"):
        MISVM(kernel="rbf", gamma=0).fit([np.zeros((2, 2)), np.ones((2, 2))], [0, 1])
