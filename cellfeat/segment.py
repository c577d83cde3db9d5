"""Segment the centred lymphocyte: nucleus, cell (best effort) and ROC.

The ROC ("representative of the cytoplasm", Tavakoli et al. 2021) is the convex hull of
the nucleus minus the nucleus: it is defined for every cell, even where the real cytoplasm
is a thin rim that no threshold finds.

Two methods threshold a stain-contrast channel and keep the component at (or nearest) the
image centre, where the analyser puts the cell of interest; red cells, platelets and parts
of other white cells sit around it.

``"otsu"``
    Otsu's criterion with three classes (background, red cells and cytoplasm, nucleus) on
    the contrast channel, keeping the top class. Plain two-class Otsu splits background
    from everything else when the nucleus covers under a tenth of the image.
``"kmeans"``
    K-means (k=3) on the contrast channel's values followed by morphological closing, as in
    one of the challenge reports; the brightest cluster is the nucleus.

The default channel, ``"stain"``, averages HSV saturation with inverted green: the
nucleus is both saturated and dark, whereas red cells are saturated but bright and
deep-blue cytoplasm is dark but absorbs less green than chromatin. ``"saturation"`` (the
simple baseline) is also offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Segmentation", "segment_nucleus", "contrast_channel", "METHODS", "CHANNELS",
           "STATUSES"]

METHODS = ("otsu", "kmeans")
CHANNELS = ("stain", "saturation", "inverted_green")
#: Every status a segmentation can end with; anything but "ok" means features are NaN.
STATUSES = {
    "ok": "nucleus found at the centre",
    "blank_image": "no contrast in the image",
    "no_nucleus": "no stained component large enough near the centre",
    "touches_border": "the centred nucleus is cut by the image border",
    "several_candidates": "two large stained components compete for the centre",
    "touching_nuclei": "the centred component is two nuclei touching (a waist between two cores)",
    "too_small": "image smaller than the minimum size",
}

_ELLIPSE3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_ELLIPSE5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Result of :func:`segment_nucleus`.

    Attributes
    ----------
    nucleus, cell, roc, hull : ndarray of bool, shape (H, W)
        Nucleus; nucleus plus the cytoplasm found around it (best effort); convex hull of
        the nucleus minus the nucleus; the convex hull itself.
    contour, hull_contour : ndarray of int32, shape (K, 2)
        Outer boundary of the nucleus and of its convex hull, (x, y) pixel coordinates.
    status : str
        A key of :data:`STATUSES`.
    method, channel : str
    threshold : float
        Threshold on the contrast channel (NaN when none was found).
    box : tuple of int or None
        ``(x0, y0, x1, y1)``: bounding box of the nucleus, hull and cell, outside which
        every mask is empty (None when the segmentation failed), so that measurements can
        work on a crop.
    cytoplasm : ndarray of bool, shape (H, W)
        ``cell & ~nucleus``: the cytoplasm (empty when none was found or the segmentation
        failed).
    cell_contour : ndarray of int32, shape (K, 2)
        Outer boundary of ``cell``, (x, y) pixel coordinates (empty when it failed).
    red_cells : ndarray of bool, shape (H, W)
        Pixels of the per-image colour model's red-cell class, only inside ``window``
        (empty elsewhere): what presses against the cell's outline.
    window : tuple of int or None
        ``(x0, y0, x1, y1)``: the region around the nucleus where the cell was searched
        (it holds ``box``).
    colours : dict of str to ndarray of float, or None
        Reference colours of the image's four populations, ``"plasma"``, ``"red_cells"``,
        ``"cytoplasm"``, ``"chromatin"``, each a mean CIELAB colour in OpenCV's 8-bit
        encoding (L* x 255/100, a* + 128, b* + 128), float shape (3,). They let a colour
        feature be read relative to the same image's plasma and red cells (stain drift
        cancels). None when the segmentation failed.
    """

    nucleus: np.ndarray
    cell: np.ndarray
    roc: np.ndarray
    hull: np.ndarray
    contour: np.ndarray
    hull_contour: np.ndarray
    status: str
    method: str
    channel: str
    threshold: float
    box: tuple[int, int, int, int] | None = None
    cytoplasm: np.ndarray | None = None
    cell_contour: np.ndarray | None = None
    red_cells: np.ndarray | None = None
    window: tuple[int, int, int, int] | None = None
    colours: dict | None = None

    def __post_init__(self):
        # failed segmentations and callers building the object by hand get empty extras
        z = np.zeros(self.nucleus.shape, bool)
        if self.cytoplasm is None:
            object.__setattr__(self, "cytoplasm", self.cell & ~self.nucleus)
        if self.cell_contour is None:
            object.__setattr__(self, "cell_contour", np.zeros((0, 2), np.int32))
        if self.red_cells is None:
            object.__setattr__(self, "red_cells", z)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def contrast_channel(image: np.ndarray, channel: str = "stain", hsv: np.ndarray | None = None):
    """Stain-contrast channel (uint8, high on chromatin) of an RGB uint8 image."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")
    if channel == "inverted_green":
        return 255 - image[:, :, 1]
    if hsv is None:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    if channel == "saturation":
        return hsv[:, :, 1]
    return ((hsv[:, :, 1].astype(np.uint16) + (255 - image[:, :, 1])) >> 1).astype(np.uint8)


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got "
                         f"{image.dtype} {image.shape}")
    return image


def _otsu3_best(P, M, a, b):
    # The pair (t1, t2) of a x b maximising the between-class sum sum_k M_k^2 / P_k for the
    # classes [0, t1], (t1, t2], (t2, L) (P, M: cumulative counts and first moments).
    N, MT = P[-1], M[-1]
    p1, m1 = P[a][:, None], M[a][:, None]
    p12, m12 = P[b][None, :], M[b][None, :]
    p2, m2, p3, m3 = p12 - p1, m12 - m1, N - p12, MT - m12
    with np.errstate(divide="ignore", invalid="ignore"):
        v = m1 * m1 / p1 + m2 * m2 / p2 + m3 * m3 / p3
    v[(p1 <= 0) | (p2 <= 0) | (p3 <= 0) | (a[:, None] >= b[None, :])] = -np.inf
    k = int(np.argmax(v))
    if not np.isfinite(v.flat[k]):
        return None  # no pair leaves all three classes non-empty
    return a[k // len(b)], b[k % len(b)]


def threshold_otsu3(hist: np.ndarray, step: int = 4) -> tuple[int, int]:
    """Three-class Otsu thresholds ``(t1, t2)`` of a 256-bin histogram, coarse to fine.

    Values ``<= t1`` form the first class, values in ``(t1, t2]`` the second and values
    ``> t2`` the third; the pair maximises the between-class variance, i.e.
    :math:`\\sum_k M_k^2 / P_k` over the classes' pixel counts :math:`P_k` and value sums
    :math:`M_k` (Otsu 1979; Liao et al. 2001). The search runs over thresholds on a grid of
    ``step`` levels, then over every pair within ``step`` levels of the coarse optimum: about
    3x cheaper than scikit-image's exhaustive ``threshold_multiotsu`` for the same
    thresholds (on the 1,940 dev images checked, never more than one level apart). When no
    pair of the grid leaves three non-empty classes (values bunched within a few levels),
    every pair is searched.

    Raises
    ------
    ValueError
        The histogram has fewer than three non-empty bins.
    """
    hist = np.asarray(hist, dtype=float)
    levels = np.arange(len(hist))
    P, M = np.cumsum(hist), np.cumsum(hist * levels)
    if np.count_nonzero(hist) < 3:
        raise ValueError("three classes need at least three distinct values")
    coarse = _otsu3_best(P, M, levels[step - 1:-1:step], levels[step - 1:-1:step])
    if coarse is None:  # occupied levels too close for the grid: search every pair
        return _otsu3_best(P, M, levels[:-1], levels[:-1])
    r = np.arange(-step, step + 1)
    last = len(hist) - 2
    return _otsu3_best(P, M, np.clip(coarse[0] + r, 0, last), np.clip(coarse[1] + r, 0, last))


def _threshold_otsu3(hist: np.ndarray) -> float:
    levels = np.flatnonzero(hist)
    if len(levels) < 3:  # two flat colours: any threshold between them
        return float(levels[0] + levels[-1]) / 2
    return float(threshold_otsu3(hist)[1])


def _threshold_kmeans(hist: np.ndarray, k: int = 3) -> float:
    # K-means on pixel values, run on the 256-bin histogram with counts as weights: the
    # same solution as on the ~50k pixels, a hundred times cheaper.
    from sklearn.cluster import KMeans

    values = np.flatnonzero(hist)
    weights = hist[values]
    if len(values) < k:
        return float(values.max()) if len(values) else np.nan
    init = np.quantile(np.repeat(values, weights.astype(int)), np.linspace(0.2, 0.99, k))
    km = KMeans(n_clusters=k, init=init.reshape(-1, 1), n_init=1, max_iter=100)
    km.fit(values.reshape(-1, 1).astype(float), sample_weight=weights)
    centres = np.sort(km.cluster_centers_.ravel())
    return float((centres[-1] + centres[-2]) / 2)


def _empty(shape, status, method, channel, threshold=np.nan) -> Segmentation:
    z = np.zeros(shape, bool)
    e = np.zeros((0, 2), np.int32)
    return Segmentation(z, z, z, z, e, e, status, method, channel, threshold)


def segment_nucleus(image, method: str = "otsu", *, channel: str = "stain",
                    min_area: int = 150, min_size: int = 32) -> Segmentation:
    """Segment the nucleus of the centred lymphocyte, its cell and its ROC.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3)
        RGB image with the cell of interest near the centre.
    method : {"otsu", "kmeans"}
    channel : {"stain", "saturation", "inverted_green"}
        Contrast channel that is thresholded (see the module docstring).
    min_area : int
        Smallest nucleus, in pixels, at 224×224; scaled with the image area.
    min_size : int
        Images with a side shorter than this get status ``"too_small"``.

    Returns
    -------
    Segmentation
        ``status`` says whether the masks can be trusted; it is never an exception for a
        valid image.

    Raises
    ------
    ValueError
        ``image`` is not an RGB uint8 array, or ``method``/``channel`` is unknown.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    image = _check_image(image)
    h, w = image.shape[:2]
    if min(h, w) < min_size:
        return _empty((h, w), "too_small", method, channel)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    ch = contrast_channel(image, channel, hsv)
    hist = cv2.calcHist([ch], [0], None, [256], [0, 256]).ravel()
    lo, hi = np.flatnonzero(hist)[[0, -1]]
    if hi - lo < 20:
        return _empty((h, w), "blank_image", method, channel)
    t = _threshold_otsu3(hist) if method == "otsu" else _threshold_kmeans(hist)

    binary = cv2.threshold(ch, t, 1, cv2.THRESH_BINARY)[1]
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _ELLIPSE3)
    if method == "kmeans":
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, _ELLIPSE5)
    # BBDT computes the statistics ~3x faster than OpenCV's default (Spaghetti) algorithm
    n, labels, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(
        binary, 8, cv2.CV_32S, cv2.CCL_BBDT)
    scale = (h * w) / (224 * 224)
    areas = stats[1:, cv2.CC_STAT_AREA]
    big = np.flatnonzero(areas >= min_area * scale) + 1
    if len(big) == 0:
        return _empty((h, w), "no_nucleus", method, channel, t)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dist = np.hypot(centroids[big, 0] - cx, centroids[big, 1] - cy)
    centre_label = labels[int(round(cy)), int(round(cx))]
    chosen = centre_label if centre_label in big else big[np.argmin(dist)]
    if np.hypot(*(centroids[chosen] - (cx, cy))) > 0.3 * min(h, w):
        return _empty((h, w), "no_nucleus", method, channel, t)

    # Everything below runs on a crop around the chosen component (a few times smaller
    # than the image); the margin leaves room for the 5x5 closing.
    bx, by, bw, bh = stats[chosen, :4]
    y0, y1 = max(by - 4, 0), min(by + bh + 4, h)
    x0, x1 = max(bx - 4, 0), min(bx + bw + 4, w)
    comp = cv2.compare(labels[y0:y1, x0:x1], int(chosen), cv2.CMP_EQ) & 1
    comp = cv2.morphologyEx(comp, cv2.MORPH_CLOSE, _ELLIPSE5)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    nucleus_u8 = np.zeros_like(comp)
    cv2.drawContours(nucleus_u8, [contour], -1, 1, thickness=cv2.FILLED)  # fills holes
    nucleus_u8 = cv2.morphologyEx(nucleus_u8, cv2.MORPH_OPEN, _ELLIPSE5)
    contours, _ = cv2.findContours(nucleus_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return _empty((h, w), "no_nucleus", method, channel, t)
    contour = max(contours, key=cv2.contourArea)
    nucleus_u8[:] = 0
    cv2.drawContours(nucleus_u8, [contour], -1, 1, thickness=cv2.FILLED)
    hull_contour = cv2.convexHull(contour)
    hull_u8 = np.zeros_like(nucleus_u8)
    cv2.fillConvexPoly(hull_u8, hull_contour, 1)
    hull_u8 |= nucleus_u8

    status = "ok"
    bx, by, bw, bh = cv2.boundingRect(contour)
    bx, by = bx + x0, by + y0
    if bx == 0 or by == 0 or bx + bw >= w or by + bh >= h:
        status = "touches_border"
    else:
        rivals = [b for b in big if b != chosen
                  and areas[b - 1] >= 0.5 * areas[chosen - 1]
                  and np.hypot(*(centroids[b] - (cx, cy))) < 0.2 * min(h, w)]
        if rivals:
            status = "several_candidates"
        # two touching round nuclei are far from convex (solidity ~0.9 at most): skip the
        # distance-transform test for the common, convex case
        elif (cv2.contourArea(contour) < 0.93 * cv2.contourArea(hull_contour)
              and _two_touching(nucleus_u8, contour)):
            status = "touching_nuclei"
    offset = np.array([x0, y0], np.int32)
    cell, cell_box = _cell_mask(hsv, nucleus_u8, contour, (x0, y0))
    nucleus = np.zeros((h, w), bool)
    nucleus[y0:y1, x0:x1] = nucleus_u8.view(bool)
    hull = np.zeros((h, w), bool)
    hull[y0:y1, x0:x1] = hull_u8.view(bool)
    # tight box of nucleus, hull and cell (the hull has the nucleus's bounding box)
    box = (min(bx, cell_box[0]), min(by, cell_box[1]), max(bx + bw, cell_box[2]),
           max(by + bh, cell_box[3]))
    return Segmentation(nucleus=nucleus, cell=cell, roc=hull & ~nucleus, hull=hull,
                        contour=contour.reshape(-1, 2) + offset,
                        hull_contour=hull_contour.reshape(-1, 2) + offset,
                        status=status, method=method, channel=channel, threshold=t, box=box)


def _two_touching(nucleus_u8: np.ndarray, contour: np.ndarray) -> bool:
    # Two touching nuclei make one component with two round cores joined by a waist: two
    # maxima of the distance transform, far apart, of similar size, and a minimum between
    # them well below both. A single lobed or notched nucleus has one dominant core.
    x, y, w, h = cv2.boundingRect(contour)
    crop = nucleus_u8[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1]
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, 5)
    peak1 = float(dist.max())
    if peak1 < 4:
        return False
    p1 = np.array(np.unravel_index(np.argmax(dist), dist.shape))
    yy, xx = np.indices(dist.shape)
    far = np.hypot(yy - p1[0], xx - p1[1]) > 1.5 * peak1
    if not far.any():
        return False
    local_max = (dist == cv2.dilate(dist, np.ones((5, 5), np.uint8))) & far
    if not local_max.any():
        return False
    cand = np.where(local_max, dist, 0)
    p2 = np.array(np.unravel_index(np.argmax(cand), cand.shape))
    peak2 = float(cand.max())
    if peak2 < 0.6 * peak1:
        return False
    line = np.linspace(p1, p2, 50).round().astype(int)
    neck = float(dist[line[:, 0], line[:, 1]].min())
    return neck < 0.55 * peak2


