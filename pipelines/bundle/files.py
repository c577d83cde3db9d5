"""The skops file of a model bundle: read once, audited, loaded, re-checked; and written.

A model file travels by e-mail and shared drives, so loading it must never run code. skops
never unpickles, but it does call what a file names: a constructor-from-reduce node calls its
type with the file's arguments, a function, method, partial or type node hands back whatever
object it names, and a plain object node sets whatever attributes the file lists. So the
file is read once into memory and checked before skops builds anything, then skops builds
from those same bytes (a file swapped on disk in between changes nothing):

1. the zip: no member twice, members and their total under fixed caps (a real bundle of
   120 patients is under 1 MiB) and under :data:`MAX_EXPANSION` times the file's own size,
   ``schema.json`` without duplicate keys, nested at most :data:`MAX_DEPTH` deep;
2. every node of ``schema.json`` (every JSON object with a ``__loader__``, wherever it sits):
   its loader and type must be a pair of :data:`TYPES_BY_LOADER`, an exact list of what the
   bundles cellfeat writes contain (``tests/test_bundle.py`` trains every candidate and
   fails on a pair written but not listed, or listed but never written). Loaders that call
   or return a callable (function, method, partial, operator, reduce,
   constructor-from-reduce) are not on it. No prefix is trusted;
3. the shape of what skops will build: an object's state is a plain dict of identifier
   names, none of them a ``__dunder__`` (NumPy and Python look those up on the instance, e.g.
   ``__array_interface__`` would give an array over memory the file picks); an ``__id__`` is
   a positive integer (skops never memoises 0, so nodes under it are built again each
   time) and a repeated one repeats the identical node, compared by a digest computed
   bottom-up over the node and the bytes of its array files; no bare references, no cached
   nodes (skops writes neither); every array occurrence counts against the read cap, and
   an array file's header describes exactly the bytes it holds. So what loading allocates
   is bounded by the file's size times a small constant, and the walk is never recursive;
4. the bytes of every XGBoost and LightGBM booster are parsed in Python
   (:mod:`pipelines.bundle.boosters`) before their native parsers see them;
5. after loading, every object reachable from the bundle is re-checked: exact allowed
   types, no dunder instance attributes, boosters that hold a parsed model; the fitted
   attributes of cellfeat's estimators must be what training can produce and execution
   settings are reset to cellfeat's own (:mod:`pipelines.bundle.trained`); the meta must have
   only the keys ``cellfeat train`` writes, with values it can write.

The first failure is named in a one-line refusal; an exception no check foresaw is a
refusal too, never a crash. ``save_bundle`` runs the same check on what it has just
written, so a training run that would produce an unloadable bundle fails at once, naming
the new type. A bundle made for another feature set or by an incompatible version is
refused with a message saying what differs; a truncated file is refused cleanly.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import cellfeat

from ..io import StageError, atomic_path

BUNDLE_FORMAT = 1
MAX_SCHEMA_BYTES = 64 << 20    # a real bundle's schema is a few hundred KiB
# A real bundle (120 patients, every fallback) holds under 1 MiB of arrays and a few KiB of
# booster bytes; the caps leave two orders of magnitude and bound what a crafted file can
# make the loader allocate to a few hundred MiB.
MAX_MEMBER_BYTES = 128 << 20    # one array file
MAX_READ_BYTES = 128 << 20      # all array files together, as skops will read them
MAX_BYTEARRAY_BYTES = 16 << 20  # all byte arrays: skops expands them ~9x (lists of ints)
MAX_NODES = 2_000_000
# Everything loading allocates is bounded by the file's size times a small constant: its
# members may expand to MAX_EXPANSION times the file (skops stores them uncompressed, so a
# genuine bundle expands by 1; the floor lets tiny hand-made files through) and the arrays
# skops reads, every occurrence counted, stay within the same budget.
MAX_EXPANSION = 16
MIN_BUDGET = 1 << 20
MAX_DEPTH = 128                 # JSON nesting; a bundle of every candidate nests 46 deep

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
    "cellfeat.models.learners.TrainingRange", "cellfeat.atypia.Atypicality",
    "sklearn.pipeline.Pipeline", "sklearn.pipeline.FeatureUnion",
    "sklearn.impute._base.SimpleImputer", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.model_selection._split.StratifiedKFold", "sklearn.svm._classes.LinearSVC",
    "xgboost.sklearn.XGBClassifier", "xgboost.core.Booster",
    "lightgbm.sklearn.LGBMClassifier", "lightgbm.basic.Booster",
})

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
    "ObjectNode": ESTIMATOR_TYPES,
}

#: Every type a cellfeat bundle may hold, whatever the loader.
ALLOWED_TYPES = frozenset().union(*TYPES_BY_LOADER.values())

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Refused(Exception):
    """What is wrong with a bundle, in words that follow "<path>: refused, ..."."""


def _containers(tree):
    """Every JSON object and array of a parsed ``schema.json`` with its depth, in file order
    (depth first, parents before children), walked without recursion."""
    stack = [(tree, 1)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        children = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in reversed(list(children))
                     if isinstance(v, (dict, list)))


def _objects(tree):
    """Every JSON object of a parsed ``schema.json``, depth first, in file order."""
    return (item for item, _ in _containers(tree) if isinstance(item, dict))


def _nodes(tree):
    """Every skops node of a parsed ``schema.json``: any JSON object with a ``__loader__``
    key, wherever it sits, so nothing skops would build can hide in an unexpected field."""
    return (item for item in _objects(tree) if "__loader__" in item)


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Refused("its schema repeats a key in one object")
    return dict(pairs)


def _feed(h, value) -> None:
    """Add one JSON scalar to a hash, tagged and length-prefixed so no two values collide."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(raw))
        h.update(raw)
    else:  # int, float, bool, None: their repr is short and exact
        raw = repr(value).encode()
        h.update(b"%s%d:" % (type(value).__name__.encode(), len(raw)))
        h.update(raw)


