"""Model bundles: one skops file holding the fitted pipeline and everything needed to trust it.

A model file travels by e-mail and shared drives, so loading it must never run code. skops
never unpickles, but it does call what a file names: a constructor-from-reduce node calls its
type with the file's arguments, a function, method, partial or type node hands back whatever
object it names, and a plain object node sets whatever attributes the file lists. So the
file is read once into memory and checked before skops builds anything, then skops builds
from those same bytes (a file swapped on disk in between changes nothing):

1. the zip: no member twice, members and their total under fixed caps (a real bundle of
   120 patients is under 1 MiB), ``schema.json`` without duplicate keys;
2. every node of ``schema.json`` (every JSON object with a ``__loader__``, wherever it sits):
   its loader and type must be a pair of :data:`TYPES_BY_LOADER`, an exact list of what the
   bundles cellfeat writes contain (``tests/test_bundle.py`` trains every candidate and
   fails on a pair written but not listed, or listed but never written). Loaders that call
   or return a callable (function, method, partial, operator, reduce,
   constructor-from-reduce) are not on it. No prefix is trusted;
3. the shape of what skops will build: an object's state is a plain dict of identifier
   names, none of them a ``__dunder__`` (NumPy and Python look those up on the instance, e.g.
   ``__array_interface__`` would give an array over memory the file picks); a repeated
   ``__id__`` repeats the identical node; no bare references, no cached nodes (skops writes
   neither), so loading stays linear in the file's size;
4. after loading, every object reachable from the bundle is re-checked: exact allowed
   types, no dunder instance attributes, boosters that hold a parsed model.

The first failure is named in a one-line refusal. ``save_bundle`` runs the same check on
what it has just written, so a training run that would produce an unloadable bundle fails
at once, naming the new type. A bundle made for another feature set or by an incompatible
version is refused with a message saying what differs; a truncated file is refused cleanly.
Out of reach of these checks: bugs in the native parsers of XGBoost and LightGBM models
(the bytes of a booster are theirs to parse).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import cellfeat

from .io import StageError, atomic_path

BUNDLE_FORMAT = 1
MAX_SCHEMA_BYTES = 64 << 20    # a real bundle's schema is a few hundred KiB
# A real bundle (120 patients, every fallback) holds under 1 MiB of arrays and a few KiB of
# booster bytes; the caps leave two orders of magnitude and bound what a crafted file can
# make the loader allocate to a few hundred MiB.
MAX_MEMBER_BYTES = 128 << 20    # one array file
MAX_READ_BYTES = 128 << 20      # all array files together, as skops will read them
MAX_BYTEARRAY_BYTES = 16 << 20  # all byte arrays: skops expands them ~9x (lists of ints)
MAX_NODES = 2_000_000

#: Classes restored from their attributes (skops ObjectNode: ``__new__``, then the class's
#: own ``__setstate__`` or a ``__dict__`` update).
ESTIMATOR_TYPES = frozenset({
    "cellfeat.bags.BagAggregator", "cellfeat.heterogeneity.HeterogeneityScores",
    "cellfeat.mil.MISVM", "cellfeat.mil.InstanceScoreBagFeatures",
    "cellfeat.models.inputs.ClinicalFeatures", "cellfeat.models.inputs.CellBagFeatures",
    "cellfeat.models.inputs.MILFeatures", "cellfeat.models.learners.BalancedXGBClassifier",
    "cellfeat.models.stacking.GatedMixture", "cellfeat.decision.CalibratedDecision",
    "cellfeat.models.learners.ClinicalLogReg", "cellfeat.models.stacking.ImageLogit",
    "cellfeat.models.inputs.ZoneMeans", "cellfeat.models.celltype.CellTypeScore",
    "cellfeat.cnn.CNNExpert", "cellfeat.cnn.CNNEmbedding",
    "sklearn.pipeline.Pipeline", "sklearn.pipeline.FeatureUnion",
    "sklearn.impute._base.SimpleImputer", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.model_selection._split.StratifiedKFold", "sklearn.svm._classes.LinearSVC",
    "xgboost.sklearn.XGBClassifier", "xgboost.core.Booster",
    "lightgbm.sklearn.LGBMClassifier", "lightgbm.basic.Booster",
})

#: The same classes under the names that bundles written before ``cellfeat.models`` was split
#: into modules (issue 23; commit 45f3e90 and earlier) give them. Each resolves, through the
#: ``cellfeat.models`` package face, to the very class listed above, so accepting the name
#: admits no new code; ``tests/test_golden.py`` loads such a bundle.
MOVED_TYPES = frozenset(f"cellfeat.models.{name}" for name in (
    "ClinicalFeatures", "CellBagFeatures", "MILFeatures", "BalancedXGBClassifier",
    "GatedMixture", "CalibratedDecision", "ClinicalLogReg", "ImageLogit"))

#: skops loader -> the exact ``module.Class`` names it may carry in a cellfeat bundle.
TYPES_BY_LOADER = {
    "DictNode": frozenset({"builtins.dict"}),
    "DefaultDictNode": frozenset({"collections.defaultdict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "JsonNode": frozenset({"builtins.str"}),        # skops writes every JSON value so
    "BytearrayNode": frozenset({"builtins.bytearray"}),
    "NdArrayNode": frozenset({"numpy.ndarray", "numpy.float64", "numpy.int64"}),
    "DTypeNode": frozenset({"numpy.dtype"}),
    "TypeNode": frozenset({"builtins.str", "builtins.float", "collections.OrderedDict",
                           "numpy.int64"}),
    "ObjectNode": ESTIMATOR_TYPES | MOVED_TYPES,
}

#: Every type a cellfeat bundle may hold, whatever the loader.
ALLOWED_TYPES = frozenset().union(*TYPES_BY_LOADER.values())

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Refused(Exception):
    """What is wrong with a bundle, in words that follow "<path>: refused, ..."."""


def _objects(tree):
    """Every JSON object of a parsed ``schema.json``, depth first, in file order."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _nodes(tree):
    """Every skops node of a parsed ``schema.json``: any JSON object with a ``__loader__``
    key, wherever it sits, so nothing skops would build can hide in an unexpected field."""
    return (item for item in _objects(tree) if "__loader__" in item)


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Refused("its schema repeats a key in one object")
    return dict(pairs)