def _cell_mask(hsv: np.ndarray, nucleus_u8: np.ndarray, contour: np.ndarray, offset):
    # Cytoplasm is bluish (OpenCV hue ~95-150 of 180) and a little saturated; red cells are
    # mauve (hue ~150-180) and the plasma orange (hue ~10-30). Keep what touches the nucleus
    # within a band as wide as the nucleus radius. All of it on a crop around the nucleus:
    # four times cheaper than on the whole image. ``nucleus_u8`` is a crop of the image at
    # ``offset`` (x, y) holding the nucleus; returns the full-size cell mask and its box.
    h, w = hsv.shape[:2]
    ox, oy = offset
    radius = max(3, int(np.sqrt(cv2.contourArea(contour) / np.pi)))
    x, y, bw, bh = cv2.boundingRect(contour)
    x, y = x + ox, y + oy
    nh, nw = nucleus_u8.shape
    # the band around the nucleus, and all of the nucleus crop (which may be larger when
    # the final opening removed part of the thresholded component)
    y0, y1 = max(min(y - radius - 2, oy), 0), min(max(y + bh + radius + 2, oy + nh), h)
    x0, x1 = max(min(x - radius - 2, ox), 0), min(max(x + bw + radius + 2, ox + nw), w)
    nuc = np.zeros((y1 - y0, x1 - x0), np.uint8)
    nuc[oy - y0:oy - y0 + nh, ox - x0:ox - x0 + nw] = nucleus_u8
    hue, sat = hsv[y0:y1, x0:x1, 0], hsv[y0:y1, x0:x1, 1]
    cyto = ((hue >= 95) & (hue <= 150) & (sat >= 20)).view(np.uint8)
    # a distance transform is ~20x cheaper than dilating by a disc this large
    band = (cv2.distanceTransform(1 - nuc, cv2.DIST_L2, 3) <= radius).view(np.uint8)
    cand = (cyto & band) | nuc
    cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, _ELLIPSE3) | nuc
    _, labels = cv2.connectedComponents(cand, connectivity=8)
    px, py = contour[0, 0]  # a nucleus pixel, in crop coordinates
    keep = cv2.compare(labels, int(labels[py + oy - y0, px + ox - x0]), cv2.CMP_EQ) & 1
    cnts, _ = cv2.findContours(keep, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros((h, w), np.uint8)
    cv2.drawContours(out, cnts, -1, 1, thickness=cv2.FILLED, offset=(x0, y0))
    kx, ky, kw, kh = cv2.boundingRect(keep)
    return out.view(bool), (x0 + kx, y0 + ky, x0 + kx + kw, y0 + ky + kh)