def _digests(containers, member_digest) -> dict[int, bytes]:
    """A 16-byte digest of every container (by ``id``), computed children first: what a
    repeated ``__id__`` must repeat. Ids are left out (skops writes fresh ones for the
    throw-away array inside a repeated dtype node) and an array file is hashed by its
    bytes, not its name, so one id can never stand for a small and a large array."""
    out: dict[int, bytes] = {}
    for item in reversed(containers):
        h = hashlib.blake2b(digest_size=16)
        if isinstance(item, dict):
            h.update(b"{")
            for key in sorted(item):
                if key == "__id__":
                    continue
                _feed(h, key)
                value = item[key]
                if key == "file" and isinstance(value, str):
                    h.update(b"F" + member_digest(value))
                elif isinstance(value, (dict, list)):
                    h.update(b"C" + out[id(value)])
                else:
                    _feed(h, value)
        else:
            h.update(b"[")
            for value in item:
                if isinstance(value, (dict, list)):
                    h.update(b"C" + out[id(value)])
                else:
                    _feed(h, value)
        out[id(item)] = h.digest()
    return out


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
        if not (isinstance(content, dict) and content.get("__loader__") == "DictNode"
                and isinstance(content.get("content"), dict)):
            raise _Refused(f"the state of `{name}` is not a plain dict")
        bad = [k for k in content["content"] if not _IDENTIFIER.match(k) or k.startswith("__")]
        if bad:
            raise _Refused(f"it gives `{name}` the attribute {bad[0]!r}, which no estimator "
                           f"has")
    elif loader == "DictNode":
        key_types = node.get("key_types")
        if not (isinstance(content, dict) and isinstance(key_types, dict)
                and key_types.get("__loader__") == "ListNode"
                and isinstance(key_types.get("content"), list)
                and all(isinstance(k, dict) and k.get("__loader__") == "TypeNode"
                        for k in key_types["content"])):
            raise _Refused("a dict's key types are not plain types")
    elif loader == "DTypeNode":
        if not (isinstance(content, dict) and content.get("__loader__") == "NdArrayNode"):
            raise _Refused("a dtype node does not wrap an array")
    elif loader == "DefaultDictNode":
        factory = content.get("default_factory") if isinstance(content, dict) else None
        if not (isinstance(factory, dict) and factory.get("__loader__") == "TypeNode"):
            raise _Refused("a defaultdict's factory is not a plain type")
    elif loader in ("NdArrayNode", "BytearrayNode") and "file" in node:
        if not isinstance(node["file"], str) or (loader == "NdArrayNode"
                                                 and node.get("type") != "numpy"):
            raise _Refused("an array node names its file in a way skops never writes")
    elif loader == "JsonNode" and not isinstance(content, str):
        raise _Refused("a JSON node holds no JSON text")


