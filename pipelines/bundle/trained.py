"""What ``cellfeat train`` can produce: the fitted estimators' attributes, the settings they
run with, and the bundle's meta. A loaded bundle is held to it.

A bundle that passes the type checks of :mod:`pipelines.bundle` can still carry values no
training run writes, and each one silently changes the call or lets the file set the cost
of a run: a NaN or −inf decision threshold flips every call, ``CellBagFeatures.stats``
repeated a million times costs gigabytes per patient at score time, ``n_jobs=2000`` starts
2000 workers, 300 extra reference variables in the meta draw 300 figures per patient. So:

- :data:`FITTED` maps each estimator class (by name) to a small check of its parameters and
  fitted attributes against what training can produce; any class cellfeat saves must be
  in it (``tests/test_trained.py`` fails otherwise), and every float an estimator holds
  must be finite unless :data:`NOT_FINITE` says what it is instead;
- :data:`EXECUTION` holds the execution settings (``n_jobs``, ``verbose``, ``memory``,
  thread counts) cellfeat's own pipelines are built with; :func:`reset_execution` puts
  them back after loading, whatever the file said (``tests/test_trained.py`` derives the
  table from :func:`cellfeat.models.make_pipeline` and a genuine bundle);
- :data:`META` is the bundle meta as ``cellfeat train`` writes it: only these keys, each
  with the kind of value training writes (``tests/test_pipelines.py`` trains and checks
  that the keys are exactly these, so a new key fails a test rather than every load).

Every check raises :class:`NotTrained` naming the value and what training writes instead.
"""

from __future__ import annotations

import math
from datetime import date, datetime

import numpy as np

__all__ = ["NotTrained", "FITTED", "NOT_FINITE", "EXECUTION", "META", "check_estimator",
           "reset_execution", "check_meta"]

#: More features, names or list items than any cellfeat model or meta holds.
MAX_ITEMS = 100_000
MAX_TEXT = 10_000


class NotTrained(ValueError):
    """A value ``cellfeat train`` never writes; the message names it."""


# --------------------------------------------------------------------------- small checks

def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and \
        not isinstance(v, (bool, np.bool_))


def _where(m, attr: str) -> str:
    return f"`{type(m).__name__}.{attr}`"


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(m, attr, lo, hi, *, whole=False, above=False):
    """A finite number in [lo, hi] (or (lo, hi] with ``above``), an integer if ``whole``."""
    v = getattr(m, attr)
    ok = _is_number(v) and math.isfinite(v) and lo <= v <= hi and not (above and v == lo) \
        and (not whole or isinstance(v, (int, np.integer)))
    if not ok:
        kind = "a whole number" if whole else "a number"
        raise NotTrained(f"{_where(m, attr)} is {_show(v)}, where training writes {kind} in "
                         f"{'(' if above else '['}{lo}, {hi}]")


def _flag(m, attr):
    if not isinstance(getattr(m, attr), (bool, np.bool_)):
        raise NotTrained(f"{_where(m, attr)} is {_show(getattr(m, attr))}, not True or False")


def _one_of(m, attr, values):
    v = getattr(m, attr)
    if not any(v is w or (type(v) is type(w) and v == w) for w in values):
        raise NotTrained(f"{_where(m, attr)} is {_show(v)}, not one of {list(values)}")


def _numbers(m, attr, *, n=None, lo=-math.inf, hi=math.inf, positive=False) -> np.ndarray:
    """A 1-D sequence of finite numbers (``n`` of them if given) within [lo, hi]."""
    v = getattr(m, attr)
    if isinstance(v, (list, tuple)) and not all(_is_number(x) for x in v):
        raise NotTrained(f"{_where(m, attr)} holds something other than numbers")
    a = np.asarray(v)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iuf") or (n is not None and len(a) != n):
        raise NotTrained(f"{_where(m, attr)} is not {n if n is not None else 'a row of'} "
                         f"numbers")
    a = a.astype(float)
    if not (np.isfinite(a).all() and (a >= lo).all() and (a <= hi).all()
            and (not positive or (a > 0).all())):
        raise NotTrained(f"{_where(m, attr)} holds values outside what training writes "
                         f"(finite{', positive' if positive else ''}, in [{lo}, {hi}])")
    return a


def _names(m, attr) -> list:
    v = getattr(m, attr)
    if not (isinstance(v, list) and len(v) <= MAX_ITEMS and all(isinstance(s, str) for s in v)
            and len(set(v)) == len(v)):
        raise NotTrained(f"{_where(m, attr)} is not a list of distinct names")
    return v


