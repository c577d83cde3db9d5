"""From images to one feature row per cell: :class:`CellFeatureExtractor`.

A failed segmentation or an unreadable file never raises inside a batch: the row carries
NaN features and the reason in ``QC_STATUS``. A NaN always has a recorded cause.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from .data import ImageReadError, read_image
from .features import FEATURE_NAMES, REGISTRY
# one image -> one row lives in its own module, free of scikit-learn (the feature workers)
from .measure import (DETAIL_COLUMN, MAX_SIDE, MIN_SIDE, QC_COLUMN, failed_row, measure_image,
                      nan_reason, nucleus_crop)
from .segment import CHANNELS, METHODS

__all__ = ["CellFeatureExtractor", "measure_image", "failed_row", "nan_reason", "nucleus_crop",
           "QC_COLUMN",
           "DETAIL_COLUMN", "MIN_SIDE", "MAX_SIDE"]


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
