"""Model files: a bundle is one skops file holding the fitted models and what is needed to
trust them, and loading one must never run code, crash, hang or exhaust the machine.

files     the skops file: read once, audited node by node, loaded, re-checked; and written
boosters  XGBoost and LightGBM booster bytes parsed and checked in Python before any native
          parser sees them
trained   what ``cellfeat train`` can write: the fitted attributes of each class, the
          execution settings, the meta keys and values

May import :mod:`pipelines.io`, :mod:`cellfeat` and, for the shape of the training cohort's
reference distributions, :mod:`pipelines.report.explain`; never :mod:`pipelines.run`.
"""

from .files import audit_bundle, load_bundle, save_bundle

__all__ = ["audit_bundle", "load_bundle", "save_bundle"]