def _stats(m, attr="stats"):
    """Bag statistics: a short tuple of distinct names of :data:`cellfeat.bags.STATS`
    (``BagAggregator.fit`` refuses any other; a repeated one multiplies the score-time
    table by the file's choice)."""
    from cellfeat.bags import STATS

    v = getattr(m, attr)
    if not (isinstance(v, (tuple, list)) and 0 < len(v) <= len(STATS)
            and all(isinstance(s, str) and s in STATS for s in v) and len(set(v)) == len(v)):
        raise NotTrained(f"{_where(m, attr)} is {_show(v)}, where training writes distinct "
                         f"statistics among {list(STATS)}")


def _classes(m):
    if not np.array_equal(np.asarray(getattr(m, "classes_", None)), [0, 1]):
        raise NotTrained(f"{_where(m, 'classes_')} is not [0, 1]")


def _a(m, attr, cls: str):
    v = getattr(m, attr)
    if type(v).__name__ != cls:
        raise NotTrained(f"{_where(m, attr)} is a {type(v).__name__}, not a {cls}")
    return v


def _record(m, attr: str, keys) -> object:
    """A dict attribute with exactly ``keys``, as an object the checks above can read (their
    messages name it ``Class.attr``)."""
    v = getattr(m, attr)
    if not (isinstance(v, dict) and set(v) == set(keys)):
        raise NotTrained(f"{_where(m, attr)} is not the table training writes ({sorted(keys)})")
    return type(f"{type(m).__name__}.{attr}", (), dict(v))()


def _fitted(m, *attrs) -> bool:
    """True when ``m`` holds all of its fitted ``attrs``, False when none (a template, as
    the unfitted ``estimator`` of a wrapper); a part of them is refused."""
    have = [hasattr(m, a) for a in attrs]
    if any(have) and not all(have):
        missing = attrs[have.index(False)]
        raise NotTrained(f"{_where(m, missing)} is missing from a fitted estimator")
    return all(have)


def _seed(m, attr="random_state"):
    _number(m, attr, 0, 2**32 - 1, whole=True)


def _folds(m, attr="cv"):
    _number(m, attr, 2, 20, whole=True)


# --------------------------------------------------------------------------- estimators

def _calibrated_decision(m):
    _folds(m)
    _number(m, "repeats", 1, 100, whole=True)
    _seed(m)
    _number(m, "target_sensitivity", 0, 1, above=True)
    if _fitted(m, "classes_", "estimator_", "platt_", "oof_proba_", "inner_losses_",
               "threshold_", "triage_threshold_"):
        _classes(m)
        _numbers(m, "platt_", n=2)
        oof = np.asarray(m.oof_proba_)
        n = len(_numbers(m, "inner_losses_", lo=0))
        if not (oof.shape == (m.repeats, n) and oof.dtype.kind == "f"
                and np.isfinite(oof).all() and ((oof >= 0) & (oof <= 1)).all()):
            raise NotTrained(f"{_where(m, 'oof_proba_')} is not {m.repeats} rows of "
                             f"{n} probabilities")
        for attr in ("threshold_", "triage_threshold_"):
            _number(m, attr, 0, 1)
        if m.triage_threshold_ > m.threshold_:
            raise NotTrained(f"{_where(m, 'triage_threshold_')} is above the decision "
                             f"threshold: training never sends a tumoral call home")


def _clinical_features(m):
    _flag(m, "gender")


def _cell_bag_features(m):
    from cellfeat.heterogeneity import PIXEL_SCORE
    from cellfeat.models.inputs import ACQUISITION_NAMES

    _flag(m, "heterogeneity")
    _flag(m, "acquisition")
    _stats(m)
    if m.features is not None:
        _names(m, "features")
    if m.heterogeneity and hasattr(m, "aggregator_") and not hasattr(m, "scores_"):
        raise NotTrained(f"{_where(m, 'scores_')} is missing from a fitted estimator")
    if _fitted(m, "aggregator_", "names_"):
        aggregator = _a(m, "aggregator_", "BagAggregator")
        if tuple(aggregator.stats) != tuple(m.stats):
            raise NotTrained(f"{_where(m, 'aggregator_')} computes other statistics than "
                             f"{_where(m, 'stats')}")
        want = [n for n in aggregator.get_feature_names_out()
                if m.acquisition or n not in ACQUISITION_NAMES]
        if m.heterogeneity:
            want += list(_a(m, "scores_", "HeterogeneityScores").get_feature_names_out())
        if _names(m, "names_") not in (want, want + [PIXEL_SCORE]):
            raise NotTrained(f"{_where(m, 'names_')} is not the list of columns its parts "
                             f"compute")


