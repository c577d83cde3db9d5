"""Per-cell hand-crafted features: one small function per feature, one registry of names.

Each public function below is a formula on pieces that :class:`CellMeasurements` computes
once per cell (masks, contour, hull, per-region colour statistics, GLCM) and passes in
explicitly. :data:`REGISTRY` maps every output name (``Object_Category_Feature``, e.g.
``Nucleus_Shape_Solidity``, ``ROC_Colour_LAB_L_MeanRatio``) to its function and to the
pieces it reads; code, tables, plots and docs use those names.

Objects: ``Nucleus``; ``Hull`` (convex hull of the nucleus); ``ROC`` (hull minus nucleus,
the "representative of the cytoplasm" of Tavakoli et al. 2021); ``Cytoplasm`` (cell minus
nucleus, best effort); ``Cell`` (nucleus + cytoplasm).

References
----------
Tavakoli S., Ghaffari A., Kouzehkanan Z. M., Hosseini R. "New segmentation and feature
extraction algorithm for classification of white blood cells in peripheral smear
images." Scientific Reports 11, 19428 (2021).
Haralick R. M., Shanmugam K., Dinstein I. "Textural features for image
classification." IEEE Trans. SMC 3(6), 610-621 (1973).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import cv2
import numpy as np

from .segment import Segmentation

__all__ = [
    "REGISTRY", "FEATURE_NAMES", "Feature", "CellMeasurements", "compute_features",
    "area", "perimeter", "solidity", "convexity", "circularity", "ellipse_axes",
    "eccentricity", "boundary_irregularity", "area_ratio", "rim_thickness", "mean_ratio",
    "std_ratio", "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_entropy",
    "glcm_correlation", "granularity", "COLOUR_SPACES",
]

#: Colour spaces and channel names, in the order OpenCV returns them (8-bit encodings:
#: H in [0, 180), every other channel in [0, 255]).
COLOUR_SPACES = {
    "RGB": ("R", "G", "B"),
    "HSV": ("H", "S", "V"),
    "LAB": ("L", "A", "B"),
    "YCrCb": ("Y", "Cr", "Cb"),
}
_CHANNEL_INDEX = [(space, ch, k) for k, (space, ch) in enumerate(
    (s, c) for s, chans in COLOUR_SPACES.items() for c in chans)]
_CONVERSIONS = {"HSV": cv2.COLOR_RGB2HSV, "LAB": cv2.COLOR_RGB2LAB, "YCrCb": cv2.COLOR_RGB2YCrCb}
GLCM_LEVELS = 16
#: Bumped whenever a formula changes, so that cached feature tables are recomputed.
FEATURES_REVISION = 5
MIN_REGION_PIXELS = 5


# ------------------------------------------------------------------------- shape


def area(mask: np.ndarray) -> float:
    """Area A of a region, in pixels: the number of pixels of ``mask``.

    Range [0, H·W].
    """
    return float(np.count_nonzero(mask))


def perimeter(contour: np.ndarray) -> float:
    """Perimeter P, in pixels: length of the closed boundary polygon after Douglas-Peucker
    simplification with a 1-pixel tolerance.

    The raw chain through boundary pixels follows the pixel staircase and overestimates a
    disc's perimeter by about 5 %; the simplified polygon gives P ≈ 2πr for a disc of
    radius r.
    """
    c = contour.reshape(-1, 1, 2).astype(np.int32)
    return float(cv2.arcLength(cv2.approxPolyDP(c, 1.0, True), True))


def solidity(area_: float, convex_area: float) -> float:
    """Solidity = A(N) / A(hull(N)), in (0, 1]; 1 for a convex nucleus.

    Lobed or notched nuclei (reactive, some lymphoma cells) score lower.
    """
    return area_ / convex_area if convex_area > 0 else np.nan


def convexity(perimeter_: float, convex_perimeter: float) -> float:
    """Convexity = P(hull(N)) / P(N), in (0, 1]; 1 for a convex outline.

    Sensitive to boundary roughness, where solidity is sensitive to deep concavities.
    """
    return convex_perimeter / perimeter_ if perimeter_ > 0 else np.nan


def circularity(perimeter_: float, area_: float) -> float:
    """Circularity = P(N)² / (4π A(N)), ≥ 1; 1 for a disc, larger for irregular outlines.

    (The reciprocal of the "form factor" 4πA/P².)
    """
    return perimeter_ ** 2 / (4 * np.pi * area_) if area_ > 0 else np.nan


def ellipse_axes(mu20: float, mu02: float, mu11: float, m00: float) -> tuple[float, float]:
    """Major and minor axis lengths of the ellipse with the region's second moments.

    With the inertia tensor eigenvalues λ1 ≥ λ2 of the pixel coordinates (central moments
    divided by the area), axes are 4√λ1 and 4√λ2 (as ``skimage.measure.regionprops``).
    For a disc of radius r both are ≈ 2r.
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