def _check_npy(data: bytes) -> None:
    """An array file's header must describe exactly the bytes that follow it: NumPy
    allocates the announced shape before it reads, so a header announcing more than the
    file holds would allocate what the file never paid for."""
    from numpy.lib import format as npy

    fp = io.BytesIO(data)
    version = npy.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise _Refused(f"an array file is of format {version}, which NumPy does not write")
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read(fp, max_header_size=10_000)
    if dtype.hasobject or dtype.kind not in "biufcUS":
        raise _Refused(f"an array file holds dtype {dtype}")
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != len(data) - fp.tell():
        raise _Refused(f"an array file announces {count} values of {dtype} and holds "
                       f"{len(data) - fp.tell()} bytes")


def _booster_bytes(node: dict, read_member) -> None:
    """Check the bytes an XGBoost or LightGBM booster node hands to native code."""
    from .boosters import BoosterRefused, check_lightgbm, check_xgboost

    name = f"{node['__module__']}.{node['__class__']}"
    state = (node.get("content") or {}).get("content") or {}
    try:
        if name == "xgboost.core.Booster":
            handle = state.get("handle")
            if not (isinstance(handle, dict) and handle.get("__loader__") == "BytearrayNode"
                    and "file" in handle):
                raise BoosterRefused("is not stored as its own bytes")
            check_xgboost(read_member(handle["file"]))
        elif name == "lightgbm.basic.Booster":
            handle = state.get("_handle")
            if "handle" in state or not (isinstance(handle, dict)
                                         and handle.get("__loader__") == "JsonNode"):
                raise BoosterRefused("is not stored as its model text")
            check_lightgbm(json.loads(handle["content"]))
    except BoosterRefused as exc:
        kind = name.split(".")[0].replace("xgboost", "XGBoost").replace("lightgbm", "LightGBM")
        raise _Refused(f"its {kind} model {exc}") from None


def _audit(data: bytes) -> None:
    """:func:`_audit_zip` with any unexpected exception turned into the one-line refusal:
    a file malformed in a way no check foresaw is still refused, never a crash."""
    try:
        _audit_zip(data)
    except (_Refused, StageError):
        raise
    except Exception as exc:
        raise _Refused(f"its schema is malformed ({type(exc).__name__})") from None


def _audit_zip(data: bytes) -> None:
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
    # everything the audit and skops allocate is bounded by the file's own size: skops
    # stores its members uncompressed, so a genuine bundle expands by a factor of 1
    budget = max(MIN_BUDGET, MAX_EXPANSION * len(data))
    if schema_size > MAX_SCHEMA_BYTES or max(sizes.values()) > MAX_MEMBER_BYTES:
        raise _Refused("one of its files is larger than any cellfeat bundle's")
    if sum(sizes.values()) > budget:
        raise _Refused(f"its files expand to {sum(sizes.values())} bytes from "
                       f"{len(data)}, more than a cellfeat bundle ever does")
    try:
        schema = json.loads(zf.read("schema.json"), object_pairs_hook=_unique_keys)
    except _Refused:
        raise
    except Exception as exc:
        raise StageError(f"not a readable model bundle ({type(exc).__name__}); it may be "
                         f"truncated or tampered with: retrain it") from None
    if not isinstance(schema, dict):
        raise _Refused("its schema is not an object")
    containers, nodes = [], []
    for item, depth in _containers(schema):
        if depth > MAX_DEPTH:
            raise _Refused(f"its schema nests deeper than {MAX_DEPTH} levels")
        containers.append(item)
        if len(containers) > MAX_NODES:
            raise _Refused("its schema has more nodes than any cellfeat bundle's")
        if not isinstance(item, dict):
            continue
        if "__loader__" not in item:
            if "__id__" in item:
                raise _Refused("it holds a bare reference, which skops never writes")
            continue
        _check_node(item)
        nodes.append(item)

    member_digests: dict[str, bytes] = {}

    def read_member(name) -> bytes:
        if not isinstance(name, str) or name not in sizes or name == "schema.json":
            raise _Refused("a node names a file the bundle does not hold")
        return zf.read(name)

    def member_digest(name) -> bytes:
        if name not in member_digests:
            member_digests[name] = hashlib.blake2b(read_member(name), digest_size=16).digest()
        return member_digests[name]

    digests = _digests(containers, member_digest)
    del containers
    seen: dict[int, bytes] = {}
    read = read_bytearrays = 0
    checked_npy: set[str] = set()
    for node in nodes:
        ident = node.get("__id__")
        if ident is not None:
            # skops memoises only truthy ids: nodes under id 0 are each built again
            if type(ident) is not int or ident <= 0:
                raise _Refused("a node id is not a positive integer, which skops never writes")
            if seen.setdefault(ident, digests[id(node)]) != digests[id(node)]:
                raise _Refused(f"node id {ident} names two different nodes")
        loader = node["__loader__"]
        if loader in ("NdArrayNode", "BytearrayNode") and "file" in node:
            # every occurrence counts: whether skops reuses an earlier one is its business
            size = sizes[node["file"]]
            if loader == "BytearrayNode":
                read_bytearrays += size
                if read_bytearrays > MAX_BYTEARRAY_BYTES:
                    raise _Refused("its byte arrays add up to more than any cellfeat "
                                   "bundle's")
            read += size
            if read > min(MAX_READ_BYTES, budget):
                raise _Refused("its arrays add up to more than any cellfeat bundle's")
            if loader == "NdArrayNode" and node["file"] not in checked_npy:
                _check_npy(read_member(node["file"]))
                checked_npy.add(node["file"])
        elif loader == "ObjectNode" and node["__class__"] == "Booster":
            _booster_bytes(node, read_member)


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
    subclass), carries no dunder instance attribute, a booster holds a parsed model, and an
    estimator holds what training can produce (:func:`pipelines.bundle.trained.check_estimator`).
    Then every estimator gets cellfeat's own execution settings back."""
    from .trained import NotTrained, check_estimator, reset_execution

    estimators = _reachable_estimators(obj)
    try:  # every type and booster handle is known good before any estimator is looked into
        for o in estimators:
            check_estimator(o)
        for o in estimators:
            reset_execution(o)
    except NotTrained as exc:
        raise _Refused(str(exc)) from None
    except _Refused:
        raise
    except Exception as exc:  # an attribute malformed in a way no check foresaw
        raise _Refused(f"it holds a model that is malformed ({type(exc).__name__})") from None