def _zone_means(m):
    if m.features is not None:
        _names(m, "features")
    if _fitted(m, "limit_", "means_", "center_", "scale_"):
        _number(m, "limit_", 0, 1e6)
        means = _a(m, "means_", "CellBagFeatures")
        n = len(means.names_)
        _numbers(m, "center_", n=n)
        _numbers(m, "scale_", n=n, positive=True)


def _cell_type_score(m):
    _number(m, "C", 0, 1e6, above=True)
    _numbers(m, "cutoffs", lo=0, hi=1)
    _numbers(m, "quantiles", lo=0, hi=1)
    _folds(m)
    _seed(m)
    if m.features is not None:
        _names(m, "features")
    if _fitted(m, "features_", "model_", "thresholds_"):
        n = len(_names(m, "features_"))
        model = _record(m, "model_", ("medians", "mean", "scale", "coef", "intercept",
                                      "thresholds"))
        for key in ("medians", "mean", "coef"):
            _numbers(model, key, n=n)
        _numbers(model, "scale", n=n, positive=True)
        _numbers(model, "thresholds", n=len(m.cutoffs))
        _number(model, "intercept", -1e6, 1e6)
        _numbers(m, "thresholds_", n=len(m.cutoffs))


def _bag_aggregator(m):
    from cellfeat.extract import QC_COLUMN

    _one_of(m, "bag_col", ("ID",))
    _one_of(m, "qc_col", (QC_COLUMN,))
    _stats(m)
    if m.features is not None:
        _names(m, "features")
    if _fitted(m, "features_"):
        _names(m, "features_")


def _heterogeneity_scores(m):
    _one_of(m, "bag_col", ("ID",))
    _number(m, "outlier_threshold", 0, 100, above=True)
    if m.features is not None:
        _names(m, "features")
    if _fitted(m, "features_", "center_", "scale_"):
        n = len(_names(m, "features_"))
        _numbers(m, "center_", n=n)
        _numbers(m, "scale_", n=n, positive=True)


def _mil_features(m):
    _folds(m)
    if _fitted(m, "features_", "medians_", "stack_"):
        n = len(_names(m, "features_"))
        _numbers(m, "medians_", n=n)
        stack = _a(m, "stack_", "InstanceScoreBagFeatures")
        if getattr(stack, "n_features_in_", n) != n:
            raise NotTrained(f"{_where(m, 'stack_')} expects another number of features")


def _instance_score_bag_features(m):
    _number(m, "top_k", 1, 1000, whole=True)
    _folds(m)
    if _fitted(m, "estimator_", "n_features_in_"):
        _number(m, "n_features_in_", 1, MAX_ITEMS, whole=True)
        if getattr(m.estimator_, "n_features_in_", None) != m.n_features_in_:
            raise NotTrained(f"{_where(m, 'estimator_')} expects another number of features")


def _misvm(m):
    _one_of(m, "kernel", ("linear", "rbf"))
    _number(m, "C", 0, 1e6, above=True)
    if m.gamma != "scale":
        _number(m, "gamma", 0, 1e6, above=True)
    _number(m, "n_components", 1, 10_000, whole=True)
    _one_of(m, "solver", ("auto", "liblinear", "libsvm"))
    _number(m, "max_iters", 1, 1000, whole=True)
    _number(m, "restarts", 0, 100, whole=True)
    _one_of(m, "class_weight", ("balanced", None))
    _flag(m, "standardize")
    _seed(m)
    if _fitted(m, "classes_", "n_features_in_", "solver_", "svm_", "scaler_", "map_",
               "gamma_", "svm_class_weight_", "objective_", "n_iter_"):
        _classes(m)
        _number(m, "n_features_in_", 1, MAX_ITEMS, whole=True)
        _one_of(m, "solver_", ("liblinear", "libsvm"))
        _one_of(m, "map_", (None,))
        if m.gamma_ is not None:
            _number(m, "gamma_", 0, 1e6, above=True)
        weights = m.svm_class_weight_
        if not (isinstance(weights, dict) and len(weights) == 2
                and all(_is_number(w) and math.isfinite(w) and w > 0 for w in weights.values())):
            raise NotTrained(f"{_where(m, 'svm_class_weight_')} is not two positive weights")


def _balanced_xgb(m):
    _number(m, "n_estimators", 1, 100_000, whole=True)
    _number(m, "max_depth", 1, 64, whole=True)
    for attr in ("learning_rate", "subsample", "colsample_bytree"):
        _number(m, attr, 0, 1, above=True)
    _seed(m)
    if _fitted(m, "n_features_in_", "classes_", "model_"):
        _classes(m)
        _number(m, "n_features_in_", 1, MAX_ITEMS, whole=True)
        model = _a(m, "model_", "XGBClassifier")
        if model.get_booster().num_features() != m.n_features_in_:
            raise NotTrained(f"{_where(m, 'model_')} was fitted on another number of "
                             f"features")


