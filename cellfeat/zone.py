"""The overlap zone: the lymphocyte counts at which the count alone cannot decide.

Above some count every patient of a cohort is tumoral (in the public data, every patient
above about 8 ×10⁹/L), so any model calls them right from the count; below it reactive and
tumoral patients overlap, the clinical data are weak and the cell images must carry the
call. Figures over all patients hide that split, so cellfeat reports every figure overall
*and* in the zone, and says for each scored patient which side it is on.

The rule is fixed in code, before any outcome is seen, and learnt from training patients
only (:func:`zone_limit`): the zone is every count at or below the highest count of any
reactive training patient. A patient whose count is unknown is in the zone: nothing but the
images can decide for it. In nested cross-validation each outer fold learns its own limit
from its training patients, so a held-out patient's zone never depends on its own label.

Examples
--------
>>> limit = zone_limit([3.0, 5.5, 12.0, 40.0], [0, 0, 1, 1])
>>> limit
5.5
>>> in_zone([2.0, 5.5, 6.0, float("nan")], limit).tolist()
[True, True, False, True]
>>> zone_names([2.0, 6.0], limit).tolist()
['overlap', 'count']
"""

from __future__ import annotations

import numpy as np

__all__ = ["ZONE_RULE", "ZONE_NAMES", "zone_limit", "in_zone", "zone_names"]

#: The rule in words, as reports and the bundle state it.
ZONE_RULE = ("overlap zone: lymphocyte count at or below the highest count of any reactive "
             "training patient (unknown count: in the zone)")
#: What ``ZONE`` says of a patient: in the zone, or above it where the count decides.
ZONE_NAMES = ("overlap", "count")


def zone_limit(count, y) -> float:
    """The highest lymphocyte count (10⁹/L) of a reactive (``y == 0``) patient with a known
    count: the top of the overlap zone.

    Raises
    ------
    ValueError
        When no reactive patient has a known count (the zone is then undefined).
    """
    count = np.asarray(count, float)
    y = np.asarray(y)
    known = count[(y == 0) & np.isfinite(count)]
    if not known.size:
        raise ValueError("no reactive patient with a known lymphocyte count: the overlap "
                         "zone cannot be defined")
    return float(known.max())


def in_zone(count, limit: float) -> np.ndarray:
    """True where ``count <= limit`` or the count is unknown (NaN)."""
    count = np.asarray(count, float)
    with np.errstate(invalid="ignore"):
        return ~(count > limit)


def zone_names(count, limit: float) -> np.ndarray:
    """``"overlap"`` in the zone, ``"count"`` above it (see :data:`ZONE_NAMES`)."""
    return np.where(in_zone(count, limit), ZONE_NAMES[0], ZONE_NAMES[1])
