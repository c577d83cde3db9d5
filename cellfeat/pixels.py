"""Pixel-space heterogeneity of a bag of images (the challenge report's score), streamed.

Kept apart from :mod:`cellfeat.heterogeneity` (which re-exports it) because the feature
stage computes it in its workers, image by image as they are decoded, and those workers
must not pay for importing scikit-learn (start-up time and memory).
"""

from __future__ import annotations

import numpy as np

__all__ = ["pixel_dispersion", "pixel_dispersion_naive", "dispersion_from_sums", "PixelSums",
           "PIXEL_SCORE"]

#: Output name of :func:`pixel_dispersion` (a column of the features stage's patients table).
PIXEL_SCORE = "Bag_Heterogeneity_PixelDispersion"


def dispersion_from_sums(n: int, total: np.ndarray, total_sq: float) -> float:
    """Dispersion S from running sums: n, Σ q_i (vector) and Σ ‖q_i‖² (scalar).

    Uses Σ_i ‖q_i − q̄‖² = Σ ‖q_i‖² − ‖Σ q_i‖²/n, so a bag can be streamed image by image.
    See :func:`pixel_dispersion` for S. The subtraction cancels: the absolute error is about
    √(ε·Σ‖q_i‖²)/√n (ε the float64 epsilon), ~1e-8 for a bag of 224×224 images, far below
    the spread between patients.
    """
    if n < 1:
        return np.nan
    centred = max(float(total_sq) - float(np.dot(total, total)) / n, 0.0)
    return float(np.sqrt(n * centred) / n)


class PixelSums:
    """One bag's images streamed into the running sums of :func:`dispersion_from_sums`.

    Memory is one float64 image whatever the number of images, so a patient's images can
    be added as they are decoded. S compares images pixel by pixel, so only images of the
    shape of the first one added enter the sums: :meth:`add` says whether an image was
    used and :attr:`n` counts the images used.

    Attributes
    ----------
    n : int
        Images in the sums.
    shape : tuple or None
        Shape of the first image added.

    Examples
    --------
    >>> sums = PixelSums()
    >>> sums.add(np.zeros((2, 2), np.uint8)), sums.add(np.full((2, 2), 255, np.uint8))
    (True, True)
    >>> sums.add(np.zeros((3, 3), np.uint8))  # another shape: left out
    False
    >>> sums.n, sums.value()  # S = sqrt(4 pixels * 1**2) / 2
    (2, 1.0)
    """

    def __init__(self):
        self.n = 0
        self.shape = None
        self._total = None  # sum of the images, in their own units (0-255 for uint8)
        self._total_sq = 0.0

    def add(self, image: np.ndarray) -> bool:
        """Add one image (0-255 values, any dtype); False, and nothing added, when its shape
        differs from the first image's."""
        image = np.asarray(image)
        if self.shape is None:
            self.shape = image.shape
            self._total = np.zeros(image.shape, np.float64)
        elif image.shape != self.shape:
            return False
        if image.dtype == np.uint8 and image.ndim in (2, 3) and image.size:
            import cv2

            # uint8 sums are integers far below 2**53, so exact in float64; cv2.norm can be
            # off by ~1e-16 relative, and the exact value is the nearest integer
            cv2.accumulate(np.ascontiguousarray(image), self._total)
            self._total_sq += float(round(cv2.norm(image, cv2.NORM_L2SQR)))
        else:
            v = image.astype(np.float64)
            self._total += v
            self._total_sq += float(np.vdot(v, v))
        self.n += 1
        return True

    def value(self) -> float:
        """S of the images added (pixel values / 255); NaN when none was added."""
        if not self.n:
            return np.nan
        # the score is defined on pixel values / 255
        return dispersion_from_sums(self.n, self._total.ravel() / 255.0,
                                    self._total_sq / 255.0 ** 2)


def pixel_dispersion(images) -> float:
    """Pixel-space heterogeneity of one challenge report, computed in O(n·d).

    .. math:: S = \\frac{1}{n} \\Big(\\sum_{i<j} \\lVert q_i - q_j \\rVert^2\\Big)^{1/2}

    over the n flattened images q_i (pixel values / 255), using the identity
    Σ_{i<j} ‖q_i − q_j‖² = n Σ_i ‖q_i − q̄‖². S ≥ 0, 0 for identical images; it is
    dominated by whatever varies most between crops, red cells and background included.

    This is the ``Bag_Heterogeneity_PixelDispersion`` column of the features stage, which
    calls it on each patient's decodable images in file order: the value is the same.

    Parameters
    ----------
    images : iterable of arrays
        One bag's images (an (n, ...) array, a list, or a generator, so that images can be
        decoded one at a time), values 0-255, any dtype. Images whose shape differs from
        the first image's are left out (see :class:`PixelSums`).

    Returns
    -------
    float
        S; NaN for no image. Computed from running sums (:func:`dispersion_from_sums`,
        absolute error ~1e-8 for bags of 224×224 images).
    """
    sums = PixelSums()
    for image in images:
        sums.add(image)
    return sums.value()


def pixel_dispersion_naive(images: np.ndarray) -> float:
    """The O(n²·d) definition of :func:`pixel_dispersion`, for testing it."""
    q = np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0
    n = len(q)
    total = sum(np.sum((q[i] - q[j]) ** 2) for i in range(n) for j in range(i + 1, n))
    return float(np.sqrt(total) / n) if n else np.nan
