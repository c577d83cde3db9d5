"""cellfeat.features: each feature on a shape worked out by hand; registry consistency."""

import inspect

import cv2
import numpy as np
import pytest

import cellfeat.features as F
from cellfeat.features import FEATURE_NAMES, REGISTRY, compute_features
from cellfeat.segment import segment_nucleus


def disc_image(r=30, size=224):
    img = np.full((size, size, 3), (238, 222, 205), np.uint8)
    cv2.circle(img, (size // 2, size // 2), r + 8, (182, 175, 215), -1)  # cytoplasm rim
    cv2.circle(img, (size // 2, size // 2), r, (85, 45, 125), -1)
    return img


def test_disc_shape_features():
    img = disc_image(30)
    f = compute_features(img, segment_nucleus(img))
    # paper values for a disc of radius 30: A = pi r^2, P = 2 pi r, axes = 2r
    assert f["Nucleus_Shape_Area"] == pytest.approx(np.pi * 900, rel=0.03)
    assert f["Nucleus_Shape_Perimeter"] == pytest.approx(2 * np.pi * 30, rel=0.06)
    assert f["Nucleus_Shape_Solidity"] == pytest.approx(1, abs=0.03)
    assert f["Nucleus_Shape_Convexity"] == pytest.approx(1, abs=0.03)
    assert f["Nucleus_Shape_Circularity"] == pytest.approx(1, abs=0.1)
    assert f["Nucleus_Shape_MajorAxisLength"] == pytest.approx(60, rel=0.03)
    assert f["Nucleus_Shape_Eccentricity"] < 0.15
    assert f["Nucleus_Shape_BoundaryIrregularity"] < 0.03
    # the rim is 8 px wide: cell radius 38
    assert f["Cytoplasm_Shape_RimThickness"] == pytest.approx(8, abs=1.5)
    assert f["Cell_Shape_NucleusAreaRatio"] == pytest.approx(30 ** 2 / 38 ** 2, abs=0.05)
    # a flat-coloured nucleus is its own hull in colour: ratios ~ 1
    assert f["Nucleus_Colour_RGB_R_MeanRatio"] == pytest.approx(1, abs=0.02)
    assert all(np.isfinite(v) or "ROC" in k or "Texture" in k for k, v in f.items())


def test_formulas_by_hand():
    assert F.solidity(80, 100) == 0.8
    assert F.convexity(50, 40) == 0.8
    assert F.circularity(2 * np.pi * 10, np.pi * 100) == pytest.approx(1)
    # a square of side s: P^2/(4 pi A) = 16 s^2 / (4 pi s^2) = 4/pi
    assert F.circularity(40, 100) == pytest.approx(4 / np.pi)
    # ellipse with semi-axes a=4, b=2: mu20/m00 = a^2/4, mu02/m00 = b^2/4 -> axes 2a, 2b
    assert F.ellipse_axes(4.0, 1.0, 0.0, 1.0) == pytest.approx((8.0, 4.0))
    assert F.eccentricity(2, 1) == pytest.approx(np.sqrt(3) / 2)
    assert F.area_ratio(25, 100) == 0.25
    assert F.rim_thickness(np.pi * 9, np.pi * 25) == pytest.approx(2)
    assert F.mean_ratio(50, 100) == 0.5 and np.isnan(F.mean_ratio(1, 0))
    assert np.isnan(F.std_ratio(1, 0))


def test_glcm_by_hand():
    flat = np.zeros((2, 2))
    flat[0, 0] = 1
    assert F.glcm_contrast(flat) == 0 and F.glcm_homogeneity(flat) == 1
    assert F.glcm_energy(flat) == 1 and F.glcm_entropy(flat) == 0
    # two levels, all pairs (0,1)/(1,0): contrast 1, homogeneity 1/2, entropy 1 bit
    p = np.array([[0, 0.5], [0.5, 0]])
    assert F.glcm_contrast(p) == 1 and F.glcm_homogeneity(p) == 0.5
    assert F.glcm_entropy(p) == 1
    assert F.glcm_correlation(p) == pytest.approx(-1)


def test_masked_glcm_ignores_outside():
    gray = np.array([[0, 0, 0, 0], [0, 10, 20, 0], [0, 0, 0, 0]], np.uint8)
    mask = gray > 0
    p = F._masked_glcm(gray, mask)
    # only the horizontal pair (10, 20) is inside: levels 1 and 16 -> symmetric 0.5/0.5
    assert p is None or p.sum() == pytest.approx(1)


def test_registry_consistency():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    # 48 colour ratios: 4 spaces x 3 channels x (nucleus, ROC) x (mean, std)
    assert sum(n.endswith(("MeanRatio", "StdRatio")) for n in FEATURE_NAMES) == 48
    for name, feat in REGISTRY.items():
        obj, cat = name.split("_")[:2]
        assert obj in {"Nucleus", "ROC", "Cytoplasm", "Cell"}, name
        assert cat in {"Shape", "Colour", "Texture"}, name
        doc = inspect.getdoc(feat.func)
        assert doc and len(doc) > 30, f"{name}: {feat.func.__name__} needs a docstring"
    # every public feature function is in the registry
    public = {f for f in F.__all__ if inspect.isfunction(getattr(F, f))} - {"compute_features"}
    used = {feat.func.__name__ for feat in REGISTRY.values()}
    assert public <= used


def test_refuses_failed_segmentation():
    blank = np.full((224, 224, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="blank_image"):
        compute_features(blank, segment_nucleus(blank))
