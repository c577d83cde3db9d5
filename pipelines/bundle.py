"""Model bundles: one skops file holding the fitted pipeline and everything needed to trust it.

A model file travels by e-mail and shared drives, so loading it must never run code. skops
never unpickles, but it does call what a file names: a constructor-from-reduce node calls its
type with the file's arguments, a function, method, partial or type node hands back whatever
object it names. So a bundle is checked before skops builds anything:

1. ``schema.json`` is read as plain JSON and every node in it (every JSON object with a
   ``__loader__``, wherever it sits) is inspected;
2. the node's loader must be one of :data:`ALLOWED_LOADERS` — containers, JSON primitives,
   NumPy arrays and dtypes, plain objects restored from their ``__dict__``, type references —
   and never one whose job is to hand back or call a callable (function, method, partial,
   operator, reduce, constructor-from-reduce);
3. the node's type must be in :data:`ALLOWED_TYPES`, an exact list of the classes that the
   bundles cellfeat writes contain (``tests/test_bundle.py`` trains every candidate and
   checks that its bundle holds nothing else). No prefix is trusted.

The first node that fails is named in a one-line refusal. Only then does skops load the
file, trusting exactly the types it reports, all of which are on the list. ``save_bundle``
runs the same check on what it has just written, so a training run that would produce an
unloadable bundle fails at once, naming the new type. A bundle made for another feature
set or by an incompatible version is refused with a message saying what differs; a
truncated file is refused cleanly.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cellfeat

from .io import StageError, atomic_path

BUNDLE_FORMAT = 1
MAX_SCHEMA_BYTES = 64 * 2**20  # a real bundle's schema is a few MiB

#: skops node kinds a cellfeat bundle is made of (CachedNode: a second reference to a node
#: already checked). Loaders that return or call a callable (FunctionNode, MethodNode,
#: PartialNode, OperatorFuncNode, the reduce nodes, ConstructorFromReduceNode) are
#: deliberately absent.
ALLOWED_LOADERS = frozenset({
    "DictNode", "DefaultDictNode", "ListNode", "TupleNode", "JsonNode", "BytearrayNode",
    "NdArrayNode", "DTypeNode", "ObjectNode", "TypeNode", "CachedNode",
})

#: Exact ``module.Class`` names found in the bundles cellfeat writes (every candidate of
#: :mod:`cellfeat.models`, the fallbacks and the MIL explainer): ``tests/test_bundle.py``
#: fails both on a written type missing here and on a type here that no bundle holds. All
#: are classes; an ObjectNode restores them with ``__new__`` and their own ``__setstate__``
#: or a ``__dict__`` update, so none runs code of the file's choosing.
ALLOWED_TYPES = frozenset({
    # containers and primitives (JSON values are all written as builtins.str nodes)
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.float",
    "builtins.bytearray", "collections.defaultdict", "collections.OrderedDict",
    # NumPy arrays, dtypes and scalar types
    "numpy.ndarray", "numpy.dtype", "numpy.float64", "numpy.int64",
    # cellfeat estimators
    "cellfeat.bags.BagAggregator", "cellfeat.heterogeneity.HeterogeneityScores",
    "cellfeat.mil.MISVM", "cellfeat.mil.InstanceScoreBagFeatures",
    "cellfeat.models.ClinicalFeatures", "cellfeat.models.CellBagFeatures",
    "cellfeat.models.MILFeatures", "cellfeat.models.BalancedXGBClassifier",
    "cellfeat.models.GatedMixture", "cellfeat.models.CalibratedDecision",
    "cellfeat.models.ClinicalLogReg", "cellfeat.models.ImageLogit",
    "cellfeat.cnn.CNNExpert", "cellfeat.cnn.CNNEmbedding",
    # scikit-learn
    "sklearn.pipeline.Pipeline", "sklearn.pipeline.FeatureUnion",
    "sklearn.impute._base.SimpleImputer", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.model_selection._split.StratifiedKFold", "sklearn.svm._classes.LinearSVC",
    # gradient boosting
    "xgboost.sklearn.XGBClassifier", "xgboost.core.Booster",
    "lightgbm.sklearn.LGBMClassifier", "lightgbm.basic.Booster",
})


def _nodes(tree):
    """Every skops node of a parsed ``schema.json``, depth first, in file order.

    Any JSON object with a ``__loader__`` key counts, wherever it sits, so nothing skops
    would build can hide from the check in an unexpected field."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                yield item
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def audit_bundle(path) -> None:
    """Raise :class:`StageError` naming the first node of the bundle at ``path`` that is not
    an allowed loader with an allowed type. Reads ``schema.json`` only: nothing is built."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.getinfo("schema.json").file_size > MAX_SCHEMA_BYTES:
                raise StageError(f"{path}: refused, its schema is larger than "
                                 f"{MAX_SCHEMA_BYTES >> 20} MiB; no cellfeat bundle is")
            schema = json.loads(zf.read("schema.json"))
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"{path}: not a readable model bundle ({type(exc).__name__}); "
                         f"it may be truncated or tampered with: retrain it") from None
    for node in _nodes(schema):
        loader = node.get("__loader__")
        name = f"{node.get('__module__')}.{node.get('__class__')}"
        if loader not in ALLOWED_LOADERS:
            raise StageError(f"{path}: refused, it holds `{name}` as a {loader}, a kind of "
                             f"node that can run code and that no cellfeat bundle contains; "
                             f"do not use this file")
        if name not in ALLOWED_TYPES:
            raise StageError(f"{path}: refused, it holds `{name}` ({loader}), a type outside "
                             f"the trusted list of a cellfeat bundle; do not use this file")


def save_bundle(path, *, pipeline, meta: dict) -> None:
    """Write ``pipeline`` (a fitted estimator or a dict of them) and ``meta`` (JSON-able)
    to ``path`` atomically; raise :class:`StageError`, writing nothing, if the result
    would be refused by :func:`load_bundle`."""
    import skops.io as sio

    bundle = {"format": BUNDLE_FORMAT, "cellfeat_version": cellfeat.__version__,
              "meta_json": json.dumps(meta, default=str),
              "pipeline": pipeline}
    with atomic_path(path) as tmp:
        sio.dump(bundle, tmp)
        try:
            audit_bundle(tmp)
        except StageError as exc:
            raise StageError(f"{path}: not written: {str(exc).split(': ', 1)[1]}. If that "
                             f"type is new and restores without running code, add it to "
                             f"pipelines.bundle.ALLOWED_TYPES") from None


def load_bundle(path, *, feature_names=None) -> tuple[object, dict]:
    """Return ``(pipeline, meta)`` or raise StageError saying why the bundle is refused."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: no model bundle here; run `make train` first or pass --model")
    audit_bundle(path)
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise StageError(f"{path}: not a readable model bundle ({type(exc).__name__}); "
                         f"it may be truncated or tampered with: retrain it") from None
    outside = [t for t in untrusted if t not in ALLOWED_TYPES]
    if outside:  # the audit above saw every node; this is a second, independent look
        raise StageError(f"{path}: refused, it holds `{outside[0]}`, a type outside the "
                         f"trusted list of a cellfeat bundle; do not use this file")
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
