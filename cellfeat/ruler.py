"""The red cells as a ruler: each image's pixel scale, measured on the smear itself.

Labs do not share a pixel size: one analyser crops a lymphocyte at 224 px, another at 120 px,
each at its own magnification. Every smear holds the haematologist's own yardstick, the red
cells (about 7.5 µm across, Bain 2015), so lengths are measured in red-cell diameters and
areas in squared diameters (issue 29).

:func:`red_cell_diameters` measures the whole, single red cells of one image (not cut by
the border, not overlapping another cell, central pallor filled) and :func:`ruler_of`
takes the median over a patient's images: one smear, one magnification, so the patient's
median is its ruler (per-image estimates only add noise). Too few measurable red cells
(a packed leukaemic smear hides them) falls back to :data:`CANONICAL_DIAMETER`, and the
source of the ruler is recorded (:data:`RULER_SOURCES`).

:func:`to_canonical` resamples an image so that its ruler is :data:`CANONICAL_DIAMETER` px:
every pixel-scale constant of the segmentation and the features (structuring elements,
GLCM offsets, granulometry radii, distance transforms) then acts at one size in red-cell
units, and lengths are divided by :data:`CANONICAL_DIAMETER`, areas by its square; a
larger resampled image is centre-cropped to :data:`CANONICAL_FIELD` px, one field of view.

OpenCV and NumPy only: the feature workers import this module (issue 21).
"""

from __future__ import annotations

import cv2
import numpy as np


__all__ = ["red_cell_diameters", "ruler_of", "to_canonical", "CANONICAL_DIAMETER",
           "CANONICAL_FIELD", "RULER_RED_CELLS",
           "MIN_RED_CELLS", "RULER_SOURCES", "RULER_STEP"]

#: The canonical red-cell diameter (px) every image is resampled to: dlmi's typical red
#: cell, so that dlmi's images move by a few percent at most. 45.6 is the median over the
#: 120 dlmi training patients of each patient's ruler as the first version of
#: :func:`red_cell_diameters` measured it (Otsu's threshold for the edge); the half-maximum
#: edge reads that median as 46.5 px. Any fixed value is a unit: it only has to stay fixed.
CANONICAL_DIAMETER = 45.6
#: The field of view the segmentation sees, px at the canonical ruler: dlmi's 224 px crop
#: (4.9 red cells across). Larger resampled images are centre-cropped to it.
CANONICAL_FIELD = 224
#: Red cells a patient's ruler is measured on: its images are measured in order until
#: this many are found (dlmi: about 25 images of a patient's 80; the median of 60 red
#: cells whose diameters vary by 8 % has a standard error of about 1.3 %), so the ruler
#: costs a third of measuring every image.
RULER_RED_CELLS = 60
#: Fewest measured red cells for a patient's own ruler; below it :data:`CANONICAL_DIAMETER`.
MIN_RED_CELLS = 5
#: Where a patient's ruler came from: its own red cells, or the default (too few found).
RULER_SOURCES = ("patient", "default")
#: The red cells are found on the image shrunk by this factor (area averaging): a red cell
#: is still 20 px across at dlmi's scale, and the search costs a quarter.
RULER_STEP = 2
#: A single whole red cell: its box's aspect ratio at most this, and its area between these
#: shares of its box (a disk fills π/4 = 0.785 of its box; two overlapping disks fill less
#: of a longer box, a ring whose pallor opens onto the plasma far less).
MAX_ASPECT, BOX_FILL = 1.3, (0.68, 0.87)
#: Smallest red cell counted, px² at the shrunk scale (a speck, a platelet: under 6 px).
MIN_AREA = 30
#: Chromatin: green under this share of the plasma's (optical density above 0.8; a red
#: cell's is about 0.45, see :mod:`cellfeat.features`). At most :data:`MAX_DARK_SHARE` of
#: a red cell's blob (a white cell's blob holds many).
DARK_SHARE_OF_PLASMA, MAX_DARK_SHARE = 0.45, 0.02


