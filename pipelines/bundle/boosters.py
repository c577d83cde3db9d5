"""The bytes of an XGBoost or LightGBM model, checked in Python before native code parses them.

A bundle restores a booster by handing its bytes to the library's C++ parser
(``XGBoosterUnserializeFromBuffer``, ``LGBM_BoosterLoadModelFromString``). Those parsers
trust the counts they read: an XGBoost UBJSON array that announces 10⁶ elements in a
4.7 KiB buffer is read past its end (SIGSEGV), a LightGBM model with
``num_tree_per_iteration=0`` divides by zero (SIGFPE), ``num_leaves`` sizes vectors before
the values are counted, and at prediction time a child index that loops or points outside
the tree, or a split on a feature the input does not have, walks memory it does not own.

So each booster is parsed here first, with a reader that checks every length against the
bytes actually present, and refused unless it is what ``cellfeat train`` can produce: a
binary classifier of plain numerical trees (no categorical splits, no linear leaves),
whose every tree is a tree (each node reached once from the root, no cycle, every index in
range) and splits only on features below the model's feature count. Every check raises
:class:`BoosterRefused` with a phrase that follows "its XGBoost/LightGBM model ...".
"""

from __future__ import annotations

import re
import struct

import numpy as np

__all__ = ["BoosterRefused", "check_xgboost", "check_lightgbm", "read_ubjson",
           "MAX_FEATURES", "MAX_THREADS"]

#: More input columns than any cellfeat model has (a bags model has a few hundred).
MAX_FEATURES = 100_000
#: A thread count a booster may carry in its own config (it is reset to 1 after loading).
MAX_THREADS = 256
#: Nesting of a serialised XGBoost model is about 8; the reader stops far above it.
MAX_UBJSON_DEPTH = 32


class BoosterRefused(ValueError):
    """What is wrong with a booster's bytes, in words that follow "its ... model"."""


# --------------------------------------------------------------------------- UBJSON

#: UBJSON scalar markers XGBoost writes -> (struct format, size); big-endian.
_SCALARS = {b"i": (">b", 1), b"U": (">B", 1), b"I": (">h", 2), b"l": (">i", 4),
            b"L": (">q", 8), b"d": (">f", 4), b"D": (">d", 8)}
_INTS = (b"i", b"U", b"I", b"l", b"L")


class _Reader:
    """A cursor over UBJSON bytes that never reads past the end."""

    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.left():
            raise BoosterRefused(f"announces {n} bytes where {self.left()} remain")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def marker(self) -> bytes:
        return bytes(self.take(1))

    def scalar(self, marker: bytes):
        fmt, size = _SCALARS[marker]
        return struct.unpack(fmt, self.take(size))[0]

    def length(self) -> int:
        """A count or a string length: an integer marker, then a value >= 0."""
        marker = self.marker()
        if marker not in _INTS:
            raise BoosterRefused(f"has a length written as {marker!r}, not an integer")
        n = self.scalar(marker)
        if n < 0:
            raise BoosterRefused(f"has a negative length ({n})")
        return n

    def string(self) -> str:
        raw = self.take(self.length())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise BoosterRefused("has a string that is not UTF-8") from None