def _without_ids(x):
    """A node without its ids and array file names: what a repeated ``__id__`` repeats
    (skops writes fresh ones for the throw-away array inside a repeated dtype node)."""
    if isinstance(x, dict):
        return {k: _without_ids(v) for k, v in x.items() if k not in ("__id__", "file")}
    if isinstance(x, list):
        return [_without_ids(v) for v in x]
    return x


def _check_node(node: dict) -> None:
    loader = node["__loader__"]
    name = f"{node.get('__module__')}.{node.get('__class__')}"
    if not isinstance(loader, str) or loader not in TYPES_BY_LOADER:
        raise _Refused(f"it holds `{name}` as a {loader}, a kind of node that can run code "
                       f"and that no cellfeat bundle contains")
    if name not in TYPES_BY_LOADER[loader]:
        raise _Refused(f"it holds `{name}` ({loader}), a type outside the trusted list of a "
                       f"cellfeat bundle")
    content = node.get("content")
    if loader == "ObjectNode" and content is not None:
        if not (isinstance(content, dict) and content.get("__loader__") == "DictNode"):
            raise _Refused(f"the state of `{name}` is not a plain dict")
        bad = [k for k in content.get("content", {})
               if not _IDENTIFIER.match(k) or k.startswith("__")]
        if bad:
            raise _Refused(f"it gives `{name}` the attribute {bad[0]!r}, which no estimator "
                           f"has")
    elif loader == "DictNode":
        key_types = node.get("key_types")
        if not (isinstance(key_types, dict) and key_types.get("__loader__") == "ListNode"
                and all(isinstance(k, dict) and k.get("__loader__") == "TypeNode"
                        for k in key_types.get("content", []))):
            raise _Refused("a dict's key types are not plain types")
    elif loader == "DTypeNode":
        if not (isinstance(content, dict) and content.get("__loader__") == "NdArrayNode"):
            raise _Refused("a dtype node does not wrap an array")
    elif loader == "DefaultDictNode":
        factory = (content or {}).get("default_factory") if isinstance(content, dict) else None
        if not (isinstance(factory, dict) and factory.get("__loader__") == "TypeNode"):
            raise _Refused("a defaultdict's factory is not a plain type")


