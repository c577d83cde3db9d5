"""cellfeat.features: each feature on a shape worked out by hand; registry consistency; a
baseline-CSV regression test over the whole registry.

Cells here are drawn by hand with flat colours and given their true masks (a
:class:`Segmentation` built from them), so every expected number follows from the drawing,
not from the segmenter. Regenerate the baseline after an intended formula change (and a
``FEATURES_REVISION`` bump) with::

    .venv/bin/python tests/test_features.py --regenerate-baseline
"""

import inspect
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import cellfeat.features as F
from cellfeat.features import FEATURE_NAMES, REGISTRY, compute_features
from cellfeat.segment import Segmentation, segment_nucleus

BASELINE = Path(__file__).parent / "baselines" / "features.csv"
PLASMA = (240, 226, 206)
RBC = (182, 150, 162)
NUCLEUS = (80, 40, 130)
CYTO = (160, 165, 185)
LN = lambda v: np.log(np.asarray(v, float) + F.OD_CODE_OFFSET)  # noqa: E731  ln(I + c0), as in the module


def srgb_linear(code):
    """sRGB decoding (IEC 61966-2-1) of 8-bit codes: the light that texture densities use."""
    v = np.asarray(code, float) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def make_seg(nucleus: np.ndarray, cell: np.ndarray) -> Segmentation:
    """A Segmentation from true masks (nucleus ⊂ cell), as the segmenter would return it."""
    nuc_u8 = nucleus.astype(np.uint8)
    cnts, _ = cv2.findContours(nuc_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(cnts, key=cv2.contourArea)
    hull_contour = cv2.convexHull(contour)
    hull = np.zeros_like(nuc_u8)
    cv2.fillConvexPoly(hull, hull_contour, 1)
    hull = hull.astype(bool) | nucleus
    ys, xs = np.nonzero(cell | hull)
    return Segmentation(nucleus=nucleus, cell=cell | nucleus, roc=hull & ~nucleus, hull=hull,
                        contour=contour.reshape(-1, 2), hull_contour=hull_contour.reshape(-1, 2),
                        status="ok", method="otsu", channel="stain", threshold=np.nan,
                        box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def disc(shape, centre, r):
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (int(centre[0]), int(centre[1])), int(r), 1, -1)
    return m.astype(bool)


def flat_cell(size=200, r=20, R=30, offset=(0, 0), red_cells=True):
    """Plasma, four red cells in the corners, a cytoplasm disc of radius R and a nucleus disc
    of radius r shifted by ``offset`` from the cell centre; flat colours."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = PLASMA
    if red_cells:
        for cx, cy in ((30, 30), (170, 30), (30, 170), (170, 170)):
            cv2.circle(img, (cx, cy), 22, RBC, -1)
    c = (size // 2, size // 2)
    cell = disc(img.shape[:2], c, R)
    nucleus = disc(img.shape[:2], (c[0] + offset[0], c[1] + offset[1]), r)
    img[cell] = CYTO
    img[nucleus] = NUCLEUS
    return img, nucleus, cell


def od(region_rgb, plasma=PLASMA):
    return LN(plasma) - LN(region_rgb)


# ------------------------------------------------------------------------ shape


def test_concentric_discs_shape():
    img, nucleus, cell = flat_cell(r=20, R=30)
    f = compute_features(img, make_seg(nucleus, cell))
    # paper values: areas pi r^2 (pixel counts of cv2 discs are within 2 %)
    assert f["Cell_Shape_Area"] == pytest.approx(np.pi * 900, rel=0.02)
    assert f["Cell_Shape_EquivalentDiameter"] == pytest.approx(60, rel=0.01)
    assert f["Cell_Shape_NucleusAreaRatio"] == pytest.approx(400 / 900, rel=0.03)
    # every outline pixel is R - r = 10 px from the nucleus
    assert f["Cytoplasm_Shape_RimWidthMean"] == pytest.approx(10, abs=0.7)
    assert f["Cytoplasm_Shape_RimWidthStd"] < 0.5
    assert f["Cell_Shape_NucleusOffset"] < 0.01
    assert f["Cell_Shape_Solidity"] == pytest.approx(1, abs=0.03)
    assert f["Cell_Shape_Convexity"] == pytest.approx(1, abs=0.03)
    assert f["Cell_Shape_Circularity"] == pytest.approx(1, abs=0.1)
    # the outline touches no red cell
    assert f["Cell_Shape_RedCellIndentation"] == 0


def test_eccentric_nucleus():
    # nucleus r=10 shifted by d=6 in a cell R=30: offset d/R = 0.2; the rim width
    # |P - c_n| - r along the outline has mean ~R - r = 20 and std ~d/sqrt(2) = 4.24
    # (first order in d/R: |P - c_n| = R - d cos(theta))
    img, nucleus, cell = flat_cell(r=10, R=30, offset=(6, 0))
    f = compute_features(img, make_seg(nucleus, cell))
    assert f["Cell_Shape_NucleusOffset"] == pytest.approx(6 / 30, abs=0.01)
    assert f["Cytoplasm_Shape_RimWidthMean"] == pytest.approx(20, abs=0.8)
    assert f["Cytoplasm_Shape_RimWidthStd"] == pytest.approx(6 / np.sqrt(2), abs=0.4)


def test_red_cell_indentation():
    # a red cell (radius 14) bites into the cell (R=30) from the right; expected share of
    # the cell's convex hull held by red-cell pixels outside the cell, counted with
    # scikit-image's convex_hull_image (an independent hull)
    from skimage.morphology import convex_hull_image

    img, nucleus, cell = flat_cell(r=15, R=30)
    bite = disc(cell.shape, (100 + 34, 100), 14)
    img[bite] = RBC
    cell = cell & ~bite
    hull = convex_hull_image(cell)
    expected = (hull & ~cell & bite).sum() / hull.sum()
    assert expected > 0.02  # the drawing really dents the outline
    f = compute_features(img, make_seg(nucleus, cell))
    assert f["Cell_Shape_RedCellIndentation"] == pytest.approx(expected, rel=0.1)
    assert f["Cell_Shape_Solidity"] < 0.98


def notched_disc(r=30, notches=((1, 0),), depth=12, width=6, size=200):
    """A disc nucleus of radius r with radial slots ``width`` px wide cut ``depth`` px deep
    from the outline, one per unit vector in ``notches`` (axis-aligned)."""
    nucleus = disc((size, size), (size // 2, size // 2), r)
    c = size // 2
    for ux, uy in notches:
        slot = np.zeros_like(nucleus)
        if ux:
            x0 = c + ux * (r - depth) if ux > 0 else c - r - 1
            x1 = c + r + 1 if ux > 0 else c - (r - depth) + 1
            slot[c - width // 2:c + width // 2, min(x0, x1):max(x0, x1)] = True
        else:
            y0 = c + uy * (r - depth) if uy > 0 else c - r - 1
            y1 = c + r + 1 if uy > 0 else c - (r - depth) + 1
            slot[min(y0, y1):max(y0, y1), c - width // 2:c + width // 2] = True
        nucleus &= ~slot
    return nucleus


def test_nuclear_notches_by_hand():
    # a slot 12 px deep and 6 px wide cut into a disc of radius 30: the hull edge across the
    # slot's mouth lies on the circle, within a sagitta 3^2 / (2 x 30) = 0.15 px, so the
    # notch is 12 px deep (+-1 px of pixel staircase); relative to the equivalent radius
    img, _, cell = flat_cell(r=30, R=40)
    for notches in (((1, 0),), ((1, 0), (0, -1))):  # one slot, or two: the deepest counts
        nucleus = notched_disc(notches=notches)
        f = compute_features(img, make_seg(nucleus, cell))
        r_eq = np.sqrt(nucleus.sum() / np.pi)
        assert f["Nucleus_Shape_DeepestConcavity"] == pytest.approx(12 / r_eq, abs=1 / r_eq)
    # a disc: only the pixel staircase (under 1.5 px)
    plain = disc(cell.shape, (100, 100), 30)
    assert compute_features(img, make_seg(plain, cell))["Nucleus_Shape_DeepestConcavity"] < 0.05


def test_deepest_concavity_formula():
    assert F.deepest_concavity(np.array([3.0, 6.0]), np.pi * 100) == pytest.approx(0.6)
    assert F.deepest_concavity(np.zeros(0), np.pi * 100) == 0  # convex: no defect
    assert np.isnan(F.deepest_concavity(np.array([1.0]), 0))


def wavy_cell(R=60, k=24, amplitude=2.0, size=200):
    """A cell whose outline is r(theta) = R + amplitude cos(k theta) (filled polygon)."""
    t = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    r = R + amplitude * np.cos(k * t)
    pts = np.stack([size / 2 + r * np.cos(t), size / 2 + r * np.sin(t)], axis=1)
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], 1)
    return m.astype(bool)


def test_hairiness_by_hand():
    img, nucleus, _ = flat_cell(r=20, R=30)
    smooth = disc(nucleus.shape, (100, 100), 60)
    wavy = wavy_cell()
    h0 = compute_features(img, make_seg(nucleus, smooth))["Cell_Shape_Hairiness"]
    h1 = compute_features(img, make_seg(nucleus, wavy))["Cell_Shape_Hairiness"]
    # a disc: the smoothing (sigma = R/8 along the arc) shrinks a circle by
    # 1 - exp(-1/128) = 0.0078 of R, plus the pixel staircase (under 0.5 px / 60)
    assert 1 - np.exp(-1 / 128) < h0 < 1 - np.exp(-1 / 128) + 0.5 / 60
    # 24 waves of 2 px: the smoothing keeps exp(-(24/8)^2 / 2) = 1 % of them, so each
    # point lies |2 cos| px off the smoothed outline, 2 x 2/pi px on average: 0.0212 of R
    # (the disc's offsets of under 1 px average out within waves of 2 px)
    assert h1 == pytest.approx(2 * 2 / np.pi / 60, rel=0.1)
    assert h1 > 2 * h0


def test_disc_shape_features_through_the_segmenter():
    img = np.full((224, 224, 3), (238, 222, 205), np.uint8)
    cv2.circle(img, (112, 112), 38, (182, 175, 215), -1)  # cytoplasm rim
    cv2.circle(img, (112, 112), 30, (85, 45, 125), -1)
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
    assert F.equivalent_diameter(np.pi * 25) == pytest.approx(10)
    assert F.rim_width_mean(np.array([1.0, 3.0])) == 2 and F.rim_width_std(np.array([1.0, 3.0])) == 1
    # centroids 3-4-5 apart in a cell of equivalent radius 10
    assert F.centroid_offset((0, 0), (3, 4), np.pi * 100) == pytest.approx(0.5)
    assert F.red_cell_indentation(10, 200) == 0.05 and np.isnan(F.red_cell_indentation(1, 0))
    assert F.relative_od(0.9, 0.3) == pytest.approx(3) and np.isnan(F.relative_od(1, 0))
    # OD ratio R/G of the region e^1 times that of the red cells -> basophilia 1
    assert F.basophilia(np.array([np.e, 1.0, 0]), np.array([1.0, 1.0, 0])) == pytest.approx(1)
    assert np.isnan(F.basophilia(np.array([0.0, 1, 0]), np.array([1.0, 1, 0])))
    assert F.density_ratio(np.array([1, 1, 1]), np.array([2, 2, 2])) == 0.5
    assert F.od_heterogeneity(2.0, 0.5) == 0.25 and np.isnan(F.od_heterogeneity(0.0, 1.0))
    assert F.clumping_index(8, 2) == 4 and np.isnan(F.clumping_index(1, 0))


# ------------------------------------------------------------------------ colour


def test_references_recover_the_drawn_colours():
    img, nucleus, cell = flat_cell()
    m = F.CellMeasurements(img, make_seg(nucleus, cell))
    refs = m.references
    np.testing.assert_allclose(refs.plasma, LN(PLASMA), atol=1e-6)
    np.testing.assert_allclose(refs.red_cells, LN(RBC), atol=1e-6)
    assert refs.n_red_cells > F.MIN_REFERENCE_PIXELS


def test_colour_features_by_hand():
    img, nucleus, cell = flat_cell()
    f = compute_features(img, make_seg(nucleus, cell))
    od_n, od_c, od_r = od(NUCLEUS), od(CYTO), od(RBC)
    for k, ch in enumerate("RGB"):
        assert f[f"Nucleus_Colour_OD_{ch}_RelRBC"] == pytest.approx(od_n[k] / od_r[k], rel=1e-5)
        assert f[f"Cytoplasm_Colour_OD_{ch}_RelRBC"] == pytest.approx(od_c[k] / od_r[k], rel=1e-5)
    expected_b = np.log(od_c[0] / od_c[1]) - np.log(od_r[0] / od_r[1])
    assert f["Cytoplasm_Colour_OD_Basophilia"] == pytest.approx(expected_b, rel=1e-5)
    assert f["Cytoplasm_Colour_OD_NucleusDensityRatio"] == pytest.approx(od_c.sum() / od_n.sum(),
                                                                          rel=1e-5)
    # flat colours: no spread, no texture, no granules, no nucleoli (the smoothing stays
    # within each region, so the nucleus's flat colour is not mixed with the cytoplasm's)
    assert f["Nucleus_Colour_OD_Heterogeneity"] == pytest.approx(0, abs=1e-6)
    assert f["Cytoplasm_Colour_OD_Heterogeneity"] == pytest.approx(0, abs=1e-6)
    assert f["Nucleus_Texture_GLCM_Contrast"] == 0 and f["Nucleus_Texture_GLCM_Energy"] == 1
    assert np.isnan(f["Nucleus_Texture_ClumpingIndex"])
    assert f["Nucleus_Texture_Granularity"] == 0 and f["Cytoplasm_Texture_GranuleFraction"] == 0
    assert f["Nucleus_Texture_NucleolusCount"] == 0


def test_colour_features_cancel_white_balance_and_gamma():
    # a lab with other gains (R x0.95, B x1.04) and gamma 0.9: I' = 255 (a I / 255)^0.9,
    # applied by look-up table as a camera would (no value reaches 255, so nothing clips)
    img, nucleus, cell = flat_cell()
    seg = make_seg(nucleus, cell)
    x = np.arange(256) / 255.0
    luts = [np.clip(np.rint(255 * (a * x) ** 0.9), 0, 255).astype(np.uint8)
            for a in (0.95, 1.0, 1.04)]
    shifted = np.stack([luts[c][img[:, :, c]] for c in range(3)], axis=2)
    assert not np.array_equal(shifted, img)
    f0, f1 = compute_features(img, seg), compute_features(shifted, seg)
    colour = [n for n in FEATURE_NAMES if "_Colour_" in n and abs(f0[n]) > 1e-6]
    assert len(colour) >= 8
    for n in colour:  # the rounding to 8 bits and the offset c0 remain (1.2 % at most here)
        assert f1[n] == pytest.approx(f0[n], rel=0.02), n


def pallor_cell(plasma=(245, 226, 206), eps=(0.35, 0.45, 0.25)):
    """flat_cell with four red cells drawn by Beer-Lambert in the module's encoding: a
    thickness t from 1 at the rim to 0.5 at the centre (central pallor), ln(I_c + c0) =
    ln(P_c + c0) - t eps_c, so that their pixels lie on a line through the plasma."""
    img, nucleus, cell = flat_cell()
    img[:] = PLASMA
    yy, xx = np.mgrid[:200, :200]
    c0 = F.OD_CODE_OFFSET
    p = np.asarray(plasma, float)
    for cx, cy in ((30, 30), (170, 30), (30, 170), (170, 170)):
        d = np.hypot(xx - cx, yy - cy)
        inside = d <= 22
        t = 0.5 + 0.5 * (d[inside] / 22) ** 2
        img[inside] = np.clip(np.rint((p + c0) * np.exp(-t[:, None] * np.asarray(eps)) - c0),
                              0, 255)
    img[~(cell | (img != PLASMA).any(2))] = np.clip(p, 0, 255)  # the plasma, clipped at 255
    img[cell] = CYTO
    img[nucleus] = NUCLEUS
    return img, nucleus, cell


def test_saturated_plasma_is_extrapolated_along_the_red_cells():
    # the plasma's red is 270 (a gain of 1.1 on 245): recorded as 255. The red cells' line
    # (slope eps_R / eps_G = 0.35 / 0.45) from their median to the plasma's green gives
    # ln(270 + c0) back; the saturated median would give ln(255 + c0), 0.055 too low, an
    # error of 0.055 / (0.35 t) ~ 20 % of the red cells' OD in red
    img, nucleus, cell = pallor_cell(plasma=(270, 226, 206))
    assert (img[5, 100] == (255, 226, 206)).all()
    refs = F.CellMeasurements(img, make_seg(nucleus, cell)).references
    assert refs.plasma[0] == pytest.approx(np.log(270 + F.OD_CODE_OFFSET), abs=0.005)
    assert refs.plasma[1] == pytest.approx(LN(226), abs=1e-6)  # unsaturated: the median


def test_a_gain_that_saturates_the_plasma_leaves_red_ratios():
    # the same smear under a 10 % red gain: its plasma (245 -> 270) saturates; the red
    # ratios stay within the rounding of the 8-bit codes
    img, nucleus, cell = pallor_cell(plasma=(245, 226, 206))
    seg = make_seg(nucleus, cell)
    lut = np.clip(np.rint(np.arange(256) * 1.1), 0, 255).astype(np.uint8)
    warm = img.copy()
    warm[:, :, 0] = lut[img[:, :, 0]]
    f0, f1 = compute_features(img, seg), compute_features(warm, seg)
    for n in ("Nucleus_Colour_OD_R_RelRBC", "Cytoplasm_Colour_OD_R_RelRBC"):
        assert f1[n] == pytest.approx(f0[n], rel=0.02), n


def test_no_red_cells_gives_nan_relative_colour():
    img, nucleus, cell = flat_cell(red_cells=False)
    f = compute_features(img, make_seg(nucleus, cell))
    assert np.isnan(f["Nucleus_Colour_OD_R_RelRBC"]) and np.isnan(f["Cytoplasm_Colour_OD_Basophilia"])
    # features that need only the plasma stay defined
    assert np.isfinite(f["Cytoplasm_Colour_OD_NucleusDensityRatio"])


# ------------------------------------------------------------------------ texture


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


def test_masked_glcm_counts_only_pairs_inside():
    # a 5-pixel row 10, 20, 10, 20, 10 inside a zero image: levels 1 and 16 (the row's own
    # range), four horizontal pairs all crossing, no pair at 45/90/135 degrees, and no pair
    # with the zeros outside -> symmetric p[1,16] = p[16,1] = 1/2, contrast 15^2 = 225
    gray = np.zeros((5, 9), np.float32)
    gray[2, 2:7] = [10, 20, 10, 20, 10]
    mask = gray > 0
    ps = F._masked_glcm(gray, mask)
    assert ps is not None and set(ps) == {1}
    p = ps[1]
    expected = np.zeros((16, 16))
    expected[0, 15] = expected[15, 0] = 0.5
    np.testing.assert_allclose(p, expected)
    assert F.glcm_contrast(p) == 225
    # under MIN_REGION_PIXELS (5) pixels there is no GLCM
    four = mask.copy()
    four[2, 6] = False
    assert F._masked_glcm(gray, four) is None


def stripes_nucleus(width=4, side=40):
    """A square nucleus of vertical stripes ``width`` px wide, alternately NUCLEUS and a
    paler purple, inside a cytoplasm square; plasma around."""
    img, _, _ = flat_cell()
    nucleus = np.zeros(img.shape[:2], bool)
    nucleus[80:80 + side, 80:80 + side] = True
    cell = np.zeros_like(nucleus)
    cell[70:130, 70:130] = True
    img[cell] = CYTO
    img[nucleus] = NUCLEUS
    cols = np.arange(80, 80 + side)
    pale = cols[((cols - 80) // width) % 2 == 1]
    img[80:80 + side, pale] = (120, 80, 160)
    return img, nucleus, cell


def test_chromatin_at_two_scales(monkeypatch):
    # 40x40 stripes 4 px wide, two levels (1 and 16): contrast = 225 x crossing pairs / pairs.
    # d=1: 0 deg 40x39 pairs, 40x9 cross; 45 and 135 deg 39x39, 39x9 cross each; 90 deg
    #      39x40, none -> 1062 / 6162.
    # d=4 (scikit-image offsets (0,4), (3,3), (4,0), (3,-3)): 0 deg 40x36, all cross;
    #      45/135 deg 37x37 pairs, a shift of 3 crosses for 27 of 37 columns -> 999 each;
    #      90 deg 36x40, none -> 3438 / 5618.
    # (without the 0.8 px smoothing, which would blur the two levels into ramps)
    monkeypatch.setattr(F, "TEXTURE_SIGMA", 0)
    img, nucleus, cell = stripes_nucleus()
    f = compute_features(img, make_seg(nucleus, cell))
    c1, c4 = 225 * 1062 / 6162, 225 * 3438 / 5618
    assert f["Nucleus_Texture_GLCM_Contrast"] == pytest.approx(c1, rel=1e-6)
    assert f["Nucleus_Texture_GLCM_Contrast_D4"] == pytest.approx(c4, rel=1e-6)
    assert f["Nucleus_Texture_ClumpingIndex"] == pytest.approx(c4 / c1, rel=1e-6)


def test_granularity_and_granules_by_hand():
    img, nucleus, cell = flat_cell(r=20, R=34)
    # 5 single dark dots (chromatin colour) in the cytoplasm, far from every edge
    dots = [(100 + 27 * np.cos(a), 100 + 27 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 6)[:-1]]
    for x, y in dots:
        img[int(round(y)), int(round(x))] = NUCLEUS
    # 4 single darker dots in the nucleus (G = 20 instead of 40)
    for x, y in ((92, 92), (108, 92), (92, 108), (108, 108)):
        img[y, x] = (60, 20, 110)
    seg = make_seg(nucleus, cell)
    f = compute_features(img, seg)
    cyto_area = (cell & ~nucleus).sum()
    # a dot's white top-hat is its own density above the flat surround; here D_N - D_C is
    # far above 0.25 x the nucleus's mean density, so exactly the 5 dots count
    assert f["Cytoplasm_Texture_GranuleFraction"] == pytest.approx(5 / cyto_area, rel=1e-6)
    d = lambda g: np.log(srgb_linear(PLASMA[1]) / srgb_linear(g))  # noqa: E731  green OD
    n_area = nucleus.sum()
    mean_dn = (d(40) * (n_area - 4) + d(20) * 4) / n_area
    expected = 4 * (d(20) - d(40)) / n_area / mean_dn
    assert f["Nucleus_Texture_Granularity"] == pytest.approx(expected, rel=1e-4)
    expected_c = 5 * (d(40) - d(165)) / cyto_area / mean_dn
    assert f["Cytoplasm_Texture_Granularity"] == pytest.approx(expected_c, rel=1e-4)


def test_one_nucleolus():
    img, nucleus, cell = flat_cell(r=25, R=34)
    spot = disc(nucleus.shape, (100, 100), 3)  # 29 px, pale blue like cytoplasm
    img[spot] = CYTO
    f = compute_features(img, make_seg(nucleus, cell))
    assert f["Nucleus_Texture_NucleolusCount"] == 1
    assert f["Nucleus_Texture_NucleolusAreaFraction"] == pytest.approx(spot.sum() / nucleus.sum())

    # its prominence: the 3x3 block at the spot's centre lies inside it, where the 9x9
    # closing fills the spot up to the chromatin: (D_N - D_spot) / mean_N(D)
    d = lambda g: np.log(srgb_linear(PLASMA[1]) / srgb_linear(g))  # noqa: E731  green OD
    n, k = nucleus.sum(), spot.sum()
    mean_dn = (d(NUCLEUS[1]) * (n - k) + d(CYTO[1]) * k) / n
    assert f["Nucleus_Texture_NucleolusProminence"] == pytest.approx(
        (d(NUCLEUS[1]) - d(CYTO[1])) / mean_dn, rel=1e-4)
    # the same spot at the nucleus's edge is a notch, not a nucleolus
    img2, nucleus2, cell2 = flat_cell(r=25, R=34)
    flat = compute_features(img2, make_seg(nucleus2, cell2))
    assert flat["Nucleus_Texture_NucleolusCount"] == 0
    assert flat["Nucleus_Texture_NucleolusProminence"] == 0  # flat chromatin


def test_granulometry_by_hand(monkeypatch):
    # dense dots (G = 20) on a flat nucleus (G = 40), each dot a structuring element of the
    # granulometry: 4 single pixels (size 0), 2 crosses B_1 (5 px, size 1) and one B_2
    # (5x5 without corners, 21 px, size 2). An opening by B_n keeps a dot of shape B_m,
    # m >= n, whole (a Minkowski sum is open under its summands) and flattens a smaller one
    # to the plateau, so each dot's whole excess density lands at its size:
    # PS ~ (4 x 1, 2 x 5, 21, 0) x (D(20) - D(40)); mean size (0x4 + 1x10 + 2x21) / 35.
    # (without the 0.8 px smoothing, which would spread each dot over its neighbours)
    monkeypatch.setattr(F, "TEXTURE_SIGMA", 0)
    img, nucleus, cell = flat_cell(r=25, R=34)
    dots = [((88, 88), 0), ((112, 88), 0), ((88, 112), 0), ((112, 112), 0),
            ((100, 84), 1), ((100, 116), 1), ((100, 100), 2)]
    for (x, y), n in dots:
        if n == 0:
            img[y, x] = (60, 20, 110)
        else:
            k = F._octagon(n).astype(bool)
            img[y - n:y + n + 1, x - n:x + n + 1][k] = (60, 20, 110)
    f = compute_features(img, make_seg(nucleus, cell))
    w = np.array([4 * 1, 2 * 5, 21, 0], float)
    size = np.arange(4)
    mean = size @ w / w.sum()
    assert mean == pytest.approx(52 / 35)
    assert f["Nucleus_Texture_GranuleSizeMean"] == pytest.approx(mean, rel=1e-5)
    assert f["Nucleus_Texture_GranuleSizeSpread"] == pytest.approx(
        np.sqrt(((size - mean) ** 2) @ w / w.sum()), rel=1e-5)
    # a flat nucleus has no grain: nothing to average
    img0, nucleus0, cell0 = flat_cell(r=25, R=34)
    assert np.isnan(compute_features(img0, make_seg(nucleus0, cell0))[
        "Nucleus_Texture_GranuleSizeMean"])
    assert F._octagon(1).sum() == 5 and F._octagon(2).sum() == 21
    # the openings dilate by B_n as one square and one diamond (n // 2 squares and
    # (n + 1) // 2 crosses summed): the same element
    for n in range(1, F.GRANULOMETRY_STEPS + 1):
        point = np.zeros((2 * n + 1, 2 * n + 1), np.uint8)
        point[n, n] = 1
        if n // 2:
            point = cv2.dilate(point, F._SQUARES[n // 2])
        np.testing.assert_array_equal(cv2.dilate(point, F._DIAMONDS[(n + 1) // 2]), F._octagon(n))


def test_red_density_correlation_by_hand(monkeypatch):
    # 40x40 stripes 4 px wide in two red levels (R = 80 and 120), balanced, so every pair
    # product z_p z_q is +(delta/2)^2 within a stripe and -(delta/2)^2 across:
    # I = 1 - 2 x crossing / pairs. At d = 2 (offsets (0,2), (1,1), (2,0), (1,-1)):
    # (0,2) 40 x 38 pairs, 40 x 18 cross; (1,1) and (1,-1) 39 x 39, 39 x 9 cross each;
    # (2,0) 38 x 40, none -> 1422 crossing of 6082.
    monkeypatch.setattr(F, "TEXTURE_SIGMA", 0)
    img, nucleus, cell = stripes_nucleus(width=4)
    f = compute_features(img, make_seg(nucleus, cell))
    assert f["Nucleus_Texture_RedDensityCorrelation"] == pytest.approx(1 - 2 * 1422 / 6082,
                                                                        rel=1e-6)
    # the 0.8 px smoothing within the nucleus (the default) blurs the stripes' edges, which
    # makes pixels 2 apart more alike: finite, and higher
    monkeypatch.undo()
    smoothed = compute_features(img, make_seg(nucleus, cell))["Nucleus_Texture_RedDensityCorrelation"]
    assert 1 - 2 * 1422 / 6082 < smoothed < 1
    # Moran's I is invariant to an affine map of the values; a flat region has none
    vals = np.where(nucleus, np.arange(200)[None, :] % 8 < 4, 0).astype(np.float32)
    i1 = F.spatial_autocorrelation(vals, nucleus, 2)
    assert F.spatial_autocorrelation(3 * vals + 7, nucleus, 2) == pytest.approx(i1, rel=1e-6)
    assert np.isnan(F.spatial_autocorrelation(np.ones((5, 5), np.float32),
                                              np.ones((5, 5), bool), 2))


def test_glcm_counts_equal_scikit_image():
    # the counts replace skimage.feature.graycomatrix (summed over its four angles), which
    # the feature workers no longer import: the same integers for every level >= 1 (0 is
    # the outside level) on random images of every small shape, number of levels and
    # distance, including distances longer than the image
    from skimage.feature import graycomatrix

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 30, 2)
        levels = int(rng.integers(2, 18))
        q = rng.integers(0, levels, (h, w)).astype(np.uint8)
        distances = (1, 2, 4, 7)
        expected = graycomatrix(q, list(distances), list(F.GLCM_ANGLES), levels=levels).sum(-1)
        got = F.glcm_counts(q, levels, distances)
        for k in range(len(distances)):
            np.testing.assert_array_equal(got[k, 1:, 1:], expected[1:, 1:, k])


def test_gaussian_filter_wrap_equals_scipy_to_the_bit():
    # hairiness's smoothing of a closed outline, without scipy in the workers: the same
    # bits as scipy.ndimage.gaussian_filter1d(mode="wrap"), kernels longer than the curve too
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(1)
    for _ in range(300):
        n, sigma = int(rng.integers(3, 300)), float(rng.uniform(0.2, 50))
        v = rng.normal(0, 40, (n, 2)).round()
        np.testing.assert_array_equal(
            F.gaussian_filter_wrap(v, sigma),
            gaussian_filter1d(v, sigma, axis=0, mode="wrap", truncate=3.0))


# ------------------------------------------------------------------------ registry


def test_registry_consistency():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    for name, feat in REGISTRY.items():
        obj, cat = name.split("_")[:2]
        assert obj in {"Nucleus", "Cytoplasm", "Cell"}, name
        assert cat in {"Shape", "Colour", "Texture"}, name
        doc = inspect.getdoc(feat.func)
        assert doc and len(doc) > 30, f"{name}: {feat.func.__name__} needs a docstring"
    # every public feature function is in the registry
    helpers = {"compute_features", "find_references", "lower_median", "masked_lower_median",
               "glcm_counts", "gaussian_filter_wrap"}
    public = {f for f in F.__all__ if inspect.isfunction(getattr(F, f))} - helpers
    used = {feat.func.__name__ for feat in REGISTRY.values()}
    assert public <= used, public - used
    # the changelog of the current revision exists
    assert F.FEATURES_REVISION in F.FEATURES_CHANGELOG


def test_refuses_failed_segmentation():
    blank = np.full((224, 224, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="blank_image"):
        compute_features(blank, segment_nucleus(blank))


def test_lower_median_commutes_with_increasing_maps():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, size=(40, 3)).astype(np.uint8)
    f = lambda x: np.sqrt(x.astype(float)) * 3 + 1  # noqa: E731  any increasing map
    np.testing.assert_allclose(F.lower_median(f(v)), f(F.lower_median(v)))
    img = v.reshape(8, 5, 3)
    np.testing.assert_array_equal(F.masked_lower_median(img, np.ones((8, 5), bool)),
                                  F.lower_median(v))


# ------------------------------------------------------------------------ baseline


def baseline_cells():
    """Four fixed textured cells (seeded noise, red cells, plasma; one with an eccentric
    nucleus and one with a red-cell bite), with their true masks."""
    out = []
    for seed, (r, R, off, bite) in enumerate(((18, 26, (0, 0), False), (22, 36, (5, -3), False),
                                             (16, 30, (0, 0), True), (24, 28, (2, 2), True))):
        rng = np.random.default_rng(seed)
        img, nucleus, cell = flat_cell(r=r, R=R, offset=off)
        if bite:
            b = disc(cell.shape, (100, 100 + R + 6), 12)
            img[b] = RBC
            cell &= ~b
        noise = rng.normal(0, 6, img.shape[:2])
        noise = cv2.GaussianBlur(noise, (0, 0), 1.2) * 2.5
        img = np.clip(img + noise[:, :, None] * (1 + nucleus[:, :, None]), 0, 255).astype(np.uint8)
        out.append((f"cell{seed}", img, nucleus, cell))
    return out


def baseline_table() -> pd.DataFrame:
    rows = {name: compute_features(img, make_seg(n, c)) for name, img, n, c in baseline_cells()}
    return pd.DataFrame.from_dict(rows, orient="index")[list(FEATURE_NAMES)]


def test_baseline_covers_the_registry_and_matches():
    base = pd.read_csv(BASELINE, index_col=0)
    missing = [n for n in FEATURE_NAMES if n not in base.columns]
    stale = [c for c in base.columns if c not in REGISTRY]
    assert not missing, f"features without a baseline (regenerate, see module doc): {missing}"
    assert not stale, f"baseline columns with no feature: {stale}"
    now = baseline_table()
    for n in FEATURE_NAMES:
        np.testing.assert_allclose(now[n].to_numpy(float), base.loc[now.index, n].to_numpy(float),
                                   rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=n)
    # the cells exercise the registry: most features are finite on them, and every feature
    # on at least one (a feature NaN on all four has lost its formula, not its cells)
    assert np.isfinite(now.to_numpy(float)).mean() > 0.95
    always_nan = [n for n in FEATURE_NAMES if not np.isfinite(now[n]).any()]
    assert not always_nan, always_nan


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate-baseline"]:
        BASELINE.parent.mkdir(exist_ok=True)
        baseline_table().to_csv(BASELINE, float_format="%.10g")
        print(f"wrote {BASELINE} (revision {F.FEATURES_REVISION})")
    else:
        sys.exit("usage: python tests/test_features.py --regenerate-baseline")


def test_sizes_in_red_cell_units():
    # issue 29: a disc of radius r px in an image whose ruler is D px has area pi r^2 / D^2,
    # perimeter 2 pi r / D and axes 2r / D; concentric discs r < R: equivalent diameter
    # 2R / D, rim width (R - r) / D. Scale-free features do not move. Paper values with
    # r = 30, R = 38, D = 60.
    img = np.full((224, 224, 3), (238, 222, 205), np.uint8)
    cv2.circle(img, (112, 112), 38, (182, 175, 215), -1)
    cv2.circle(img, (112, 112), 30, (85, 45, 125), -1)
    seg = segment_nucleus(img)
    px, rbc = compute_features(img, seg), compute_features(img, seg, ruler=60.0)
    assert rbc["Nucleus_Shape_Area"] == pytest.approx(np.pi * 900 / 3600, rel=0.03)
    assert rbc["Nucleus_Shape_Perimeter"] == pytest.approx(2 * np.pi * 30 / 60, rel=0.06)
    assert rbc["Nucleus_Shape_MajorAxisLength"] == pytest.approx(1.0, rel=0.03)
    assert rbc["Nucleus_Shape_MinorAxisLength"] == pytest.approx(1.0, rel=0.03)
    # concentric discs r = 20 < R = 30 drawn as masks (test_concentric_discs_shape)
    img2, nucleus, cell = flat_cell(r=20, R=30)
    f = compute_features(img2, make_seg(nucleus, cell), ruler=60.0)
    assert f["Cell_Shape_EquivalentDiameter"] == pytest.approx(60 / 60, rel=0.01)
    assert f["Cell_Shape_Area"] == pytest.approx(np.pi * 900 / 3600, rel=0.02)
    assert f["Cytoplasm_Shape_RimWidthMean"] == pytest.approx(10 / 60, abs=0.7 / 60)
    for name in ("Nucleus_Shape_Area", "Cell_Shape_Area"):
        assert rbc[name] == pytest.approx(px[name] / 3600)
    for name in ("Nucleus_Shape_Perimeter", "Cytoplasm_Shape_RimWidthStd"):
        assert rbc[name] == pytest.approx(px[name] / 60)
    for name in ("Nucleus_Shape_Solidity", "Nucleus_Shape_Circularity", "Cell_Shape_Solidity",
                 "Cell_Shape_NucleusAreaRatio", "Nucleus_Texture_GLCM_Contrast"):
        assert rbc[name] == px[name]
