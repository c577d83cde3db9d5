"""Segment the centred lymphocyte: nucleus, whole cell (nucleus + cytoplasm) and ROC.

The ROC ("representative of the cytoplasm", Tavakoli et al. 2021) is the convex hull of
the nucleus minus the nucleus: it is defined for every cell, even where the real cytoplasm
is a thin rim that no threshold finds.

Colour is read relative to each image's own plasma. Every image is first balanced so
that its plasma (the per-channel 99th percentile, :func:`white_point`) is neutral white
(:func:`balance_to_white`, von Kries): a lab's white balance, tone of plasma (cream,
grey, bluish) or lamp then moves neither the threshold nor the colour model, and what a
population absorbs, not the hue it happens to show, decides where it goes.

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

The default channel, ``"stain"``, is ``(S + 2 D) / 3`` of the balanced image, with S the
HSV saturation and D = 255 − min(R, G, B) the darkness in the channel where a pixel
absorbs most: chromatin is the densest population in every smear, whatever its hue, and
saturated but light populations (the red cells of a vivid stain) must not outrank it, so
darkness counts twice. (Until issue 22 it was (S + 255 − G) / 2 of the unbalanced image:
chromatin was assumed to absorb green most, and the plasma's tint entered S. Measured
against it on 400 synthetic cells in random palettes, nucleus IoU 5th percentile 0.76 →
0.94, on the 53 wbc-tecom lymphocytes 0.86 → 0.88, on the 60 synthetic hard cases 0.98 →
0.99; the weights were chosen among 1:1, 1:2 and 1:3 and darkness alone, on those sets
and on agreement with the earlier masks on dlmi.) ``"saturation"`` (the simple
baseline) and ``"inverted_green"`` are also offered.

When deep-blue cytoplasm is as dark on that channel as pale chromatin, the thresholded
component is the whole cell; a lighter rim of another stain mix is then cut off (see
:func:`_drop_lighter_rim`): a nucleus never takes a cytoplasm distinguishably lighter than
its chromatin. A rim no wider than the image's own edge blur, measured in each image, is
the nucleus's blurred edge and stays.

The whole cell comes from a per-image colour model (see :func:`_whole_cell`): plasma, red
cells, cytoplasm and chromatin are four colour populations in every smear, learnt again in
each image (Gaussians in an opponent colour space; plasma and red cells from the window's
outer part, chromatin from the nucleus, cytoplasm by EM from the pixels around the
nucleus), so that the pale cytoplasm against cream plasma, cytoplasm pressed between red
cells, and deep-blue cytoplasm are all found without a fixed hue window. The cell is the
nucleus alone when the cytoplasm class weighs under 2 % of the window or is not bluer
than the plasma (absorbs relatively less blue light than red: the basic dye).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Segmentation", "segment_nucleus", "contrast_channel", "white_point",
           "balance_to_white", "METHODS", "CHANNELS", "STATUSES"]

METHODS = ("otsu", "kmeans")
CHANNELS = ("stain", "saturation", "inverted_green")
#: Every status a segmentation can end with; anything but "ok" means features are NaN.
STATUSES = {
    "ok": "nucleus found at the centre",
    "blank_image": "no contrast in the image",
    "no_nucleus": "no stained component large enough near the centre",
    "touches_border": "the centred nucleus is cut by the image border",
    "several_candidates": "two large stained components compete for the centre",
    "touching_nuclei": "the centred component is two or more nuclei touching (a waist between "
                       "two cores, or pale seams that split it into nucleus-sized pieces)",
    "multi_lobed": "two or more chromatin blobs, each a fifth to 0.8 of the nucleus, lie within "
                   "a few px of it inside the same cell: a segmented (multi-lobed) nucleus, "
                   "not a lymphocyte",
    "cell_touches_border": "the nucleus is whole but the cell (nucleus + cytoplasm) is cut by "
                           "the image border, so cell measurements would be truncated",
    "too_small": "image smaller than the minimum size",
}

_ELLIPSE3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_ELLIPSE5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_ELLIPSE7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_ELLIPSE9 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))


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


def contrast_channel(image: np.ndarray, channel: str = "stain"):
    """Stain-contrast channel (uint8, high on chromatin) of an RGB uint8 image (see the
    module docstring; :func:`segment_nucleus` passes the image balanced to its plasma)."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")
    r, g, b = cv2.split(image)
    if channel == "inverted_green":
        return cv2.bitwise_not(g)
    # HSV saturation (max - min) / max from the channels' extremes: a quarter of the
    # cost of a full HSV conversion
    top, low = cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b)
    saturation = cv2.divide(cv2.subtract(top, low), top, scale=255)
    if channel == "saturation":
        return saturation
    return cv2.addWeighted(saturation, 1 / 3, cv2.bitwise_not(low), 2 / 3, 0)