def _audit(data: bytes) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
        schema_size = zf.getinfo("schema.json").file_size
    except Exception as exc:
        raise StageError(f"not a readable model bundle ({type(exc).__name__}); it may be "
                         f"truncated or tampered with: retrain it") from None
    names = [i.filename for i in infos]
    if len(names) != len(set(names)):
        raise _Refused("it holds two files under one name")
    sizes = {i.filename: i.file_size for i in infos}
    if schema_size > MAX_SCHEMA_BYTES or max(sizes.values()) > MAX_MEMBER_BYTES:
        raise _Refused("one of its files is larger than any cellfeat bundle's")
    try:
        schema = json.loads(zf.read("schema.json"), object_pairs_hook=_unique_keys)
    except _Refused:
        raise
    except Exception as exc:
        raise StageError(f"not a readable model bundle ({type(exc).__name__}); it may be "
                         f"truncated or tampered with: retrain it") from None
    seen: dict[int, str] = {}
    read = read_bytearrays = count = 0
    for item in _objects(schema):
        count += 1
        if count > MAX_NODES:
            raise _Refused("its schema has more nodes than any cellfeat bundle's")
        if "__loader__" not in item:
            if "__id__" in item:
                raise _Refused("it holds a bare reference, which skops never writes")
            continue
        _check_node(item)
        first = True
        ident = item.get("__id__")
        if ident is not None:
            if type(ident) is not int:
                raise _Refused("a node id is not an integer")
            shape = json.dumps(_without_ids(item), sort_keys=True)
            first = ident not in seen
            if seen.setdefault(ident, shape) != shape:
                raise _Refused(f"node id {ident} names two different nodes")
        if first and item["__loader__"] in ("NdArrayNode", "BytearrayNode") and "file" in item:
            size = sizes.get(item["file"], 0)
            if item["__loader__"] == "BytearrayNode":
                read_bytearrays += size
                if read_bytearrays > MAX_BYTEARRAY_BYTES:
                    raise _Refused("its byte arrays add up to more than any cellfeat "
                                   "bundle's")
            read += size
            if read > MAX_READ_BYTES:
                raise _Refused("its arrays add up to more than any cellfeat bundle's")