def read_ubjson(data: bytes):
    """Parse UBJSON (the subset XGBoost writes) without recursion and without trusting any
    count: every length is checked against the bytes left before anything is allocated.
    Typed numeric arrays come back as NumPy arrays, the rest as dict, list and scalars."""
    r = _Reader(data)
    holder: list = []
    # frames: [container, items left (None: until the end marker), element type, key]
    stack: list[list] = [[holder, 1, None, None]]

    def peek() -> bytes:
        return bytes(r.data[r.pos:r.pos + 1])

    def value(marker: bytes):
        """A scalar, a typed array, or an opened container (pushed on the stack)."""
        if marker in _SCALARS:
            return r.scalar(marker)
        if marker == b"S":
            return r.string()
        if marker == b"Z":
            return None
        if marker in (b"T", b"F"):
            return marker == b"T"
        if marker not in (b"[", b"{"):
            raise BoosterRefused(f"holds the UBJSON marker {marker!r}, which XGBoost never "
                                 f"writes")
        typed = count = None
        if peek() == b"$":
            r.pos += 1
            typed = r.marker()
            if marker != b"[" or typed not in _SCALARS or peek() != b"#":
                raise BoosterRefused("has a typed container of a kind XGBoost never writes")
        if peek() == b"#":
            r.pos += 1
            count = r.length()
        if typed is not None:
            fmt, size = _SCALARS[typed]
            if count > r.left() // size:
                raise BoosterRefused(f"announces an array of {count} values of {size} bytes "
                                     f"where {r.left()} bytes remain")
            return np.frombuffer(r.take(count * size), dtype=np.dtype(fmt))
        # every element takes at least one byte: a count beyond the bytes left is a lie,
        # refused before any list grows towards it
        if count is not None and count > r.left():
            raise BoosterRefused(f"announces {count} elements where {r.left()} bytes remain")
        if len(stack) > MAX_UBJSON_DEPTH:
            raise BoosterRefused(f"nests deeper than {MAX_UBJSON_DEPTH} levels")
        container = {} if marker == b"{" else []
        stack.append([container, count, None, None])
        return container

    while stack:
        frame = stack[-1]
        container, count = frame[0], frame[1]
        if count == 0:
            stack.pop()
            continue
        if count is None and peek() == (b"}" if isinstance(container, dict) else b"]"):
            r.pos += 1
            stack.pop()
            continue
        if isinstance(container, dict):
            key = r.string()
            if key in container:
                raise BoosterRefused(f"repeats the key {key!r} in one object")
            frame[1] = None if count is None else count - 1
            container[key] = value(r.marker())
        else:
            frame[1] = None if count is None else count - 1
            container.append(value(r.marker()))
    if r.left():
        raise BoosterRefused(f"has {r.left()} bytes after its end")
    return holder[0]


# --------------------------------------------------------------------------- trees

