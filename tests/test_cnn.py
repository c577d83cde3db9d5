"""cellfeat.cnn: shapes, determinism on CPU, weights survive a skops bundle (tiny data)."""

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from cellfeat.cnn import EMBEDDING_PREFIX, CNNEmbedding, CNNExpert  # noqa: E402


def tiny_frame(n=8, cells=6, size=16, seed=0):
    """Tumoral patients' crops have a dark centre blob, reactive ones a pale one."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rows = []
    for i in range(n):
        crops = rng.integers(150, 230, (cells, size, size, 3)).astype(np.uint8)
        crops[:, 5:11, 5:11] = 60 if y[i] else 200
        status = ["ok"] * (cells - 1) + ["no_nucleus"]
        rows.append({"CELLS": pd.DataFrame({"QC_STATUS": status}), "CROPS": crops,
                     "LYMPH_COUNT": 10.0 * (1 + y[i]), "AGE": 60.0, "GENDER": "M"})
    return pd.DataFrame(rows, index=[f"P{i}" for i in range(n)]), y


def small(**kw):
    return CNNExpert(epochs=3, bag_size=4, batch_bags=4, width=4, embed_dim=3, device="cpu", **kw)


def test_fit_predict_shapes_and_determinism():
    X, y = tiny_frame()
    a = small(random_state=1).fit(X, y)
    b = small(random_state=1).fit(X, y)
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    assert pa.shape == (8, 2) and np.allclose(pa.sum(axis=1), 1)
    assert np.array_equal(pa, pb)  # same seed, same CPU result
    assert len(a.history_) == 3 and all(np.isfinite(a.history_))
    emb = a.cell_embeddings(X)
    assert emb[0].shape == (6, 3) and np.isnan(emb[0][-1]).all() and np.isfinite(emb[0][:-1]).all()


def test_learns_the_tiny_signal():
    X, y = tiny_frame(n=12)
    clf = CNNExpert(epochs=25, bag_size=4, batch_bags=4, width=8, embed_dim=8, lr=1e-2,
                    device="cpu").fit(X, y)
    assert (clf.predict(X) == y).mean() >= 0.9


def test_embedding_transformer_adds_columns():
    X, y = tiny_frame()
    emb = CNNEmbedding(small(), cv=2)
    out = emb.fit_transform(X, y)
    cols = [c for c in out["CELLS"].iloc[0].columns if c.startswith(EMBEDDING_PREFIX)]
    assert cols == [f"{EMBEDDING_PREFIX}0{k}" for k in range(3)]
    assert "CNN_Embedding_00" in emb.transform(X)["CELLS"].iloc[3]


def test_weights_survive_the_bundle(tmp_path):
    from pipelines.bundle import load_bundle, save_bundle

    X, y = tiny_frame()
    clf = small().fit(X, y)
    save_bundle(tmp_path / "m.skops", pipeline={"main": clf}, meta={"cell_features": []})
    loaded, _ = load_bundle(tmp_path / "m.skops")
    assert np.array_equal(loaded["main"].predict_proba(X), clf.predict_proba(X))


def test_needs_crops():
    X, y = tiny_frame()
    with pytest.raises(ValueError, match="CROPS"):
        small().fit(X.drop(columns="CROPS"), y)


def test_fit_neither_reads_nor_changes_torch_global_rng():
    X, y = tiny_frame()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = small(random_state=1).fit(X, y)
    pa = a.predict_proba(X)  # builds the inference network too
    assert torch.equal(torch.get_rng_state(), before)  # the old fit reseeded it
    torch.manual_seed(456)  # another global state: the same fit
    assert np.array_equal(small(random_state=1).fit(X, y).predict_proba(X), pa)


def test_misaligned_crops_raise():
    X, y = tiny_frame()
    X.at["P3", "CROPS"] = X.at["P3", "CROPS"][:-1]  # one crop fewer than cell rows
    with pytest.raises(ValueError, match="patient P3: 5 crops for 6 cell rows"):
        small().fit(X, y)  # the old code trained as if P3 had no usable cell
    fitted = small().fit(X.drop(index="P3"), y[X.index != "P3"])
    with pytest.raises(ValueError, match="patient P3: 5 crops for 6 cell rows"):
        fitted.predict_proba(X)  # the old code gave P3 the neutral call 0.5