def white_point(image: np.ndarray, percentile: float = 99.0, step: int = 1) -> np.ndarray:
    """The light through the plasma, per channel (8-bit codes, float (3,), at least 1): the
    ``percentile``-th percentile of each channel of an RGB uint8 image (of every
    ``step``-th pixel of every ``step``-th row). The plasma is the brightest, least
    absorbing population of a smear image, and in every image the largest share of pixels
    at the top of each channel."""
    image = _check_image(image)
    if step > 1:  # nearest-neighbour resizing picks every step-th pixel, without a copy loop
        image = cv2.resize(image, (max(image.shape[1] // step, 1), max(image.shape[0] // step, 1)),
                           interpolation=cv2.INTER_NEAREST)
    n = image.shape[0] * image.shape[1]
    k = min(int(np.ceil(percentile / 100.0 * n)), n)
    out = np.empty(3)
    for c in range(3):
        counts = cv2.calcHist([image], [c], None, [256], [0, 256]).ravel()
        out[c] = float(np.searchsorted(np.cumsum(counts), k))
    return np.maximum(out, 1.0)


def balance_to_white(image: np.ndarray, white=None) -> np.ndarray:
    """The image with per-channel gains 255 / W_c, so that its plasma (``white``, default
    :func:`white_point`) is neutral white: ``I'_c = min(round(255 I_c / W_c), 255)``.

    What the segmentation reads: colour relative to the image's own plasma (von Kries
    adaptation), so that a lab's white balance, a cream, grey or bluish plasma, or a
    tinted lamp leave the masks where they are. (Gains in float32: a value whose product
    lies within rounding of a half may round the other way.)"""
    image = _check_image(image)
    # a quarter of the pixels gives the same percentile within a code or two, 4x cheaper
    white = (white_point(image, step=2) if white is None
             else np.maximum(np.asarray(white, float), 1))
    # a diagonal colour transform (saturating) costs a sixth of a 3-channel look-up table
    return cv2.transform(image, np.diag(255.0 / white).astype(np.float32))


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
    # every colour below is read relative to the image's own plasma
    image = balance_to_white(image)
    ch = contrast_channel(image, channel)
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

    # The window where the cell is searched: the nucleus box grown by 1.6 nucleus radii
    # (the widest cytoplasm of a reactive lymphocyte is about one radius).
    radius = np.sqrt(max(cv2.contourArea(contour), 1.0) / np.pi)
    cbx, cby, cbw, cbh = cv2.boundingRect(contour)
    margin = int(max(_MARGIN * radius, 12))
    wy0, wy1 = max(y0 + cby - margin, 0), min(y0 + cby + cbh + margin, h)
    wx0, wx1 = max(x0 + cbx - margin, 0), min(x0 + cbx + cbw + margin, w)
    nuc = np.zeros((wy1 - wy0, wx1 - wx0), np.uint8)
    cv2.drawContours(nuc, [contour], -1, 1, thickness=cv2.FILLED,
                     offset=(x0 - wx0, y0 - wy0))
    opp = _opponent(cv2.GaussianBlur(image[wy0:wy1, wx0:wx1], (3, 3), 0))
    nuc = _drop_lighter_rim(opp, nuc)
    contours, _ = cv2.findContours(nuc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    x0, y0 = wx0, wy0  # from here on every crop is the window
    nucleus_u8 = np.zeros_like(nuc)
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
        elif ((cv2.contourArea(contour) < 0.93 * cv2.contourArea(hull_contour)
               and _two_touching(nucleus_u8, contour))
              or _pale_seams(binary[wy0:wy1, wx0:wx1] & nucleus_u8)):
            status = "touching_nuclei"
    offset = np.array([x0, y0], np.int32)
    stained = labels[wy0:wy1, wx0:wx1]
    others = ((stained > 0) & (stained != chosen)).view(np.uint8)
    # plasma and red cells are learnt from the whole image (every 4th pixel of every 4th
    # row) outside the window and the stained components: in the window alone a large cell
    # or a neighbour's cytoplasm can outnumber them
    g = 4
    away = labels[::g, ::g] == 0
    iy0, iy1 = (by - margin) // g, (by + bh + margin) // g + 1
    ix0, ix1 = (bx - margin) // g, (bx + bw + margin) // g + 1
    away[max(iy0, 0):iy1, max(ix0, 0):ix1] = False
    background = (_opponent(image[::g, ::g][away][:, None, :]).reshape(-1, 3)
                  if np.count_nonzero(away) >= 200 else np.zeros((0, 3), np.float32))
    wc = _whole_cell(opp, nucleus_u8, image[wy0:wy1, wx0:wx1], others, background)
    cell_u8 = wc["cell"]
    cnts, _ = cv2.findContours(cell_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cell_contour = max(cnts, key=cv2.contourArea)
    kx, ky, kw, kh = cv2.boundingRect(cell_contour)
    if status == "ok":
        if wc["lobes"]:
            status = "multi_lobed"
        elif (kx + x0 == 0 or ky + y0 == 0 or kx + x0 + kw >= w or ky + y0 + kh >= h):
            status = "cell_touches_border"
    win = (slice(y0, y0 + nuc.shape[0]), slice(x0, x0 + nuc.shape[1]))
    masks = {}
    for name, m in (("nucleus", nucleus_u8), ("hull", hull_u8), ("cell", cell_u8),
                    ("red_cells", wc["red_cells"])):
        full = np.zeros((h, w), bool)
        full[win] = m.view(bool)
        masks[name] = full
    box = (min(bx, kx + x0), min(by, ky + y0), max(bx + bw, kx + x0 + kw),
           max(by + bh, ky + y0 + kh))
    return Segmentation(nucleus=masks["nucleus"], cell=masks["cell"],
                        roc=masks["hull"] & ~masks["nucleus"], hull=masks["hull"],
                        contour=contour.reshape(-1, 2) + offset,
                        hull_contour=hull_contour.reshape(-1, 2) + offset,
                        status=status, method=method, channel=channel, threshold=t, box=box,
                        cytoplasm=masks["cell"] & ~masks["nucleus"],
                        cell_contour=cell_contour.reshape(-1, 2) + offset,
                        red_cells=masks["red_cells"], window=(wx0, wy0, wx1, wy1),
                        colours=wc["colours"])


def _pale_seams(stained: np.ndarray) -> bool:
    # Nuclei pressed flat against each other (a clump of two or three lymphocytes) show no
    # waist, but the thin pale seams between them stay below the threshold: the thresholded
    # pixels of the filled nucleus, eroded by 2 px, fall apart into two or more pieces each
    # at least a fifth of the nucleus. (A cleft or pale crease inside one nucleus leaves
    # one large piece and small ones.)
    area = cv2.countNonZero(stained)
    if area == 0:
        return False
    core = cv2.erode(stained, _ELLIPSE5)
    _, _, areas = _components(core, 8)
    return int(np.count_nonzero(areas[1:] >= 0.2 * area)) >= 2


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


#: Opponent colour axes (rows) applied to RGB: lightness (weighted by one half, because it
#: varies more inside each population than hue does), red-green, blue-yellow. Linear, so
#: ~10x cheaper than CIELAB, and K-means in it is K-means in RGB under a fixed metric.
_OPPONENT = np.array([[1 / 6, 1 / 6, 1 / 6], [0.5, -0.5, 0.0], [-0.25, -0.25, 0.5]], np.float32)


_OPPONENT_INV = np.linalg.inv(_OPPONENT).astype(np.float32)


def _opponent(rgb: np.ndarray) -> np.ndarray:
    return cv2.transform(rgb.astype(np.float32), _OPPONENT)


def _to_lab(centres: np.ndarray) -> np.ndarray:
    # CIELAB (D65, sRGB gamma) in OpenCV's 8-bit encoding of opponent-axis colours
    rgb = np.clip(centres @ _OPPONENT_INV.T, 0, 255) / 255.0
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / (0.950456, 1.0, 1.088754)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    L = np.where(xyz[:, 1] > 0.008856, 116 * f[:, 1] - 16, 903.3 * xyz[:, 1])
    return np.stack([L * 255 / 100, 500 * (f[:, 0] - f[:, 1]) + 128,
                     200 * (f[:, 1] - f[:, 2]) + 128], 1)


_SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])


def _kmeans(x: np.ndarray, centres: np.ndarray, iterations: int = 8) -> tuple:
    # Lloyd's algorithm from given centres: the index of each centre keeps its meaning
    # (which population it started from), unlike a randomly initialised K-means.
    c = centres.astype(np.float32).copy()
    eye = np.eye(len(c), dtype=np.float32)
    for _ in range(iterations):
        k = np.argmin((c * c).sum(1) - 2 * x @ c.T, axis=1)
        onehot = eye[k]
        counts = onehot.sum(0)
        new = np.where(counts[:, None] > 0, (onehot.T @ x) / np.maximum(counts, 1)[:, None], c)
        done = np.abs(new - c).max() < 0.25
        c = new.astype(np.float32)
        if done:
            break
    return c, k


def _components(mask: np.ndarray, connectivity: int):
    # (count, labels, pixel count of each label) by BBDT (SAUF for 4-connectivity,
    # OpenCV's choice under CCL_BBDT): half the time of OpenCV's default (Spaghetti), and
    # the areas by one bincount of the labels, a few times cheaper on a window than
    # OpenCV's per-pixel statistics (bounding boxes and centroids that nothing here reads)
    n, labels = cv2.connectedComponentsWithAlgorithm(mask, connectivity, cv2.CV_32S,
                                                     cv2.CCL_BBDT)
    return n, labels, np.bincount(labels.ravel(), minlength=n)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    cnts, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, cnts, -1, 1, thickness=cv2.FILLED)
    return out


#: Smallest angle (degrees) between the optical-density directions of chromatin and of a
#: lighter rim for the rim to be taken as cytoplasm rather than paler chromatin.
_MIN_STAIN_ANGLE = 12.0


def _drop_lighter_rim(opp: np.ndarray, nuc: np.ndarray) -> np.ndarray:
    """The nucleus without a lighter rim that the contrast threshold took with it.

    Deep-blue (basophilic) cytoplasm can be as dark on the contrast channel as pale
    chromatin, so the thresholded component is the whole cell. Two-means in the opponent
    colour axes over the component's pixels, started from the mean colours of its inner
    part and of its outer band; the inner class, closed and filled, is the nucleus when
    (a) the outer class is distinguishable (a Fisher separation along the line of the two
    centres of at least 2.5) and of another stain mix (its optical-density direction at
    least ``_MIN_STAIN_ANGLE`` degrees away from the inner class's: paler chromatin is the
    same stain, less dense), (b) it lies mostly outside the filled inner core, i.e. it is a
    rim, not chromatin texture or nucleoli, and (c) the rim is at least 2.5 px (and a
    twelfth of the radius) wide, wider than the blur at an edge.
    """
    sel = nuc.view(bool)
    if np.count_nonzero(nuc) < 100:
        return nuc
    # cheap test first: does a band as wide as the thinnest rim accepted below differ in
    # hue from the rest of the component at all? (It does not for almost every nucleus.)
    r_nuc = np.sqrt(np.count_nonzero(nuc) / np.pi)
    width = int(np.ceil(max(2.5, r_nuc / 12)))
    inner = cv2.erode(nuc, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                      (2 * width + 1, 2 * width + 1)))
    if not inner.any():
        return nuc
    c_in = np.array(cv2.mean(opp, inner)[:3], np.float32)
    c_band = np.array(cv2.mean(opp, nuc - inner)[:3], np.float32)
    # hue only (lightness changes at every edge through the blur): a band of another stain
    # mix differs by more than ~6 levels of the chroma axes; a plain nucleus's band by ~3
    if np.hypot(*(c_band - c_in)[1:]) < 6:
        return nuc
    px = opp[sel][::2]
    centres, k = _kmeans(px, np.stack([c_in, c_band]), 8)
    if (k == 0).all() or (k == 1).all():
        return nuc
    u = centres[1] - centres[0]
    proj = px @ (u / np.linalg.norm(u))
    p0, p1 = proj[k == 0], proj[k == 1]
    fisher = (p1.mean() - p0.mean()) / np.sqrt((p0.var() + p1.var()) / 2 + 1e-6)
    if fisher < 2.5:
        return nuc
    # Lighter chromatin is the same stain, less dense: the same direction of optical
    # density. Cytoplasm takes a different (bluer) mix of the dyes: its direction differs.
    rgb_c = centres @ _OPPONENT_INV.T
    white = np.percentile(opp.reshape(-1, 3) @ _OPPONENT_INV.T, 99, axis=0)
    od = -np.log(np.clip(rgb_c, 1, None) / np.maximum(white, 2))
    cos = (od[0] @ od[1]) / (np.linalg.norm(od[0]) * np.linalg.norm(od[1]) + 1e-9)
    if cos > np.cos(np.radians(_MIN_STAIN_ANGLE)):
        return nuc
    # every pixel of the component to the nearer centre
    d = [((opp[sel] - c) ** 2).sum(1) for c in centres]
    dark = np.zeros_like(nuc)
    dark[sel] = d[0] <= d[1]
    dark = cv2.morphologyEx(dark, cv2.MORPH_CLOSE, _ELLIPSE5)
    core = cv2.morphologyEx(_fill_holes(dark), cv2.MORPH_OPEN, _ELLIPSE5)
    n, labels, areas = _components(core, 8)
    if n < 2:
        return nuc
    core = (labels == 1 + int(np.argmax(areas[1:]))).view(np.uint8)
    a_nuc, a_core = float(sel.sum()), float(core.sum())
    r_nuc, r_core = np.sqrt(a_nuc / np.pi), np.sqrt(a_core / np.pi)
    light = sel & (dark == 0)
    outside = (light & (core == 0)).sum() / max(light.sum(), 1)
    if a_core < 0.2 * a_nuc or r_nuc - r_core < max(2.5, r_nuc / 12) or outside < 0.5:
        return nuc
    # a band no wider than the image's own blurred edge (the 10-90 % rise of a step blurred
    # by sigma is 2.56 sigma) is the nucleus's edge, its hue mixed with what lies beyond
    if r_nuc - r_core < 2.56 * _edge_sigma(opp[:, :, 0], nuc):
        return nuc
    return core


