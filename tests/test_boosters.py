"""pipelines.bundle.boosters: booster bytes are parsed in Python and refused unless they are what
cellfeat trains, before XGBoost's or LightGBM's native parser sees them.

The boosters here are fitted with cellfeat's own settings (``BalancedXGBClassifier`` and
the ``lgbm`` head of :mod:`cellfeat.models`) on a small random problem, then edited one
field at a time. That each edit is a real crash or hang of the native code (SIGSEGV,
SIGFPE, an endless loop) is shown on whole bundles in ``tests/test_bundle.py``, in a
child process.
"""

import json
import re
import struct

import numpy as np
import pytest

from pipelines.bundle.boosters import (MAX_UBJSON_DEPTH, BoosterRefused, check_lightgbm,
                                check_xgboost, read_ubjson)

N_FEATURES = 7


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, N_FEATURES))
    y = (X[:, 0] + X[:, 3] + rng.normal(scale=0.5, size=80) > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def xgb_bytes(problem):
    from cellfeat.models import BalancedXGBClassifier

    model = BalancedXGBClassifier(n_estimators=20).fit(*problem)
    return bytes(model.model_.get_booster().__getstate__()["handle"])


@pytest.fixture(scope="module")
def lgbm_text(problem):
    from cellfeat.models.learners import _lgbm

    model = _lgbm().set_params(n_estimators=20).fit(*problem)
    return model.booster_.__getstate__()["_handle"]


# --------------------------------------------------------------------------- UBJSON

def test_reader_gives_what_xgboost_itself_gives(xgb_bytes):
    # the same booster as XGBoost's own JSON (model) and config: the reader reads the format
    # the way XGBoost does
    import xgboost

    booster = xgboost.Booster()
    booster.__setstate__({"handle": bytearray(xgb_bytes)})
    ours = read_ubjson(xgb_bytes)
    theirs = json.loads(booster.save_raw("json"))
    assert json.loads(booster.save_config()) == _plain(ours["Config"])
    assert _plain(ours["Model"])["learner"]["learner_model_param"] == \
        theirs["learner"]["learner_model_param"]
    for a, b in zip(ours["Model"]["learner"]["gradient_booster"]["model"]["trees"],
                    theirs["learner"]["gradient_booster"]["model"]["trees"]):
        for key in ("left_children", "right_children", "parents", "split_indices"):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_allclose(a["split_conditions"], b["split_conditions"], rtol=1e-6)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, np.ndarray)):
        return [_plain(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


@pytest.mark.parametrize("data, why", [
    (b"[$l#L" + struct.pack(">q", 10**6) + b"\0" * 40, "announces an array of 1000000"),
    (b"[#L" + struct.pack(">q", 10**6) + b"Z" * 40, "announces 1000000 elements"),
    (b"SL" + struct.pack(">q", 10**9) + b"abc", "announces 1000000000 bytes"),
    (b"Si" + struct.pack(">b", -3) + b"abc", "negative length"),
    (b"[" * (MAX_UBJSON_DEPTH + 2) + b"]" * (MAX_UBJSON_DEPTH + 2), "nests deeper"),
    (b"[H]", "marker b'H'"),
    (b"{i\x01aZi\x01aZ}", "repeats the key 'a'"),
    (b"[Z]Z", "bytes after its end"),
    (b"[ZZ", "announces 1 bytes where 0 remain"),
])
def test_reader_never_trusts_a_count(data, why):
    with pytest.raises(BoosterRefused, match=re.escape(why)):
        read_ubjson(data)


# --------------------------------------------------------------------------- XGBoost

def test_genuine_xgboost_bytes_pass(xgb_bytes):
    assert check_xgboost(xgb_bytes) == {"num_feature": N_FEATURES, "num_trees": 20}


def _typed_array(raw: bytearray, key: bytes, nth: int = 0):
    """(offset of the values, struct format) of the ``nth`` typed array stored under
    ``key`` (tree ``nth``'s, for per-tree keys)."""
    i = -1
    for _ in range(nth + 1):
        i = raw.index(key, i + 1)
    i += len(key)
    assert raw[i:i + 2] == b"[$" and raw[i + 3:i + 5] == b"#L"
    return i + 13, {b"l": ">i", b"U": ">B", b"d": ">f"}[bytes(raw[i + 2:i + 3])]


def _tree_with_a_split(raw) -> int:
    doc = read_ubjson(bytes(raw))
    trees = doc["Model"]["learner"]["gradient_booster"]["model"]["trees"]
    return next(k for k, t in enumerate(trees) if len(t["left_children"]) >= 5)


def _set(raw, key, nth, index, value):
    off, fmt = _typed_array(raw, key, nth)
    size = struct.calcsize(fmt)
    raw[off + size * index:off + size * (index + 1)] = struct.pack(fmt, value)


def _xgb_cycle(raw, k):
    # node 1 of tree k (an internal node of a tree of >= 5 nodes) points back to the root
    _set(raw, b"left_children", k, 1, 0)


def _xgb_shared(raw, k):
    left = read_ubjson(bytes(raw))["Model"]["learner"]["gradient_booster"]["model"][
        "trees"][k]["left_children"]
    _set(raw, b"right_children", k, 0, int(left[0]))   # both children of the root are one


XGB_EDITS = {
    "count beyond the bytes": (lambda raw, k: _set_count(raw, b"split_indices", 10**6),
                               "announces an array of 1000000 values"),
    "short array": (lambda raw, k: _shorten(raw, b"base_weights", k, 2),
                    "base_weights holds 2 values"),
    "cycle": (_xgb_cycle, "reaches node 0 twice"),
    "shared child": (_xgb_shared, "twice"),
    "child outside the tree": (lambda raw, k: _set(raw, b"left_children", k, 0, 10**6),
                               "outside the tree"),
    "feature outside the model": (lambda raw, k: _set(raw, b"split_indices", k, 0, N_FEATURES),
                                  f"splits on a feature outside the model's {N_FEATURES}"),
    "negative feature": (lambda raw, k: _set(raw, b"split_indices", k, 0, -1),
                         "splits on a feature outside"),
    "categorical split": (lambda raw, k: _set(raw, b"split_type", k, 0, 1),
                          "splits of another kind"),
    "infinite threshold": (lambda raw, k: _set(raw, b"split_conditions", k, 0, float("inf")),
                           "split_conditions that are not finite"),
}


def _set_count(raw, key, count, nth=0):
    """Announce ``count`` values for the array, its values left as they are."""
    off, _ = _typed_array(raw, key, nth)
    raw[off - 8:off] = struct.pack(">q", count)


@pytest.mark.parametrize("edit", list(XGB_EDITS))
def test_xgboost_bytes_that_are_not_a_tree_model_are_refused(edit, xgb_bytes):
    raw = bytearray(xgb_bytes)
    fn, why = XGB_EDITS[edit]
    fn(raw, _tree_with_a_split(raw))
    with pytest.raises(BoosterRefused, match=re.escape(why)):
        check_xgboost(bytes(raw))


def _shorten(raw, key, nth, keep):
    """Keep the first ``keep`` values of the array (count and values: the buffer stays
    well formed, the tree does not)."""
    off, fmt = _typed_array(raw, key, nth)
    size = struct.calcsize(fmt)
    count = struct.unpack(">q", bytes(raw[off - 8:off]))[0]
    raw[off - 8:off] = struct.pack(">q", keep)
    del raw[off + keep * size:off + count * size]
    return raw


def test_xgboost_thread_count_in_its_config_is_bounded(xgb_bytes):
    raw = bytearray(xgb_bytes)
    i = raw.index(b"nthread") + len(b"nthread")
    assert raw[i:i + 11] == b"SL" + struct.pack(">q", 1) + b"1"
    raw[i:i + 11] = b"SL" + struct.pack(">q", 4) + b"2000"
    with pytest.raises(BoosterRefused, match="asks for 2000 threads"):
        check_xgboost(bytes(raw))


def test_xgboost_json_text_is_not_what_cellfeat_writes(xgb_bytes):
    import xgboost

    booster = xgboost.Booster()
    booster.__setstate__({"handle": bytearray(xgb_bytes)})
    with pytest.raises(BoosterRefused, match="not the UBJSON"):
        check_xgboost(bytes(booster.save_raw("json")))


# --------------------------------------------------------------------------- LightGBM

def test_genuine_lightgbm_text_passes(lgbm_text):
    assert check_lightgbm(lgbm_text) == {"num_feature": N_FEATURES, "num_trees": 20}


def lgbm_edit(text, tree, old, new):
    """Replace ``old`` by ``new`` in tree ``tree`` and keep ``tree_sizes`` exact, as the
    file's author would (a wrong size is a refusal of its own)."""
    start = text.index(f"Tree={tree}\n")
    end = text.index("\n\n", start)
    block = text[start:end]
    assert old in block, (old, block)
    text = text[:start] + block.replace(old, new, 1) + text[end:]
    m = re.search(r"^tree_sizes=(.*)$", text, re.M)
    sizes = [int(v) for v in m.group(1).split()]
    sizes[tree] += len(new) - len(old)
    return text[:m.start(1)] + " ".join(map(str, sizes)) + text[m.end(1):]


def _tree_text(text, leaves_at_least=3):
    for k in range(100):
        block = text[text.index(f"Tree={k}\n"):]
        if int(re.search(r"num_leaves=(\d+)", block).group(1)) >= leaves_at_least:
            return k, block[:block.index("\n\n")]
    raise AssertionError("no tree with enough leaves")


def _field(block, key):
    return re.search(rf"^{key}=(.*)$", block, re.M).group(1)


def _lgbm_cycle(text):
    k, block = _tree_text(text)
    left = _field(block, "left_child")
    return lgbm_edit(text, k, f"left_child={left}", "left_child=0" + left[left.index(" "):])


def _lgbm_leaf_twice(text):
    k, block = _tree_text(text)
    right = _field(block, "right_child").split()
    leaf = next(v for v in _field(block, "left_child").split() if int(v) < 0)
    right[-1] = leaf
    return lgbm_edit(text, k, f"right_child={_field(block, 'right_child')}",
                     "right_child=" + " ".join(right))


def _lgbm_feature(text):
    k, block = _tree_text(text)
    split = _field(block, "split_feature").split()
    return lgbm_edit(text, k, f"split_feature={' '.join(split)}",
                     "split_feature=" + " ".join([str(N_FEATURES)] + split[1:]))


def _lgbm_leaves(text):
    k, block = _tree_text(text)
    leaves = _field(block, "num_leaves")
    return lgbm_edit(text, k, f"num_leaves={leaves}", "num_leaves=2147483647")


LGBM_EDITS = {
    "zero trees per iteration": (lambda t: t.replace("num_tree_per_iteration=1",
                                                     "num_tree_per_iteration=0"),
                                 "num_tree_per_iteration=0"),
    "multiclass": (lambda t: t.replace("num_class=1", "num_class=3"), "num_class=3"),
    "cycle": (_lgbm_cycle, "reaches node 0 twice"),
    "leaf reached twice": (_lgbm_leaf_twice, "leaves are not each reached once"),
    "feature outside the model": (_lgbm_feature,
                                  f"splits on a feature outside the model's {N_FEATURES}"),
    "leaves announced, not given": (_lgbm_leaves, "leaf values with"),
    "categorical split": (lambda t: lgbm_edit(t, _tree_text(t)[0], "decision_type=2",
                                              "decision_type=3"), "splits of another kind"),
    "linear leaves": (lambda t: lgbm_edit(t, 0, "is_linear=0", "is_linear=1"),
                      "linear leaves"),
    "wrong tree size": (lambda t: re.sub(r"tree_sizes=(\d+)",
                                         lambda m: f"tree_sizes={int(m.group(1)) + 7}", t),
                        "tree_sizes that do not locate tree 0"),
    "line without a value": (lambda t: lgbm_edit(t, 0, "is_linear=0", "is_linear"),
                             "not key=value"),
    "unknown header key": (lambda t: t.replace("label_index=0", "label_index=0\nlinear_tree=1"),
                           "header key 'linear_tree'"),
    "random-forest output": (lambda t: t.replace("label_index=0", "label_index=0\naverage_output"),
                             "not key=value"),
}


@pytest.mark.parametrize("edit", list(LGBM_EDITS))
def test_lightgbm_text_that_is_not_a_tree_model_is_refused(edit, lgbm_text):
    fn, why = LGBM_EDITS[edit]
    with pytest.raises(BoosterRefused, match=re.escape(why)):
        check_lightgbm(fn(lgbm_text))


def test_xgboost_attributes_that_would_cut_the_model_short_are_refused(xgb_bytes):
    # XGBoost's wrapper predicts with trees up to best_iteration when the booster has one;
    # training never stops early, so a genuine booster has no attributes at all
    import xgboost

    booster = xgboost.Booster()
    booster.__setstate__({"handle": bytearray(xgb_bytes)})
    booster.set_attr(best_iteration="2")
    with pytest.raises(BoosterRefused, match="has attributes"):
        check_xgboost(bytes(booster.__getstate__()["handle"]))
