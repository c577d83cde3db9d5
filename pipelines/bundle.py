"""Model bundles: one skops file holding the fitted pipeline and everything needed to trust it.

Loading never unpickles: skops rebuilds only types on an explicit allow-list (cellfeat,
scikit-learn, XGBoost, LightGBM, NumPy/SciPy containers). A bundle made for another feature
set or by an incompatible version is refused with a message saying what differs; a
tampered or truncated file is refused cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path

import cellfeat

from .io import StageError, atomic_path

BUNDLE_FORMAT = 1
TRUSTED_PREFIXES = ("cellfeat.", "sklearn.", "xgboost.", "lightgbm.", "numpy.", "scipy.",
                    "builtins.", "collections.", "pandas.", "functools.partial")


def save_bundle(path, *, pipeline, meta: dict) -> None:
    import skops.io as sio

    bundle = {"format": BUNDLE_FORMAT, "cellfeat_version": cellfeat.__version__,
              "meta_json": json.dumps(meta, default=str), "pipeline": pipeline}
    with atomic_path(path) as tmp:
        sio.dump(bundle, tmp)


def load_bundle(path, *, feature_names=None) -> tuple[object, dict]:
    """Return ``(pipeline, meta)`` or raise StageError saying why the bundle is refused."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: no model bundle here; run `make train` first or pass --model")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise StageError(f"{path}: not a readable model bundle ({type(exc).__name__}); "
                         f"it may be truncated or tampered with: retrain it") from None
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise StageError(f"{path}: refused, it contains types outside the trusted list: "
                         f"{', '.join(refused[:5])}")
    try:
        bundle = sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise StageError(f"{path}: could not be loaded ({type(exc).__name__}: {exc}); "
                         f"it may be truncated or tampered with: retrain it") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise StageError(f"{path}: not a cellfeat model bundle of format {BUNDLE_FORMAT}")
    made = bundle.get("cellfeat_version")
    if str(made).split(".")[:2] != cellfeat.__version__.split(".")[:2]:
        raise StageError(f"{path}: made by cellfeat {made}, this is {cellfeat.__version__}; "
                         f"retrain the model with this version")
    meta = json.loads(bundle["meta_json"])
    if feature_names is not None and list(meta.get("cell_features", [])) != list(feature_names):
        want, have = set(meta.get("cell_features", [])), set(feature_names)
        raise StageError(f"{path}: trained on a different feature set (missing here: "
                         f"{sorted(want - have)[:3]}, new here: {sorted(have - want)[:3]}); "
                         f"retrain or recompute features with the bundle's version")
    return bundle["pipeline"], meta