def _edge_sigma(x: np.ndarray, mask: np.ndarray) -> float:
    """Blur of the image around a region: the sd σ (px) of the Gaussian that blurred it.

    Re-blurring (Hu and de Haan 2006): a step blurred by σ and again by σ_k has a
    steepest slope proportional to 1/√(σ² + σ_k²), whatever its height, so the ratio r of
    the slopes after σ_1 = 1 and σ_2 = 2 px gives σ² = (4 − r²)/(r² − 1). The slopes are
    read on the window's strongest edges away from the region (red cells, the cell's
    outline: single steps), the 5 % of pixels with the steepest slope at σ_1 beyond 3 px
    of the region, so that a rim inside the region does not pass for blur. 0 where it
    cannot be measured (then a rim is judged as before issue 22, by its width alone).
    """
    x = np.ascontiguousarray(x, np.float32)
    grads = []
    for sigma in (1.0, 2.0):
        b = cv2.GaussianBlur(x, (0, 0), sigma)
        grads.append(np.hypot(cv2.Sobel(b, cv2.CV_32F, 1, 0, ksize=3),
                              cv2.Sobel(b, cv2.CV_32F, 0, 1, ksize=3)))
    away = cv2.dilate(mask, _ELLIPSE7) == 0
    g1 = grads[0][away]
    if g1.size < 20:
        return 0.0
    edges = g1 >= np.percentile(g1, 95)
    s1, s2 = float(np.median(g1[edges])), float(np.median(grads[1][away][edges]))
    if not s2 > 0:
        return 0.0
    r2 = (s1 / s2) ** 2
    return float(np.sqrt(max((4 - r2) / (r2 - 1), 0.0))) if r2 > 1 else 0.0