def _xgb_classifier(m):
    # what decides a prediction besides the booster: the value read as missing, the
    # output's shape; XGBoost's own defaults everywhere else, as BalancedXGBClassifier fits
    if not (isinstance(m.missing, float) and math.isnan(m.missing)):
        raise NotTrained(f"{_where(m, 'missing')} is {_show(m.missing)}, not NaN")
    _one_of(m, "objective", ("binary:logistic",))
    for attr in ("enable_categorical",):
        _one_of(m, attr, (False,))
    for attr in ("feature_types", "device", "booster", "base_score", "importance_type"):
        _one_of(m, attr, (None,))
    if hasattr(m, "n_classes_"):
        _one_of(m, "n_classes_", (2,))


def _lgbm_classifier(m):
    # LightGBM's __init__ sets the private attributes to placeholders; fitted_ marks a fit
    if getattr(m, "fitted_", False) is not True:
        if getattr(m, "_Booster", None) is not None:
            raise NotTrained(f"{_where(m, '_Booster')} is set on an unfitted estimator")
    else:
        booster = _a(m, "_Booster", "Booster")
        _one_of(m, "_n_classes", (2,))
        if not np.array_equal(np.asarray(m._classes), [0, 1]):
            raise NotTrained(f"{_where(m, '_classes')} is not [0, 1]")
        _one_of(m, "_objective", ("binary",))
        if booster.num_feature() != m._n_features or m._n_features != m._n_features_in:
            raise NotTrained(f"{_where(m, '_Booster')} was fitted on another number of "
                             f"features")
        # the booster's own predict-time settings: all iterations, no pandas categories
        for attr, wants in (("best_iteration", (0,)), ("pandas_categorical", (None, []))):
            if getattr(booster, attr, None) not in wants:
                raise NotTrained(f"`Booster.{attr}` is {_show(getattr(booster, attr, None))}, "
                                 f"where training writes {wants[0]!r}")
    # parameters the wrapper passes to every predict call; training passes none but these
    other = getattr(m, "_other_params", {})
    if other != {"verbose": -1}:
        raise NotTrained(f"{_where(m, '_other_params')} is {_show(other)}, where training "
                         f"writes {{'verbose': -1}}")


def _gated_mixture(m):
    _folds(m)
    _seed(m)
    _number(m, "gate_alpha", 0, 1e6)
    if _fitted(m, "classes_", "gate_center_", "gate_scale_", "gate_coef_",
               "clinical_expert_", "image_expert_"):
        _classes(m)
        n = len(_numbers(m, "gate_center_"))
        _numbers(m, "gate_scale_", n=n, positive=True)
        _numbers(m, "gate_coef_", n=n + 1)


def _image_logit(m):
    _folds(m)
    _seed(m)
    _fitted(m, "estimator_")


def _clinical_logreg(m):
    from cellfeat.models import CLINICAL_NAMES

    _number(m, "cv", 2, 20, whole=True)
    _seed(m)
    if not (isinstance(m.Cs, (tuple, list)) and 0 < len(m.Cs) <= 100):
        raise NotTrained(f"{_where(m, 'Cs')} is not a short row of penalties")
    _numbers(m, "Cs", positive=True)
    if _fitted(m, "classes_", "gender_", "C_", "features_", "model_", "n_features_in_"):
        _classes(m)
        _flag(m, "gender_")
        if m.C_ not in list(m.Cs):
            raise NotTrained(f"{_where(m, 'C_')} is not one of its `Cs`")
        names = _names(m, "features_")
        if names != list(CLINICAL_NAMES[:len(names)]) or (len(names) == len(CLINICAL_NAMES)) \
                != bool(m.gender_):
            raise NotTrained(f"{_where(m, 'features_')} is not the clinical inputs it chose")
        _one_of(m, "n_features_in_", (len(CLINICAL_NAMES),))


