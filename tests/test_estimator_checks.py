"""scikit-learn's estimator checks on every transformer and classifier of the candidates.

``parametrize_with_checks`` runs the common checks; each expected failure is listed with its
reason. The common checks feed numeric arrays, and four of these estimators take a cohort
frame (one row per patient with AGE, LYMPH_COUNT, GENDER and a CELLS table, see
:mod:`cellfeat.models`): for them the checks that need a numeric array cannot run, so the
same properties (fit returns self, NotFittedError, parameters untouched, input untouched,
idempotent fit, pickling, row order and subset invariance, feature names) are checked on
cohort frames below.
"""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from cellfeat.models.celltype import CellTypeScore
from cellfeat.models.learners import TrainingRange
from cellfeat.heterogeneity import HeterogeneityScores
from cellfeat.mil import MISVM, InstanceScoreBagFeatures
from cellfeat.models import (BalancedXGBClassifier, CellBagFeatures, ClinicalFeatures,
                             GatedMixture, MILFeatures)

pytestmark = pytest.mark.estimator_checks  # scikit-learn's contract checks; `make test` runs them

# --- estimators on numeric arrays ---------------------------------------------------------

# A 2-D array's first column is the bag ID; the checks draw random floats there, so every
# row is its own bag and the output has one row per sample.
HETEROGENEITY_EXPECTED = {
    "check_transformer_preserve_dtypes": "returns a DataFrame indexed by bag ID (float64 "
                                         "scores), which has no single dtype to compare",
}
# A 2-D array is read as bags of one instance. The MIL SVMs are binary, and the common
# checks give transformers a three-class y.
_THREE_CLASSES = "binary only (MI-SVM witnesses): the check's y has three classes"
INSTANCE_SCORES_EXPECTED = {
    **{check: _THREE_CLASSES for check in (
        "check_dict_unchanged", "check_dont_overwrite_parameters", "check_dtype_object",
        "check_estimators_fit_returns_self", "check_estimators_overwrite_params",
        "check_f_contiguous_array_estimator", "check_fit2d_predict1d",
        "check_fit_score_takes_y", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit", "check_readonly_memmap_input")},
    "check_transformer_general": "fit_transform returns out-of-fold scores (stacking "
                                 "without leakage), transform the refitted SVM's: they differ "
                                 "by design",
    "check_transformer_data_not_an_array": "fit_transform is out-of-fold, transform is not "
                                           "(see check_transformer_general)",
}


def _expected_on_arrays(estimator):
    if isinstance(estimator, HeterogeneityScores):
        return HETEROGENEITY_EXPECTED
    if isinstance(estimator, InstanceScoreBagFeatures):
        return INSTANCE_SCORES_EXPECTED
    return {}  # BalancedXGBClassifier and TrainingRange pass every check


@parametrize_with_checks([BalancedXGBClassifier(n_estimators=5), HeterogeneityScores(),
                          InstanceScoreBagFeatures(MISVM(random_state=0)), TrainingRange()],
                         expected_failed_checks=_expected_on_arrays)
def test_array_estimators(estimator, check):
    check(estimator)


# --- estimators on cohort frames ----------------------------------------------------------

_FRAME = "input is a cohort frame (AGE, LYMPH_COUNT, GENDER, CELLS), not a numeric array"
# The checks that call fit, transform or predict on numeric arrays, per estimator. Some
# array checks pass without reading the array: ClinicalFeatures.fit ignores X, and
# GatedMixture.fit refuses a y of other than two classes (check_complex_data, check_fit1d,
# check_fit2d_1sample draw such a y) before it reads X. The properties these checks stand
# for are checked on cohort frames by the tests below.
_TRANSFORMER_ARRAY_CHECKS = (
    "check_complex_data", "check_dict_unchanged", "check_dtype_object",
    "check_estimator_sparse_tag", "check_estimators_dtypes",
    "check_estimators_empty_data_messages", "check_estimators_nan_inf",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit1d",
    "check_fit2d_predict1d", "check_fit_check_is_fitted", "check_fit_idempotent",
    "check_fit_score_takes_y", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_n_features_in",
    "check_n_features_in_after_fitting", "check_pipeline_consistency",
    "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes")
_FITTED_ON_ARRAY_CHECKS = (  # these fit on an array first (ClinicalFeatures.fit ignores X)
    "check_dont_overwrite_parameters", "check_estimator_sparse_array",
    "check_estimator_sparse_matrix", "check_estimators_fit_returns_self",
    "check_estimators_overwrite_params", "check_fit2d_1feature", "check_fit2d_1sample",
    "check_positive_only_tag_during_fit", "check_readonly_memmap_input")
FRAME_EXPECTED = {
    ClinicalFeatures: {c: _FRAME for c in (*_TRANSFORMER_ARRAY_CHECKS,
                                           "check_transformers_unfitted")},
    CellBagFeatures: {c: _FRAME for c in (*_TRANSFORMER_ARRAY_CHECKS,
                                          *_FITTED_ON_ARRAY_CHECKS)},
    MILFeatures: {c: _FRAME for c in (*_TRANSFORMER_ARRAY_CHECKS, *_FITTED_ON_ARRAY_CHECKS)},
    # fit refuses the y of check_complex_data and check_fit1d before it reads X, and
    # check_estimator_sparse_tag reads only the tags: those three pass
    CellTypeScore: {c: _FRAME for c in (*_TRANSFORMER_ARRAY_CHECKS, *_FITTED_ON_ARRAY_CHECKS)
                    if c not in ("check_complex_data", "check_fit1d",
                                 "check_estimator_sparse_tag")},
    GatedMixture: {c: _FRAME for c in (
        "check_classifier_data_not_an_array", "check_classifiers_classes",
        "check_classifiers_train", "check_dict_unchanged", "check_dtype_object",
        "check_estimator_sparse_tag", "check_estimators_dtypes",
        "check_estimators_empty_data_messages", "check_estimators_nan_inf",
        "check_estimators_pickle", "check_f_contiguous_array_estimator",
        "check_fit2d_predict1d", "check_fit_check_is_fitted", "check_fit_idempotent",
        "check_fit_score_takes_y", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_n_features_in",
        "check_n_features_in_after_fitting", "check_pipeline_consistency",
        "check_requires_y_none", "check_supervised_y_2d", "check_fit2d_1feature",
        "check_dont_overwrite_parameters", "check_estimator_sparse_array",
        "check_estimator_sparse_matrix", "check_estimators_fit_returns_self",
        "check_estimators_overwrite_params", "check_positive_only_tag_during_fit",
        "check_readonly_memmap_input")},
}


def frame_estimators():
    return [ClinicalFeatures(), CellBagFeatures(), MILFeatures(MISVM(random_state=0)),
            GatedMixture(), CellTypeScore()]


@parametrize_with_checks(frame_estimators(),
                         expected_failed_checks=lambda e: FRAME_EXPECTED[type(e)])
def test_frame_estimators_common_checks(estimator, check):
    check(estimator)


def cohort(n=24, seed=0):
    """A small cohort frame: tumoral patients have older age, higher counts and larger,
    more uniform cells; two patients have no usable cell, one has an unknown gender."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rows = []
    for i in range(n):
        k = int(rng.integers(4, 9))
        size = rng.normal(50 + 10 * y[i], 8 - 4 * y[i], k)
        cells = pd.DataFrame({"QC_STATUS": ["ok"] * (k - 1) + ["no_nucleus"],
                              "Nucleus_Shape_Area": size,
                              "Nucleus_Colour_Mean": rng.normal(0.5, 0.1, k),
                              "Cell_Shape_Area": size * rng.normal(2.0, 0.2, k)})
        cells.loc[k - 1, ["Nucleus_Shape_Area", "Nucleus_Colour_Mean", "Cell_Shape_Area"]] = np.nan
        if i in (3, 10):
            cells["QC_STATUS"] = "blank_image"
        rows.append({"AGE": 55 + 15 * y[i] + rng.normal(0, 8), "GENDER": "MF"[i % 2],
                     "LYMPH_COUNT": float(np.exp(rng.normal(1 + 1.5 * y[i], 0.6))),
                     "CELLS": cells})
    X = pd.DataFrame(rows, index=[f"P{i:02d}" for i in range(n)])
    X.loc["P05", "GENDER"] = None
    return X, y


def output(est, X):
    if hasattr(est, "predict_proba"):
        return np.asarray(est.predict_proba(X))
    return est.transform(X)


def assert_same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def frame_copy(X):
    return X.assign(CELLS=[c.copy() for c in X["CELLS"]])


def assert_frame_untouched(X, before):
    pd.testing.assert_frame_equal(X.drop(columns="CELLS"), before.drop(columns="CELLS"))
    for a, b in zip(X["CELLS"], before["CELLS"]):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("estimator", frame_estimators(), ids=lambda e: type(e).__name__)
def test_frame_estimator_contract(estimator):
    X, y = cohort()
    before, params = frame_copy(X), clone(estimator).get_params()
    est = clone(estimator)
    if not isinstance(est, ClinicalFeatures):  # stateless: nothing to fit
        with pytest.raises(NotFittedError):
            output(est, X)
    assert est.fit(X, y) is est  # fit returns self
    assert_frame_untouched(X, before)  # fit and predict leave the input alone
    out = output(est, X)
    assert_frame_untouched(X, before)
    assert repr(est.get_params()) == repr(params)  # fit leaves the parameters alone
    assert len(out) == len(X)
    if isinstance(out, pd.DataFrame):
        assert list(out.index) == list(X.index)
        assert list(out.columns) == list(est.get_feature_names_out())
        assert out.dtypes.map(lambda t: t == float).all()
    assert_same(output(clone(estimator).fit(X, y), X), out)  # idempotent, deterministic
    assert_same(output(pickle.loads(pickle.dumps(est)), X), out)
    order = np.random.default_rng(1).permutation(len(X))
    shuffled = output(est, X.iloc[order])
    assert_same(shuffled, out.iloc[order] if isinstance(out, pd.DataFrame) else out[order])
    half = X.index[:9]
    part = output(est, X.loc[half])
    assert_same(part, out.loc[half] if isinstance(out, pd.DataFrame) else out[:9])


@pytest.mark.parametrize("estimator", [MILFeatures(MISVM(random_state=0)), GatedMixture(),
                                       CellTypeScore()],
                         ids=lambda e: type(e).__name__)
def test_frame_estimator_labels(estimator):
    X, y = cohort()
    with pytest.raises(ValueError, match="class"):
        clone(estimator).fit(X, np.zeros(len(X), int))  # one class
    with pytest.raises(ValueError, match="Unknown label type|class"):
        clone(estimator).fit(X, np.linspace(0, 1, len(X)))  # a continuous target
    with pytest.raises(TypeError):
        clone(estimator).fit(X)  # y is required
