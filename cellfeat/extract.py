"""From images to one feature row per cell: :class:`CellFeatureExtractor`.

A failed segmentation or an unreadable file never raises inside a batch: the row carries
NaN features and the reason in ``QC_STATUS``. A NaN always has a recorded cause.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from .data import MAX_IMAGE_SIDE, ImageReadError, read_image
from .features import FEATURE_NAMES, MIN_REGION_PIXELS, REGISTRY, compute_features
from .segment import CHANNELS, METHODS, STATUSES, segment_nucleus

__all__ = ["CellFeatureExtractor", "measure_image", "failed_row", "nan_reason", "nucleus_crop",
           "QC_COLUMN",
           "DETAIL_COLUMN", "MIN_SIDE", "MAX_SIDE"]

QC_COLUMN = "QC_STATUS"
#: Why features are NaN: the failure's explanation, or which objects were too small.
DETAIL_COLUMN = "QC_DETAIL"
#: Images outside these sides (pixels) are rejected rather than processed or rescaled (the
#: largest already when decoding, from the header: :data:`cellfeat.data.MAX_IMAGE_SIDE`).
MIN_SIDE, MAX_SIDE = 32, MAX_IMAGE_SIDE


def measure_image(image: np.ndarray, *, method: str = "otsu", channel: str = "stain",
                  names: tuple[str, ...] = FEATURE_NAMES):
    """Segment one image and compute its features.

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
    feats = compute_features(image, seg, names)
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


class CellFeatureExtractor(TransformerMixin, BaseEstimator):
    """Turn lymphocyte images into a table of per-cell features.

    Parameters
    ----------
    method : {"otsu", "kmeans"}, default="otsu"
        Nucleus segmentation method (see :mod:`cellfeat.segment`).
    channel : {"stain", "saturation", "inverted_green"}, default="stain"
        Contrast channel that is thresholded.
    features : list of str, optional
        Registry names to compute; default all of :data:`cellfeat.features.FEATURE_NAMES`.

    Attributes
    ----------
    feature_names_ : tuple of str
        The feature columns of the output (after ``QC_STATUS``).

    Notes
    -----
    The input is a sequence of images, each an RGB uint8 array or a path to an image file,
    not a 2-D numeric table; the transformer is stateless. Output rows follow the input
    order. ``QC_STATUS`` is "ok", a segmentation status (see
    :data:`cellfeat.segment.STATUSES`) or ``"unreadable: <reason>"``; ``QC_DETAIL`` says
    why any feature of the row is NaN (empty when none is).

    Examples
    --------
    >>> import numpy as np
    >>> from cellfeat.synthetic import sample_patient, draw_cell
    >>> rng = np.random.default_rng(0)
    >>> image, _, _ = draw_cell(rng, sample_patient(rng, 1))
    >>> table = CellFeatureExtractor().fit_transform([image])
    >>> table.loc[0, "QC_STATUS"], bool(table.loc[0, "Nucleus_Shape_Solidity"] > 0.9)
    ('ok', True)
    """

    def __init__(self, *, method="otsu", channel="stain", features=None):
        self.method = method
        self.channel = channel
        self.features = features

    def _validate(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {self.channel!r}")
        names = FEATURE_NAMES if self.features is None else tuple(self.features)
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown feature names: {unknown[:5]}")
        return names

    def fit(self, X=None, y=None):
        self.feature_names_ = self._validate()
        return self

    def transform(self, X) -> pd.DataFrame:
        names = getattr(self, "feature_names_", None) or self._validate()
        rows = []
        for item in X:
            if isinstance(item, (str, Path)):
                try:
                    image = read_image(item)
                except ImageReadError as exc:
                    rows.append(failed_row(str(exc), names))
                    continue
            else:
                image = np.asarray(item)
            row, _ = measure_image(image, method=self.method, channel=self.channel, names=names)
            rows.append(row)
        return pd.DataFrame(rows, columns=[QC_COLUMN, DETAIL_COLUMN, *names])

    def get_feature_names_out(self, input_features=None):
        names = getattr(self, "feature_names_", None) or self._validate()
        return np.asarray([QC_COLUMN, DETAIL_COLUMN, *names], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = False
        return tags