def _cnn_expert(m):
    # the network is built from these before its weights are loaded: bounded here, so a
    # file cannot make the scorer allocate a network of its choosing
    for attr, hi in (("epochs", 10_000), ("bag_size", 4096), ("batch_bags", 4096),
                     ("width", 128), ("embed_dim", 1024)):
        _number(m, attr, 1, hi, whole=True)
    _number(m, "lr", 0, 10, above=True)
    _number(m, "aux_weight", 0, 100)
    _one_of(m, "device", ("auto", "cpu", "cuda"))
    _seed(m)
    if _fitted(m, "classes_", "count_mean_", "count_std_", "weights_"):
        _classes(m)
        _number(m, "count_mean_", -1e6, 1e6)
        _number(m, "count_std_", 0, 1e6, above=True)
        w = m.weights_
        if not (isinstance(w, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray)
                                            and v.dtype.kind in "fiu"
                                            and np.isfinite(v).all() for k, v in w.items())):
            raise NotTrained(f"{_where(m, 'weights_')} is not a table of finite weights")


def _cnn_embedding(m):
    _folds(m)
    if _fitted(m, "expert_"):
        _a(m, "expert_", "CNNExpert")


def _training_range(m):
    if _fitted(m, "low_", "high_", "n_features_in_"):
        _number(m, "n_features_in_", 1, MAX_ITEMS, whole=True)
        n = int(m.n_features_in_)
        low, high = _numbers(m, "low_", n=n), _numbers(m, "high_", n=n)
        if (low > high).any():
            raise NotTrained(f"{_where(m, 'low_')} lies above {_where(m, 'high_')}")


def _atypicality(m):
    _number(m, "alpha", 0, 0.5, above=True)
    _folds(m)
    _seed(m)
    if m.features is not None:
        _names(m, "features")
    if _fitted(m, "features_", "center_", "scale_", "precision_", "low_", "high_", "bars_",
               "oof_distance_", "oof_exceedance_", "qc_failed_share_", "cell_center_",
               "cell_scale_"):
        n = len(_names(m, "features_"))
        for attr in ("center_", "low_", "high_", "cell_center_"):
            _numbers(m, attr, n=n)
        for attr in ("scale_", "cell_scale_"):
            _numbers(m, attr, n=n, positive=True)
        p = np.asarray(m.precision_)
        if not (p.shape == (n, n) and p.dtype.kind == "f" and np.isfinite(p).all()):
            raise NotTrained(f"{_where(m, 'precision_')} is not a {n}x{n} matrix of numbers")
        if (np.asarray(m.low_) > np.asarray(m.high_)).any():
            raise NotTrained(f"{_where(m, 'low_')} lies above {_where(m, 'high_')}")
        bars = _record(m, "bars_", ("qc", "distance", "range"))
        _number(bars, "qc", 0, 1)
        for key in ("distance", "range"):
            _number(bars, key, 0, 1e6)
        _numbers(m, "oof_distance_", lo=0)
        _numbers(m, "oof_exceedance_", lo=0)
        _numbers(m, "qc_failed_share_", lo=0, hi=1)


#: Class name -> check of its parameters and fitted attributes (what training writes).
FITTED = {
    "TrainingRange": _training_range,
    "Atypicality": _atypicality,
    "CalibratedDecision": _calibrated_decision,
    "ClinicalFeatures": _clinical_features,
    "CellBagFeatures": _cell_bag_features,
    "ZoneMeans": _zone_means,
    "CellTypeScore": _cell_type_score,
    "BagAggregator": _bag_aggregator,
    "HeterogeneityScores": _heterogeneity_scores,
    "MILFeatures": _mil_features,
    "InstanceScoreBagFeatures": _instance_score_bag_features,
    "MISVM": _misvm,
    "BalancedXGBClassifier": _balanced_xgb,
    "XGBClassifier": _xgb_classifier,
    "LGBMClassifier": _lgbm_classifier,
    "GatedMixture": _gated_mixture,
    "ImageLogit": _image_logit,
    "ClinicalLogReg": _clinical_logreg,
    "CNNExpert": _cnn_expert,
    "CNNEmbedding": _cnn_embedding,
}

#: (class name, attribute) -> what a non-finite value there must be: parameters whose
#: meaning is "this value marks a missing one".
NOT_FINITE = {("SimpleImputer", "missing_values"): "nan", ("XGBClassifier", "missing"): "nan"}


def _floats_of(value):
    """The floats of one attribute value (a number, an array, or a flat list, tuple or
    dict of numbers); None when it holds none."""
    if isinstance(value, (float, np.floating)):
        return np.array([value], float)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (float, np.floating))
                                                          for v in value):
        return np.array(value, float)
    if isinstance(value, dict) and value and all(isinstance(v, (float, np.floating))
                                                 for v in value.values()):
        return np.array(list(value.values()), float)
    return None


