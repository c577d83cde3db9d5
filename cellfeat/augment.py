"""Realistic colour changes of a smear image: what another lab, or another staining batch,
does to the same cells.

Every lab stains and photographs smears a little differently: the camera's white balance
and tone curve, how strongly the Romanowsky stain took, how blue the basophilic parts come
out, how hard the images were JPEG-compressed. This module rewrites an RGB uint8 image with
such changes, each one small, documented pure function with its formula:

* :func:`white_balance` — per-channel gains on the encoded values;
* :func:`gamma` — a power-law tone curve;
* :func:`scale_optical_density` — Beer–Lambert stain changes in linear light, with the two
  readings :func:`stain_strength` (all channels) and :func:`stain_balance` (red vs blue
  absorption: how blue the stain comes out);
* :func:`jpeg` — JPEG re-encoding at a quality;
* :func:`rescale` — another analyser's magnification: the image resampled by a factor and
  cropped or padded back to the analyser's crop size.

:class:`ColourShift` composes them in the order they happen to a smear (stain on the slide,
then the camera's white balance and tone curve, then storage) and :data:`SHIFT_PANEL` is a
fixed, documented panel of mild shifts used to measure how stable features and calls are;
:class:`Rescale` and :data:`SCALE_PANEL` do the same for the pixel scale, and
:data:`STABILITY_PANEL` is both, the panel the stability check runs.
The panel is a yardstick, not a target: :func:`random_shift` draws shifts from the
documented :data:`RANDOM_RANGES` for tests on shifts nobody tuned against.

Per-pixel steps act on each channel value alone, so all of them but JPEG fold into one
256-entry look-up table per channel (one ``cv2.LUT`` call per image).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .segment import _check_image as _check  # one definition of a valid RGB image
from .segment import white_point

__all__ = ["white_balance", "gamma", "scale_optical_density", "stain_strength",
           "stain_balance", "jpeg", "illumination", "srgb_to_linear", "linear_to_srgb",
           "ColourShift", "SHIFT_PANEL", "RANDOM_RANGES", "random_shift", "rescale",
           "Rescale", "SCALE_PANEL", "STABILITY_PANEL"]

_LEVELS = np.arange(256, dtype=np.float64)
#: Linear transmittance below which optical density is capped (OD ≤ 3): a pixel this dark
#: is saturated by the camera anyway, and the cap keeps log(0) out.
MIN_TRANSMITTANCE = 1e-3


def _apply_luts(image: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """Apply one float LUT per channel (shape (3, 256), 0-255 units), rounding and clipping."""
    import cv2

    table = np.clip(np.rint(luts), 0, 255).astype(np.uint8).T.reshape(256, 1, 3)
    return cv2.LUT(np.ascontiguousarray(image), np.ascontiguousarray(table))


# ----------------------------------------------------------------------- tone curves


def srgb_to_linear(v):
    """sRGB decoding (IEC 61966-2-1) of values in [0, 1]:
    ``v / 12.92`` for v ≤ 0.04045, else ``((v + 0.055) / 1.055) ** 2.4``."""
    v = np.asarray(v, float)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """sRGB encoding of linear values in [0, 1], the inverse of :func:`srgb_to_linear`:
    ``12.92 x`` for x ≤ 0.0031308, else ``1.055 x ** (1/2.4) − 0.055``."""
    x = np.clip(np.asarray(x, float), 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _wb_luts(gains) -> np.ndarray:
    g = np.asarray(gains, float).reshape(3, 1)
    if g.shape != (3, 1) or not np.all(g > 0):
        raise ValueError(f"gains must be three positive numbers, got {gains!r}")
    return g * _LEVELS


def _gamma_luts(g: float) -> np.ndarray:
    if not g > 0:
        raise ValueError(f"gamma must be positive, got {g!r}")
    return np.tile(255.0 * (_LEVELS / 255.0) ** g, (3, 1))


def white_balance(image: np.ndarray, gains) -> np.ndarray:
    """Per-channel gains on the encoded values: ``I'_c = clip(round(g_c · I_c), 0, 255)``.

    A camera white balanced to a slightly different light: ``gains = (1.04, 1, 0.96)``
    makes the image a few percent warmer (redder, less blue). Gains above 1 clip
    the brightest values of that channel.
    """
    return _apply_luts(_check(image), _wb_luts(gains))


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """Power-law tone curve on every channel: ``I' = 255 · (I / 255) ** g``.

    ``g < 1`` brightens the mid-tones (0.92 lifts 128 to about 135), ``g > 1`` darkens
    them; 0 and 255 stay fixed.
    """
    return _apply_luts(_check(image), _gamma_luts(g))


# ----------------------------------------------------------------------- stain (Beer–Lambert)


def illumination(image: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """The light that reached the camera through stain-free glass, per channel (0-255
    encoded units): the ``percentile``-th percentile of each channel, i.e. the plasma
    background that surrounds the cells in every smear image (the brightest, least
    absorbing area)."""
    return white_point(image, percentile)  # the segmentation's white point: one definition


def _od_luts(scale, light) -> np.ndarray:
    s = np.asarray(scale, float).reshape(3, 1)
    if s.shape != (3, 1) or not np.all(s > 0):
        raise ValueError(f"optical-density scales must be three positive numbers, got {scale!r}")
    lin = srgb_to_linear(_LEVELS / 255.0)[None, :]
    lin0 = srgb_to_linear(np.asarray(light, float).reshape(3, 1) / 255.0)
    t = np.clip(lin / lin0, MIN_TRANSMITTANCE, None)
    # brighter than the background: no stain there, left as it is
    t_new = np.where(t < 1.0, t ** s, t)
    return 255.0 * linear_to_srgb(t_new * lin0)


def scale_optical_density(image: np.ndarray, scale, *, light=None) -> np.ndarray:
    """Scale the stain's optical density per channel (Beer–Lambert law).

    With ``x = srgb_to_linear(I / 255)`` the linear intensity of a channel and ``x0`` that
    of the illumination (default :func:`illumination`, the plasma background), the
    transmittance is ``T = x / x0`` and the optical density ``OD = −log10 T``. The dye's
    absorbance is proportional to how much dye there is, so more or less stain multiplies
    OD: ``OD'_c = s_c · OD_c``, i.e. ``T' = T ** s_c``, and ``I' = 255 · srgb(x0 · T')``.
    Pixels at least as bright as the background (T ≥ 1, no dye) are unchanged; T is
    floored at :data:`MIN_TRANSMITTANCE`.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3), RGB
    scale : three positive floats
        ``s_R, s_G, s_B``; 1 leaves a channel unchanged, > 1 darkens where there is dye.
    light : three floats in (0, 255], optional
        The illumination in encoded units; default: measured on ``image``.
    """
    image = _check(image)
    light = illumination(image) if light is None else light
    return _apply_luts(image, _od_luts(scale, light))


def _balance_scale(strength: float, blue: float) -> np.ndarray:
    if not strength > 0 or not -1 < blue < 1:
        raise ValueError(f"need strength > 0 and -1 < blue < 1, got {strength!r}, {blue!r}")
    return strength * np.array([1.0 + blue, 1.0, 1.0 - blue])


def stain_strength(image: np.ndarray, factor: float, *, light=None) -> np.ndarray:
    """More (``factor > 1``) or less dye on the slide: every channel's optical density
    times ``factor`` (:func:`scale_optical_density` with ``s = (f, f, f)``)."""
    return scale_optical_density(image, _balance_scale(factor, 0.0), light=light)


def stain_balance(image: np.ndarray, blue: float, *, light=None) -> np.ndarray:
    """A bluer (``blue > 0``) or redder (``blue < 0``) stain: the basic (blue, azure) dye
    absorbs red light and the acid (eosin) dye absorbs green-blue light, so a batch that
    takes more blue absorbs more red and less blue light:
    ``s = (1 + blue, 1, 1 − blue)`` in :func:`scale_optical_density`."""
    return scale_optical_density(image, _balance_scale(1.0, blue), light=light)


# ----------------------------------------------------------------------- storage


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG re-encoding: ``decode(encode(I, quality))`` with OpenCV's libjpeg (4:2:0 chroma
    subsampling, deterministic). Quality in [1, 100]; 75 is a common default."""
    import cv2

    image = _check(image)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality!r}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - libjpeg encodes any uint8 RGB array
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------- composition