def rim_thickness(nucleus_area: float, cell_area: float) -> float:
    """Mean cytoplasm rim thickness (√(A(cell)/π) − √(A(N)/π)), in pixels, ≥ 0.

    The difference of the equivalent-disc radii of cell and nucleus.
    """
    return float(np.sqrt(cell_area / np.pi) - np.sqrt(nucleus_area / np.pi))


# ------------------------------------------------------------------------- colour


def mean_ratio(region_mean, reference_mean):
    """μ(region) / μ(reference) of one colour channel (Tavakoli et al. 2021).

    With reference = convex hull, it compares the nucleus or the ROC to the whole hull,
    which cancels most stain drift between smears. NaN when the reference mean is 0.
    Works elementwise on arrays of channels.
    """
    return _safe_ratio(region_mean, reference_mean)


def std_ratio(region_std, reference_std):
    """σ(region) / σ(reference) of one colour channel (Tavakoli et al. 2021).

    NaN when the reference is uniform (σ = 0). Works elementwise on arrays of channels.
    """
    return _safe_ratio(region_std, reference_std)


def _safe_ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out if out.ndim else float(out)


# ------------------------------------------------------------------------- texture


def glcm_contrast(p: np.ndarray) -> float:
    """Haralick contrast Σ_ij p(i,j)(i−j)² of a normalised GLCM; 0 for a flat region."""
    i, j = np.indices(p.shape)
    return float((p * (i - j) ** 2).sum())


def glcm_homogeneity(p: np.ndarray) -> float:
    """Homogeneity Σ_ij p(i,j) / (1 + (i−j)²), in (0, 1]; 1 for a flat region."""
    i, j = np.indices(p.shape)
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
    """Haralick correlation Σ_ij p(i,j)(i−μi)(j−μj) / (σi σj), in [−1, 1]; NaN if flat."""
    i, j = np.indices(p.shape)
    mi, mj = (p * i).sum(), (p * j).sum()
    si = np.sqrt((p * (i - mi) ** 2).sum())
    sj = np.sqrt((p * (j - mj) ** 2).sum())
    if si == 0 or sj == 0:
        return np.nan
    return float((p * (i - mi) * (j - mj)).sum() / (si * sj))


