"""cellfeat.heterogeneity: the O(n·d) identity against the naive sum, scores by hand."""

import ast
from pathlib import Path

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
    # the streaming form cancels: error bound sqrt(eps * sum ||q||^2 / n), see its docstring
    q = images.reshape(len(images), -1).astype(float) / 255
    bound = np.sqrt(np.finfo(float).eps * max((q * q).sum(), 1) / len(q)) * 4
    streamed = H.dispersion_from_sums(len(q), q.sum(axis=0), float((q * q).sum()))
    assert abs(streamed - naive) <= bound
    # pixel_dispersion streams uint8 images through cv2.accumulate / cv2.norm (PixelSums),
    # the path of the features stage; same bound
    assert abs(H.pixel_dispersion(images) - naive) <= bound
    # sums of integers are exact in float64: the NumPy path for other dtypes gives the
    # same number to the last bit
    assert H.pixel_dispersion(images) == H.pixel_dispersion(images.astype(np.float32))


def test_pixel_sums_use_the_first_shape_only():
    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    # a bag with an image of another shape, as a patient folder may hold: the features
    # stage leaves it out, and so does the Python API (it raised on the old code)
    mixed = [same[0], other, *same[1:]]
    assert H.pixel_dispersion(mixed) == H.pixel_dispersion(same)
    assert H.pixel_dispersion(iter(mixed)) == H.pixel_dispersion(same)  # a generator streams
    sums = H.PixelSums()
    assert [sums.add(im) for im in mixed] == [True, False, True, True, True]
    assert sums.n == 4 and sums.shape == (6, 5, 3)
    assert sums.value() == pytest.approx(H.pixel_dispersion_naive(same), rel=1e-12)
    assert np.isnan(H.PixelSums().value()) and np.isnan(H.pixel_dispersion([]))


def test_pixel_dispersion_exact_where_cv2_norm_is_not():
    # cv2.norm(NORM_L2SQR) of this 3x4 uint8 image is 225638.99999999997 (OpenCV 4.x),
    # the exact sum of squares is 225639: PixelSums rounds it back to the integer
    image = np.random.RandomState(0).randint(0, 256, (3, 4)).astype(np.uint8)
    sums = H.PixelSums()
    sums.add(image)
    assert sums._total_sq == float((image.astype(np.int64) ** 2).sum())


def test_one_pixel_score_name():
    """The column name is defined once, in the library, and the pipelines import it."""
    import cellfeat.models.frame
    import cellfeat.models.inputs
    import pipelines.run.features
    import pipelines.run.tasks

    assert H.PIXEL_SCORE == "Bag_Heterogeneity_PixelDispersion"
    assert cellfeat.models.frame.PIXEL_SCORE is H.PIXEL_SCORE
    assert cellfeat.models.inputs.PIXEL_SCORE is H.PIXEL_SCORE
    assert pipelines.run.features.PIXEL_SCORE is H.PIXEL_SCORE
    assert pipelines.run.tasks.PIXEL_SCORE is H.PIXEL_SCORE
    root = Path(__file__).resolve().parents[1]
    defined = []
    for f in sorted([*root.glob("cellfeat/**/*.py"), *root.glob("pipelines/**/*.py")]):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and node.value.value == H.PIXEL_SCORE):
                defined.append(f.relative_to(root).as_posix())
    assert defined == ["cellfeat/pixels.py"]  # re-exported by cellfeat.heterogeneity


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
