"""Multiple-instance SVMs (Andrews, Tsochantaridis & Hofmann, NIPS 2002) that scale.

A patient is a bag of cells; only the bag label is known. ``MISVM`` (bag-level: one
"witness" cell per positive bag) and ``miSVM`` (instance-level: every cell of a positive
bag gets a latent label, at least one positive) alternate the Andrews heuristic with an
SVM: a primal linear SVM (liblinear) on an explicit feature map (identity for
``kernel="linear"``, a Nystroem approximation of the RBF kernel for ``kernel="rbf"``), whose
memory is linear in the number of cells, unlike the reference ``misvm`` package, whose
dense QP over the n×n kernel matrix fails at tens of thousands of cells; or, for the RBF
kernel on up to a few thousand instances, the exact kernel SVM (libsvm). Class and
parameter names follow ``misvm`` where they make sense. ``pipelines/mil_benchmark.py``
checks them against the published MUSK1, MUSK2 and Elephant accuracies.

Bag encoding
------------
``bags`` is a list of 2-D arrays (one (n_i, d) array per bag). A plain 2-D array is read as
bags of one instance each, which makes the estimators ordinary classifiers on tables (and
lets scikit-learn's estimator checks run). For a long cell table use :func:`bags_from_table`.
Labels ``y`` are any two classes; the positive ("witness") class is ``classes_[1]``
(1 in {0, 1}, +1 in {-1, +1}).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

__all__ = ["MISVM", "miSVM", "SIL", "bags_from_table", "InstanceScoreBagFeatures"]


def bags_from_table(table: pd.DataFrame, bag_col: str = "ID", features=None):
    """Split a long table (one row per instance) into ``(bag_ids, bags)``.

    Bags come in first-appearance order; ``features`` default to every numeric column
    except ``bag_col``.
    """
    cols = features or [c for c in table.columns if c != bag_col
                        and pd.api.types.is_numeric_dtype(table[c])]
    ids = pd.unique(table[bag_col])
    codes = pd.Index(ids).get_indexer(table[bag_col])
    values = table[cols].to_numpy(float)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(ids) + 1))
    return list(ids), [values[order[bounds[i]:bounds[i + 1]]] for i in range(len(ids))]


def _as_bags(X) -> list[np.ndarray]:
    if isinstance(X, (list, tuple)) and len(X) and np.ndim(X[0]) == 2:
        bags = [check_array(b, dtype=np.float64) for b in X]
        d = {b.shape[1] for b in bags}
        if len(d) != 1:
            raise ValueError(f"all bags must have the same number of features, got {sorted(d)}")
        return bags
    X = check_array(X, dtype=np.float64)
    return [X[i:i + 1] for i in range(len(X))]



def _fit_input(est, X, y):
    """Bags, labels and ``est.classes_`` (two classes) from the arguments of ``fit``."""
    name = type(est).__name__
    if y is None:
        raise ValueError(f"{name} requires y to be passed, but the target y is None")
    bags = _as_bags(X)
    y = column_or_1d(y, warn=True)
    if len(y) != len(bags):
        raise ValueError(f"{len(bags)} bags but {len(y)} labels")
    check_classification_targets(y)
    est.classes_ = np.unique(y)
    if len(est.classes_) != 2:
        raise ValueError(f"Only binary classification is supported. {name} needs two "
                         f"classes; got {len(est.classes_)} class(es)")
    sizes = np.array([len(b) for b in bags])
    if (sizes == 0).any():
        raise ValueError(f"bag {int(np.flatnonzero(sizes == 0)[0])} is empty")
    return bags, y, sizes


def _predict_input(est, X) -> list[np.ndarray]:
    bags = _as_bags(X)
    if bags[0].shape[1] != est.n_features_in_:
        raise ValueError(f"X has {bags[0].shape[1]} features, but {type(est).__name__} "
                         f"is expecting {est.n_features_in_} features as input")
    return bags


def _per_bag(scores, bags) -> list[np.ndarray]:
    return np.split(np.asarray(scores, float), np.cumsum([len(b) for b in bags])[:-1])

class _BagClassifier(ClassifierMixin, BaseEstimator):
    """What the bag classifiers here share: labels from the sign of the bag score, binary
    tags. Subclasses define ``decision_function`` and name their fitted model in
    ``_fitted``."""

    _fitted = ""

    def predict(self, X) -> np.ndarray:
        """Bag labels in the classes seen in ``fit`` (not raw scores, unlike ``misvm``)."""
        check_is_fitted(self, self._fitted)
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class _BaseMISVM(_BagClassifier):
    _fitted = "svm_"

    #: up to this many instances, ``kernel="rbf"`` with ``solver="auto"`` solves the exact
    #: kernel SVM (libsvm: time and memory grow as n^2, a fraction of a second per round at
    #: this size; MUSK1 and Elephant fall below it); above it, a Nystroem map and liblinear
    #: keep both linear in the number of cells.
    exact_max_instances = 2000

    def __init__(self, *, kernel="linear", C=1.0, gamma="scale", n_components=300,
                 solver="auto", max_iters=20, restarts=0, class_weight="balanced",
                 standardize=True, random_state=None):
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.n_components = n_components
        self.solver = solver
        self.max_iters = max_iters
        self.restarts = restarts
        self.class_weight = class_weight
        self.standardize = standardize
        self.random_state = random_state

    # -- feature map ---------------------------------------------------------------
    def _fit_map(self, X: np.ndarray, rng) -> np.ndarray:
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        Z = self.scaler_.transform(X) if self.scaler_ is not None else X
        if self.kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {self.kernel!r}")
        if self.solver not in ("auto", "libsvm", "liblinear"):
            raise ValueError(f"solver must be 'auto', 'libsvm' or 'liblinear', got "
                             f"{self.solver!r}")
        self.solver_ = self.solver
        if self.solver == "auto":
            self.solver_ = ("libsvm" if self.kernel == "rbf" and len(Z) <= self.exact_max_instances
                            else "liblinear")
        self.gamma_ = None
        if self.kernel == "rbf":
            if isinstance(self.gamma, str):
                if self.gamma != "scale":
                    raise ValueError(f"gamma must be 'scale' or a positive float, got "
                                     f"{self.gamma!r}")
                # scikit-learn's "scale": 1 / (d * Var(Z)) over all entries; with the
                # default standardisation Var(Z) = 1, so gamma = 1 / n_features
                var = float(Z.var())
                self.gamma_ = 1.0 / (Z.shape[1] * var) if var > 0 else 1.0
            elif self.gamma > 0:
                self.gamma_ = float(self.gamma)
            else:
                raise ValueError(f"gamma must be 'scale' or a positive float, got {self.gamma!r}")
        self.map_ = None
        if self.solver_ == "liblinear" and self.kernel == "rbf":
            self.map_ = Nystroem(gamma=self.gamma_, n_components=min(self.n_components, len(X)),
                                 random_state=rng.integers(2**31 - 1)).fit(Z)
            return self.map_.transform(Z)
        return Z

    def _map(self, X: np.ndarray) -> np.ndarray:
        Z = self.scaler_.transform(X) if self.scaler_ is not None else X
        return self.map_.transform(Z) if self.map_ is not None else Z

    def _svm(self, seed):
        if self.solver_ == "libsvm":
            return SVC(kernel=self.kernel, C=self.C, gamma=self.gamma_ or 1.0,
                       class_weight=self.svm_class_weight_, cache_size=500)
        return LinearSVC(C=self.C, class_weight=self.svm_class_weight_, dual="auto",
                         max_iter=5000, random_state=seed)

    def _set_class_weight(self, pos: np.ndarray):
        # "balanced" balances *bags*, not instances: instance counts say little about the
        # classes (a positive bag holds mostly negative-looking cells), and weighting by
        # them pushes the boundary into the negative cells, whose max then fires.
        weight = self.class_weight
        if weight == "balanced":
            n = len(pos)
            weight = {-1.0: n / (2 * max((~pos).sum(), 1)), 1.0: n / (2 * max(pos.sum(), 1))}
        elif isinstance(weight, dict):  # the SVM sees -1/+1, the user speaks in classes_
            weight = {-1.0: weight.get(self.classes_[0], 1.0),
                      1.0: weight.get(self.classes_[1], 1.0)}
        elif weight is not None:
            raise ValueError(f"class_weight must be 'balanced', a dict or None, got {weight!r}")
        self.svm_class_weight_ = weight

    # -- fitting -------------------------------------------------------------------
    def fit(self, X, y):
        """Fit on ``X`` (bags, see the module docstring) and bag labels ``y``."""
        bags, y, sizes = _fit_input(self, X, y)
        if self.C <= 0:
            raise ValueError("C must be positive")
        rng = np.random.default_rng(self.random_state)
        pos = y == self.classes_[1]
        self._set_class_weight(pos)
        X_all = np.vstack(bags)
        self.n_features_in_ = X_all.shape[1]
        Z = self._fit_map(X_all, rng)
        bag_of = np.repeat(np.arange(len(bags)), sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        best = None
        for restart in range(self.restarts + 1):
            model, objective, n_iter = self._heuristic(Z, bag_of, starts, sizes, pos, rng, restart)
            if best is None or objective < best[1]:
                best = (model, objective, n_iter)
        self.svm_, self.objective_, self.n_iter_ = best
        return self

    def _kernel(self, A, B):
        if self.kernel == "linear":
            return A @ B.T
        d2 = (A ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None] - 2 * A @ B.T
        return np.exp(-self.gamma_ * np.clip(d2, 0, None))

    def _scores(self, model, Z):
        """``model.decision_function(Z)``; for libsvm through BLAS, about 20 times faster
        than libsvm's own kernel loop."""
        if self.solver_ != "libsvm":
            return model.decision_function(Z)
        out = np.empty(len(Z))
        for i in range(0, len(Z), 2048):  # bounded memory: 2048 x n_SV kernel blocks
            out[i:i + 2048] = (self._kernel(Z[i:i + 2048], model.support_vectors_)
                               @ model.dual_coef_.ravel()) + model.intercept_[0]
        return out

    def _objective(self, model, scores, idx, labels):
        """The SVM's own objective, 0.5 |w|^2 + C sum_i c_i loss(y_i f(x_i)), of ``model`` on
        rows ``idx`` (their ``scores``) labelled ``labels``: hinge loss for libsvm, squared
        hinge for liblinear (what each minimises), c_i the class weight. Used to keep the
        best iterate and the best restart."""
        if self.solver_ == "libsvm":
            sv = model.support_vectors_
            a = model.dual_coef_.ravel()
            w2 = float(a @ (self._kernel(sv, sv) @ a))
            loss = np.clip(1 - labels * scores[idx], 0, None)
        else:
            w = model.coef_.ravel()
            w2 = float(w @ w)
            loss = np.clip(1 - labels * scores[idx], 0, None) ** 2
        weight = self.svm_class_weight_ or {}
        c = np.where(labels > 0, weight.get(1.0, 1.0), weight.get(-1.0, 1.0))
        return 0.5 * w2 + self.C * float((c * loss).sum())

    def _heuristic(self, Z, bag_of, starts, sizes, pos, rng, restart):
        raise NotImplementedError

    # -- prediction ----------------------------------------------------------------
    def instance_decision_function(self, X) -> list[np.ndarray]:
        """Every instance's SVM score, one array per bag: the "which cells drive this call"
        evidence (positive = looks like a witness of ``classes_[1]``)."""
        check_is_fitted(self, "svm_")
        bags = _predict_input(self, X)
        return _per_bag(self._scores(self.svm_, self._map(np.vstack(bags))), bags)

    def decision_function(self, X) -> np.ndarray:
        """Bag score: the maximum instance score (a bag is positive if any cell is)."""
        return np.array([s.max() for s in self.instance_decision_function(X)])

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities from a Platt (logistic) map of the bag score, calibrated on
        out-of-fold bag scores at ``fit`` time when ``calibrate`` was possible, else on the
        training scores."""
        check_is_fitted(self, "svm_")
        s = self.decision_function(X)
        calib = getattr(self, "calibrator_", None)
        if calib is None:
            p1 = 1 / (1 + np.exp(-2 * s))
        else:
            p1 = calib.predict_proba(s.reshape(-1, 1))[:, 1]
        return np.column_stack([1 - p1, p1])

    def calibrate(self, X, y, cv=3):
        """Fit the Platt map on out-of-fold bag scores (``cv`` folds); returns self."""
        bags = _as_bags(X)
        y = np.asarray(y)
        scores = np.empty(len(bags))
        folds = StratifiedKFold(cv, shuffle=True, random_state=0)
        for tr, te in folds.split(np.zeros(len(y)), y):
            m = clone(self).fit([bags[i] for i in tr], y[tr])
            scores[te] = m.decision_function([bags[i] for i in te])
        self.calibrator_ = LogisticRegression().fit(scores.reshape(-1, 1),
                                                    (y == self.classes_[1]).astype(int))
        return self


class MISVM(_BaseMISVM):
    """MI-SVM: bag-level margin, one witness instance per positive bag.

    Every instance of a negative bag is a negative example; each positive bag is
    represented by its current witness, the instance with the highest score. Witnesses
    start at the bag mean (Andrews et al.) or, for restarts, at a random instance; the SVM
    and the witnesses alternate until no witness changes or ``max_iters`` is reached.

    Parameters
    ----------
    kernel : {"linear", "rbf"}, default="linear"
    C : float, default=1.0
        SVM regularisation (larger = less regularised).
    gamma : "scale" or float, default="scale"
        RBF width, k(x, x') = exp(-gamma |x - x'|^2). "scale" is scikit-learn's
        ``1 / (n_features * Var(Z))``, Z the instance features after the optional
        standardisation (1 / n_features by default, when no feature is constant): the
        kernel then depends on the
        squared distance relative to its typical size, whatever the units.
    n_components : int, default=300
        Nystroem components for ``kernel="rbf"`` with the liblinear solver.
    solver : {"auto", "libsvm", "liblinear"}, default="auto"
        "libsvm": the exact SVM (``sklearn.svm.SVC``, hinge loss, the exact RBF kernel) as
        in Andrews et al.; time and memory grow as n^2 in the number of instances.
        "liblinear": ``LinearSVC`` (squared hinge) on an explicit feature map (identity,
        or Nystroem for RBF): linear in n. "auto": libsvm for ``kernel="rbf"`` up to
        ``exact_max_instances`` (2000) training instances, else liblinear.
    max_iters : int, default=20
        Rounds of the alternating heuristic. It stops early when the selection (witnesses,
        latent labels) repeats one already met; the round whose SVM has the lowest
        objective under the selection it implies is kept.
    restarts : int, default=0
        Extra runs from random selections; the run with the lowest objective is kept.
    class_weight : dict, "balanced" or None, default="balanced"
        "balanced" weighs the classes by the inverse of their share of *bags*.
    standardize : bool, default=True
        Standardise instance features before the map (bags cannot go through a
        ``StandardScaler`` in a ``Pipeline``).
    random_state : int, optional

    Attributes
    ----------
    classes_, n_features_in_
    svm_ : the kept ``LinearSVC`` or ``SVC``
    solver_ : "libsvm" or "liblinear", as chosen
    gamma_ : float or None, the RBF width used
    objective_ : its SVM objective; n_iter_ : rounds run (of the kept restart)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> bags = [rng.normal(size=(5, 2)) for _ in range(20)]
    >>> y = np.arange(20) % 2
    >>> for b, label in zip(bags, y):
    ...     b[0, 0] += 6 * label  # one witness cell in each positive bag
    >>> clf = MISVM(random_state=0).fit(bags, y)
    >>> float((clf.predict(bags) == y).mean())
    1.0
    """

    def _heuristic(self, Z, bag_of, starts, sizes, pos, rng, restart):
        neg_idx = np.flatnonzero(~pos[bag_of])
        pos_bags = np.flatnonzero(pos)
        yt = np.concatenate([-np.ones(len(neg_idx)), np.ones(len(pos_bags))])
        seen = set()
        if restart == 0:  # bag means as the first witnesses
            sums = np.add.reduceat(Z, starts, axis=0)
            witnesses = sums[pos_bags] / sizes[pos_bags, None]
        else:
            chosen = starts[pos_bags] + (rng.random(len(pos_bags)) * sizes[pos_bags]).astype(int)
            witnesses = Z[chosen]
            seen.add(chosen.tobytes())
        best = None
        for it in range(1, self.max_iters + 1):
            model = self._svm(int(rng.integers(2**31 - 1))).fit(
                np.vstack([Z[neg_idx], witnesses]), yt)
            scores = self._scores(model, Z)
            chosen = np.array([starts[b] + int(np.argmax(scores[starts[b]:starts[b] + sizes[b]]))
                               for b in pos_bags], dtype=int)
            # MI-SVM's objective of this model: every negative instance, and each positive
            # bag through its best instance (the witness it would pick)
            objective = self._objective(model, scores, np.concatenate([neg_idx, chosen]), yt)
            if best is None or objective < best[1]:
                best = (model, objective)
            if chosen.tobytes() in seen:  # converged, or a cycle the SVM will not leave
                break
            seen.add(chosen.tobytes())
            witnesses = Z[chosen]
        return best[0], best[1], it


class miSVM(_BaseMISVM):
    """mi-SVM: instance-level margin with latent labels for the cells of positive bags.

    Negative bags' instances are negative; positive bags' instances start positive (or,
    for restarts, random with at least one positive), then take the sign of the SVM score,
    the highest-scoring instance of each positive bag being forced positive; iterate until
    no label changes or ``max_iters``. Parameters as :class:`MISVM`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> bags = [rng.normal(size=(5, 2)) for _ in range(20)]
    >>> y = np.arange(20) % 2
    >>> for b, label in zip(bags, y):
    ...     b[:2, 0] += 6 * label
    >>> float((miSVM(random_state=0).fit(bags, y).predict(bags) == y).mean())
    1.0
    """

    def _heuristic(self, Z, bag_of, starts, sizes, pos, rng, restart):
        in_pos = pos[bag_of]
        labels = np.where(in_pos, 1.0, -1.0)
        pos_bags = np.flatnonzero(pos)
        if restart > 0:  # random latent labels, at least one positive per bag
            labels[in_pos] = np.where(rng.random(in_pos.sum()) < 0.5, 1.0, -1.0)
            self._force_witness(labels, rng.random(len(Z)), starts, sizes, pos_bags)
        seen = {np.packbits(labels[in_pos] > 0).tobytes()}
        best = None
        for it in range(1, self.max_iters + 1):
            model = self._svm(int(rng.integers(2**31 - 1))).fit(Z, labels)
            scores = self._scores(model, Z)
            labels = labels.copy()
            labels[in_pos] = np.where(scores[in_pos] > 0, 1.0, -1.0)
            self._force_witness(labels, scores, starts, sizes, pos_bags)
            # mi-SVM's objective of this model under the labels it imputes
            objective = self._objective(model, scores, slice(None), labels)
            if best is None or objective < best[1]:
                best = (model, objective)
            key = np.packbits(labels[in_pos] > 0).tobytes()
            if key in seen:  # converged, or a cycle the SVM will not leave
                break
            seen.add(key)
        return best[0], best[1], it

    @staticmethod
    def _force_witness(labels, scores, starts, sizes, pos_bags):
        for b in pos_bags:
            sl = slice(starts[b], starts[b] + sizes[b])
            if not (labels[sl] > 0).any():
                labels[starts[b] + int(np.argmax(scores[sl]))] = 1.0


class SIL(_BagClassifier):
    """Single-instance learning: every cell inherits its bag's label (Ray & Craven 2005).

    The baseline that MIL methods are measured against, and a strong one when most cells
    of a positive bag carry the signal (a tumoral population is mostly tumoral cells). Any
    scikit-learn classifier learns the cells; each cell is weighted by 1/(size of its bag)
    times a class weight, so every bag counts once whatever its size and, with
    ``class_weight="balanced"``, both classes weigh the same. Named after ``misvm.SIL``;
    unlike it, the instance learner is a parameter (e.g. gradient boosting, which is
    nonlinear and costs O(n) in the number of cells).

    Parameters
    ----------
    estimator : classifier, optional
        Instance learner with ``sample_weight`` in ``fit`` and ``predict_proba`` or
        ``decision_function``. Default: ``LogisticRegression(max_iter=1000)`` on
        standardised features.
    class_weight : "balanced", dict or None, default="balanced"
        Weight of each class's bags; "balanced" gives both classes the same total weight.

    Attributes
    ----------
    estimator_ : the fitted instance learner
    classes_ : ndarray of shape (2,)

    Notes
    -----
    Instance scores are the learner's log-odds for ``classes_[1]`` (or its decision
    function); the bag score is their mean.
    """

    _fitted = "estimator_"

    def __init__(self, estimator=None, *, class_weight="balanced"):
        self.estimator = estimator
        self.class_weight = class_weight

    def fit(self, X, y):
        bags, y, sizes = _fit_input(self, X, y)
        if not (self.class_weight in ("balanced", None) or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be 'balanced', a dict or None, got "
                             f"{self.class_weight!r}")
        pos = (y == self.classes_[1]).astype(int)
        bag_weight = np.ones(len(bags))
        if self.class_weight == "balanced":
            counts = np.bincount(pos, minlength=2)
            bag_weight = len(bags) / (2 * counts[pos])
        elif isinstance(self.class_weight, dict):
            bag_weight = np.array([self.class_weight.get(c, 1.0) for c in self.classes_])[pos]
        # instance weights sum to the bag weights: duplicating a bag's cells changes nothing
        weight = np.repeat(bag_weight / sizes, sizes)
        X_all = np.vstack(bags)
        self.n_features_in_ = X_all.shape[1]
        est = (clone(self.estimator) if self.estimator is not None else
               _make_standardised_logreg())
        # a Pipeline takes the weights in its last step
        key = f"{est.steps[-1][0]}__sample_weight" if hasattr(est, "steps") else "sample_weight"
        self.estimator_ = est.fit(X_all, np.repeat(pos, sizes), **{key: weight})
        return self

    def instance_decision_function(self, X) -> list[np.ndarray]:
        """Every instance's score, one array per bag (log-odds of ``classes_[1]``)."""
        check_is_fitted(self, "estimator_")
        bags = _predict_input(self, X)
        Z = np.vstack(bags)
        if hasattr(self.estimator_, "decision_function"):
            scores = self.estimator_.decision_function(Z)
        else:
            p = np.clip(self.estimator_.predict_proba(Z)[:, 1], 1e-12, 1 - 1e-12)
            scores = np.log(p / (1 - p))
        return _per_bag(scores, bags)

    def decision_function(self, X) -> np.ndarray:
        """Bag score: the mean instance score."""
        return np.array([s.mean() for s in self.instance_decision_function(X)])

    def predict_proba(self, X) -> np.ndarray:
        """Logistic map of the bag score (the mean log-odds; not calibrated)."""
        p1 = 1 / (1 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p1, p1])