def audit_bundle(path_or_bytes, *, where=None) -> None:
    """Raise :class:`StageError` naming the first thing in a bundle (a path, or its bytes
    with ``where`` naming it) that a cellfeat bundle never holds. Nothing is built."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, where = bytes(path_or_bytes), where or "model bundle"
    else:
        where = where or path_or_bytes
        data = Path(path_or_bytes).read_bytes()
    try:
        _audit(data)
    except _Refused as exc:
        raise StageError(f"{where}: refused, {exc}; do not use this file") from None
    except StageError as exc:
        raise StageError(f"{where}: {exc}") from None


def _check_loaded(obj) -> None:
    """Second look, on what skops built: every reachable object is of an allowed type (no
    subclass), carries no dunder instance attribute, and a booster holds a parsed model."""
    import ctypes

    import numpy as np

    seen, stack = set(), [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or type(o) in (bool, int, float, str):
            continue
        seen.add(id(o))
        if isinstance(o, type):
            name = f"{o.__module__}.{o.__qualname__}"
            if name not in ALLOWED_TYPES:
                raise _Refused(f"it holds the class `{name}`")
            continue
        if isinstance(o, np.dtype) and o.kind in "biufcUS" and o.names is None:
            continue
        if isinstance(o, np.generic) and o.dtype.kind in "biuf":
            continue
        name = f"{type(o).__module__}.{type(o).__qualname__}"
        if name not in ALLOWED_TYPES and type(o) is not ctypes.c_void_p:
            raise _Refused(f"it holds an object of type `{name}`")
        if isinstance(o, np.ndarray):
            if o.dtype == object:
                stack.extend(o.ravel().tolist())
            elif o.dtype.kind not in "biufcUS":
                raise _Refused(f"it holds an array of dtype {o.dtype}")
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
            if getattr(o, "default_factory", None) is not None:
                stack.append(o.default_factory)
            continue
        if isinstance(o, (list, tuple)):
            stack.extend(o)
            continue
        attrs = getattr(o, "__dict__", None)
        if attrs is not None:
            bad = [k for k in attrs if not isinstance(k, str) or k.startswith("__")]
            if bad:
                raise _Refused(f"it gives `{name}` the attribute {bad[0]!r}")
            if name.endswith(".Booster"):
                handle = attrs.get("handle", attrs.get("_handle"))
                if not (isinstance(handle, ctypes.c_void_p) and handle.value):
                    raise _Refused(f"its `{name}` holds no parsed model")
            stack.extend(attrs.values())


def save_bundle(path, *, pipeline, meta: dict) -> None:
    """Write ``pipeline`` (a fitted estimator or a dict of them) and ``meta`` (JSON-able)
    to ``path`` atomically; raise :class:`StageError`, writing nothing, if the result
    would be refused by :func:`load_bundle`."""
    import skops.io as sio

    bundle = {"format": BUNDLE_FORMAT, "cellfeat_version": cellfeat.__version__,
              "meta_json": json.dumps(meta, default=str), "pipeline": pipeline}
    with atomic_path(path) as tmp:
        sio.dump(bundle, tmp)
        try:
            _audit(tmp.read_bytes())
        except _Refused as exc:
            raise StageError(f"{path}: not written, {exc}. If that type is new and restores "
                             f"without running code, add it to "
                             f"pipelines.bundle.TYPES_BY_LOADER") from None


def load_bundle(path, *, feature_names=None) -> tuple[object, dict]:
    """Return ``(pipeline, meta)`` or raise StageError saying why the bundle is refused.

    The file is read once; the checks and skops work on those bytes."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: no model bundle here; run `make train` first or pass --model")
    if path.stat().st_size > MAX_READ_BYTES + MAX_SCHEMA_BYTES:
        raise StageError(f"{path}: refused, it is larger than any cellfeat bundle; do not "
                         f"use this file")
    data = path.read_bytes()
    audit_bundle(data, where=path)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise StageError(f"{path}: not a readable model bundle ({type(exc).__name__}); "
                         f"it may be truncated or tampered with: retrain it") from None
    outside = [t for t in untrusted if t not in ALLOWED_TYPES]
    if outside:  # the audit above saw every node; this is a second, independent look
        raise StageError(f"{path}: refused, it holds `{outside[0]}`, a type outside the "
                         f"trusted list of a cellfeat bundle; do not use this file")
    try:
        bundle = sio.loads(data, trusted=untrusted)
    except Exception as exc:
        raise StageError(f"{path}: could not be loaded ({type(exc).__name__}: {exc}); "
                         f"it may be truncated or tampered with: retrain it") from None
    try:
        _check_loaded(bundle)
    except _Refused as exc:
        raise StageError(f"{path}: refused, {exc}; do not use this file") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise StageError(f"{path}: not a cellfeat model bundle of format {BUNDLE_FORMAT}")
    made = bundle.get("cellfeat_version")
    if str(made).split(".")[:2] != cellfeat.__version__.split(".")[:2]:
        raise StageError(f"{path}: made by cellfeat {made}, this is {cellfeat.__version__}; "
                         f"retrain the model with this version")
    try:
        meta = json.loads(bundle["meta_json"])
    except (KeyError, TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict) or "pipeline" not in bundle:
        raise StageError(f"{path}: not a cellfeat model bundle (no settings or no model in "
                         f"it); retrain it")
    if feature_names is not None and list(meta.get("cell_features", [])) != list(feature_names):
        want, have = set(meta.get("cell_features", [])), set(feature_names)
        raise StageError(f"{path}: trained on a different feature set (missing here: "
                         f"{sorted(want - have)[:3]}, new here: {sorted(have - want)[:3]}); "
                         f"retrain or recompute features with the bundle's version")
    return bundle["pipeline"], meta
