"""cellfeat.heterogeneity: the O(n·d) identity against the naive sum, scores by hand."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cellfeat import heterogeneity as H


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 7), st.integers(1, 5), st.integers(1, 4))))
def test_pixel_dispersion_matches_naive(images):
    naive = H.pixel_dispersion_naive(images)
    assert H.pixel_dispersion(images) == pytest.approx(naive, rel=1e-9, abs=1e-12)
    # the streaming form cancels: error bound sqrt(eps * sum ||q||^2 / n), see its docstring
    q = images.reshape(len(images), -1).astype(float) / 255
    streamed = H.dispersion_from_sums(len(q), q.sum(axis=0), float((q * q).sum()))
    bound = np.sqrt(np.finfo(float).eps * max((q * q).sum(), 1) / len(q)) * 4
    assert abs(streamed - naive) <= bound


def test_pixel_dispersion_by_hand():
    # two 1-pixel images 0 and 255: sum_{i<j} ||q_i - q_j||^2 = 1, S = 1/2
    assert H.pixel_dispersion(np.array([[0], [255]], np.uint8)) == pytest.approx(0.5)
    assert H.pixel_dispersion(np.zeros((5, 3, 3))) == 0


def test_feature_dispersion_is_root_trace():
    X = np.random.default_rng(0).normal(size=(30, 4))
    assert H.feature_dispersion(X) == pytest.approx(np.sqrt(H.covariance_trace(X)))
    assert H.feature_dispersion(X[:1]) == 0


def test_logdet_and_outliers():
    rng = np.random.default_rng(0)
    tight, wide = rng.normal(0, 0.1, (40, 3)), rng.normal(0, 2, (40, 3))
    assert H.covariance_logdet(tight) < H.covariance_logdet(wide)
    X = np.zeros((10, 2)) + rng.normal(0, 0.01, (10, 2))
    X[0] = 100  # one cell far from the median cell
    assert H.outlier_share(X) == pytest.approx(0.1)


def test_transformer_ranks_heterogeneous_bag_higher():
    rng = np.random.default_rng(0)
    rows = [("homog", *rng.normal(0, 0.2, 3)) for _ in range(30)]
    rows += [("hetero", *rng.normal(0, 2.0, 3)) for _ in range(30)]
    df = pd.DataFrame(rows, columns=["ID", "a", "b", "c"])
    out = H.HeterogeneityScores().fit_transform(df)
    assert list(out.columns) == list(H.SCORE_NAMES)
    for col in ("Bag_Heterogeneity_FeatureDispersion", "Bag_Heterogeneity_CovLogDet"):
        assert out.loc["hetero", col] > out.loc["homog", col]