def _make_standardised_logreg():
    from sklearn.pipeline import make_pipeline

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


class InstanceScoreBagFeatures(TransformerMixin, BaseEstimator):
    """Stack a MIL SVM: bag features from its instance scores.

    ``fit_transform`` returns out-of-fold scores for the training bags (``cv`` folds), so a
    downstream model never learns from scores the SVM produced on its own training cells;
    ``transform`` uses the SVM refitted on all bags.

    Parameters
    ----------
    estimator : MISVM, miSVM or SIL, optional (default ``MISVM()``)
    top_k : int, default=5
    cv : int, default=3
        Folds of the out-of-fold scores (fewer when a class has fewer bags). ``fit_transform``
        raises ``ValueError`` when ``cv < 2`` or a class has fewer than 2 bags, where only
        in-sample scores would be possible.

    Output columns: ``MIL_Score_Max``, ``MIL_Score_Mean``, ``MIL_Score_TopKMean``,
    ``MIL_Score_ShareAbove0``.
    """

    names = ("MIL_Score_Max", "MIL_Score_Mean", "MIL_Score_TopKMean", "MIL_Score_ShareAbove0")

    def __init__(self, estimator=None, *, top_k=5, cv=3):
        self.estimator = estimator
        self.top_k = top_k
        self.cv = cv

    def _est(self):
        return clone(self.estimator) if self.estimator is not None else MISVM()

    def fit(self, X, y):
        self.estimator_ = self._est().fit(X, y)
        self.n_features_in_ = self.estimator_.n_features_in_
        return self

    def _features(self, scores: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(scores), 4))
        for i, s in enumerate(scores):
            top = np.sort(s)[::-1][:self.top_k]
            out[i] = (s.max(), s.mean(), top.mean(), (s > 0).mean())
        return out

    def transform(self, X):
        check_is_fitted(self, "estimator_")
        return self._features(self.estimator_.instance_decision_function(X))

    def fit_transform(self, X, y):
        bags = _as_bags(X)
        y = np.asarray(y)
        self.fit(bags, y)
        out = np.empty((len(bags), 4))
        counts = np.bincount(np.unique(y, return_inverse=True)[1])
        if self.cv < 2 or counts.min() < 2:
            # in-sample scores here would hand the downstream model scores the SVM made on
            # its own training cells: refuse rather than leak
            raise ValueError(f"out-of-fold MIL scores need cv >= 2 and at least 2 bags of "
                             f"each class; got cv={self.cv} and class counts "
                             f"{dict(zip(np.unique(y).tolist(), counts.tolist()))}")
        cv = min(self.cv, counts.min())
        for tr, te in StratifiedKFold(cv, shuffle=True, random_state=0).split(bags, y):
            m = self._est().fit([bags[i] for i in tr], y[tr])
            out[te] = self._features(m.instance_decision_function([bags[i] for i in te]))
        return out

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.names, dtype=object)
