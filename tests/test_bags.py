"""cellfeat.bags: aggregation by hand, one-cell and no-cell bags, estimator checks."""

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from cellfeat.bags import BagAggregator

# With a 2-D array, column 0 is the bag ID; the generic checks draw random floats there,
# so every row is its own bag and most checks apply unchanged.
EXPECTED_FAILED = {
    "check_transformer_preserve_dtypes": "statistics are computed and returned in float64",
    "check_n_features_in_after_fitting": "a one-column array is refused (a bag column and no "
                                         "feature) before the feature-count check runs",
    "check_estimators_nan_inf": "NaN features are allowed: the statistics skip them",
}


@parametrize_with_checks([BagAggregator()], expected_failed_checks=lambda e: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def cells():
    return pd.DataFrame({
        "ID": ["a", "a", "a", "b", "c", "c"],
        "QC_STATUS": ["ok", "ok", "ok", "ok", "no_nucleus", "blank_image"],
        "x": [1.0, 2.0, 6.0, 5.0, np.nan, np.nan],
    })


def test_statistics_by_hand():
    out = BagAggregator().fit_transform(cells())
    assert list(out.index) == ["a", "b", "c"]
    a = out.loc["a"]
    # mean of 1, 2, 6 = 3; population sd = sqrt((4 + 1 + 9) / 3)
    assert a["Bag_Mean_x"] == 3 and a["Bag_Std_x"] == pytest.approx(np.sqrt(14 / 3))
    assert a["Bag_Q50_x"] == 2 and a["Bag_Q10_x"] == pytest.approx(1.2)  # linear interpolation
    assert a["Bag_Q90_x"] == pytest.approx(5.2)
    assert a["Bag_NCells"] == 3 and a["Bag_QCFailedShare"] == 0


def test_one_cell_bag_has_zero_std():
    b = BagAggregator().fit_transform(cells()).loc["b"]
    assert b["Bag_Std_x"] == 0 and b["Bag_Mean_x"] == 5


def test_no_usable_cell_bag_is_nan_with_counts():
    c = BagAggregator().fit_transform(cells()).loc["c"]
    assert np.isnan(c["Bag_Mean_x"]) and c["Bag_NCells"] == 2 and c["Bag_QCFailedShare"] == 1


def test_names_match_output():
    agg = BagAggregator().fit(cells())
    assert list(agg.get_feature_names_out()) == list(agg.transform(cells()).columns)


def test_errors():
    with pytest.raises(ValueError, match="bag column"):
        BagAggregator(bag_col="PATIENT").fit(cells())
    with pytest.raises(ValueError, match="unknown stats"):
        BagAggregator(stats=("Max",)).fit(cells())