def check_estimator(m) -> None:
    """Raise :class:`NotTrained` if estimator ``m`` holds what training cannot produce: a
    non-finite float (outside :data:`NOT_FINITE`) or a value its :data:`FITTED` check
    refuses. Objects of other classes are left to the caller."""
    name = type(m).__name__
    for attr, value in vars(m).items():
        floats = _floats_of(value)
        if floats is None or np.isfinite(floats).all():
            continue
        if NOT_FINITE.get((name, attr)) == "nan" and np.isnan(floats).all():
            continue
        raise NotTrained(f"`{name}.{attr}` holds {_show(value)}, not finite numbers")
    check = FITTED.get(name)
    if check is not None:
        check(m)


# --------------------------------------------------------------------------- execution

#: Class name -> the execution settings cellfeat builds it with (``make_pipeline``), put
#: back after loading: a file must not choose how many processes or threads a run starts,
#: what it prints or where it caches.
EXECUTION = {
    "Pipeline": {"memory": None, "verbose": False},
    "FeatureUnion": {"n_jobs": None, "verbose": False},
    "LogisticRegression": {"n_jobs": None, "verbose": 0},
    "LogisticRegressionCV": {"n_jobs": None, "verbose": 0},
    "LinearSVC": {"verbose": 0},
    "XGBClassifier": {"n_jobs": 1, "verbosity": None},
    "LGBMClassifier": {"n_jobs": 1, "verbose": -1, "_other_params": {"verbose": -1}},
}
#: The names an execution setting goes by; any estimator holding one must be in EXECUTION.
EXECUTION_NAMES = ("n_jobs", "num_threads", "nthread", "n_threads", "verbose", "verbosity",
                   "memory")


def reset_execution(m) -> None:
    """Put cellfeat's own execution settings back on estimator ``m`` (see
    :data:`EXECUTION`); an XGBoost booster is told to use one thread, whatever its
    serialised config said."""
    name = type(m).__name__
    for attr, value in EXECUTION.get(name, {}).items():
        setattr(m, attr, dict(value) if isinstance(value, dict) else value)
    stray = [a for a in EXECUTION_NAMES if a in vars(m) and a not in EXECUTION.get(name, {})]
    if stray:
        raise NotTrained(f"`{name}.{stray[0]}` is an execution setting cellfeat never sets")
    if name == "XGBClassifier" and getattr(m, "_Booster", None) is not None:
        m._Booster.set_param({"nthread": 1})


# --------------------------------------------------------------------------- meta

def _m_text(v, where):
    if not (isinstance(v, str) and len(v) <= MAX_TEXT):
        raise NotTrained(f"{where} is not a short text")


def _m_int(lo=0, hi=10**9):
    def check(v, where):
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise NotTrained(f"{where} is {_show(v)}, not a whole number in [{lo}, {hi}]")
    return check


def _m_number(lo=-math.inf, hi=math.inf, *, nan=False):
    def check(v, where):
        if _is_number(v) and nan and math.isnan(v):
            return
        if not (_is_number(v) and math.isfinite(v) and lo <= v <= hi):
            raise NotTrained(f"{where} is {_show(v)}, not a finite number in [{lo}, {hi}]")
    return check


_m_unit = _m_number(0, 1)
_m_figure = _m_number(nan=True)  # a reported figure: NaN where a fold had one class


def _m_one_of(values):
    def check(v, where):
        if v not in values:
            raise NotTrained(f"{where} is {_show(v)}, not one of {list(values)[:6]}")
    return check


def _m_optional(inner):
    def check(v, where):
        if v is not None:
            inner(v, where)
    return check


def _m_list(item, *, n=None, max_len=MAX_ITEMS):
    def check(v, where):
        if not (isinstance(v, list) and len(v) <= max_len and (n is None or len(v) == n)):
            raise NotTrained(f"{where} is not a list of {n if n is not None else 'items'}")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def _m_record(spec: dict):
    """A dict whose keys are among ``spec``'s, each value checked by its entry."""
    def check(v, where):
        if not isinstance(v, dict):
            raise NotTrained(f"{where} is not a table")
        for key, value in v.items():
            if key not in spec:
                raise NotTrained(f"{where} has the key {_show(key)}, which cellfeat "
                                 f"train never writes")
            spec[key](value, f"{where}.{key}")
    check.spec = spec
    return check


def _m_mapping(value, *, max_len=1000):
    """A dict of short text keys, each value checked by ``value``."""
    def check(v, where):
        if not (isinstance(v, dict) and len(v) <= max_len):
            raise NotTrained(f"{where} is not a table")
        for key, x in v.items():
            _m_text(key, where)
            value(x, f"{where}.{key}")
    return check


def _m_past_date(v, where):
    try:
        day = date.fromisoformat(v)
    except (TypeError, ValueError):
        raise NotTrained(f"{where} is {_show(v)}, not an ISO date") from None
    if day > date.today():
        raise NotTrained(f"{where} is {v}, in the future")