def granularity(darkness: np.ndarray, mask: np.ndarray) -> float:
    """Mean white top-hat (3×3 ellipse) of the darkness image inside the nucleus, in grey levels.

    Measures fine dark chromatin grains smaller than the structuring element; 0 for a
    smooth nucleus.
    """
    tophat = cv2.morphologyEx(darkness, cv2.MORPH_TOPHAT,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    return float(tophat[mask].mean()) if mask.any() else np.nan


# ------------------------------------------------------------------------- measurements


class CellMeasurements:
    """The costly pieces of one segmented cell, computed once and shared by the features.

    Everything is computed on a crop around the nucleus hull and the cell, so the cost does
    not grow with the image size.
    """

    def __init__(self, image: np.ndarray, seg: Segmentation, margin: int = 2):
        if not seg.ok:
            raise ValueError(f"cannot measure a cell whose segmentation status is {seg.status!r}")
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
        self.cell = seg.cell[y0:y1, x0:x1]
        self.cytoplasm = self.cell & ~self.nucleus
        self.contour = seg.contour - (x0, y0)
        self.hull_contour = seg.hull_contour - (x0, y0)

    @cached_property
    def nucleus_area(self):
        return area(self.nucleus)

    @cached_property
    def hull_area(self):
        return area(self.hull)

    @cached_property
    def cell_area(self):
        return area(self.cell)

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

    @cached_property
    def colour_images(self) -> list[np.ndarray]:
        """The crop in RGB, HSV, LAB and YCrCb (uint8, OpenCV encodings), in that order."""
        return [self.rgb] + [cv2.cvtColor(self.rgb, c) for c in _CONVERSIONS.values()]

    @cached_property
    def _stats(self) -> dict:
        # cv2.meanStdDev on the uint8 images under each mask: no float copies of the crop
        # (about 4x cheaper than NumPy masking, measured on real cells). Population σ. The
        # hull is the disjoint union of nucleus and ROC: its moments are pooled from theirs.
        out = {}
        counts = {}
        for region in ("nucleus", "roc", "cytoplasm"):
            mask = np.ascontiguousarray(getattr(self, region)).view(np.uint8)
            counts[region] = n = cv2.countNonZero(mask)
            out[region] = self._masked_stats(mask if n >= MIN_REGION_PIXELS else None)
        n_n, n_r = counts["nucleus"], counts["roc"]
        if n_n >= MIN_REGION_PIXELS and n_r >= MIN_REGION_PIXELS:
            (m_n, s_n), (m_r, s_r) = out["nucleus"], out["roc"]
            mean = (n_n * m_n + n_r * m_r) / (n_n + n_r)
            sq = (n_n * (s_n ** 2 + m_n ** 2) + n_r * (s_r ** 2 + m_r ** 2)) / (n_n + n_r)
            out["hull"] = (mean, np.sqrt(np.maximum(sq - mean ** 2, 0.0)))
        else:
            mask = np.ascontiguousarray(self.hull).view(np.uint8)
            enough = cv2.countNonZero(mask) >= MIN_REGION_PIXELS
            out["hull"] = self._masked_stats(mask if enough else None)
        return out

    def _masked_stats(self, mask):
        if mask is None:
            nan = np.full(12, np.nan)
            return nan, nan
        stats = [cv2.meanStdDev(img, mask=mask) for img in self.colour_images]
        return (np.concatenate([m.ravel() for m, _ in stats]),
                np.concatenate([sd.ravel() for _, sd in stats]))

    def region_stats(self, region: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the 12 channels over a region's pixels (NaN when
        the region has fewer than :data:`MIN_REGION_PIXELS` pixels)."""
        return self._stats[region]

    @cached_property
    def colour_ratios(self) -> dict[str, float]:
        """The 48 Tavakoli ratios, computed for all 12 channels at once."""
        hull_mean, hull_std = self.region_stats("hull")
        out = {}
        for obj, region in (("Nucleus", "nucleus"), ("ROC", "roc")):
            mean, std = self.region_stats(region)
            mr, sr = mean_ratio(mean, hull_mean), std_ratio(std, hull_std)
            for space, ch, k in _CHANNEL_INDEX:
                out[f"{obj}_Colour_{space}_{ch}_MeanRatio"] = float(mr[k])
                out[f"{obj}_Colour_{space}_{ch}_StdRatio"] = float(sr[k])
        return out

    @cached_property
    def darkness(self) -> np.ndarray:
        """255 − LAB lightness (uint8): chromatin is bright here."""
        return 255 - self.colour_images[2][:, :, 0]

    def glcm(self, region: str) -> np.ndarray | None:
        """Normalised, symmetric GLCM (distance 1, four angles averaged) of the darkness
        image inside a region, quantised to :data:`GLCM_LEVELS` levels over the region's own
        range; None when the region has too few pixels."""
        cache = self.__dict__.setdefault("_glcm", {})
        if region not in cache:
            cache[region] = _masked_glcm(self.darkness, getattr(self, region))
        return cache[region]


def _masked_glcm(gray: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    # Pixels outside the mask get level 0 and every pair touching level 0 is dropped, so
    # only pairs of two region pixels count. Computed on the region's bounding box.
    from skimage.feature import graycomatrix

    mask_u8 = np.ascontiguousarray(mask).view(np.uint8)
    if cv2.countNonZero(mask_u8) < MIN_REGION_PIXELS:
        return None
    x, y, w, h = cv2.boundingRect(mask_u8)
    gray, mask_u8 = gray[y:y + h, x:x + w], mask_u8[y:y + h, x:x + w]
    lo, hi, _, _ = cv2.minMaxLoc(gray, mask_u8)
    scale = (GLCM_LEVELS - 1e-3) / (hi - lo) if hi > lo else 0.0
    lut = 1 + (np.arange(256, dtype=np.float32) - np.float32(lo)) * np.float32(scale)
    q = np.clip(lut, 0, GLCM_LEVELS).astype(np.uint8)[gray] * mask_u8
    p = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=GLCM_LEVELS + 1,
                     symmetric=True)[1:, 1:, 0, :].sum(axis=-1).astype(float)
    total = p.sum()
    return p / total if total > 0 else None


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


def _glcm_feature(func, region):
    def compute(m):
        p = m.glcm(region)
        return func(p) if p is not None else np.nan
    return compute


_register("Nucleus_Shape_Area", area, lambda m: m.nucleus_area)
_register("Nucleus_Shape_Perimeter", perimeter, lambda m: m.nucleus_perimeter)
_register("Nucleus_Shape_Solidity", solidity, lambda m: solidity(m.nucleus_area, m.hull_area))
_register("Nucleus_Shape_Convexity", convexity,
          lambda m: convexity(m.nucleus_perimeter, m.hull_perimeter))
_register("Nucleus_Shape_Circularity", circularity,
          lambda m: circularity(m.nucleus_perimeter, m.nucleus_area))
_register("Nucleus_Shape_MajorAxisLength", ellipse_axes, lambda m: m.axes[0])
_register("Nucleus_Shape_MinorAxisLength", ellipse_axes, lambda m: m.axes[1])
_register("Nucleus_Shape_Eccentricity", eccentricity, lambda m: eccentricity(*m.axes))
_register("Nucleus_Shape_BoundaryIrregularity", boundary_irregularity,
          lambda m: boundary_irregularity(m.contour, m.centroid))
_register("Cell_Shape_Area", area, lambda m: m.cell_area)
_register("Cell_Shape_NucleusAreaRatio", area_ratio,
          lambda m: area_ratio(m.nucleus_area, m.cell_area))
_register("Cytoplasm_Shape_RimThickness", rim_thickness,
          lambda m: rim_thickness(m.nucleus_area, m.cell_area))

for _space, _ch, _k in _CHANNEL_INDEX:
    for _obj in ("Nucleus", "ROC"):
        for _stat, _func in (("MeanRatio", mean_ratio), ("StdRatio", std_ratio)):
            _name = f"{_obj}_Colour_{_space}_{_ch}_{_stat}"
            _register(_name, _func, lambda m, n=_name: m.colour_ratios[n])


def channel_mean(region_mean: float) -> float:
    """Mean of one colour channel over a region, in the channel's 8-bit units.

    Absolute colour is sensitive to stain drift; the ratios above are not.
    """
    return float(region_mean)


for _obj, _region, _space, _ch in (("Nucleus", "nucleus", "LAB", "L"),
                                   ("Nucleus", "nucleus", "HSV", "S"),
                                   ("Cytoplasm", "cytoplasm", "HSV", "S"),
                                   ("Cytoplasm", "cytoplasm", "HSV", "H"),
                                   ("Cytoplasm", "cytoplasm", "LAB", "L")):
    _k = [k for s, c, k in _CHANNEL_INDEX if s == _space and c == _ch][0]
    _register(f"{_obj}_Colour_{_space}_{_ch}_Mean", channel_mean,
              lambda m, r=_region, k=_k: channel_mean(m.region_stats(r)[0][k]))

for _obj, _region in (("Nucleus", "nucleus"), ("Cytoplasm", "cytoplasm")):
    for _name, _func in (("Contrast", glcm_contrast), ("Homogeneity", glcm_homogeneity),
                         ("Energy", glcm_energy), ("Entropy", glcm_entropy),
                         ("Correlation", glcm_correlation)):
        _register(f"{_obj}_Texture_GLCM_{_name}", _func, _glcm_feature(_func, _region))
_register("Nucleus_Texture_Granularity", granularity,
          lambda m: granularity(m.darkness, m.nucleus))

#: Every feature name, in registry order (the column order of feature tables).
FEATURE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def compute_features(image: np.ndarray, seg: Segmentation,
                     names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Compute features of one segmented cell.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3), RGB
    seg : Segmentation
        Must have status ``"ok"``.
    names : tuple of str, optional
        Registry names to compute (default: all, :data:`FEATURE_NAMES`).

    Returns
    -------
    dict of str to float
        NaN where a feature is undefined for this cell (e.g. an empty ROC for a perfectly
        convex nucleus, or no cytoplasm found): the function's docstring says when.
    """
    m = CellMeasurements(image, seg)
    names = FEATURE_NAMES if names is None else names
    return {n: float(REGISTRY[n].compute(m)) for n in names}
