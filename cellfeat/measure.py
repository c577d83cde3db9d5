"""One image to one feature row: segment, measure, and say why anything is NaN.

What the feature stage's workers run for every image (:func:`measure_image`,
:func:`nucleus_crop`, :func:`failed_row`); :mod:`cellfeat.extract` wraps it in a
scikit-learn transformer. This module imports neither scikit-learn nor pandas, so that
the workers start fast and stay small.
"""

from __future__ import annotations

import numpy as np

from .data import MAX_IMAGE_SIDE
from .features import FEATURE_NAMES, MIN_REGION_PIXELS, compute_features
from .segment import STATUSES, segment_nucleus

__all__ = ["measure_image", "failed_row", "nan_reason", "nucleus_crop", "QC_COLUMN",
           "DETAIL_COLUMN", "MIN_SIDE", "MAX_SIDE"]

QC_COLUMN = "QC_STATUS"
#: Why features are NaN: the failure's explanation, or which objects were too small.
DETAIL_COLUMN = "QC_DETAIL"
#: Images outside these sides (pixels) are rejected rather than processed or rescaled.
MIN_SIDE, MAX_SIDE = 32, MAX_IMAGE_SIDE


def measure_image(image: np.ndarray, *, method: str = "otsu", channel: str = "stain",
                  names: tuple[str, ...] = FEATURE_NAMES, ruler: float = 1.0):
    """Segment one image and compute its features.

    ``ruler`` is the image's red-cell diameter in px (:mod:`cellfeat.ruler`; the feature
    stage passes images resampled to :data:`cellfeat.ruler.CANONICAL_DIAMETER`): lengths
    come out in red-cell diameters, areas in squared diameters; 1 gives pixels.

    Returns
    -------
    row : dict
        ``QC_STATUS`` ("ok" or the segmentation status) and every feature in ``names``
        (NaN unless the status is "ok").
    seg : Segmentation
    """
    h, w = image.shape[:2]
    if max(h, w) > MAX_SIDE:
        return failed_row(f"rejected: image {w}x{h} larger than {MAX_SIDE} px", names), None
    seg = segment_nucleus(image, method, channel=channel, min_size=MIN_SIDE)
    if not seg.ok:
        return failed_row(seg.status, names, STATUSES.get(seg.status, "")), seg
    feats = compute_features(image, seg, names, ruler=ruler)
    return {QC_COLUMN: "ok", DETAIL_COLUMN: nan_reason(feats), **feats}, seg


def nucleus_crop(image: np.ndarray, seg, *, window: int = 96, size: int = 32) -> np.ndarray:
    """A ``window``-pixel square centred on the nucleus centroid, resized to ``size``.

    The window is fixed in pixels (not scaled to the nucleus) so cell size stays visible to
    a CNN; parts outside the image are filled by reflection. Returns uint8 (size, size, 3).
    """
    import cv2

    x0, y0, x1, y1 = seg.box if seg.box is not None else (0, 0) + seg.nucleus.shape[::-1]
    m = cv2.moments(seg.nucleus[y0:y1, x0:x1].view(np.uint8), binaryImage=True)
    cy, cx = int(round(m["m01"] / m["m00"])) + y0, int(round(m["m10"] / m["m00"])) + x0
    half = window // 2
    h, w = image.shape[:2]
    if half <= cy <= h - window + half and half <= cx <= w - window + half:
        crop = image[cy - half:cy - half + window, cx - half:cx - half + window]
    else:  # only a window that leaves the image needs the (whole-image) reflected border
        padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REFLECT_101)
        crop = padded[cy:cy + window, cx:cx + window]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def nan_reason(feats: dict) -> str:
    """Say which objects' features are NaN in an otherwise usable cell, and why."""
    objects = sorted({n.split("_", 1)[0] for n, v in feats.items() if not np.isfinite(v)})
    if not objects:
        return ""
    reasons = [f"region under {MIN_REGION_PIXELS} px (e.g. no cytoplasm found) or uniform "
               "(zero variance or contrast)"]
    if any(n.endswith("_RelRBC") and not np.isfinite(v) for n, v in feats.items()):
        reasons.append("no red-cell or plasma reference found in the image (colour features "
                       "relative to them)")
    return "NaN features of " + ", ".join(objects) + ": " + "; or ".join(reasons)


def failed_row(status: str, names, detail: str = "") -> dict:
    """A row for an image without features: the status, why, and NaN features."""
    return {QC_COLUMN: status, DETAIL_COLUMN: detail or status, **dict.fromkeys(names, np.nan)}