def _reachable_estimators(obj) -> list:
    """Every object reachable from ``obj``, checked for its exact type, dunder attributes
    and booster handles; returns those with attributes other than boosters."""
    import ctypes

    import numpy as np

    seen, stack, estimators = set(), [obj], []
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
            else:
                estimators.append(o)
            stack.extend(attrs.values())
    return estimators


def save_bundle(path, *, pipeline, meta: dict) -> None:
    """Write ``pipeline`` (a fitted estimator or a dict of them) and ``meta`` (JSON-able)
    to ``path`` atomically; raise :class:`StageError`, writing nothing, if the result
    would be refused by :func:`load_bundle`."""
    import skops.io as sio

    from .trained import NotTrained, check_meta

    meta = json.loads(json.dumps(meta, default=str))   # as load_bundle will read it
    try:
        check_meta(meta)
    except NotTrained as exc:
        raise StageError(f"{path}: not written, its {exc}; if cellfeat train now writes "
                         f"that, add it to pipelines.bundle.trained.META") from None
    bundle = {"format": BUNDLE_FORMAT, "cellfeat_version": cellfeat.__version__,
              "meta_json": json.dumps(meta), "pipeline": pipeline}
    with atomic_path(path) as tmp:
        sio.dump(bundle, tmp)
        try:
            _audit(tmp.read_bytes())
        except _Refused as exc:
            raise StageError(f"{path}: not written, {exc}. If that type is new and restores "
                             f"without running code, add it to "
                             f"pipelines.bundle.files.TYPES_BY_LOADER") from None


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
    except Exception:  # missing, not text, or nested past the parser's recursion limit
        meta = None
    if not isinstance(meta, dict) or "pipeline" not in bundle:
        raise StageError(f"{path}: not a cellfeat model bundle (no settings or no model in "
                         f"it); retrain it")
    from .trained import NotTrained, check_meta

    try:
        check_meta(meta)
    except NotTrained as exc:
        raise StageError(f"{path}: refused, its {exc}; do not use this file") from None
    except Exception as exc:
        raise StageError(f"{path}: refused, its meta is malformed ({type(exc).__name__}); "
                         f"do not use this file") from None
    if feature_names is not None and list(meta.get("cell_features", [])) != list(feature_names):
        want, have = set(meta.get("cell_features", [])), set(feature_names)
        raise StageError(f"{path}: trained on a different feature set (missing here: "
                         f"{sorted(want - have)[:3]}, new here: {sorted(have - want)[:3]}); "
                         f"retrain or recompute features with the bundle's version")
    return bundle["pipeline"], meta