@dataclass(frozen=True)
class ColourShift:
    """One colour change, composed in the order it happens to a smear.

    ``I → scale_optical_density(s = stain_strength · (1 + stain_blue, 1, 1 − stain_blue))
    → white_balance(gains) → gamma(gamma) → jpeg(jpeg_quality)``; the identity by default.
    The first three steps are folded into one look-up table per channel (the rounding to
    uint8 happens once, after all three).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((4, 4, 3), 128, np.uint8)
    >>> ColourShift(gamma=0.92).apply(img)[0, 0].tolist()
    [135, 135, 135]
    >>> bool((ColourShift().apply(img) == img).all())
    True
    """

    name: str = "identity"
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    stain_strength: float = 1.0
    stain_blue: float = 0.0
    jpeg_quality: int | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "gains", tuple(float(g) for g in self.gains))
        _wb_luts(self.gains), _gamma_luts(self.gamma)
        _balance_scale(self.stain_strength, self.stain_blue)
        if self.jpeg_quality is not None and not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {self.jpeg_quality!r}")

    @property
    def od_scale(self) -> np.ndarray:
        return _balance_scale(self.stain_strength, self.stain_blue)

    def luts(self, light) -> np.ndarray:
        """The composed per-channel look-up table (3, 256) for an image lit by ``light``."""
        x = _LEVELS
        if self.stain_strength != 1.0 or self.stain_blue != 0.0:
            od = _od_luts(self.od_scale, light)
        else:
            od = np.tile(x, (3, 1))
        wb = np.asarray(self.gains).reshape(3, 1) * od
        return 255.0 * (np.clip(wb, 0, 255) / 255.0) ** self.gamma

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The shifted copy of an RGB uint8 image (same shape and dtype)."""
        image = _check(image)
        needs_light = self.stain_strength != 1.0 or self.stain_blue != 0.0
        out = _apply_luts(image, self.luts(illumination(image) if needs_light else None))
        if self.jpeg_quality is not None:
            out = jpeg(out, self.jpeg_quality)
        return out

    __call__ = apply

    def params(self) -> dict:
        """The parameters that define the shift (not its name or description)."""
        d = asdict(self)
        d.pop("description")
        d.pop("name")
        d["gains"] = list(d["gains"])
        return d

    @property
    def key(self) -> str:
        """A short content hash of :meth:`params`, for caching shifted results."""
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:16]


#: The fixed panel of mild shifts reported in training reports and ``make bench``. The
#: first two are the shifts of issue 14 (a warmer white balance with a slightly lifted tone
#: curve; a bluer, darker stain batch); the others mirror them (cooler and darker camera;
#: paler, pinker stain) and add storage at JPEG quality 70. Each keeps the cells plainly the
#: same to the eye. Not to be tuned: it is a yardstick, and other shifts are drawn by
#: :func:`random_shift`.
SHIFT_PANEL: tuple[ColourShift, ...] = (
    ColourShift("warm-wb", gains=(1.04, 1.0, 0.96), gamma=0.92,
                description="warmer white balance (R +4 %, B −4 %) and gamma 0.92"),
    ColourShift("blue-dark-stain", stain_strength=1.15, stain_blue=0.10,
                description="bluer, darker stain batch: OD ×1.15, red-light OD +10 %, "
                            "blue-light OD −10 %"),
    ColourShift("cool-wb", gains=(0.96, 1.0, 1.05), gamma=1.08,
                description="cooler white balance (R −4 %, B +5 %) and gamma 1.08"),
    ColourShift("pale-pink-stain", stain_strength=0.85, stain_blue=-0.08,
                description="paler, pinker stain batch: OD ×0.85, red-light OD −8 %, "
                            "blue-light OD +8 %"),
    ColourShift("jpeg-70", jpeg_quality=70, description="re-encoded as JPEG at quality 70"),
)

#: Ranges of :func:`random_shift` (uniform unless said): mild changes of the kind seen
#: between labs and batches, of the same size as :data:`SHIFT_PANEL`'s.
RANDOM_RANGES = {
    "gain": (0.94, 1.06),          # each channel, independently
    "gamma": (0.88, 1.12),
    "stain_strength": (0.85, 1.2),
    "stain_blue": (-0.12, 0.12),
    "jpeg_quality": (65, 95),      # integer; applied with probability jpeg_probability
    "jpeg_probability": 0.5,
}


def random_shift(rng: np.random.Generator | int, ranges: dict | None = None) -> ColourShift:
    """Draw one shift with parameters uniform in ``ranges`` (default :data:`RANDOM_RANGES`).

    Deterministic for a given seed or generator state.

    Examples
    --------
    >>> random_shift(0) == random_shift(0)
    True
    """
    rng = np.random.default_rng(rng)
    r = {**RANDOM_RANGES, **(ranges or {})}
    gains = tuple(float(g) for g in rng.uniform(*r["gain"], size=3))
    g = float(rng.uniform(*r["gamma"]))
    strength = float(rng.uniform(*r["stain_strength"]))
    blue = float(rng.uniform(*r["stain_blue"]))
    lo, hi = r["jpeg_quality"]
    q = int(rng.integers(lo, hi + 1))
    quality = q if rng.random() < r["jpeg_probability"] else None
    name = f"random-{hashlib.sha256(repr((gains, g, strength, blue, quality)).encode()).hexdigest()[:8]}"
    return ColourShift(name, gains=gains, gamma=g, stain_strength=strength, stain_blue=blue,
                       jpeg_quality=quality, description="drawn by random_shift")


# ----------------------------------------------------------------------- pixel scale


def rescale(image: np.ndarray, factor: float, *, size=None) -> np.ndarray:
    """The image as an analyser with ``factor`` times the magnification would crop it.

    Resampled by ``factor`` (``cv2.INTER_AREA`` when shrinking: each output pixel the mean
    of the input area it covers; bicubic when enlarging), then centre-cropped or padded
    back to ``size`` = (H, W) (default: the input's, the analyser's crop size). Padding is
    the image's plasma colour (:func:`illumination`), as the smear around a crop would be.
    A cell of radius r px has radius ``factor · r`` px afterwards.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((8, 8, 3), 200, np.uint8); img[2:6, 2:6] = 0
    >>> out = rescale(img, 0.5)
    >>> out.shape, int((out[..., 0] < 100).sum())
    ((8, 8, 3), 4)
    """
    import cv2

    image = _check(image)
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    h, w = image.shape[:2]
    H, W = (h, w) if size is None else size
    nh, nw = max(int(round(h * factor)), 1), max(int(round(w * factor)), 1)
    how = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    moved = cv2.resize(image, (nw, nh), interpolation=how) if (nh, nw) != (h, w) else image
    out = np.empty((H, W, 3), np.uint8)
    out[:] = np.clip(np.rint(illumination(image)), 0, 255).astype(np.uint8)
    # centre on centre: the analyser centres the cell of interest
    sy, sx = max((nh - H) // 2, 0), max((nw - W) // 2, 0)
    dy, dx = max((H - nh) // 2, 0), max((W - nw) // 2, 0)
    ch, cw = min(nh, H), min(nw, W)
    out[dy:dy + ch, dx:dx + cw] = moved[sy:sy + ch, sx:sx + cw]
    return out


@dataclass(frozen=True)
class Rescale:
    """Another analyser's magnification as a shift of the stability panel: :func:`rescale`
    by ``factor``, back to the image's own size. Same interface as :class:`ColourShift`
    (``apply``, ``params``, ``key``)."""

    name: str
    factor: float = 1.0
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.factor > 0:
            raise ValueError(f"factor must be positive, got {self.factor!r}")

    def apply(self, image: np.ndarray) -> np.ndarray:
        return rescale(image, self.factor)

    __call__ = apply

    def params(self) -> dict:
        return {"rescale": float(self.factor)}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:16]


#: Magnifications of other analysers (issue 29): ×0.8 and ×1.25 (a 20 % smaller or 25 %
#: larger pixel scale, each the other's inverse), and ×0.75 and ×1.33 beyond them. Every
#: length in pixels moves by the factor, every area by its square.
SCALE_PANEL: tuple[Rescale, ...] = (
    Rescale("scale-0.8", 0.8, description="another analyser: ×0.8 magnification, 224 px crop"),
    Rescale("scale-1.25", 1.25, description="another analyser: ×1.25 magnification, 224 px crop"),
    Rescale("scale-0.75", 0.75, description="another analyser: ×0.75 magnification, 224 px crop"),
    Rescale("scale-1.33", 4 / 3, description="another analyser: ×1.33 magnification, 224 px crop"),
)

#: What the stability check runs: the colour shifts and the rescalings, through the same
#: per-feature table, screen and out-of-fold flips.
STABILITY_PANEL = SHIFT_PANEL + SCALE_PANEL