def _m_timestamp(v, where):
    try:
        datetime.fromisoformat(v)
    except (TypeError, ValueError):
        raise NotTrained(f"{where} is {_show(v)}, not an ISO date and time") from None


def _m_names(v, where):
    _m_list(_m_text)(v, where)
    if len(set(v)) != len(v):
        raise NotTrained(f"{where} repeats a name")


def _quantiles() -> list:
    """The quantiles training stores per class; the report draws boxes from entries 1-5."""
    from ..report.explain import QUANTILES

    return list(QUANTILES)


def _m_quantiles(v, where):
    if v != _quantiles():
        raise NotTrained(f"{where} is {_show(v)}, not the quantiles training stores")


def _m_class_range(v, where):
    """One class's quantiles of one variable: nondecreasing finite values, a count."""
    _m_record({"q": _m_list(_m_number(), n=len(_quantiles())), "n": _m_int()})(v, where)
    q = v.get("q", [])
    if any(b < a for a, b in zip(q, q[1:])):
        raise NotTrained(f"{where}.q is not in increasing order")


def reference_variables() -> frozenset:
    """The variables ``cellfeat train`` stores training ranges of (the HTML report draws one
    figure per variable): age, lymphocyte count and the heterogeneity scores."""
    from cellfeat.heterogeneity import PIXEL_SCORE, SCORE_NAMES

    return frozenset({"AGE", "LYMPH_COUNT", *SCORE_NAMES, PIXEL_SCORE})


def _m_variables(v, where):
    known = reference_variables()
    _m_mapping(_m_record({"reactive": _m_class_range, "tumoral": _m_class_range}))(v, where)
    unknown = sorted(set(v) - known)
    if unknown:
        raise NotTrained(f"{where} has the variable {_show(unknown[0])}, which cellfeat "
                         f"train never writes")


def _m_heterogeneity(v, where):
    if v is None:
        return
    _m_record({"features": _m_names, "center": _m_list(_m_number()),
               "scale": _m_list(_m_number(0, math.inf))})(v, where)
    if not len(v.get("features", [])) == len(v.get("center", [])) == len(v.get("scale", [])):
        raise NotTrained(f"{where} has features, centres and scales of other lengths")


def feature_settings():
    """The record of the feature settings train stores (built on use: it names the
    segmentation methods and channels of :mod:`cellfeat.segment`)."""
    from cellfeat.segment import CHANNELS, METHODS

    return _m_record({
        "method": _m_one_of(METHODS), "channel": _m_one_of(CHANNELS),
        "crop_window": _m_int(1, 4096), "crop_size": _m_int(1, 4096),
        "features": _m_names, "revision": _m_int(), "columns": _m_names,
        "hash": _m_text, "version": _m_text, "cohort": _m_text,
        "ruler_px": _m_number(0, math.inf, nan=True)})


def _candidates(v, where):
    from cellfeat.models import CANDIDATES

    _m_one_of(CANDIDATES)(v, where)


_THRESHOLDS = _m_record({"threshold": _m_unit, "triage_threshold": _m_unit})
_INTERVAL = _m_list(_m_figure, n=2)