def red_cell_diameters(image: np.ndarray, *, step: int = RULER_STEP) -> np.ndarray:
    """Equivalent diameters (px of ``image``) of its whole, single red cells.

    The image's green channel (red cells absorb green most) is shrunk ``step`` times (area
    averaging) and read against the plasma's green :math:`W` (its 99th percentile). Otsu's
    threshold splits plasma from everything stained; that mask, opened by 3x3, with its
    holes filled (the central pallor, or any plasma it encloses), is cut into 8-connected
    blobs. A blob counts as one whole red cell when it does not touch the border, holds
    almost no chromatin (pixels under :data:`DARK_SHARE_OF_PLASMA` :math:`W`, at most
    :data:`MAX_DARK_SHARE` of it), has an area of at least :data:`MIN_AREA`, and is
    disk-like: box aspect at most :data:`MAX_ASPECT` and area within :data:`BOX_FILL` of
    its box. Its diameter is

    .. math:: d = \\text{step} \\cdot 2\\sqrt{A / \\pi}.

    Returns
    -------
    ndarray of float, shape (n,)
        One diameter per counted red cell (empty when none is found).
    """
    h0, w0 = image.shape[:2]
    if step > 1:  # shrink the RGB image, then take its green: a third of the copying
        image = cv2.resize(image, (max(w0 // step, 1), max(h0 // step, 1)),
                           interpolation=cv2.INTER_AREA)
    g = cv2.extractChannel(image, 1)
    hist = cv2.calcHist([g], [0], None, [256], [0, 256]).ravel()
    if np.count_nonzero(hist) < 3:
        return np.zeros(0)
    white = float(np.searchsorted(np.cumsum(hist), 0.99 * g.size))
    t = cv2.threshold(g, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)[0]
    # half-way between the plasma and the red cells' typical level (the median of what
    # Otsu calls stained, chromatin left out): the half-maximum of a blurred edge, which
    # sits on the true edge whatever the blur and whatever share of the crop each
    # population takes (Otsu's own threshold moves with those shares)
    levels = np.arange(256)
    body = hist * ((levels <= t) & (levels >= DARK_SHARE_OF_PLASMA * white))
    if body.sum() > 0:
        mid = float(np.searchsorted(np.cumsum(body), 0.5 * body.sum()))
        t = 0.5 * (white + mid)
    fg = cv2.threshold(g, t, 1, cv2.THRESH_BINARY_INV)[1]
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _ELLIPSE3)
    h, w = fg.shape
    # holes: plasma that a flood from the border (one pixel of plasma around) cannot reach
    flood = cv2.copyMakeBorder(fg, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(flood, None, (0, 0), 1)
    fg |= 1 - flood[1:-1, 1:-1]
    n, lab, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        fg, 8, cv2.CV_32S, cv2.CCL_BBDT)
    x, y, bw, bh, a = (stats[1:, k] for k in range(5))
    dark = np.bincount(lab[g < DARK_SHARE_OF_PLASMA * white], minlength=n)[1:]
    keep = ((x > 0) & (y > 0) & (x + bw < w) & (y + bh < h) & (a >= MIN_AREA)
            & (dark <= MAX_DARK_SHARE * a)
            & (np.maximum(bw, bh) <= MAX_ASPECT * np.minimum(bw, bh))
            & (a >= BOX_FILL[0] * bw * bh) & (a <= BOX_FILL[1] * bw * bh))
    return step * 2.0 * np.sqrt(a[keep] / np.pi)


def ruler_of(per_image: list, *, min_cells: int = MIN_RED_CELLS) -> tuple[float, str, int]:
    """A patient's ruler from its images' red cells: ``(diameter px, source, n cells)``.

    ``per_image`` holds each image's :func:`red_cell_diameters` (one smear, one
    magnification: all of them measure the same thing). The ruler is the median over every
    red cell of the patient when there are at least ``min_cells``; otherwise
    :data:`CANONICAL_DIAMETER` with source ``"default"`` (the sizes are then as the
    analyser measured them, at dlmi's scale).
    """
    cells = np.concatenate([np.asarray(d, float) for d in per_image]) if per_image else []
    if len(cells) < min_cells:
        return CANONICAL_DIAMETER, "default", int(len(cells))
    return float(np.median(cells)), "patient", int(len(cells))


def to_canonical(image: np.ndarray, diameter: float) -> tuple[np.ndarray, float]:
    """The image resampled so that a red cell of ``diameter`` px is
    :data:`CANONICAL_DIAMETER` px across, then centre-cropped to at most
    :data:`CANONICAL_FIELD` px a side; and the ruler in its pixels (``diameter`` times the
    factor used: :data:`CANONICAL_DIAMETER` up to rounding of the size, or ``diameter``
    when not resampled).

    Resampling factor :math:`f = D_0 / D`: bilinear for 0.8 ≤ f ≤ 1.25 (each output pixel
    within 1.25 input pixels; area averaging costs 0.58 ms a 224 px image at f = 0.98,
    bilinear 0.10, the whole ruler step was 7 % of an image's time with it), area averaging
    below, bicubic above; the image is not resampled when ``f`` is 1 within 1 % (half a
    pixel of a red cell). The crop gives the segmentation one field of view in red-cell units whatever the
    analyser's magnification: its thresholds and colour model are learnt from the whole
    image, and a wider field (more plasma and red cells around the cell) moves them. On 80
    dev images of 10 patients, each ruler exact, a ×0.8 copy (``cellfeat.augment.rescale``)
    moved the patient means of cell area, rim width and cell convexity by 0.57, 0.67 and
    −0.72 between-patient SD without the crop and by 0.02, 0.02 and 0.01 with it; a ×1.25
    copy (a narrower field) by −0.05, −0.06 and −0.01 (a narrower field is not padded:
    padding with plasma moved them by 2.7, 3.5 and −2.7).
    """
    f = CANONICAL_DIAMETER / float(diameter)
    ruler = float(diameter)
    if abs(f - 1.0) >= 0.01:
        h, w = image.shape[:2]
        size = (max(int(round(w * f)), 1), max(int(round(h * f)), 1))
        ruler *= size[0] / w
        how = (cv2.INTER_AREA if f < 0.8 else cv2.INTER_CUBIC if f > 1.25
               else cv2.INTER_LINEAR)
        image = cv2.resize(image, size, interpolation=how)
    h, w = image.shape[:2]
    if h > CANONICAL_FIELD or w > CANONICAL_FIELD:
        y0, x0 = max((h - CANONICAL_FIELD) // 2, 0), max((w - CANONICAL_FIELD) // 2, 0)
        image = image[y0:y0 + CANONICAL_FIELD, x0:x0 + CANONICAL_FIELD]
    return image, ruler


_ELLIPSE3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