def _ints(values, what: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise BoosterRefused(f"has {what} that are not integers")
    return a.astype(np.int64)


def _floats(values, what: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise BoosterRefused(f"has {what} that are not numbers") from None
    if a.ndim != 1 or not np.isfinite(a).all():
        raise BoosterRefused(f"has {what} that are not finite")
    return a


def _check_tree(left: np.ndarray, right: np.ndarray, n_nodes: int, leaf, what: str) -> None:
    """Every node reached exactly once from the root through the child arrays (so no cycle,
    no orphan, no shared child), every child index in range. ``leaf(child)`` says whether
    a child value denotes a leaf; internal children index ``0..n_nodes-1``."""
    seen = np.zeros(n_nodes, bool)
    stack = [0]
    seen[0] = True
    while stack:
        node = stack.pop()
        for child in (left[node], right[node]):
            if leaf(child):
                continue
            if not 0 <= child < n_nodes:
                raise BoosterRefused(f"has {what} whose child index {child} is outside the tree")
            if seen[child]:
                raise BoosterRefused(f"has {what} that reaches node {child} twice (a cycle or a "
                                     f"shared node)")
            seen[child] = True
            stack.append(int(child))
    if not seen.all():
        raise BoosterRefused(f"has {what} with nodes the root never reaches")


# --------------------------------------------------------------------------- XGBoost

def _xgb_int(obj, key, where):
    """XGBoost stores model parameters as decimal strings."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d{1,9}", value):
        raise BoosterRefused(f"has no integer {where}.{key}")
    return int(value)


def _dict(obj, key, where) -> dict:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, dict):
        raise BoosterRefused(f"has no {where}.{key} object")
    return value


def check_xgboost(data: bytes) -> dict:
    """Refuse XGBoost booster bytes (``Booster.__getstate__``'s buffer: UBJSON of
    ``{"Config", "Model"}``) unless they are a binary ``gbtree`` classifier of well formed
    numerical trees; returns ``{"num_feature", "num_trees"}``."""
    if data[:1] != b"{" or not data[1:2].isalpha():
        raise BoosterRefused("is not the UBJSON that cellfeat's XGBoost writes")
    doc = read_ubjson(data)
    if not isinstance(doc, dict) or set(doc) != {"Config", "Model"}:
        raise BoosterRefused("is not a serialised booster (Config and Model)")
    learner = _dict(doc["Model"], "learner", "Model")
    param = _dict(learner, "learner_model_param", "learner")
    n_features = _xgb_int(param, "num_feature", "learner_model_param")
    if not 0 < n_features <= MAX_FEATURES:
        raise BoosterRefused(f"has {n_features} features")
    if _xgb_int(param, "num_class", "learner_model_param") != 0 or \
            _xgb_int(param, "num_target", "learner_model_param") != 1:
        raise BoosterRefused("is not a binary classifier")
    if _dict(learner, "objective", "learner").get("name") != "binary:logistic":
        raise BoosterRefused("has an objective other than binary:logistic")
    if _dict(learner, "attributes", "learner"):
        # e.g. best_iteration, which XGBoost's wrapper would use to cut the model short;
        # training here never stops early, so never writes one
        raise BoosterRefused(f"has attributes {sorted(learner['attributes'])[:3]}, which "
                             f"cellfeat's training never sets")
    booster = _dict(learner, "gradient_booster", "learner")
    if booster.get("name") != "gbtree":
        raise BoosterRefused(f"is a {booster.get('name')!r} booster, not gbtree")
    model = _dict(booster, "model", "gradient_booster")
    trees = model.get("trees")
    if not isinstance(trees, list):
        raise BoosterRefused("has no list of trees")
    gparam = _dict(model, "gbtree_model_param", "model")
    if _xgb_int(gparam, "num_trees", "gbtree_model_param") != len(trees) or \
            _xgb_int(gparam, "num_parallel_tree", "gbtree_model_param") != 1:
        raise BoosterRefused("announces another number of trees than it holds")
    info = _ints(model.get("tree_info", []), "tree groups")
    if len(info) != len(trees) or (info != 0).any():
        raise BoosterRefused("has tree groups of another model shape")
    indptr = _ints(model.get("iteration_indptr", []), "iteration bounds")
    if not np.array_equal(indptr, np.arange(len(trees) + 1)):
        raise BoosterRefused("has iteration bounds that do not match its trees")
    for value in (model.get("cats") or {}).values():
        if len(value):
            raise BoosterRefused("has categorical encodings, which cellfeat never trains")
    for i, tree in enumerate(trees):
        _check_xgb_tree(tree, i, n_features)
    config = _dict(doc["Config"], "learner", "Config")
    generic = _dict(config, "generic_param", "learner")
    for key in ("nthread", "n_jobs"):
        if key in generic and not 0 <= _xgb_int(generic, key, "generic_param") <= MAX_THREADS:
            raise BoosterRefused(f"asks for {generic[key]} threads")
    cparam = _dict(config, "learner_model_param", "learner")
    if _xgb_int(cparam, "num_feature", "Config.learner_model_param") != n_features:
        raise BoosterRefused("has a config and a model that disagree on the feature count")
    return {"num_feature": n_features, "num_trees": len(trees)}


def _check_xgb_tree(tree, i: int, n_features: int) -> None:
    what = f"tree {i}"
    if not isinstance(tree, dict):
        raise BoosterRefused(f"has a {what} that is not an object")
    tparam = _dict(tree, "tree_param", what)
    n = _xgb_int(tparam, "num_nodes", f"{what}.tree_param")
    if not 0 < n <= (1 << 24):
        raise BoosterRefused(f"has {what} with {n} nodes")
    if _xgb_int(tparam, "num_deleted", f"{what}.tree_param") != 0 or \
            _xgb_int(tparam, "size_leaf_vector", f"{what}.tree_param") not in (0, 1):
        raise BoosterRefused(f"has {what} of another kind than cellfeat trains")
    if _xgb_int(tparam, "num_feature", f"{what}.tree_param") != n_features:
        raise BoosterRefused(f"has {what} with another feature count than the model")
    arrays = {}
    for key in ("left_children", "right_children", "parents", "split_indices", "split_type",
                "default_left"):
        arrays[key] = _ints(tree.get(key, []), f"{what} {key}")
    for key in ("split_conditions", "base_weights", "loss_changes", "sum_hessian"):
        arrays[key] = _floats(tree.get(key, []), f"{what} {key}")
    short = [k for k, a in arrays.items() if len(a) != n]
    if short:
        raise BoosterRefused(f"has {what} whose {short[0]} holds {len(arrays[short[0]])} "
                             f"values for {n} nodes")
    for key in ("categories", "categories_nodes", "categories_segments", "categories_sizes"):
        if len(tree.get(key, [])):
            raise BoosterRefused(f"has {what} with categorical splits")
    left, right = arrays["left_children"], arrays["right_children"]
    if ((left == -1) != (right == -1)).any():
        raise BoosterRefused(f"has {what} with a node that has one child")
    _check_tree(left, right, n, lambda c: c == -1, what)
    internal = left != -1
    parents = arrays["parents"]
    for node in np.flatnonzero(internal):
        if parents[left[node]] != node or parents[right[node]] != node:
            raise BoosterRefused(f"has {what} whose parent links disagree with its children")
    split = arrays["split_indices"]
    if ((split < 0) | (split >= n_features))[internal].any():
        raise BoosterRefused(f"has {what} that splits on a feature outside the model's "
                             f"{n_features}")
    if (arrays["split_type"] != 0).any() or not np.isin(arrays["default_left"], (0, 1)).all():
        raise BoosterRefused(f"has {what} with splits of another kind than numerical")


# --------------------------------------------------------------------------- LightGBM

#: Header keys of a LightGBM model text and tree keys (``Tree::ToString``); any other key,
#: and any key twice, is refused.
_LGBM_HEADER = {"version", "num_class", "num_tree_per_iteration", "label_index",
                "max_feature_idx", "objective", "feature_names", "feature_infos",
                "tree_sizes", "monotone_constraints"}
_LGBM_TREE = {"num_leaves", "num_cat", "split_feature", "split_gain", "threshold",
              "decision_type", "left_child", "right_child", "leaf_value", "leaf_weight",
              "leaf_count", "internal_value", "internal_weight", "internal_count",
              "is_linear", "shrinkage"}
#: ``Tree(const char*)`` reads at most 22 key lines; more would be parsed as the next tree.
_LGBM_TREE_LINES = 22
_INT = re.compile(r"-?\d{1,10}\Z")


def _kv(line: str, where: str) -> tuple[str, str]:
    key, sep, value = line.partition("=")
    if not sep or not key:
        raise BoosterRefused(f"has a line in {where} that is not key=value")
    return key, value


def _lgbm_int(value: str, what: str) -> int:
    if not _INT.match(value):
        raise BoosterRefused(f"has {what} {value[:20]!r}, not an integer")
    return int(value)


def _lgbm_array(value: str, n: int, what: str, kind=float) -> np.ndarray:
    """Exactly ``n`` space-separated numbers (LightGBM's fast readers do not count)."""
    parts = value.split(" ") if value else []
    if len(parts) != n:
        raise BoosterRefused(f"has {what} with {len(parts)} values where {n} are expected")
    if kind is int:
        return np.array([_lgbm_int(p, what) for p in parts], dtype=np.int64)
    try:
        out = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        raise BoosterRefused(f"has {what} that are not numbers") from None
    if not np.isfinite(out).all():
        raise BoosterRefused(f"has {what} that are not finite")
    return out


def check_lightgbm(text: str) -> dict:
    """Refuse a LightGBM model text unless it is a binary ``gbdt`` classifier of well
    formed numerical trees whose ``tree_sizes`` locate them exactly; returns
    ``{"num_feature", "num_trees"}``."""
    if not isinstance(text, str) or "\0" in text or "\r" in text:
        raise BoosterRefused("is not a LightGBM model text")
    lines = text.split("\n")
    if lines[0] != "tree":
        raise BoosterRefused("does not start as a LightGBM model text")
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and not lines[i].startswith("Tree="):
        if lines[i]:
            key, value = _kv(lines[i], "the header")
            if key not in _LGBM_HEADER or key in header:
                raise BoosterRefused(f"has the header key {key[:40]!r}")
            header[key] = value
        i += 1
    for key, want in (("num_class", 1), ("num_tree_per_iteration", 1), ("label_index", 0)):
        if _lgbm_int(header.get(key, ""), key) != want:
            raise BoosterRefused(f"has {key}={header.get(key)}: not a binary classifier")
    if header.get("version") != "v4":
        raise BoosterRefused(f"is of format {header.get('version')!r}, not v4")
    if not re.fullmatch(r"binary sigmoid:1", header.get("objective", "")):
        raise BoosterRefused(f"has the objective {header.get('objective', '')[:40]!r}")
    n_features = _lgbm_int(header.get("max_feature_idx", ""), "max_feature_idx") + 1
    if not 0 < n_features <= MAX_FEATURES:
        raise BoosterRefused(f"has {n_features} features")
    for key in ("feature_names", "feature_infos"):
        if len(header.get(key, "").split(" ")) != n_features:
            raise BoosterRefused(f"has {key} of another length than its {n_features} features")
    sizes = [_lgbm_int(v, "a tree size") for v in header.get("tree_sizes", "").split(" ") if v]
    # each tree is "Tree=k", its key lines, then blank lines; with tree_sizes the parser
    # jumps from tree to tree by those byte counts, so each must be exact
    k = 0
    while i < len(lines) and lines[i].startswith("Tree="):
        if lines[i] != f"Tree={k}":
            raise BoosterRefused(f"has {lines[i][:20]!r} where Tree={k} is expected")
        j = i + 1
        while j < len(lines) and lines[j]:
            j += 1
        block = lines[i + 1:j]
        if len(block) > _LGBM_TREE_LINES:
            raise BoosterRefused(f"has tree {k} with {len(block)} lines")
        _check_lgbm_tree(block, k, n_features)
        while j < len(lines) and not lines[j]:
            j += 1
        size = sum(len(line.encode()) + 1 for line in lines[i:j])
        if sizes and (k >= len(sizes) or sizes[k] != size):
            raise BoosterRefused(f"has tree_sizes that do not locate tree {k}")
        i, k = j, k + 1
    if len(sizes) != k:
        raise BoosterRefused(f"announces {len(sizes)} trees in tree_sizes and holds {k}")
    if i < len(lines) and lines[i] != "end of trees":
        raise BoosterRefused("has something other than a tree among its trees")
    return {"num_feature": n_features, "num_trees": k}


def _check_lgbm_tree(block: list[str], k: int, n_features: int) -> None:
    what = f"tree {k}"
    kv: dict[str, str] = {}
    for line in block:
        key, value = _kv(line, what)
        if key not in _LGBM_TREE or key in kv:
            raise BoosterRefused(f"has the key {key[:40]!r} in {what}")
        kv[key] = value
    leaves = _lgbm_int(kv.get("num_leaves", ""), f"{what} num_leaves")
    if leaves < 1:
        raise BoosterRefused(f"has {what} with {leaves} leaves")
    if _lgbm_int(kv.get("num_cat", ""), f"{what} num_cat") != 0:
        raise BoosterRefused(f"has {what} with categorical splits")
    if _lgbm_int(kv.get("is_linear", "0"), f"{what} is_linear") != 0:
        raise BoosterRefused(f"has {what} with linear leaves")
    _lgbm_array(kv.get("shrinkage", "1"), 1, f"{what} shrinkage")
    _lgbm_array(kv.get("leaf_value", ""), leaves, f"{what} leaf values")
    for key in ("leaf_weight", "leaf_count"):
        if key in kv:
            _lgbm_array(kv[key], leaves, f"{what} {key}")
    if leaves == 1:
        return
    n = leaves - 1
    left = _lgbm_array(kv.get("left_child", ""), n, f"{what} left children", int)
    right = _lgbm_array(kv.get("right_child", ""), n, f"{what} right children", int)
    split = _lgbm_array(kv.get("split_feature", ""), n, f"{what} split features", int)
    _lgbm_array(kv.get("threshold", ""), n, f"{what} thresholds")
    for key in ("split_gain", "internal_value", "internal_weight", "internal_count"):
        if key in kv:
            _lgbm_array(kv[key], n, f"{what} {key}")
    decision = _lgbm_array(kv.get("decision_type", " ".join(["0"] * n)), n,
                           f"{what} decision types", int)
    # bit 0 categorical (never trained here), bit 1 default left, bits 2-3 missing type
    if ((decision & 1) != 0).any() or ((decision >> 2) > 2).any() or (decision < 0).any() \
            or (decision > 15).any():
        raise BoosterRefused(f"has {what} with splits of another kind than numerical")
    if ((split < 0) | (split >= n_features)).any():
        raise BoosterRefused(f"has {what} that splits on a feature outside the model's "
                             f"{n_features}")
    # a negative child c is the leaf ~c; each leaf must be reached exactly once too
    _check_tree(left, right, n, lambda c: c < 0, what)
    leaf_ids = np.concatenate([~left[left < 0], ~right[right < 0]])
    if not np.array_equal(np.sort(leaf_ids), np.arange(leaves)):
        raise BoosterRefused(f"has {what} whose leaves are not each reached once")