#: The bundle meta as ``cellfeat train`` writes it (pipelines.run.stages.stage_train).
META = _m_record({
    "chosen": _candidates,
    "cell_features": _m_names,
    "feature_settings": lambda v, w: feature_settings()(v, w),
    "reference_date": _m_past_date,
    "cv": _m_list(_m_mapping(lambda v, w: (_m_text if isinstance(v, str) else _m_figure)(v, w),
                             max_len=100), max_len=100),
    "folds": _m_int(2, 1000), "repeats": _m_int(1, 10_000), "inner_folds": _m_int(2, 1000),
    "inner_repeats": _m_int(1, 1000),
    "seed": _m_int(0, 2**32 - 1), "n_patients": _m_int(), "n_tumoral": _m_int(),
    "trained": _m_timestamp,
    "versions": _m_mapping(_m_text, max_len=100),
    "training_ids": _m_names,
    "selection": _m_record({
        "rule": _m_text, "candidates": _m_list(_candidates, max_len=100),
        "complexity_order": _m_list(_candidates, max_len=100),
        "comparator": _candidates,
        "fallbacks": _m_record({"clinical": _candidates, "image": _candidates}),
        "figures_only": _m_list(_candidates, max_len=100),
        "inner_log_loss_in_sample": _m_mapping(_m_record(
            {"loss": _m_number(0), "gap": _m_number(), "gap_se": _m_number(0)}), max_len=100),
        "chosen": _candidates,
        "nested_choices": _m_mapping(_m_int(), max_len=100)}),
    "nested": _m_mapping(_m_figure, max_len=100),
    "zone": _m_record({
        "rule": _m_text, "limit": _m_number(0, 1e6), "training_reactive": _m_int(),
        "training_tumoral": _m_int(), "n_reactive": _m_figure, "n_tumoral": _m_figure,
        "nested": _m_record({"ba": _m_figure, "auc": _m_figure, "ci95": _INTERVAL,
                             "auc_ci95": _INTERVAL}),
        "clinical": _m_record({"ba": _m_figure, "auc": _m_figure}),
        "gain": _m_record({"delta": _m_figure, "ci95": _INTERVAL})}),
    "rails": _m_record({
        "rule": _m_text,
        "without": _m_record({"ba": _m_figure, "auc": _m_figure, "zone_ba": _m_figure,
                              "zone_auc": _m_figure, "triage_sensitivity": _m_figure,
                              "triage_spared": _m_figure}),
        "gain": _m_record({"delta": _m_figure, "ci95": _INTERVAL, "auc_delta": _m_figure,
                           "auc_ci95": _INTERVAL, "zone_delta": _m_figure,
                           "zone_ci95": _INTERVAL}),
        "atypical": _m_record({"alpha": _m_unit,
                               "bars": _m_record({"qc": _m_unit, "distance": _m_number(0, 1e6),
                                                  "range": _m_number(0, 1e6)}),
                               "oof_flagged": _m_int(), "oof_calls": _m_int(),
                               "oof_share": _m_unit, "oof_patients": _m_int(),
                               "patients": _m_int()})}),
    "images_vs_clinical": _m_record({"delta": _m_figure, "ci95": _INTERVAL,
                                     "auc_delta": _m_figure, "auc_ci95": _INTERVAL}),
    "triage": _m_record({"target_sensitivity": _m_unit, "sensitivity": _m_figure,
                         "sensitivity_ci95": _INTERVAL, "specificity": _m_figure,
                         "specificity_ci95": _INTERVAL, "fold_thresholds_median": _m_figure,
                         "fold_thresholds_range": _INTERVAL, "threshold": _m_unit}),
    "decision": _m_record({"threshold": _m_unit, "triage_threshold": _m_unit,
                           "target_sensitivity": _m_unit, "platt": _m_list(_m_number(), n=2),
                           "decimals": _m_int(0, 12),
                           "fallback_thresholds": _m_record({"clinical": _THRESHOLDS,
                                                             "image": _THRESHOLDS})}),
    "reference": _m_record({"quantiles": _m_quantiles, "variables": _m_variables,
                            "heterogeneity": _m_heterogeneity}),
    "colour_stability": lambda v, w: _m_colour_stability(v, w),
})


def _m_drifts(v, where):
    """Each shift's mean drift per input: shift name -> {input name -> finite number}."""
    _m_mapping(_m_mapping(_m_number(), max_len=1000), max_len=100)(v, where)


def _m_colour_stability(v, where):
    """The colour check's entry (:func:`pipelines.run.stability.bundle_entry`); score
    moves a patient's inputs by ``drift`` and widens by ``margin_logit``, so both must be
    finite numbers of the kind training writes, and the inputs a subset of the known
    names."""
    from cellfeat.features import FEATURE_NAMES
    from cellfeat.heterogeneity import PIXEL_SCORE

    _m_record({"bar": _m_number(0, 100),
               "sample": _m_record({"k": _m_int(1, 100_000), "seed": _m_int(0, 2**32 - 1),
                                    "rule": _m_text, "images": _m_int()}),
               "features": _m_names, "dropped": _m_names, "drift": _m_drifts,
               "margin_logit": _m_number(0, 100), "margin_quantile": _m_unit,
               "copies": _m_record({"k": _m_int(0, 100), "seed": _m_int(0, 2**32 - 1)})})(v, where)
    known = {*FEATURE_NAMES, PIXEL_SCORE}
    named = {f"{where}.{key}": v.get(key, []) for key in ("features", "dropped")}
    named |= {f"{where}.drift.{shift}": d for shift, d in (v.get("drift") or {}).items()}
    for place, names in named.items():
        unknown = sorted(set(names) - known)
        if unknown:
            raise NotTrained(f"{place} has {_show(unknown[0])}, which is not an input "
                             f"cellfeat train screens")


def check_meta(meta) -> None:
    """Raise :class:`NotTrained` unless ``meta`` has only keys ``cellfeat train`` writes,
    each holding the kind of value it writes (see :data:`META`)."""
    META(meta, "meta")
