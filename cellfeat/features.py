r"""Per-cell hand-crafted features: one small function per feature, one registry of names.

Each public function below is a formula on pieces that :class:`CellMeasurements` computes
once per cell (masks, contours, hulls, optical densities, image references, GLCMs) and
passes in explicitly. :data:`REGISTRY` maps every output name (``Object_Category_Feature``,
e.g. ``Nucleus_Shape_Solidity``, ``Cytoplasm_Colour_OD_Basophilia``) to its function and to
the pieces it reads; code, tables, plots and docs use those names.

Objects: ``Nucleus``; ``Cytoplasm`` (cell minus nucleus, from
:class:`cellfeat.segment.Segmentation`); ``Cell`` (nucleus + cytoplasm). The ``ROC``
(convex hull of the nucleus minus the nucleus, Tavakoli et al. 2021's stand-in for a
cytoplasm no threshold found) has no features since revision 6: the whole-cell mask
measures the cytoplasm itself.

Colour: optical density against the same image's plasma and red cells
----------------------------------------------------------------------
Every colour feature is built so that a global change of white balance, gamma or stain
strength cancels *by construction*, not by training on shifted copies. The light reaching
the camera through a stained object obeys Beer-Lambert: :math:`I_c = I_{0,c}\,e^{-s_c\,
\epsilon_c}` for channel :math:`c`, with :math:`I_{0,c}` the light through the plasma (the
nearly transparent background), :math:`s_c\epsilon_c` the stain's absorbance. A camera
or lab then records :math:`\tilde I_c = a_c I_c^{\gamma}` (per-channel white-balance gains
:math:`a_c`, a common gamma :math:`\gamma`). We measure, per channel, the optical density
against the plasma of the same image

.. math:: OD_c(X) = \ln P_c - \ln X_c,

where :math:`P_c` and :math:`X_c` are :math:`\ln(m + c_0)` of the per-channel *lower
median* :math:`m` (8-bit code) of the plasma's and the object's pixels (a lower median
commutes with any increasing map such as :math:`a_c I^{\gamma}`, so what holds for one
pixel holds for the medians exactly), with :math:`c_0` = :data:`OD_CODE_OFFSET` = 8
(below). Then

* gains cancel: :math:`\ln(a_c P_c^\gamma) - \ln(a_c X_c^\gamma) = \gamma\,OD_c(X)`;
* what remains is a factor per channel: :math:`\gamma` (tone curve), a global stain
  strength (Beer-Lambert: OD :math:`\propto` stain amount), or a per-channel scaling of
  OD :math:`k_c` (a stain batch whose absorbance is bluer or redder). All of these cancel
  in the ratio of two ODs *of the same channel*. We divide by the red cells' OD in that
  channel (every smear has red cells; their median OD is about 0.3 in R, 0.45 in G,
  0.2 in B, medians over hundreds of pixels):

.. math:: \rho_c(X) = OD_c(X) / OD_c(RBC).

The colour features are such per-channel ratios, a log-ratio of two of them
(basophilia), a ratio of summed ODs of cytoplasm and nucleus (both stained by the basic
dye), and coefficients of variation of the per-pixel OD in the green channel; all are
invariant to per-channel gains, gamma and a per-channel OD scale, up to the offset
:math:`c_0` inside the logarithm, JPEG rounding and clipping at 255 (see below). A change
in the balance of the basic against the acidic dye that affects cytoplasm and red cells
differently does not cancel, and should not.

*The offset* :math:`c_0`. Gains and gamma act on the encoded values a camera writes, and
cancel exactly in :math:`\ln m` (a pure power-law camera); a stain's Beer-Lambert
absorbance acts on linear light, and cancels exactly in :math:`\ln(m + 14.0)`, which is
sRGB's decoding :math:`((m/255 + 0.055)/1.055)^{2.4}` up to a scale. No one encoding
cancels both, and the difference matters only for dark values (chromatin's green, code
~30-45). Measured on 30 dev images of 30 patients, same masks, under the panel's colour
shifts and the ends of :data:`cellfeat.augment.RANDOM_RANGES` for gain, gamma and stain
strength (``tests/test_augment.py``), the largest drift of a mean was, in cell SDs of
the feature, 0.28 with :math:`c_0 = 1` (stain strength 1.2), 0.17 with 5, 0.12 with 7,
0.116 with 8 (gamma 1.12; stain strength 1.2: 0.103), 0.125 with 9, 0.17 with 14
(gamma 1.12): 8, the smallest worst case, is used.

*Clipping.* dlmi's plasma is at 250-254 in red, so a gain above 1 clips it at 255 and
turns the gain into an offset in OD (the red-channel ratios moved 0.64 cell SD under a
+6 % red gain). Where the plasma's lower median in a channel is 255, its true value is
unknown, and :func:`find_references` reads it off the red cells' Beer-Lambert line
instead: a red cell's thickness varies (edge, central pallor), and for one absorber
:math:`\ln I_c = \ln P_c - t\,\epsilon_c`, so its pixels lie on a line through the
plasma in :math:`(\ln I_g, \ln I_c)`. Its slope (the ratio of the two channels' standard
deviations over red-cell pixels, signed; affine-equivariant, so it commutes with gains
and gamma) extrapolated from the red cells' median to the plasma's value in an
unsaturated channel :math:`g` gives :math:`P_c`. On the same 30 images, where the plasma
is not saturated, it estimates the red cells' OD ratio :math:`OD_R/OD_G` within 2.7 % (SD
over images, mean bias +1.4 %; the ratio itself varies 4.5 % between images); the
red-channel drift under a +6 % red gain fell from 0.64 to 0.055 cell SD, under the warm
white balance of the panel from 0.36 to 0.07.

The plasma and red-cell references come from :func:`find_references`: the image's
background pixels (outside the cell) are split, in :math:`(\ln R, \ln G, \ln B)`, into
plasma, red cells and nuclear material (other white cells, platelets), with the nuclear
centre fixed at the segmented nucleus's colour. Gains translate that space and a common
gamma scales it, and each step (order statistics, midpoints, Otsu on the values' own
range, nearest centre) is equivariant to both, so the *same pixels* are chosen as plasma
and red cells whatever the white balance. The earlier colour features (the 48 Tavakoli
ratios in RGB, HSV, LAB and YCrCb and five absolute channel means) were retired: a ratio
of means of an offset or angular encoding (LAB a*, b*, hue) cancels nothing, absolute
means move with every gain, and RGB mean ratios do not cancel gamma.

Texture (and the per-pixel heterogeneity, granularity and nucleoli) is measured on the
per-pixel optical density of the green channel (where chromatin absorbs most) in *linear
light*, :math:`D = \ln L(P_G) - \ln L(G)` with :math:`L` the sRGB decoding of 8-bit codes:
the physical Beer-Lambert density, which a stain-strength change scales exactly and a
linear white-balance gain shifts by a constant (measured on the dev images under the
shift panel of :mod:`cellfeat.augment`, texture drifted about half as much under stain
shifts as with :math:`\ln(G + 1)`, while the colour ratios above drifted less on encoded
values, where a camera's gains and tone curve act). :math:`D` is quantised over each
region's own 1st-99th percentile range: a constant added to :math:`D` or a scaling of it
leaves the levels unchanged (percentiles rather than min and max, which a few
JPEG-ringing pixels move), so GLCM features are invariant too. Before GLCM and the
heterogeneity, :math:`D` is smoothed within each region by a Gaussian of
:data:`TEXTURE_SIGMA` = 0.8 px: JPEG re-encoding removes most variation below that
scale. Granularity and nucleoli are read relative to the nucleus's mean :math:`D`.

Scale: the red cells as a ruler
-------------------------------
Labs do not share a pixel size (issue 29). The feature stage resamples every image so that
its patient's red cells are :data:`cellfeat.ruler.CANONICAL_DIAMETER` px across (45.6, dlmi's
median) and passes that ruler :math:`D` to :func:`compute_features`: lengths are reported in
red-cell diameters (:math:`L / D`) and areas in squared diameters (:math:`A / D^2`), each
function's docstring says which. Every other pixel constant below (GLCM distances,
:data:`TEXTURE_SIGMA`, granulometry and nucleolus radii, structuring elements) is then in
pixels *at the canonical ruler*, i.e. a fixed fraction of a red cell (1 px = 1/45.6 of a red
cell, about 0.16 µm); scale-free features (ratios, solidity, circularity, colour) are
unchanged.

Changelog of :data:`FEATURES_REVISION`: see :data:`FEATURES_CHANGELOG`.

References
----------
Tavakoli S., Ghaffari A., Kouzehkanan Z. M., Hosseini R. "New segmentation and feature
extraction algorithm for classification of white blood cells in peripheral smear
images." Scientific Reports 11, 19428 (2021).
Haralick R. M., Shanmugam K., Dinstein I. "Textural features for image
classification." IEEE Trans. SMC 3(6), 610-621 (1973).
Ruifrok A. C., Johnston D. A. "Quantification of histochemical staining by color
deconvolution." Anal. Quant. Cytol. Histol. 23(4), 291-299 (2001) (optical density).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import cv2
import numpy as np

from .segment import Segmentation

__all__ = [
    "REGISTRY", "FEATURE_NAMES", "FEATURES_REVISION", "FEATURES_CHANGELOG", "Feature",
    "CellMeasurements", "References", "find_references", "lower_median",
    "masked_lower_median", "compute_features",
    "area", "equivalent_diameter", "perimeter", "solidity", "convexity", "circularity",
    "ellipse_axes", "eccentricity", "boundary_irregularity", "area_ratio", "rim_width_mean",
    "rim_width_std", "centroid_offset", "red_cell_indentation", "relative_od",
    "basophilia", "density_ratio", "od_heterogeneity", "glcm_contrast", "glcm_homogeneity",
    "glcm_energy", "glcm_entropy", "glcm_correlation", "clumping_index", "granularity",
    "granule_fraction", "nucleolus_spots", "deepest_concavity", "hairiness",
    "granule_size_mean", "granule_size_spread", "spatial_autocorrelation",
    "nucleolus_prominence", "glcm_counts", "gaussian_filter_wrap",
]

GLCM_LEVELS = 16
#: Gaussian smoothing (pixels) of the density, within each region, before GLCM texture and
#: heterogeneity: JPEG re-encoding removes most of the variation finer than this, so
#: measuring above it keeps the features of a re-encoded image (measured on the dev
#: images: texture drift under JPEG at quality 70 from 0.18 to 0.13 cell SDs).
TEXTURE_SIGMA = 0.8
#: Share of a region's values below and above the GLCM quantisation range (clipped).
GLCM_RANGE_TAIL = 0.01
#: GLCM pixel distances of the nucleus: 1 for fine grain, 4 for clumps (chromatin at two
#: scales); the cytoplasm uses 1 only.
GLCM_DISTANCES = (1, 4)
#: Octagon steps of the nucleus's granulometry: grains whose largest inscribed octagon has
#: radius 0 to 3 px are told apart (diameter up to 7 px, about 0.8 µm on the dlmi images:
#: a chromatin clump); larger structure is the nucleus's own relief.
GRANULOMETRY_STEPS = 4
#: Pixel distance of the red-density correlation of the nucleus, between the GLCM's fine
#: (1) and clump (4) distances.
RED_CORRELATION_DISTANCE = 2
#: Smoothing (share of the equivalent radius) of the cell outline for hairiness.
HAIRINESS_SIGMA = 1 / 8
#: Bumped whenever a formula changes, so that cached feature tables are recomputed.
FEATURES_REVISION = 11
FEATURES_CHANGELOG = {
    11: "Issue 29, the red cells as a ruler. Each image is resampled so that its patient's "
       "median red-cell diameter (cellfeat.ruler) is CANONICAL_DIAMETER px before "
       "segmentation and features: structuring elements, GLCM offsets, granulometry radii "
       "and distance transforms act at one size in red-cell units. Lengths "
       "(Nucleus_Shape_Perimeter, _MajorAxisLength, _MinorAxisLength, "
       "Cell_Shape_EquivalentDiameter, Cytoplasm_Shape_RimWidthMean, _RimWidthStd) are in "
       "red-cell diameters, areas (Nucleus_Shape_Area, Cell_Shape_Area) in squared "
       "diameters. Same names as 10.",
    10: "Issue 22. Colour ODs read on ln(code + 8) instead of ln(code + 1) (OD_CODE_OFFSET); "
       "a plasma saturated at 255 in a channel is extrapolated along the red cells' "
       "Beer-Lambert line (find_references). Segmentation changed (cellfeat.segment): "
       "colour read relative to each image's plasma, contrast channel (S + 2 D) / 3, the "
       "cytoplasm no longer has to be bluer than the red cells (26 % of dev cells had no "
       "cytoplasm before), a rim no wider than the image's edge blur stays in the nucleus. "
       "Same names as 9; every cell and colour feature moves.",
    9: "Issue 24, the descriptors haematologists read. Added: "
       "Nucleus_Shape_DeepestConcavity (notches, clefts), Cell_Shape_Hairiness (villi), "
       "Nucleus_Texture_NucleolusProminence, Nucleus_Texture_GranuleSizeMean and "
       "Nucleus_Texture_GranuleSizeSpread (granulometry of the chromatin), "
       "Nucleus_Texture_RedDensityCorrelation (Puigvi's cyan correlation, made "
       "stain-invariant). Built and retired in the same revision by the rule fixed before "
       "the evidence (in-zone out-of-fold AUC of the patient mean and SD within the "
       "permutation null, and removing it did not lower the nested in-zone AUC): "
       "Nucleus_Shape_ConcavityCount, Cytoplasm_Colour_OD_EdgeBasophilia (outer against "
       "inner cytoplasm), Cytoplasm_Colour_GranuleRedShift (granule colour against the "
       "cytoplasm). Not added: a red-shifted granule fraction (Spearman 0.99 with "
       "Cytoplasm_Texture_GranuleFraction: a duplicate). No existing formula changed.",
    8: "GLCM and OD heterogeneity read the density smoothed within each region (Gaussian "
       "0.8 px), committed after 7 in the same session: caches of 7 are recomputed.",
    7: "Texture, heterogeneity, granularity and nucleoli read the green-channel optical "
       "density in linear light (sRGB-decoded) instead of ln(G + 1); GLCM levels span the "
       "region's 1-99 % range instead of min-max. Same names as 6 (6 was committed earlier "
       "in the same session; caches of it are recomputed).",
    6: "Colour normalised by construction (issue 14) and whole-cell features (issue 12). "
       "Segmentation changed (cellfeat.segment: per-image colour model, whole-cell mask). "
       "Retired: the 48 Tavakoli colour ratios {Nucleus,ROC}_Colour_{RGB,HSV,LAB,YCrCb}_*_"
       "{MeanRatio,StdRatio} (the ROC colour, a proxy for the cytoplasm that the whole-cell "
       "mask now measures directly); the absolute means Nucleus_Colour_LAB_L_Mean, "
       "Nucleus_Colour_HSV_S_Mean, Cytoplasm_Colour_HSV_{S,H}_Mean, "
       "Cytoplasm_Colour_LAB_L_Mean; Cytoplasm_Shape_RimThickness (replaced by the measured "
       "rim width). Added: Cell_Shape_EquivalentDiameter, Cell_Shape_Solidity, "
       "Cell_Shape_Convexity, Cell_Shape_Circularity, Cell_Shape_NucleusOffset, "
       "Cell_Shape_RedCellIndentation, Cytoplasm_Shape_RimWidthMean, "
       "Cytoplasm_Shape_RimWidthStd, {Nucleus,Cytoplasm}_Colour_OD_{R,G,B}_RelRBC, "
       "Cytoplasm_Colour_OD_Basophilia, Cytoplasm_Colour_OD_NucleusDensityRatio, "
       "{Nucleus,Cytoplasm}_Colour_OD_Heterogeneity, Nucleus_Texture_GLCM_{Contrast,"
       "Correlation}_D4, Nucleus_Texture_ClumpingIndex, Cytoplasm_Texture_Granularity, "
       "Cytoplasm_Texture_GranuleFraction, Nucleus_Texture_NucleolusCount, "
       "Nucleus_Texture_NucleolusAreaFraction. Changed: GLCM and granularity are computed "
       "on the green-channel optical density instead of 255 - L*, GLCM levels span the "
       "region's 1-99 % range instead of min-max; granularity is relative to the "
       "nucleus's mean density.",
    5: "Previous feature set (nucleus shape, Tavakoli colour ratios, channel means, GLCM).",
}
MIN_REGION_PIXELS = 5
#: Fewest sampled background pixels for a plasma or red-cell reference.
MIN_REFERENCE_PIXELS = 10
#: Sampling step (pixels) of the background for :func:`find_references`.
REFERENCE_STEP = 8
#: A red-cell class whose mean OD is under this share of the nucleus's is not red cells.
RBC_MIN_OD_SHARE = 0.1
#: Sampling step of the background for the white point of a saturated channel.
SATURATED_STEP = 2
#: The stretch of the red cells' Beer-Lambert line used to extrapolate a saturated
#: channel's white point, in shares of their OD in the reference channel from their
#: median (negative: darker than it).
RBC_LINE_WINDOW = (-0.3, 0.7)

#: Offset c0 of the encoding ln(code + c0) in which colour optical densities are read
#: (module docstring: between a power-law camera, 0, and sRGB linear light, 14.0).
OD_CODE_OFFSET = 8.0
_LN = np.log(np.arange(256, dtype=np.float64) + OD_CODE_OFFSET).astype(np.float32)


def _ln_linear(code):
    # ln of the linear light of 8-bit sRGB codes (IEC 61966-2-1 decoding; a code above 255,
    # an extrapolated white point, follows the same curve), floored at half the light of
    # code 1 so that black has a finite logarithm
    v = np.asarray(code, np.float64) / 255.0
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    return np.log(np.maximum(lin, 0.5 / 255 / 12.92))


#: ln of linear light per 8-bit code: the density D of texture features is a physical
#: (Beer-Lambert) optical density, which a stain-strength change scales exactly.
_LN_LIN = _ln_linear(np.arange(256)).astype(np.float32)
_ELLIPSE3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_ELLIPSE5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_ELLIPSE9 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))


# ------------------------------------------------------------------------- shape


def area(mask: np.ndarray) -> float:
    """Area A of a region, in pixels: the number of pixels of ``mask``.

    Range [0, H·W].

    *Units in the registry* (issue 29): squared red-cell diameters, A / D², with D the
    image's red-cell ruler in px (:mod:`cellfeat.ruler`); the function itself counts pixels.
    """
    return float(np.count_nonzero(mask))


def equivalent_diameter(area_: float) -> float:
    """Equivalent diameter 2√(A/π) of a region of area A, in pixels: the diameter of the
    disc with the same area. ≥ 0; a disc of radius r gives 2r.

    For the cell, a size that reads like a haematologist's "large lymphocyte".

    *Units in the registry* (issue 29): red-cell diameters, L / D, with D the image's
    red-cell ruler in px (:mod:`cellfeat.ruler`); the function itself works in pixels.
    """
    return float(2 * np.sqrt(area_ / np.pi))


def perimeter(contour: np.ndarray) -> float:
    """Perimeter P, in pixels: length of the closed boundary polygon after Douglas-Peucker
    simplification with a 1-pixel tolerance.

    The raw chain through boundary pixels follows the pixel staircase and overestimates a
    disc's perimeter by about 5 %; the simplified polygon gives P ≈ 2πr for a disc of
    radius r.

    *Units in the registry* (issue 29): red-cell diameters, L / D, with D the image's
    red-cell ruler in px (:mod:`cellfeat.ruler`); the function itself works in pixels.
    """
    c = contour.reshape(-1, 1, 2).astype(np.int32)
    return float(cv2.arcLength(cv2.approxPolyDP(c, 1.0, True), True))


def solidity(area_: float, convex_area: float) -> float:
    """Solidity = A(X) / A(hull(X)), in (0, 1]; 1 for a convex region.

    Lobed or notched nuclei, or a cell outline dented by red cells, score lower.
    """
    return area_ / convex_area if convex_area > 0 else np.nan


def convexity(perimeter_: float, convex_perimeter: float) -> float:
    """Convexity = P(hull(X)) / P(X), in (0, 1]; 1 for a convex outline.

    Sensitive to boundary roughness (fine projections, villi), where solidity is sensitive
    to deep concavities.
    """
    return convex_perimeter / perimeter_ if perimeter_ > 0 else np.nan


def circularity(perimeter_: float, area_: float) -> float:
    """Circularity = P(X)² / (4π A(X)), ≥ 1; 1 for a disc, larger for irregular outlines.

    (The reciprocal of the "form factor" 4πA/P².)
    """
    return perimeter_ ** 2 / (4 * np.pi * area_) if area_ > 0 else np.nan


def ellipse_axes(mu20: float, mu02: float, mu11: float, m00: float) -> tuple[float, float]:
    """Major and minor axis lengths of the ellipse with the region's second moments.

    With the inertia tensor eigenvalues λ1 ≥ λ2 of the pixel coordinates (central moments
    divided by the area), axes are 4√λ1 and 4√λ2 (as ``skimage.measure.regionprops``).
    For a disc of radius r both are ≈ 2r.

    *Units in the registry* (issue 29): red-cell diameters, L / D, with D the image's
    red-cell ruler in px (:mod:`cellfeat.ruler`); the function itself works in pixels.
    """
    if m00 <= 0:
        return np.nan, np.nan
    a, b, c = mu20 / m00, mu11 / m00, mu02 / m00
    root = np.sqrt(((a - c) / 2) ** 2 + b ** 2)
    l1, l2 = (a + c) / 2 + root, (a + c) / 2 - root
    return 4 * np.sqrt(max(l1, 0)), 4 * np.sqrt(max(l2, 0))


def eccentricity(major: float, minor: float) -> float:
    """Eccentricity √(1 − (minor/major)²) of the moment ellipse, in [0, 1); 0 for a disc."""
    return float(np.sqrt(1 - (minor / major) ** 2)) if major > 0 else np.nan


def boundary_irregularity(contour: np.ndarray, centroid: tuple[float, float]) -> float:
    """Coefficient of variation of the boundary's distance to the centroid: σ(r)/μ(r).

    ≈ 0 for a disc, about 0.13 for a 2:1 ellipse; lobes and notches raise it.
    """
    d = np.hypot(contour[:, 0] - centroid[0], contour[:, 1] - centroid[1])
    return float(d.std() / d.mean()) if d.size and d.mean() > 0 else np.nan


def area_ratio(nucleus_area: float, cell_area: float) -> float:
    """Nucleus-to-cell area ratio A(N)/A(cell), in (0, 1]; 1 when no cytoplasm is found.

    High in small mature (and CLL) lymphocytes, lower in large reactive ones.
    """
    return nucleus_area / cell_area if cell_area > 0 else np.nan


def rim_width_mean(widths: np.ndarray) -> float:
    """Mean cytoplasm rim width w̄ = mean_k d(b_k, N), in pixels, ≥ 0.

    ``widths`` holds, for every pixel b_k of the cell's outer boundary, its Euclidean
    distance to the nearest nucleus pixel (a distance transform of the nucleus's
    complement read on the cell contour). Concentric discs of radii r < R give R − r; 0
    where the nucleus reaches the cell outline. A thin rim (small mature or CLL
    lymphocyte) reads small, abundant cytoplasm (reactive, large granular) large.

    *Units in the registry* (issue 29): red-cell diameters, L / D, with D the image's
    red-cell ruler in px (:mod:`cellfeat.ruler`); the function itself works in pixels.
    """
    return float(np.mean(widths)) if len(widths) else np.nan


def rim_width_std(widths: np.ndarray) -> float:
    """Spread σ(w) of the cytoplasm rim width around the nucleus, in pixels, ≥ 0.

    Standard deviation of the same boundary-to-nucleus distances as
    :func:`rim_width_mean`: 0 for a nucleus centred in a round cell, large for an
    eccentric nucleus or cytoplasm spreading between red cells on one side.

    *Units in the registry* (issue 29): red-cell diameters, L / D, with D the image's
    red-cell ruler in px (:mod:`cellfeat.ruler`); the function itself works in pixels.
    """
    return float(np.std(widths)) if len(widths) else np.nan


def centroid_offset(nucleus_centroid, cell_centroid, cell_area: float) -> float:
    """Nucleus position in the cell: |c(N) − c(cell)| / √(A(cell)/π), ≥ 0, unitless.

    Distance between the two centroids in units of the cell's equivalent radius: 0 for a
    centred nucleus, about 1 − r/R for a nucleus of radius r touching the outline of a
    round cell of radius R.
    """
    if cell_area <= 0:
        return np.nan
    d = np.hypot(nucleus_centroid[0] - cell_centroid[0], nucleus_centroid[1] - cell_centroid[1])
    return float(d / np.sqrt(cell_area / np.pi))


def red_cell_indentation(red_in_deficiency: float, cell_hull_area: float) -> float:
    """Indentation of the cell outline by red cells: A(RBC ∩ (hull(C) \\ C)) / A(hull(C)).

    The share of the cell's convex hull that is taken by red-cell pixels outside the cell,
    in [0, 1): 0 for a convex cell or one whose concavities hold no red cell, large for
    cytoplasm that wraps around neighbouring red cells (a reactive pattern). Red-cell
    pixels come from the image's own colour model (:func:`find_references`).
    """
    return float(red_in_deficiency / cell_hull_area) if cell_hull_area > 0 else np.nan


def _concavity_depths(contour: np.ndarray) -> np.ndarray:
    """Depth of each concavity of a closed outline, in pixels: for every edge of the convex
    hull that the outline leaves, the largest distance from the hull edge's line to the
    outline between its two ends (OpenCV's convexity defects, to 1/256 px). The hull
    indices are sorted, so that they are monotonous as OpenCV requires whatever order the
    hull came in; a hull of under 3 points (a degenerate outline) has no concavity.
    """
    c = np.ascontiguousarray(contour, dtype=np.int32).reshape(-1, 1, 2)
    if len(c) < 4:
        return np.zeros(0)
    hull = np.sort(cv2.convexHull(c, returnPoints=False), axis=0)
    if len(hull) < 3:
        return np.zeros(0)
    defects = cv2.convexityDefects(c, hull)
    return np.zeros(0) if defects is None else defects.reshape(-1, 4)[:, 3] / 256.0


def deepest_concavity(depths: np.ndarray, area_: float) -> float:
    """Deepest notch or cleft of the nucleus: max_k depth_k / √(A/π), ≥ 0, unitless.

    ``depths`` are the outline's concavity depths (:func:`_concavity_depths`: distance from
    each convex-hull edge to the outline below it), divided by the equivalent radius of the
    region of area A. 0 for a convex outline (a digital disc reads under about 0.05, the
    pixel staircase); a notch reaching the centre reads about 1. Cleaved (mantle-cell) and
    deeply cleft (follicular lymphoma) nuclei read high; a thin cleft moves the area-based
    solidity little (on 300 dlmi cells the two rank alike, Spearman 0.90, as most
    concavities there are broad). NaN for an empty region.

    References: Bain B. J., *Blood Cells: A Practical Guide*, 5th ed. (2015), ch. 3 and 9
    (cleaved and notched nuclei); Puigví L. et al., J Clin Pathol 70, 1038-1048 (2017).
    """
    if area_ <= 0:
        return np.nan
    return float(depths.max() / np.sqrt(area_ / np.pi)) if len(depths) else 0.0


def _smooth_closed_curve(points: np.ndarray, sigma: float, length: float) -> np.ndarray:
    # Gaussian smoothing of a closed curve's coordinates along its arc length, wrapping
    # around the closure. sigma (pixels) is converted to points with the curve's length
    # per point; the length is the outline's simplified perimeter (:func:`perimeter`),
    # since the 1 and sqrt(2) px steps of the pixel chain overstate a smooth curve's length
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if len(p) < 3 or not length > 0:
        return p.copy()
    return gaussian_filter_wrap(p, sigma * len(p) / length)


def gaussian_filter_wrap(values: np.ndarray, sigma: float, truncate: float = 3.0) -> np.ndarray:
    """Gaussian smoothing of the rows of ``values`` (N, k) along the first axis, wrapping
    around its ends (a closed curve): ``scipy.ndimage.gaussian_filter1d(values, sigma,
    axis=0, mode="wrap", truncate=truncate)``, to the bit (same kernel, same order of
    operations; the tests check it), without importing scipy in the feature workers.

    The kernel is exp(−x²/2σ²) normalised to sum 1 over x = −r … r, r = ⌊truncate·σ + ½⌋.
    """
    v = np.asarray(values, np.float64)
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x ** 2)
    phi = phi / phi.sum()
    n = len(v)
    # the curve extended by `radius` points at each end, wrapping (several turns when the
    # kernel is longer than the curve); row i + radius + j of it is point i + j
    ext = np.ascontiguousarray(v[np.arange(-radius, n + radius) % n])
    # (left + right) * weight of each pair of neighbours, outermost pair first, as rows
    # j = radius ... 1 of a (radius, n, k) array; left[j, i] = ext[i + j] and
    # right[j, i] = ext[i + 2 radius - j] are strided views of ext (no copy)
    step, col = ext.strides
    left = np.lib.stride_tricks.as_strided(ext, (radius, n, v.shape[1]), (step, step, col),
                                           writeable=False)
    right = np.lib.stride_tricks.as_strided(ext[2 * radius:], (radius, n, v.shape[1]),
                                            (-step, step, col), writeable=False)
    pairs = (left + right) * phi[:radius, None, None]
    # scipy's symmetric-kernel loop adds them one by one after the centre term; so does a
    # reduction over the first axis, element-wise row after row (the tests check every bit)
    return np.add.reduce(np.concatenate([(v * phi[radius])[None], pairs]), axis=0)


def hairiness(contour: np.ndarray, smoothed: np.ndarray, area_: float) -> float:
    """Fine-scale roughness (hairiness, villi) of an outline against its smoothed self:
    mean_k |b_k − s_k| / √(A/π), ≥ 0, unitless.

    b_k are the outline's points and s_k the same points after a Gaussian smoothing along
    the arc length with σ = √(A/π) / 8 (an eighth of the equivalent radius, so the scale
    follows the cell's size whatever the magnification), which keeps the cell's shape and
    dents and removes projections finer than about σ. A disc of radius R reads about
    1 − exp(−1/128) ≈ 0.008 (the smoothing shrinks a circle by that share) plus the pixel
    staircase (under 0.5 px / R); an outline r(θ) = R(1 + a cos kθ) with k ≫ 8 and waves
    of more than a pixel reads about 2a/π (mean |a cos|; the disc's offsets average out
    within the waves). Villous (splenic marginal-zone) and hairy cells read high.
    Projections narrower than the segmenter's final 5×5 opening of the cell mask are not
    seen. NaN for an empty region.

    Reference: Puigví L. et al., "Quantitative cytologic descriptors to differentiate
    CLL, Sézary, granular, and villous lymphocytes through image analysis", Am J Clin
    Pathol 152(1), 74-85 (2019) ("hairiness").
    """
    if area_ <= 0 or len(contour) == 0:
        return np.nan
    d = np.asarray(contour, np.float64).reshape(-1, 2) - smoothed
    return float(np.hypot(d[:, 0], d[:, 1]).mean() / np.sqrt(area_ / np.pi))


# ------------------------------------------------------------------------- colour


def relative_od(od_region: float, od_rbc: float) -> float:
    """Optical density of a region in one channel relative to the red cells in that
    channel: ρ_c(X) = OD_c(X) / OD_c(RBC), unitless.

    OD_c(X) = ln P_c − ln X_c against the same image's plasma P (ln(lower median + c0) of
    each region). Invariant to white-balance gains, gamma, global stain strength and any
    per-channel scaling of OD (module docstring). 0 for a region as light as the plasma,
    1 when it absorbs as much as a red cell in that channel; chromatin reads about 2-5.
    NaN when no red-cell reference was found.
    """
    if not np.isfinite(od_rbc) or od_rbc <= 0:
        return np.nan
    return float(od_region / od_rbc)


def basophilia(od_region: np.ndarray, od_rbc: np.ndarray) -> float:
    """Basophilia (blue against red) relative to the red cells:
    ln(OD_R(X) / OD_G(X)) − ln(OD_R(RBC) / OD_G(RBC)), unitless, real.

    Blue (basophilic) material absorbs red light more than green; eosin-stained red cells
    absorb green most. 0 for a region of the same OD hue as the red cells, positive and
    growing as it turns blue; deep-blue reactive cytoplasm reads highest. Invariant to
    gains, gamma, global stain strength and any per-channel scaling of optical density
    (e.g. a bluer stain batch modelled as OD_R × (1 + β)): ratios of ODs in one channel.
    NaN when the region or the red cells absorb nothing in R or G (OD ≤ 0), where the ratio
    is undefined.
    """
    vals = (od_region[0], od_region[1], od_rbc[0], od_rbc[1])
    if not all(np.isfinite(v) and v > 0 for v in vals):
        return np.nan
    return float(np.log(vals[0] / vals[1]) - np.log(vals[2] / vals[3]))


def density_ratio(od_region: np.ndarray, od_reference: np.ndarray) -> float:
    """Σ_c OD_c(X) / Σ_c OD_c(Y): how much light region X absorbs relative to Y, ≥ 0.

    For cytoplasm against nucleus, both stained by the basic dye, a change of that dye's
    strength cancels as well as gains and gamma. Pale cytoplasm reads near 0, cytoplasm
    as dark as chromatin near 1. NaN when the reference is as light as the plasma.
    """
    den = float(np.sum(od_reference))
    return float(np.sum(od_region) / den) if np.isfinite(den) and den > 0 else np.nan


def od_heterogeneity(density_mean: float, density_std: float) -> float:
    """Coefficient of variation σ(D)/μ(D) of the per-pixel green-channel optical density D
    (linear light, module docstring) over a region, ≥ 0, unitless.

    Gains leave per-pixel OD unchanged and stain strength scales it, so the ratio is
    invariant.
    0 for a flat colour; mottled chromatin or granular cytoplasm reads higher. NaN when
    the region is as light as the plasma (μ ≤ 0).
    """
    return float(density_std / density_mean) if density_mean > 0 else np.nan


# ------------------------------------------------------------------------- texture


def _ij(shape):
    if shape not in _IJ:
        _IJ[shape] = np.indices(shape)
    return _IJ[shape]


_IJ: dict = {}


def glcm_contrast(p: np.ndarray) -> float:
    """Haralick contrast Σ_ij p(i,j)(i−j)² of a normalised GLCM; 0 for a flat region.

    Levels are the region's green-channel optical density quantised to 16 levels over its
    own 1-99 % range; so contrast ranges over [0, 225].
    """
    i, j = _ij(p.shape)
    return float((p * (i - j) ** 2).sum())


def glcm_homogeneity(p: np.ndarray) -> float:
    """Homogeneity Σ_ij p(i,j) / (1 + (i−j)²), in (0, 1]; 1 for a flat region."""
    i, j = _ij(p.shape)
    return float((p / (1.0 + (i - j) ** 2)).sum())


def glcm_energy(p: np.ndarray) -> float:
    """Energy √(Σ_ij p(i,j)²), in (0, 1]; 1 for a flat region."""
    return float(np.sqrt((p ** 2).sum()))


def glcm_entropy(p: np.ndarray) -> float:
    """Entropy −Σ_ij p(i,j) log2 p(i,j), in bits, in [0, 2·log2 L]; 0 for a flat region.

    Open, irregular chromatin has higher entropy than dense, clumped chromatin.
    """
    nz = p[p > 0]
    return float(-(nz * np.log2(nz)).sum())


def glcm_correlation(p: np.ndarray) -> float:
    """Haralick correlation Σ_ij p(i,j)(i−μi)(j−μj) / (σi σj), in [−1, 1]; NaN if flat.

    At a pixel distance d, near 1 when blobs of density are larger than d (clumped
    chromatin keeps a high correlation at d = 4), near 0 for grain finer than d.
    """
    i, j = _ij(p.shape)
    mi, mj = (p * i).sum(), (p * j).sum()
    si = np.sqrt((p * (i - mi) ** 2).sum())
    sj = np.sqrt((p * (j - mj) ** 2).sum())
    if si == 0 or sj == 0:
        return np.nan
    return float((p * (i - mi) * (j - mj)).sum() / (si * sj))


def clumping_index(contrast_far: float, contrast_near: float) -> float:
    """Chromatin clumping: GLCM contrast at distance 4 over contrast at distance 1, ≥ 0.

    Grain finer than one pixel (white noise) gives the same contrast at every distance:
    ratio ≈ 1. Clumps of size s change little between neighbours and a lot across s
    pixels: the ratio grows towards s for blocks of size s (stripes 4 px wide give 4).
    "Cracked-earth" CLL chromatin reads high, fine open chromatin near 1. NaN for a flat
    region.
    """
    return float(contrast_far / contrast_near) if contrast_near > 0 else np.nan


def granularity(tophat: np.ndarray, mask: np.ndarray, reference_density: float) -> float:
    """Mean white top-hat of the green-channel optical density D inside a region, relative to the
    nucleus's mean density: mean_X(D − open_k(D)) / μ_N(D), ≥ 0, unitless.

    The top-hat keeps dense grains smaller than its structuring element k (3×3 ellipse in
    the nucleus: chromatin grain; 5×5 in the cytoplasm: azurophilic granules). 0 for a
    smooth region. Dividing by the nucleus's density cancels gamma and stain strength.
    """
    if not mask.any() or not reference_density > 0:
        return np.nan
    return float(tophat[mask].mean() / reference_density)


def granule_fraction(tophat: np.ndarray, mask: np.ndarray, reference_density: float,
                     level: float = 0.25) -> float:
    """Share of a region's pixels that belong to dense granules, in [0, 1].

    A pixel is a granule pixel when its white top-hat of density (5×5 ellipse) exceeds
    ``level`` (0.25) times the nucleus's mean density: a dot a quarter as dense as
    chromatin above its surroundings. 0 for agranular cytoplasm; large granular
    lymphocytes read higher.
    """
    if not mask.any() or not reference_density > 0:
        return np.nan
    return float(np.count_nonzero(tophat[mask] > level * reference_density) / mask.sum())


def nucleolus_spots(blackhat: np.ndarray, inner: np.ndarray, reference_density: float,
                    level: float = 0.4, min_area: int = 5) -> tuple[int, float]:
    """Nucleoli: pale round spots inside the chromatin. Returns (count, area in pixels).

    A spot is a connected group of at least ``min_area`` pixels of the nucleus interior
    (the nucleus eroded by 2 px) whose black top-hat of density, close_9x9(D) − D, exceeds
    ``level`` (0.4) times the nucleus's mean density, and that is round enough: it fills
    at least half of its bounding box, whose sides differ at most twofold. Spots larger than
    the 9×9 element are not seen. Gamma and gains cancel (relative to the nucleus's
    density). Count ≥ 0; area fraction = area / A(N), in [0, 1).
    """
    if not inner.any() or not reference_density > 0:
        return 0, 0.0
    spots = ((blackhat > level * reference_density) & inner).view(np.uint8)
    if not spots.any():
        return 0, 0.0
    _, _, stats, _ = cv2.connectedComponentsWithStats(spots, connectivity=8)
    w, h, a = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT], stats[1:, cv2.CC_STAT_AREA]
    keep = (a >= min_area) & (a >= 0.5 * w * h) & (np.maximum(w, h) <= 2 * np.minimum(w, h))
    return int(keep.sum()), float(a[keep].sum())


def granule_size_mean(spectrum: np.ndarray) -> float:
    """Mean granule size of the chromatin: the mean of the nucleus's granulometric curve,
    Σ_n n·PS(n) / Σ_n PS(n), in pixels (an octagon's radius), in [0, 3].

    PS(n) is the pattern spectrum of the green-channel density D inside the nucleus
    (smoothed within the nucleus as for GLCM): with V(n) the sum over the nucleus of D
    after a grey opening by the octagon B_n of n steps (3×3 cross and 3×3 square
    alternately, nearly a disc of radius n; restricted to the nucleus so that its outline
    is not a grain) and V(0) = Σ D, PS(n) = V(n) − V(n + 1), n = 0 … 3
    (:data:`GRANULOMETRY_STEPS` = 4), is the density held by dense grains whose largest
    inscribed octagon has radius n (n = 0: finer than the 5-pixel cross). Fine, open
    chromatin reads low; coarse, clumped ("soccer-ball") CLL chromatin higher. Openings
    commute with adding a constant and scale with D, so gains and stain strength cancel in
    the normalised curve. NaN for a flat nucleus (nothing removed).

    References: Matheron G., *Random Sets and Integral Geometry* (1975); Maragos P.,
    "Pattern spectrum and multiscale shape representation", IEEE PAMI 11(7), 701-716
    (1989); Puigví L. et al., Am J Clin Pathol 152(1), 74-85 (2019) (granulometric curve
    of the nucleus).
    """
    total = spectrum.sum()
    if not total > 0:
        return np.nan
    return float(np.arange(len(spectrum)) @ spectrum / total)


def granule_size_spread(spectrum: np.ndarray) -> float:
    """Spread of chromatin granule sizes: the standard deviation of the nucleus's
    granulometric curve, √(Σ_n (n − n̄)² PS(n) / Σ_n PS(n)), in pixels, in [0, 1.5].

    Same pattern spectrum as :func:`granule_size_mean`. 0 when all the grains have one
    size; large when fine grain and large clumps mix (Puigví et al. 2019 found the SD of
    the nucleus's granulometric curve specific for cerebriform, Sézary-cell chromatin).
    NaN for a flat nucleus.
    """
    total = spectrum.sum()
    if not total > 0:
        return np.nan
    n = np.arange(len(spectrum))
    mean = n @ spectrum / total
    return float(np.sqrt(((n - mean) ** 2) @ spectrum / total))


def spatial_autocorrelation(values: np.ndarray, mask: np.ndarray, distance: int) -> float:
    """Moran's I of a per-pixel quantity x inside a region, for pixels ``distance`` apart:
    I = [Σ_(p,q) z_p z_q / n_pairs] / [Σ_p z_p² / n], z = x − x̄ over the region; in
    [−1, 1] (up to edge effects), unitless.

    Pairs (p, q) have both pixels in the region and q − p one of (0, d), (e, e), (d, 0),
    (e, −e), e = round(d/√2) (scikit-image's GLCM offsets); n is the region's pixel count.
    Nothing is quantised (unlike a GLCM correlation), and I is invariant to any increasing
    affine map of x. Near 1 for clumps larger than d, near 0 for grain finer than d,
    negative for a period of about 2d. NaN when the region has no pair or is flat.

    On the nucleus's red-channel density (``Nucleus_Texture_RedDensityCorrelation``), the
    stain-invariant counterpart of Puigví et al.'s "cyan correlation" of the nucleus, which
    identified clumped chromatin (cyan is the ink that absorbs red: in a May-Grünwald-Giemsa
    smear, the basic dye's share of the chromatin stain).

    References: Moran P. A. P., "Notes on continuous stochastic phenomena", Biometrika 37,
    17-23 (1950); Puigví L. et al., Am J Clin Pathol 152(1), 74-85 (2019).
    """
    m8 = np.ascontiguousarray(mask).view(np.uint8)
    bx, by, w, h = cv2.boundingRect(m8)
    inside = m8[by:by + h, bx:bx + w]
    if cv2.countNonZero(inside) < 2:
        return np.nan
    x = np.ascontiguousarray(values[by:by + h, bx:bx + w], dtype=np.float32)
    mean, sd = cv2.meanStdDev(x, mask=inside)
    if not sd[0, 0] > 1e-6:
        return np.nan
    d, e = int(distance), int(round(distance / np.sqrt(2)))
    # z and the mask on a zero frame d px wide at the sides and below, flattened: a shift
    # (dy, dx) with |dx| <= d is then one offset dy * W + dx that never wraps into another
    # row's pixels, and each direction is two dot products. z = 0 outside the region, so
    # a pair with a pixel outside adds nothing to the products nor to the pair count.
    W = w + 2 * d
    z, m = np.zeros((h + d, W)), np.zeros((h + d, W))
    z[:h, d:d + w] = np.where(inside > 0, x - mean[0, 0], 0)  # whatever x is outside
    m[:h, d:d + w] = inside
    z, m = z.ravel(), m.ravel()
    n = h * W
    products = pairs = 0.0
    for dy, dx in ((0, d), (e, e), (d, 0), (e, -e)):
        o = dy * W + dx
        products += float(z[:n] @ z[o:o + n])
        pairs += float(m[:n] @ m[o:o + n])
    if not pairs:
        return np.nan
    return float(products / pairs / sd[0, 0] ** 2)


def nucleolus_prominence(blackhat: np.ndarray, inner: np.ndarray,
                         reference_density: float) -> float:
    """Prominence of the palest spot in the chromatin: max over the nucleus interior of the
    3×3 mean of the black top-hat of density, relative to the nucleus's mean density,
    max_p mean_3×3(close_9×9(D) − D)(p) / μ_N(D), ≥ 0, unitless.

    Same black top-hat and interior (the nucleus eroded by 2 px) as
    :func:`nucleolus_spots`, read as a depth rather than counted above a threshold: how
    much paler than the surrounding chromatin the palest spot of at least 3×3 px (and
    smaller than 9×9) is. 0 for flat chromatin; a spot as pale as the cytoplasm reads
    (D_N − D_spot)/μ_N. A prolymphocyte's single prominent nucleolus reads high, mature
    small lymphocytes (inconspicuous nucleoli) low. Gains and stain strength cancel
    (relative to the nucleus's density). 0 when the interior is empty.
    """
    if not inner.any() or not reference_density > 0:
        return 0.0
    box = cv2.blur(blackhat, (3, 3), borderType=cv2.BORDER_REPLICATE)
    return float(cv2.minMaxLoc(box, mask=inner.view(np.uint8))[1] / reference_density)


# ------------------------------------------------------------------------- references


@dataclass(frozen=True)
class References:
    """Colour references of one image, as ln(I + c0) of per-channel medians (R, G, B), with
    c0 = :data:`OD_CODE_OFFSET`.

    Attributes
    ----------
    plasma, red_cells : ndarray of float, shape (3,)
        Centres of the plasma and red-cell classes (NaN when fewer than
        :data:`MIN_REFERENCE_PIXELS` sampled pixels fell in the class, or, for the red
        cells, when the class absorbs almost nothing: see :func:`find_references`).
    nucleus : ndarray of float, shape (3,)
        The segmented nucleus's median, the fixed centre of the nuclear class.
    n_plasma, n_red_cells : int
        Sampled pixels in each class.
    """

    plasma: np.ndarray
    red_cells: np.ndarray
    nucleus: np.ndarray
    n_plasma: int
    n_red_cells: int

    @property
    def red_cell_od(self) -> np.ndarray:
        """OD_c(RBC) = ln P_c − ln RBC_c per channel."""
        return self.plasma - self.red_cells

    def classify(self, ln_pixels: np.ndarray) -> np.ndarray:
        """Nearest centre (0 plasma, 1 red cells, 2 nuclear material) of (n, 3) ln pixels."""
        return _nearest(ln_pixels, np.stack([self.plasma, self.red_cells, self.nucleus]))


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # squared Euclidean distance up to the per-pixel constant |x|^2: |c|^2 - 2 x.c
    c = np.asarray(centres, np.float32)
    if not np.isfinite(c).all():  # (nan_to_num costs more than the rest on 3 centres)
        c = np.nan_to_num(c, nan=1e6)
    return np.argmin((c * c).sum(1) - 2 * (x @ c.T), axis=1)


def lower_median(values: np.ndarray) -> np.ndarray:
    """Per-column lower median (the ⌈n/2⌉-th smallest value) of an (n, k) array.

    No interpolation between two values, so for any increasing map f, the lower median of
    f(values) is f(lower median of values) exactly: what makes optical densities of
    medians cancel gains and gamma exactly (module docstring).
    """
    k = (len(values) - 1) // 2
    return np.partition(values, k, axis=0)[k]


def masked_lower_median(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel :func:`lower_median` of a uint8 (H, W, 3) image under a mask, from
    256-bin histograms (a few times cheaper than sorting the pixels)."""
    m = np.ascontiguousarray(mask).view(np.uint8)
    n = cv2.countNonZero(m)
    out = np.empty(3)
    for c in range(3):
        h = cv2.calcHist([image], [c], m, [256], [0, 256]).ravel()
        out[c] = np.searchsorted(np.cumsum(h), (n - 1) // 2 + 1)
    return out


def _otsu_ln(values_u8: np.ndarray) -> float:
    """Two-class Otsu threshold on ln(v + c0) of uint8 values, exact (no binning): the
    between-class variance is evaluated at every distinct value. An affine map of the
    ln values maps the threshold the same way (what makes the plasma/red-cell split
    invariant to gains and gamma). Returns the largest ln value of the dark class."""
    hist = np.bincount(values_u8, minlength=256).astype(float)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * _LN)
    w1, m1 = w0[-1] - w0, m0[-1] - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - m1 / w1) ** 2
    between[~np.isfinite(between)] = -1
    return float(_LN[int(np.argmax(between))])


def find_references(image: np.ndarray, seg: Segmentation, nucleus_centre: np.ndarray, *,
                    step: int = REFERENCE_STEP, iterations: int = 1) -> References:
    """Plasma and red-cell colours of one image, from its background.

    Every ``step``-th pixel in each direction outside the cell (``seg.cell | seg.hull``,
    dilated by one sampled pixel) is mapped to ln(I + c0) per channel. Pixels darker
    in ln G than halfway between the nucleus and the lightest background (99th
    percentile) are nuclear material (other white cells, platelets); a two-class Otsu
    split of ln G over the others gives the initial plasma (light) and red-cell (dark)
    centres as class medians; then ``iterations`` rounds of k-medians with three centres
    (plasma, red cells, and nuclear material fixed at ``nucleus_centre``) refine them. A
    red-cell class whose mean OD is under :data:`RBC_MIN_OD_SHARE` of the nucleus's (an
    image without red cells, where Otsu splits the plasma) gives NaN red cells. Gains
    translate this space and gamma scales it, and each step (quantiles, midpoints, Otsu on
    the values' own range, nearest centre, lower medians) is equivariant to both, so the
    same pixels are chosen as plasma and red cells whatever the white balance.

    A channel whose plasma lower median is 255 is saturated (its true value is unknown,
    and a gain would become an offset in OD): its plasma is then extrapolated along the
    red cells' Beer-Lambert line from the unsaturated channel where they absorb most
    (module docstring), from every :data:`SATURATED_STEP`-th pixel of the background whose
    value in that channel lies within :data:`RBC_LINE_WINDOW` of the red cells' and which
    is itself unsaturated; it is never below 255. When every channel is saturated, or
    there are no red cells, the plasma stays at 255.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3), RGB
    seg : Segmentation
    nucleus_centre : ndarray, shape (3,)
        ln(I + c0) of the nucleus's per-channel lower median.
    """
    sub = image[::step, ::step]
    excl = np.ascontiguousarray(seg.cell[::step, ::step] | seg.hull[::step, ::step]).view(np.uint8)
    excl = cv2.dilate(excl, _ELLIPSE3)
    px = sub[excl == 0]
    ln = _LN[px]
    nan3 = np.full(3, np.nan)
    empty = References(nan3, nan3, nucleus_centre, 0, 0)
    if len(ln) < 2 * MIN_REFERENCE_PIXELS:
        return empty
    # nuclear material first: darker in ln G than halfway between the nucleus and the
    # lightest background; Otsu then splits the rest into plasma and red cells
    g = ln[:, 1]
    q99 = int(0.99 * (len(px) - 1))  # an order statistic: equivariant like a median
    lightest = _LN[np.partition(px[:, 1], q99)[q99]]
    rest = g > (nucleus_centre[1] + lightest) / 2
    if np.count_nonzero(rest) < 2 * MIN_REFERENCE_PIXELS:
        return empty
    t = _otsu_ln(px[rest, 1])
    labels = np.where(rest, np.where(g > t, 0, 1), 2)

    def centre(k):
        members = px[labels == k]
        return _LN[lower_median(members)].astype(float) if len(members) else nan3

    plasma, red = centre(0), centre(1)
    for _ in range(iterations):
        labels = _nearest(ln, np.stack([plasma, red, nucleus_centre]))
        plasma, red = centre(0), centre(1)
    n_p, n_r = int(np.count_nonzero(labels == 0)), int(np.count_nonzero(labels == 1))
    if n_p < MIN_REFERENCE_PIXELS:
        plasma = nan3
    # no red cells in the image: Otsu then splits the plasma, and the "red cells" absorb
    # almost nothing next to the nucleus (a ratio of ODs: invariant like the features)
    od_n = np.mean(plasma - nucleus_centre)
    if n_r < MIN_REFERENCE_PIXELS or not np.mean(plasma - red) > RBC_MIN_OD_SHARE * od_n:
        red = nan3
    saturated = np.isfinite(plasma) & (plasma >= _LN[255])
    if saturated.any() and not saturated.all() and np.isfinite(red).all():
        plasma = _extrapolated_white(image, seg, plasma, red, saturated)
    return References(plasma, red, nucleus_centre, n_p, n_r)


def _extrapolated_white(image, seg, plasma, red, saturated, step=SATURATED_STEP):
    # The plasma of a saturated channel c, read off the Beer-Lambert line of the red cells
    # (module docstring): pixels of the background whose reference channel g lies between
    # a little beyond the red cells and most of the way to the plasma, unsaturated in c.
    od = plasma - red
    g = int(np.argmax(np.where(saturated, -np.inf, od)))
    sub = image[::step, ::step]
    excl = np.ascontiguousarray(seg.cell[::step, ::step] | seg.hull[::step, ::step]).view(np.uint8)
    px = sub[cv2.dilate(excl, _ELLIPSE5) == 0]
    ln = _LN[px]
    lo, hi = red[g] + RBC_LINE_WINDOW[0] * od[g], red[g] + RBC_LINE_WINDOW[1] * od[g]
    window = (ln[:, g] >= lo) & (ln[:, g] <= hi)
    out = plasma.copy()
    for c in np.flatnonzero(saturated):
        w = window & (px[:, c] < 255)
        if np.count_nonzero(w) < MIN_REFERENCE_PIXELS:
            continue
        x, y = ln[w, g], ln[w, c]
        sx, sy = x.std(), y.std()
        if not sx > 0:
            continue
        slope = np.sign(np.mean((x - x.mean()) * (y - y.mean()))) * sy / sx
        out[c] = max(red[c] + slope * od[g], _LN[255])
    return out


# ------------------------------------------------------------------------- measurements


class CellMeasurements:
    """The costly pieces of one segmented cell, computed once and shared by the features.

    Everything but the image references is computed on a crop around the nucleus hull and
    the cell, so the cost does not grow with the image size. ``ruler`` is the red-cell
    diameter in px of ``image`` (:mod:`cellfeat.ruler`): the registry divides lengths by it
    and areas by its square (1: pixels).
    """

    def __init__(self, image: np.ndarray, seg: Segmentation, margin: int = 2, *,
                 ruler: float = 1.0):
        if not ruler > 0:
            raise ValueError(f"ruler must be a positive number of pixels, got {ruler!r}")
        self.ruler = float(ruler)
        if not seg.ok:
            raise ValueError(f"cannot measure a cell whose segmentation status is {seg.status!r}")
        self._image, self._seg = image, seg
        h, w = seg.nucleus.shape
        if seg.box is not None:
            x, y, x1, y1 = seg.box
            bw, bh = x1 - x, y1 - y
        else:
            x, y, bw, bh = cv2.boundingRect((seg.cell | seg.hull).view(np.uint8))
        y0, y1 = max(y - margin, 0), min(y + bh + margin, h)
        x0, x1 = max(x - margin, 0), min(x + bw + margin, w)
        self.offset = (x0, y0)
        self.rgb = np.ascontiguousarray(image[y0:y1, x0:x1])
        self.nucleus = seg.nucleus[y0:y1, x0:x1]
        self.hull = seg.hull[y0:y1, x0:x1]
        self.roc = seg.roc[y0:y1, x0:x1]
        self.cell = seg.cell[y0:y1, x0:x1] | self.nucleus
        self.cytoplasm = self.cell & ~self.nucleus
        self.contour = seg.contour - (x0, y0)
        self.hull_contour = seg.hull_contour - (x0, y0)

    # ---- nucleus shape
    @cached_property
    def nucleus_area(self):
        return area(self.nucleus)

    @cached_property
    def hull_area(self):
        return area(self.hull)

    @cached_property
    def nucleus_perimeter(self):
        return perimeter(self.contour)

    @cached_property
    def hull_perimeter(self):
        return perimeter(self.hull_contour)

    @cached_property
    def moments(self):
        return cv2.moments(np.ascontiguousarray(self.nucleus, dtype=np.uint8), binaryImage=True)

    @cached_property
    def centroid(self):
        m = self.moments
        return (m["m10"] / m["m00"], m["m01"] / m["m00"])

    @cached_property
    def axes(self):
        m = self.moments
        return ellipse_axes(m["mu20"], m["mu02"], m["mu11"], m["m00"])

    # ---- cell shape
    @cached_property
    def cell_u8(self) -> np.ndarray:
        return np.ascontiguousarray(self.cell).view(np.uint8)

    @cached_property
    def cell_area(self):
        return area(self.cell)

    @cached_property
    def cell_contour(self) -> np.ndarray:
        cnts, _ = cv2.findContours(self.cell_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        return max(cnts, key=cv2.contourArea).reshape(-1, 2)

    @cached_property
    def cell_hull(self) -> tuple[np.ndarray, np.ndarray]:
        """Convex hull of the cell: its polygon (K, 2) and its filled mask (bool)."""
        poly = cv2.convexHull(self.cell_contour.reshape(-1, 1, 2)).reshape(-1, 2)
        mask = np.zeros_like(self.cell_u8)
        cv2.fillConvexPoly(mask, poly.reshape(-1, 1, 2), 1)
        return poly, (mask | self.cell_u8).view(bool)

    @cached_property
    def cell_perimeter(self):
        return perimeter(self.cell_contour)

    @cached_property
    def cell_centroid(self):
        m = cv2.moments(self.cell_u8, binaryImage=True)
        return (m["m10"] / m["m00"], m["m01"] / m["m00"])

    @cached_property
    def rim_widths(self) -> np.ndarray:
        """Distance (pixels) from each cell-boundary pixel to the nearest nucleus pixel."""
        outside = np.ascontiguousarray(~self.nucleus).view(np.uint8)
        dist = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
        c = self.cell_contour
        return dist[c[:, 1], c[:, 0]]

    @cached_property
    def nucleus_concavities(self) -> np.ndarray:
        """Depth (pixels) of each concavity of the nucleus outline, one per hull edge."""
        return _concavity_depths(self.contour)

    @cached_property
    def cell_contour_smoothed(self) -> np.ndarray:
        """The cell outline smoothed along its arc length by a Gaussian of
        :data:`HAIRINESS_SIGMA` times the cell's equivalent radius."""
        return _smooth_closed_curve(self.cell_contour,
                                    HAIRINESS_SIGMA * np.sqrt(self.cell_area / np.pi),
                                    self.cell_perimeter)

    @cached_property
    def red_in_deficiency(self) -> float:
        """Red-cell pixels in the cell's convex hull but outside the cell."""
        if not np.isfinite(self.references.red_cells).all():
            return np.nan
        deficiency = self.cell_hull[1] & ~self.cell
        if not deficiency.any():
            return 0.0
        labels = self.references.classify(_LN[self.rgb[deficiency]])
        return float(np.count_nonzero(labels == 1))

    # ---- colour
    @cached_property
    def references(self) -> References:
        return find_references(self._image, self._seg, self.region_ln_median("nucleus"))

    def region_ln_median(self, region: str) -> np.ndarray:
        """ln(lower median + c0) per channel over a region (NaN under
        :data:`MIN_REGION_PIXELS` pixels)."""
        cache = self.__dict__.setdefault("_medians", {})
        if region not in cache:
            mask = getattr(self, region)
            cache[region] = (_LN[masked_lower_median(self.rgb, mask).astype(int)].astype(float)
                             if np.count_nonzero(mask) >= MIN_REGION_PIXELS else np.full(3, np.nan))
        return cache[region]

    def od(self, region: str) -> np.ndarray:
        """OD_c(region) = ln P_c − ln(lower median + c0) per channel, against the plasma."""
        return self.references.plasma - self.region_ln_median(region)

    def linear_density(self, channel: int, box=(slice(None), slice(None))) -> np.ndarray:
        """Per-pixel optical density of one channel (0 R, 1 G, 2 B) in linear light,
        D_c = ln L(P_c) − ln L(c), float32, with L the sRGB decoding of 8-bit codes, on a
        part (``box``, a pair of slices) of the crop.

        Where the plasma reference is missing, code 255 stands in for P_c: texture and the
        relative measures read D only up to an additive constant and a scale. A saturated
        plasma extrapolated above 255 (:func:`find_references`) is decoded as is."""
        p = self.references.plasma[channel]
        code = float(np.exp(p)) - OD_CODE_OFFSET if np.isfinite(p) else 255.0
        white = _LN_LIN[int(round(code))] if code < 255.5 else np.float32(_ln_linear(code))
        return white - _LN_LIN[self.rgb[box + (channel,)]]

    @cached_property
    def density(self) -> np.ndarray:
        """D = D_G (:meth:`linear_density` of the green channel, where chromatin absorbs
        most) over the crop: what texture, heterogeneity, granularity and nucleoli read."""
        return self.linear_density(1)

    def smoothed_density(self, region: str) -> np.ndarray:
        """D smoothed by a Gaussian of :data:`TEXTURE_SIGMA` px *within* a region
        (normalised convolution: blur(D·M) / blur(M)), so that no value from outside the
        region leaks in; a flat region stays flat. Values outside the region are 0."""
        cache = self.__dict__.setdefault("_smoothed", {})
        if region not in cache:
            if TEXTURE_SIGMA <= 0:
                cache[region] = self.density
            else:
                m = np.ascontiguousarray(getattr(self, region), dtype=np.float32)
                num = cv2.GaussianBlur(self.density * m, (0, 0), TEXTURE_SIGMA)
                den = cv2.GaussianBlur(m, (0, 0), TEXTURE_SIGMA)
                cache[region] = np.where(m > 0, num / np.maximum(den, 1e-6), 0).astype(np.float32)
        return cache[region]

    def density_stats(self, region: str) -> tuple[float, float]:
        """Mean and standard deviation of the smoothed D over a region."""
        mask = np.ascontiguousarray(getattr(self, region)).view(np.uint8)
        if cv2.countNonZero(mask) < MIN_REGION_PIXELS:
            return np.nan, np.nan
        m, s = cv2.meanStdDev(self.smoothed_density(region), mask=mask)
        return float(m[0, 0]), float(s[0, 0])

    @cached_property
    def nucleus_density(self) -> float:
        """Mean of D over the nucleus (unsmoothed)."""
        mask = np.ascontiguousarray(self.nucleus).view(np.uint8)
        if cv2.countNonZero(mask) < MIN_REGION_PIXELS:
            return np.nan
        return float(cv2.mean(self.density, mask=mask)[0])

    # ---- texture
    def _tophat(self, inside: np.ndarray, kernel) -> np.ndarray:
        # outside the region the density is raised to its maximum, so that a lighter
        # surround (plasma around the cell, cytoplasm around the nucleus) does not turn the
        # region's own outline into "grains"
        d = self.density.copy()
        d[~inside] = d.max()
        return cv2.morphologyEx(d, cv2.MORPH_TOPHAT, kernel)

    @cached_property
    def tophat3(self) -> np.ndarray:
        """White top-hat (3×3 ellipse) of D within the nucleus."""
        return self._tophat(self.nucleus, _ELLIPSE3)

    @cached_property
    def tophat5(self) -> np.ndarray:
        """White top-hat (5×5 ellipse) of D within the cell."""
        return self._tophat(self.cell, _ELLIPSE5)

    @cached_property
    def nucleus_blackhat(self) -> tuple[np.ndarray, np.ndarray]:
        """Black top-hat close_9×9(D) − D on the nucleus's bounding box, and the nucleus
        interior (eroded by 2 px) on that box, where nucleoli are looked for."""
        nuc = np.ascontiguousarray(self.nucleus).view(np.uint8)
        x, y, w, h = cv2.boundingRect(nuc)
        blackhat = cv2.morphologyEx(self.density[y:y + h, x:x + w], cv2.MORPH_BLACKHAT,
                                    _ELLIPSE9, borderType=cv2.BORDER_REPLICATE)
        inner = cv2.erode(nuc[y:y + h, x:x + w], _ELLIPSE5).view(bool)
        return blackhat, inner

    @cached_property
    def nucleoli(self) -> tuple[int, float]:
        # on the nucleus's bounding box only (spots lie inside the eroded nucleus)
        return nucleolus_spots(*self.nucleus_blackhat, self.nucleus_density)

    @cached_property
    def nucleus_red_smoothed(self) -> tuple[np.ndarray, np.ndarray]:
        """The red-channel density D_R smoothed within the nucleus (as
        :meth:`smoothed_density`) on the nucleus's bounding box, and the nucleus on that
        box (the box is all that the red texture reads; values outside the nucleus are
        undefined)."""
        nuc = np.ascontiguousarray(self.nucleus).view(np.uint8)
        x, y, w, h = cv2.boundingRect(nuc)
        box = (slice(y, y + h), slice(x, x + w))
        d, inside = self.linear_density(0, box), self.nucleus[box]
        if TEXTURE_SIGMA <= 0:
            return d, inside
        m = inside.astype(np.float32)
        # zero padding: pixels beyond the box are outside the nucleus, as in the full crop;
        # every nucleus pixel has den > 0 (its own weight)
        num = cv2.GaussianBlur(d * m, (0, 0), TEXTURE_SIGMA, borderType=cv2.BORDER_CONSTANT)
        den = cv2.GaussianBlur(m, (0, 0), TEXTURE_SIGMA, borderType=cv2.BORDER_CONSTANT)
        return cv2.divide(num, den), inside

    @cached_property
    def nucleus_pattern_spectrum(self) -> np.ndarray:
        """Pattern spectrum PS(n), n = 0 … GRANULOMETRY_STEPS − 1, of the nucleus's
        smoothed density (see :func:`granule_size_mean`)."""
        return _pattern_spectrum(self.smoothed_density("nucleus"), self.nucleus,
                                 GRANULOMETRY_STEPS)

    def glcm(self, region: str, distance: int = 1) -> np.ndarray | None:
        """Normalised, symmetric GLCM (four angles averaged) at a pixel distance of the
        smoothed density (:meth:`smoothed_density`) inside a region, quantised to :data:`GLCM_LEVELS` levels over the
        region's own 1-99 % range; None when the region has too few pixels."""
        cache = self.__dict__.setdefault("_glcm", {})
        if region not in cache:
            cache[region] = _masked_glcm(self.smoothed_density(region), getattr(self, region),
                                         GLCM_DISTANCES if region == "nucleus" else (1,))
        ps = cache[region]
        return None if ps is None else ps.get(distance)


#: The steps of the octagonal granulometry: 3×3 cross, then 3×3 square, alternately; n
#: steps make an octagon of radius n, nearly a disc (Serra J., *Image Analysis and
#: Mathematical Morphology*, 1982).
_OCTAGON_STEPS = (cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)),
                  cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3)))


def _diamond(j: int) -> np.ndarray:
    """j 3×3 crosses summed: the digital diamond |x| + |y| ≤ j, (2j + 1)² uint8 kernel."""
    y, x = np.mgrid[-j:j + 1, -j:j + 1]
    return (np.abs(x) + np.abs(y) <= j).astype(np.uint8)


_SQUARES = {k: np.ones((2 * k + 1, 2 * k + 1), np.uint8) for k in range(1, 4)}
_DIAMONDS = {j: _diamond(j) for j in range(1, 4)}


def _octagon(n: int) -> np.ndarray:
    """The structuring element of n steps, B_n = K_1 ⊕ … ⊕ K_n (K odd = 3×3 cross, K even
    = 3×3 square), as a (2n + 1)² uint8 kernel: B_1 is the 5-pixel cross, B_2 the 5×5
    square without its corners (21 pixels)."""
    k = np.zeros((2 * n + 1, 2 * n + 1), np.uint8)
    k[n, n] = 1
    for i in range(n):
        k = cv2.dilate(k, _OCTAGON_STEPS[i % 2])
    return k


def _pattern_spectrum(values: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    # Grey openings by the octagons B_1..B_steps restricted to the region: pixels outside
    # it hold +big for the erosions and -big for the dilations, so they never win, and a
    # value only ever travels from a region pixel (an n-step erosion is then the minimum
    # over (p + B_n) within the region; no re-masking is needed between steps). So the
    # region's own outline is no grain, and a grain touching it is still seen.
    # PS(n) = V(n) - V(n + 1), V(0) = sum of values; the openings of a Minkowski family
    # decrease, and the clip at 0 only guards rounding.
    m8 = np.ascontiguousarray(mask).view(np.uint8)
    x, y, w, h = cv2.boundingRect(m8)
    inside = m8[y:y + h, x:x + w]
    if not cv2.countNonZero(inside):
        return np.zeros(steps)
    big = 1e6
    # +big inside and -big outside: min() with it sets the outside to -big, max() with its
    # negative sets the outside to +big (cheaper than masked assignment)
    limit = np.where(inside > 0, np.float32(big), np.float32(-big))
    values = np.ascontiguousarray(values[y:y + h, x:x + w], dtype=np.float32)
    opened = np.empty((steps + 1, h, w), np.float32)
    opened[0] = values
    eroded = cv2.max(values, -limit)
    for n in range(steps):
        eroded = cv2.erode(eroded, _OCTAGON_STEPS[n % 2], borderValue=big)
        # B_(n+1) = (n + 1) // 2 squares and (n + 2) // 2 crosses: one square (separable,
        # one pass whatever its size), then one diamond
        o = cv2.min(eroded, limit)
        if (n + 1) // 2:
            o = cv2.dilate(o, _SQUARES[(n + 1) // 2], borderValue=-big)
        opened[n + 1] = cv2.dilate(o, _DIAMONDS[(n + 2) // 2], borderValue=-big)
    volumes = opened.reshape(steps + 1, -1).astype(np.float64) @ inside.reshape(-1)
    return np.maximum(-np.diff(volumes), 0.0)


#: The four GLCM directions (0, 45, 90 and 135 degrees), as scikit-image's
#: ``graycomatrix`` takes them: a pixel (r, c) pairs with (r + round(d sin a),
#: c + round(d cos a)).
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def glcm_counts(levels_image: np.ndarray, n_levels: int, distances=(1,)) -> np.ndarray:
    """Grey-level co-occurrence counts of a uint8 image of levels 0 … ``n_levels`` − 1,
    its four directions summed, for each pixel distance d: an array (len(distances), L, L).

    ``C[k, i, j]`` counts the pixel pairs (r, c), (r + round(d sin a), c + round(d cos a))
    whose levels are i and j, for the angles a of :data:`GLCM_ANGLES`. Level 0 is the
    "outside" level: a pair leaving the image is counted as a pair with a 0 (the image is
    framed by zeros), so row and column 0 are not co-occurrences of the image and are
    dropped by the callers. For levels ≥ 1 the counts are scikit-image's
    ``graycomatrix(image, distances, GLCM_ANGLES, levels=n_levels)`` summed over its angles
    (the tests check they agree), from one 2-D histogram (OpenCV) per distance of the
    image against its four shifted copies, without importing scikit-image in the feature
    workers.
    """
    q = np.ascontiguousarray(levels_image, dtype=np.uint8)
    h, w = q.shape
    far = max(distances)
    framed = np.zeros((h + 2 * far, w + 2 * far), np.uint8)
    framed[far:far + h, far:far + w] = q
    first = np.concatenate([q] * len(GLCM_ANGLES))
    out = np.empty((len(distances), n_levels, n_levels), np.int64)
    for k, d in enumerate(distances):
        # Python's round() is half-to-even and C's half-away-from-zero; they differ at .5
        # only, and d sin a, d cos a are never an exact half here
        shifts = [(int(round(np.sin(a) * d)), int(round(np.cos(a) * d))) for a in GLCM_ANGLES]
        second = np.concatenate([framed[far + dr:far + dr + h, far + dc:far + dc + w]
                                 for dr, dc in shifts])
        # counts below 2**24 are exact in calcHist's float32
        out[k] = cv2.calcHist([first, second], [0, 1], None, [n_levels, n_levels],
                              [0, n_levels, 0, n_levels])
    return out


def _masked_glcm(gray: np.ndarray, mask: np.ndarray, distances=(1,)) -> dict | None:
    # Pixels outside the mask get level 0 and every pair touching level 0 is dropped, so
    # only pairs of two region pixels count. Computed on the region's bounding box.
    # Returns {distance: normalised GLCM}, without distances that have no pair.
    mask_u8 = np.ascontiguousarray(mask).view(np.uint8)
    if cv2.countNonZero(mask_u8) < MIN_REGION_PIXELS:
        return None
    x, y, w, h = cv2.boundingRect(mask_u8)
    gray = np.ascontiguousarray(gray[y:y + h, x:x + w], dtype=np.float32)
    mask_u8 = np.ascontiguousarray(mask_u8[y:y + h, x:x + w])
    # the range is the 1st to 99th percentile (order statistics, so an increasing affine
    # map of the values leaves the levels unchanged), robust to a few JPEG-ringing pixels
    vals = gray[mask_u8 > 0]
    k = int(GLCM_RANGE_TAIL * (len(vals) - 1))
    part = np.partition(vals, (k, len(vals) - 1 - k))
    lo, hi = float(part[k]), float(part[len(vals) - 1 - k])
    # a range below a thousandth of an OD unit (far below one 8-bit code step, ~0.005) is
    # rounding noise of the smoothing: a flat region
    scale = (GLCM_LEVELS - 1e-3) / (hi - lo) if hi - lo > 1e-3 else 0.0
    q = np.clip(1 + (gray - np.float32(lo)) * np.float32(scale), 1, GLCM_LEVELS)
    q = q.astype(np.uint8) * mask_u8
    out = {}
    for d, c in zip(distances, glcm_counts(q, GLCM_LEVELS + 1, distances)):
        c = c[1:, 1:] + c[1:, 1:].T  # level 0 is outside the region; symmetric
        total = c.sum()
        if total > 0:
            out[d] = c / float(total)
    return out or None


# ------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Feature:
    """A registry entry: the output name, the documented formula function and how the
    function's arguments are taken from :class:`CellMeasurements`."""

    name: str
    func: Callable
    compute: Callable[[CellMeasurements], float]

    @property
    def doc(self) -> str:
        return (self.func.__doc__ or "").strip().splitlines()[0]


REGISTRY: dict[str, Feature] = {}


def _register(name: str, func: Callable, compute: Callable[[CellMeasurements], float]):
    if name in REGISTRY:
        raise KeyError(f"duplicate feature name {name}")
    REGISTRY[name] = Feature(name, func, compute)


def _glcm_feature(func, region, distance=1):
    def compute(m):
        p = m.glcm(region, distance)
        return func(p) if p is not None else np.nan
    return compute


def _clumping(m):
    far, near = m.glcm("nucleus", 4), m.glcm("nucleus", 1)
    if far is None or near is None:
        return np.nan
    return clumping_index(glcm_contrast(far), glcm_contrast(near))


# nucleus shape
_register("Nucleus_Shape_Area", area, lambda m: m.nucleus_area / m.ruler ** 2)
_register("Nucleus_Shape_Perimeter", perimeter, lambda m: m.nucleus_perimeter / m.ruler)
_register("Nucleus_Shape_Solidity", solidity, lambda m: solidity(m.nucleus_area, m.hull_area))
_register("Nucleus_Shape_Convexity", convexity,
          lambda m: convexity(m.nucleus_perimeter, m.hull_perimeter))
_register("Nucleus_Shape_Circularity", circularity,
          lambda m: circularity(m.nucleus_perimeter, m.nucleus_area))
_register("Nucleus_Shape_MajorAxisLength", ellipse_axes, lambda m: m.axes[0] / m.ruler)
_register("Nucleus_Shape_MinorAxisLength", ellipse_axes, lambda m: m.axes[1] / m.ruler)
_register("Nucleus_Shape_Eccentricity", eccentricity, lambda m: eccentricity(*m.axes))
_register("Nucleus_Shape_BoundaryIrregularity", boundary_irregularity,
          lambda m: boundary_irregularity(m.contour, m.centroid))
_register("Nucleus_Shape_DeepestConcavity", deepest_concavity,
          lambda m: deepest_concavity(m.nucleus_concavities, m.nucleus_area))

# cell and cytoplasm shape
_register("Cell_Shape_Area", area, lambda m: m.cell_area / m.ruler ** 2)
_register("Cell_Shape_EquivalentDiameter", equivalent_diameter,
          lambda m: equivalent_diameter(m.cell_area) / m.ruler)
_register("Cell_Shape_NucleusAreaRatio", area_ratio,
          lambda m: area_ratio(m.nucleus_area, m.cell_area))
_register("Cell_Shape_Solidity", solidity,
          lambda m: solidity(m.cell_area, area(m.cell_hull[1])))
_register("Cell_Shape_Convexity", convexity,
          lambda m: convexity(m.cell_perimeter, perimeter(m.cell_hull[0])))
_register("Cell_Shape_Circularity", circularity,
          lambda m: circularity(m.cell_perimeter, m.cell_area))
_register("Cell_Shape_NucleusOffset", centroid_offset,
          lambda m: centroid_offset(m.centroid, m.cell_centroid, m.cell_area))
_register("Cell_Shape_RedCellIndentation", red_cell_indentation,
          lambda m: red_cell_indentation(m.red_in_deficiency, area(m.cell_hull[1])))
_register("Cell_Shape_Hairiness", hairiness,
          lambda m: hairiness(m.cell_contour, m.cell_contour_smoothed, m.cell_area))
_register("Cytoplasm_Shape_RimWidthMean", rim_width_mean,
          lambda m: rim_width_mean(m.rim_widths) / m.ruler)
_register("Cytoplasm_Shape_RimWidthStd", rim_width_std,
          lambda m: rim_width_std(m.rim_widths) / m.ruler)

# colour, relative to the same image's plasma and red cells
for _obj, _region in (("Nucleus", "nucleus"), ("Cytoplasm", "cytoplasm")):
    for _k, _ch in enumerate("RGB"):
        _register(f"{_obj}_Colour_OD_{_ch}_RelRBC", relative_od,
                  lambda m, r=_region, k=_k: relative_od(m.od(r)[k], m.references.red_cell_od[k]))
_register("Cytoplasm_Colour_OD_Basophilia", basophilia,
          lambda m: basophilia(m.od("cytoplasm"), m.references.red_cell_od))
_register("Cytoplasm_Colour_OD_NucleusDensityRatio", density_ratio,
          lambda m: density_ratio(m.od("cytoplasm"), m.od("nucleus")))
for _obj, _region in (("Nucleus", "nucleus"), ("Cytoplasm", "cytoplasm")):
    _register(f"{_obj}_Colour_OD_Heterogeneity", od_heterogeneity,
              lambda m, r=_region: od_heterogeneity(*m.density_stats(r)))

# texture, on the density quantised over each region's own range
for _obj, _region in (("Nucleus", "nucleus"), ("Cytoplasm", "cytoplasm")):
    for _name, _func in (("Contrast", glcm_contrast), ("Homogeneity", glcm_homogeneity),
                         ("Energy", glcm_energy), ("Entropy", glcm_entropy),
                         ("Correlation", glcm_correlation)):
        _register(f"{_obj}_Texture_GLCM_{_name}", _func, _glcm_feature(_func, _region))
for _d in GLCM_DISTANCES[1:]:
    for _name, _func in (("Contrast", glcm_contrast), ("Correlation", glcm_correlation)):
        _register(f"Nucleus_Texture_GLCM_{_name}_D{_d}", _func,
                  _glcm_feature(_func, "nucleus", _d))
_register("Nucleus_Texture_ClumpingIndex", clumping_index, _clumping)
_register("Nucleus_Texture_Granularity", granularity,
          lambda m: granularity(m.tophat3, m.nucleus, m.nucleus_density))
_register("Cytoplasm_Texture_Granularity", granularity,
          lambda m: granularity(m.tophat5, m.cytoplasm, m.nucleus_density))
_register("Cytoplasm_Texture_GranuleFraction", granule_fraction,
          lambda m: granule_fraction(m.tophat5, m.cytoplasm, m.nucleus_density))
_register("Nucleus_Texture_NucleolusCount", nucleolus_spots, lambda m: float(m.nucleoli[0]))
_register("Nucleus_Texture_NucleolusAreaFraction", nucleolus_spots,
          lambda m: m.nucleoli[1] / m.nucleus_area if m.nucleus_area > 0 else np.nan)
_register("Nucleus_Texture_NucleolusProminence", nucleolus_prominence,
          lambda m: nucleolus_prominence(*m.nucleus_blackhat, m.nucleus_density))
_register("Nucleus_Texture_GranuleSizeMean", granule_size_mean,
          lambda m: granule_size_mean(m.nucleus_pattern_spectrum))
_register("Nucleus_Texture_GranuleSizeSpread", granule_size_spread,
          lambda m: granule_size_spread(m.nucleus_pattern_spectrum))
_register("Nucleus_Texture_RedDensityCorrelation", spatial_autocorrelation,
          lambda m: spatial_autocorrelation(*m.nucleus_red_smoothed,
                                            RED_CORRELATION_DISTANCE))

#: Every feature name, in registry order (the column order of feature tables).
FEATURE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def compute_features(image: np.ndarray, seg: Segmentation,
                     names: tuple[str, ...] | None = None, *,
                     ruler: float = 1.0) -> dict[str, float]:
    """Compute features of one segmented cell.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3), RGB
    seg : Segmentation
        Must have status ``"ok"``.
    names : tuple of str, optional
        Registry names to compute (default: all, :data:`FEATURE_NAMES`).
    ruler : float
        The red-cell diameter in px of ``image`` (:mod:`cellfeat.ruler`): lengths are
        reported in red-cell diameters and areas in squared diameters. 1 (the default)
        reports pixels.

    Returns
    -------
    dict of str to float
        NaN where a feature is undefined for this cell (e.g. an empty ROC for a perfectly
        convex nucleus, no cytoplasm found, or no red cells in the image for the
        ``_RelRBC`` features): the function's docstring says when.
    """
    m = CellMeasurements(image, seg, ruler=ruler)
    names = FEATURE_NAMES if names is None else names
    return {n: float(REGISTRY[n].compute(m)) for n in names}