def _whole_cell(opp: np.ndarray, nuc: np.ndarray, rgb: np.ndarray, others: np.ndarray,
                background: np.ndarray) -> dict:
    """Cell (nucleus + cytoplasm) from a per-image colour model of four populations.

    ``opp`` is the (lightly blurred) window around the nucleus ``nuc`` (uint8 0/1) in the
    opponent axes of :data:`_OPPONENT`; ``rgb`` the same window in RGB; ``others`` the
    other components of the contrast threshold in the window; ``background`` opponent
    colours of image pixels outside the window and the stained components.

    Plasma, red cells, cytoplasm and chromatin are four colour populations in every
    smear; their colours drift from image to image, so each image gets its own model, one
    Gaussian (full covariance) per population:

    * plasma and red cells: two-means over ``background`` (over the window's outer half
      when the window is most of the image), started from its lightest 15 % as plasma;
    * chromatin: the nucleus's pixels;
    * cytoplasm: started from the half of a 1–6 px ring around the nucleus that the
      other three explain worst (cytoplasm touches the nucleus), then one EM step over
      the window's pixels with the other three held fixed.

    It is fitted and evaluated on the window shrunk to a nucleus radius of
    ``_MODEL_RADIUS`` px (area averaging); the log-odds of (cytoplasm or chromatin)
    against (plasma or red cells) are interpolated back to full resolution and
    thresholded at 0. The cell is the connected region holding the nucleus after a 3x3
    opening; other compact blobs of the contrast threshold in it (a neighbouring white
    cell's nucleus, a lobe) take the pixels nearer to them than to the nucleus; holes
    smaller than a third of the nucleus are filled (red cells wrapped by cytoplasm are
    larger and stay out); a 5x5 opening smooths the outline. When the cytoplasm
    Gaussian is not bluer than the plasma one, or weighs under 2 % of the window (no
    cytoplasm population here), the cell is the nucleus. (It also had to be bluer than
    the red-cell one until issue 22; on dlmi the two differ by a few levels either way,
    and the test flipped on noise: 26 % of dev cells got no cytoplasm, most of them with
    a cytoplasm plain to see.)
    """
    h, w = nuc.shape
    sel = nuc.view(bool)
    area_n = float(np.count_nonzero(nuc))
    # The model is fitted and evaluated on the window shrunk so that the nucleus radius is
    # about _MODEL_RADIUS px (area averaging also removes JPEG noise): the cost no longer
    # grows with the cell. The per-pixel log-odds are interpolated back to full resolution.
    scale = min(1.0, _MODEL_RADIUS / np.sqrt(area_n / np.pi))
    hw, hh = max(int(round(w * scale)), 8), max(int(round(h * scale)), 8)
    half = cv2.resize(opp, (hw, hh), interpolation=cv2.INTER_AREA)
    nhalf = cv2.resize(nuc, (hw, hh), interpolation=cv2.INTER_NEAREST)
    dhalf = cv2.distanceTransform(1 - nhalf, cv2.DIST_L2, 3) / scale
    nhalf = nhalf.view(bool)
    ohalf = cv2.resize(others, (hw, hh), interpolation=cv2.INTER_NEAREST).view(bool)
    sub, dsub, osub = half.reshape(-1, 3), dhalf.ravel(), ohalf.ravel()
    far = background.reshape(-1, 3)
    if len(far) < 200:  # the window is most of the image: its outer part then
        far = sub[(dsub > 0.5 * dsub.max()) & ~osub]
    near = sub[(dsub > 0) & (dsub <= 0.8 * dsub.max()) & ~osub]
    # ~300 samples per set are plenty for means and covariances of 3-D colours
    far, near = far[::max(len(far) // 300, 1)], near[::max(len(near) // 300, 1)]
    chrom_px = half[nhalf]
    chrom_px = chrom_px[::max(len(chrom_px) // 500, 1)]
    if len(far) < 30 or len(near) < 30 or len(chrom_px) < 10:
        return _nucleus_only(nuc)
    # two-means (OpenCV), started from the lightest 15 % as plasma: index 0 stays plasma
    L = far[:, 0]
    k85 = int(0.85 * (len(L) - 1))  # an order statistic (np.quantile costs 10x more here)
    init = (L < np.partition(L, k85)[k85]).astype(np.int32).reshape(-1, 1)
    _, k, _ = cv2.kmeans(np.ascontiguousarray(far, np.float32), 2, init,
                         (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 5, 0.25), 1,
                         cv2.KMEANS_USE_INITIAL_LABELS)
    k = k.ravel()
    if (k == 0).all() or (k == 1).all():
        k = np.arange(len(far)) % 2
    means, invs, logdets = (np.zeros((4, 3), np.float32), np.zeros((4, 3, 3), np.float32),
                            np.zeros(4, np.float32))
    for j, x in ((PLASMA, far[k == 0]), (RBC, far[k == 1]), (CHROM, chrom_px)):
        means[j], invs[j], logdets[j] = _gaussian(x)
    # cytoplasm touches the nucleus: started from the pixels of a ring 1-6 px around it
    # that the three known populations explain worse than the ring's median pixel
    ring = sub[(dsub > 0) & (dsub <= 6) & ~osub]
    if len(ring) < 8:
        ring = near
    known = [PLASMA, RBC, CHROM]
    best = _logliks(ring, means[known], invs[known], logdets[known]).max(1)
    means[CYTO], invs[CYTO], logdets[CYTO] = _gaussian(
        ring[best <= np.partition(best, len(best) // 2)[len(best) // 2]])
    weights = np.full(4, 0.25, np.float32)
    for _ in range(_EM_ITERATIONS):
        ll = _logliks(near, means, invs, logdets) + np.log(weights)
        post = np.exp(ll - _max_columns(ll)[:, None])
        post /= post.sum(1, keepdims=True)
        new = np.clip(post.mean(0), 1e-4, None)
        converged = np.abs(new - weights).max() < 0.005
        weights = new
        r = post[:, CYTO]
        if r.sum() < 5 or converged:
            break
        means[CYTO], invs[CYTO], logdets[CYTO] = _gaussian(near, r)
    colours = dict(zip(("plasma", "red_cells", "cytoplasm", "chromatin"), _to_lab(means)))
    ll = (_logliks(half.reshape(-1, 3), means, invs, logdets) + np.log(weights)).reshape(hh, hw, 4)
    up = lambda x: cv2.resize(np.ascontiguousarray(x, np.float32), (w, h),  # noqa: E731
                              interpolation=cv2.INTER_LINEAR)
    red = (up(ll[..., RBC] - np.maximum(np.maximum(ll[..., PLASMA], ll[..., CYTO]), ll[..., CHROM]))
           > 0).view(np.uint8)
    red = cv2.morphologyEx(red, cv2.MORPH_OPEN, _ELLIPSE3)
    if weights[CYTO] < 0.02 or means[CYTO, 2] < means[PLASMA, 2]:
        out = _nucleus_only(nuc)
        out.update(red_cells=red & (1 - nuc), colours=colours)
        return out
    cand = (up(np.logaddexp(ll[..., CYTO], ll[..., CHROM])
               - np.logaddexp(ll[..., PLASMA], ll[..., RBC])) > 0).view(np.uint8)
    cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, _ELLIPSE3) | nuc
    _, comps = cv2.connectedComponents(cand, connectivity=8)
    py, px = np.unravel_index(int(np.argmax(sel)), sel.shape)
    full = (comps == comps[py, px]).view(np.uint8)
    # the rest runs on the cell's box (a few times smaller than the window)
    bx, by, bw, bh = cv2.boundingRect(full)
    y0, y1, x0, x1 = max(by - 3, 0), min(by + bh + 3, h), max(bx - 3, 0), min(bx + bw + 3, w)
    cell, nuc = full[y0:y1, x0:x1].copy(), nuc[y0:y1, x0:x1]
    py, px = py - y0, px - x0
    # other chromatin in the region: another cell's nucleus, a platelet, a lobe of ours
    # compact blobs only: a thin dark line (the cytoplasm's own stained edge) marks nothing
    others = others[y0:y1, x0:x1] & cell & (1 - cv2.dilate(nuc, _ELLIPSE5))
    lobes = False
    if cv2.countNonZero(others):
        others = cv2.morphologyEx(others, cv2.MORPH_OPEN, _ELLIPSE5)
        n, olab, oareas = _components(others, 8)
        keep = np.flatnonzero(oareas[1:] >= 0.02 * area_n) + 1
    else:
        keep = []
    if len(keep):
        rivals = np.isin(olab, keep)
        dist = cv2.distanceTransform(1 - nuc, cv2.DIST_L2, 3)
        # Two or more chromatin blobs, each a fifth to 0.8 of the nucleus, within a few px
        # of it are lobes of the same segmented nucleus: a neutrophil, not a lymphocyte.
        # (One blob as large as the nucleus is a neighbouring cell touching this one.)
        near_px = max(4.0, 0.3 * np.sqrt(area_n / np.pi))
        lobes = sum(0.2 * area_n <= oareas[j] <= 0.8 * area_n
                    and dist[olab == j].min() <= near_px for j in keep) >= 2
        # the region's pixels go to the nearest nucleus: ours keeps those closer to it
        d_rival = cv2.distanceTransform((~rivals).view(np.uint8), cv2.DIST_L2, 3)
        cell &= (dist <= d_rival).view(np.uint8)
        _, comps = cv2.connectedComponents(cell | nuc, connectivity=8)
        cell = (comps == comps[py, px]).view(np.uint8)
    holes = (1 - cell) & _fill_holes(cell)
    if holes.any():
        n, hlab, hareas = _components(holes, 4)
        small = np.flatnonzero(hareas[1:] < area_n / 3) + 1
        if len(small):
            cell |= np.isin(hlab, small).view(np.uint8)
    cell = cv2.morphologyEx(cell, cv2.MORPH_OPEN, _ELLIPSE5) | nuc
    _, comps = cv2.connectedComponents(cell, connectivity=8)
    full[:] = 0
    full[y0:y1, x0:x1] = (comps == comps[py, px]).view(np.uint8)
    return {"cell": full, "red_cells": red & (1 - full), "colours": colours, "lobes": lobes}


PLASMA, RBC, CYTO, CHROM = range(4)
_EM_ITERATIONS = 1
_MODEL_RADIUS = 9.0
_MARGIN = 1.6  # window margin around the nucleus box, in nucleus radii
_VAR_FLOOR = 4.0  # a variance of 4 (sd 2 levels) on each axis: JPEG noise
_VAR_FLOOR_3 = _VAR_FLOOR * np.eye(3)


def _gaussian(x: np.ndarray, weights: np.ndarray | None = None):
    # mean, inverse covariance and log-determinant of (weighted) samples x (N, 3)
    if weights is None:
        mean = x.mean(0)
        d = x - mean
        cov = d.T @ d / max(len(x), 1)
    else:
        wsum = max(float(weights.sum()), 1e-6)
        mean = (weights @ x) / wsum
        d = x - mean
        cov = (d * weights[:, None]).T @ d / wsum
    inv, det = _inv3(cov + _VAR_FLOOR_3)
    return mean.astype(np.float32), inv.astype(np.float32), float(np.log(max(det, 1e-12)))


def _inv3(m: np.ndarray) -> tuple[np.ndarray, float]:
    # inverse and determinant of a symmetric positive-definite 3x3 by cofactors (LAPACK's
    # call overhead is larger than the arithmetic at this size)
    # (on Python floats: the same IEEE double arithmetic as on numpy scalars, without
    # their per-operation overhead)
    (a, b, c), (_, d, e), (_, _, f) = np.asarray(m, np.float64).tolist()
    A, B, C = d * f - e * e, c * e - b * f, b * e - c * d
    det = a * A + b * B + c * C
    D, E, F = a * f - c * c, b * c - a * e, a * d - b * b
    return np.array([[A, B, C], [B, D, E], [C, E, F]]) / det, float(det)


def _logliks(x: np.ndarray, means, invs, logdets) -> np.ndarray:
    # log-density (up to a constant) of every sample x (N, 3) under every Gaussian (N, K):
    # with inv = L L^T (Cholesky), the Mahalanobis term is |L^T (x - mean)|^2, and every
    # component's L^T (x - mean) comes out of one affine transform (OpenCV)
    k = len(means)
    chol = np.linalg.cholesky(invs.astype(np.float64))
    lt = np.transpose(chol, (0, 2, 1))
    m = np.concatenate([lt, -(lt @ means[:, :, None].astype(np.float64))], 2).reshape(3 * k, 4)
    y = cv2.transform(np.ascontiguousarray(x, np.float32).reshape(-1, 1, 3), m.astype(np.float32))
    y = y.reshape(-1, k, 3)
    y = y * y
    # the three squares added in order, as .sum(-1) does, but a reduction over an axis of
    # 3 costs numpy ten times more than two additions of strided views
    return -0.5 * ((y[..., 0] + y[..., 1] + y[..., 2]) + logdets)


def _max_columns(x: np.ndarray) -> np.ndarray:
    # row maxima of an (N, 4) array (a max is exact: the same values as x.max(1), by
    # element-wise maxima of its columns, several times cheaper on a short axis)
    return np.maximum(np.maximum(x[:, 0], x[:, 1]), np.maximum(x[:, 2], x[:, 3]))


def _nucleus_only(nuc):
    return {"cell": nuc.copy(), "red_cells": np.zeros_like(nuc), "colours": None,
            "lobes": False}
