"""pipelines.bundle.trained: the tables of what training can produce are complete and derived.

The refusals themselves are shown on crafted bundles in ``tests/test_bundle.py``; here the
tables are checked against the code that builds the models, so that a new estimator or a
new execution setting fails a test instead of being silently unchecked (or every bundle
being refused). The meta keys are checked against a real ``cellfeat train`` run in
``tests/test_pipelines.py``.
"""

import math

import numpy as np
import pytest

from pipelines.bundle.files import ALLOWED_TYPES, ESTIMATOR_TYPES
from pipelines.bundle.trained import (EXECUTION, EXECUTION_NAMES, FITTED, NotTrained,
                               check_estimator, check_meta, reset_execution)


def test_every_cellfeat_estimator_has_a_check_and_every_check_a_class():
    cellfeat_classes = {t.rsplit(".", 1)[1] for t in ESTIMATOR_TYPES if t.startswith("cellfeat.")}
    assert cellfeat_classes <= set(FITTED), sorted(cellfeat_classes - set(FITTED))
    assert set(FITTED) <= {t.rsplit(".", 1)[1] for t in ALLOWED_TYPES}


def _estimators(obj):
    """Every estimator inside an unfitted pipeline (through get_params)."""
    out, stack = [], [obj]
    while stack:
        o = stack.pop()
        if hasattr(o, "get_params"):
            out.append(o)
            stack.extend(v for v in o.get_params(deep=False).values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return out


def test_execution_table_is_what_make_pipeline_builds():
    from cellfeat.models import available_candidates, make_pipeline

    seen = set()
    for name in available_candidates():
        for est in _estimators(make_pipeline(name)):
            cls = type(est).__name__
            held = {a: getattr(est, a) for a in EXECUTION_NAMES if a in vars(est)}
            if held:
                seen.add(cls)
                assert cls in EXECUTION, f"{cls} has {held}: add it to EXECUTION"
                for attr, value in held.items():
                    assert EXECUTION[cls][attr] == value, (cls, attr, value)
    # the fitted ones training adds (XGBClassifier inside BalancedXGBClassifier, the
    # MI-SVM's LinearSVC) are compared on a genuine bundle in tests/test_bundle.py
    assert seen <= set(EXECUTION)


def test_reset_puts_cellfeat_settings_back():
    from sklearn.pipeline import FeatureUnion, Pipeline

    union = FeatureUnion([], n_jobs=2000, verbose=True)
    pipe = Pipeline([("u", union)], memory="/tmp/somewhere")
    for est in (union, pipe):
        reset_execution(est)
    assert union.n_jobs is None and union.verbose is False and pipe.memory is None


def test_an_execution_setting_on_a_class_outside_the_table_is_refused():
    from cellfeat.models import ClinicalFeatures

    est = ClinicalFeatures()
    est.n_jobs = 64
    with pytest.raises(NotTrained, match="ClinicalFeatures.n_jobs"):
        reset_execution(est)


@pytest.mark.parametrize("value", [math.nan, -math.inf, 1.5])
def test_a_threshold_outside_0_1_is_refused(value):
    from sklearn.linear_model import LogisticRegression

    from cellfeat.models import CalibratedDecision

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    m = CalibratedDecision(LogisticRegression()).fit(X, (X[:, 0] > 0).astype(int))
    check_estimator(m)                      # as fitted
    m.threshold_ = value
    with pytest.raises(NotTrained, match="CalibratedDecision.threshold_"):
        check_estimator(m)


def test_nan_anywhere_in_a_fitted_float_is_refused():
    from sklearn.preprocessing import StandardScaler

    s = StandardScaler().fit(np.arange(6.0).reshape(3, 2))
    check_estimator(s)
    s.scale_ = np.array([1.0, np.nan])
    with pytest.raises(NotTrained, match="StandardScaler.scale_"):
        check_estimator(s)


def test_meta_unknown_key_is_named():
    with pytest.raises(NotTrained, match="meta has the key 'note'"):
        check_meta({"chosen": "clinical-logreg", "note": "x"})


def test_meta_subsets_pass_as_earlier_bundles_wrote_them():
    check_meta({"cell_features": []})
    check_meta({"reference_date": "2020-01-01", "decision": {"threshold": 0.5}})


@pytest.mark.parametrize("meta, named", [
    ({"feature_settings": {"method": "bogus"}}, "meta.feature_settings.method"),
    ({"feature_settings": {"channel": "infrared"}}, "meta.feature_settings.channel"),
    ({"chosen": "nope"}, "meta.chosen"),
    ({"reference_date": "20-1-1"}, "meta.reference_date"),
    ({"colour_stability": {"features": ["Not_A_Feature"]}}, "meta.colour_stability.features"),
    ({"colour_stability": {"drift": {"cool-wb": {"Nucleus_Shape_Area": float("nan")}}}},
     "meta.colour_stability.drift"),
])
def test_settings_outside_the_known_values_are_refused(meta, named):
    """Issue 20: settings are among the values cellfeat knows (segmentation methods and
    channels of cellfeat.segment, the candidates, an ISO date); issue 22: the colour entry
    holds known inputs and finite drifts, which score adds to a patient's features."""
    with pytest.raises(NotTrained, match=named.replace(".", r"\.")):
        check_meta(meta)
