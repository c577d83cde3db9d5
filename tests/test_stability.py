"""Tests of pipelines.run.stability: the flip/PROBA summary by hand, and shifted features that
are the feature stage's own features of the shifted pixels, cached by content."""

import numpy as np
import pandas as pd
import pytest

from cellfeat.augment import ColourShift
from pipelines.bench import colour
from pipelines.run import stability, tasks


def test_summarise_by_hand():
    y = np.array([0, 0, 1, 1])
    asis = {"proba": np.array([[0.1, 0.6, 0.7, 0.9]]), "pred": np.array([[0, 1, 1, 1]])}
    moved = {"proba": np.array([[0.1, 0.4, 0.7, 0.95]]), "pred": np.array([[0, 0, 1, 1]])}
    res = stability.summarise({"asis": asis, "a": moved, "same": asis}, y)
    a = res["shifts"]["a"]
    # one call of four flips (patient 2: 0.6 -> 0.4); largest |dPROBA| 0.2
    assert (a["flips"], a["calls"], a["flip_share"]) == (1, 4, 0.25)
    assert a["max_abs_dproba"] == pytest.approx(0.2)
    # BA as-is (1/2 + 1)/2 = 0.75, shifted 1.0
    assert res["overall"]["balanced_accuracy"] == 0.75
    assert a["delta_balanced_accuracy"] == pytest.approx(0.25)
    assert res["shifts"]["same"]["flips"] == 0
    assert res["overall"]["flips"] == 1 and res["overall"]["calls"] == 8
    assert not res["overall"]["met"]


def test_family_from_registry_names():
    assert colour.family("Nucleus_Colour_LAB_L_MeanRatio") == "Colour"
    assert colour.family("Nucleus_Shape_Area") == "Shape"
    assert colour.family("Nucleus_Texture_GLCM_Contrast") == "Texture"


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    import cv2

    from cellfeat.synthetic import draw_cell, sample_patient

    rng = np.random.default_rng(3)
    d = tmp_path_factory.mktemp("imgs")
    files = []
    for k in range(2):
        image = draw_cell(rng, sample_patient(rng, k))[0]
        f = d / f"{k:06d}.png"  # lossless, so an identity shift must change nothing
        cv2.imwrite(str(f), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        files.append(f)
    (d / "broken.jpg").write_bytes(b"not an image")
    return files + [d / "broken.jpg"]


def test_identity_shift_reproduces_feature_stage(two_images, tmp_path):
    code = tasks
    settings = code.FeatureSettings()
    names = [f.name for f in two_images]
    cells, meta, _ = code.compute_patient("P1", names, code.read_blobs(two_images), settings)
    ident = ColourShift("id")
    _, out = stability.shifted_patient("P1", two_images, settings, (ident,), tmp_path)
    moved, moved_meta, _ = out["id"]
    # (PIL's message for an unreadable file names an object address: compare up to it)
    same = lambda a, b: pd.testing.assert_frame_equal(
        a.assign(QC_STATUS=a["QC_STATUS"].str[:40], QC_DETAIL=a["QC_DETAIL"].str[:40]),
        b.assign(QC_STATUS=b["QC_STATUS"].str[:40], QC_DETAIL=b["QC_DETAIL"].str[:40]),
        check_dtype=False)
    same(moved, cells)
    assert moved_meta == meta
    # the unreadable file keeps the feature stage's failure
    assert moved["QC_STATUS"].iloc[-1].startswith("unreadable")
    assert len(list(tmp_path.glob("*.json"))) == 1
    # a second call reads the cache, keyed by the shift's parameters
    _, again = stability.shifted_patient("P1", two_images, settings, (ident,), tmp_path)
    same(again["id"][0], cells)
    warm = ColourShift("warm", gains=(1.04, 1.0, 0.96), gamma=0.92)
    _, w = stability.shifted_patient("P1", two_images, settings, (warm,), tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert not w["warm"][0].equals(cells)


# ------------------------------------------------------------------ cellfeat.stability

from cellfeat import stability as cs  # noqa: E402


def test_sample_is_a_fixed_rule_on_names_only():
    names = [f"{i:06d}.jpg" for i in range(40)]
    pos = cs.sample_images("P7", names, 8, seed=0)
    assert len(pos) == 8 and pos == sorted(pos) and len(set(pos)) == 8
    # the listing order does not matter: the same files are kept
    rev = names[::-1]
    assert {rev[i] for i in cs.sample_images("P7", rev, 8, seed=0)} == {names[i] for i in pos}
    # another seed or another patient draws another sample; fewer images than k: all
    assert cs.sample_images("P7", names, 8, seed=1) != pos
    assert cs.sample_images("P8", names, 8, seed=0) != pos
    assert cs.sample_images("P7", names[:5], 8) == [0, 1, 2, 3, 4]
    # one more image changes the sample by at most that image
    more = cs.sample_images("P7", names + ["extra.jpg"], 8, seed=0)
    assert len({names[i] for i in pos} - {(names + ["extra.jpg"])[i] for i in more}) <= 1
    with pytest.raises(ValueError):
        cs.sample_images("P7", names, 0)


def test_bag_drift_pairs_cells_usable_both_ways():
    a = pd.DataFrame({"QC_STATUS": ["ok", "ok", "ok", "no_nucleus"],
                      "F": [1.0, 2.0, np.nan, 5.0], "G": [0.0, 0.0, 0.0, 0.0]})
    b = pd.DataFrame({"QC_STATUS": ["ok", "ok", "ok", "ok"],
                      "F": [2.0, 4.0, 7.0, 100.0], "G": [1.0, 1.0, 1.0, 1.0]})
    d = cs.bag_drift(a, b, ["F", "G"])
    # F: cells 0 and 1 (cell 2 has no original value, cell 3 was not usable): (1 + 2) / 2
    assert d["F"] == 1.5
    assert d["G"] == 1.0  # cells 0, 1, 2
    assert cs.bag_drift(a.iloc[:0], b.iloc[:0], ["F"]).isna().all()
    with pytest.raises(ValueError):
        cs.bag_drift(a, b.iloc[:2], ["F"])


def test_transferred_bag_mean_is_original_mean_plus_sample_drift():
    rng = np.random.default_rng(0)
    cells = pd.DataFrame({"QC_STATUS": ["ok"] * 10, "F": rng.normal(size=10)})
    pos = [2, 5, 7]
    shifted = cells.iloc[pos].reset_index(drop=True).copy()
    shifted["F"] += [0.5, 1.0, 1.5]  # per-cell moves of mean 1.0
    drift = cs.bag_drift(cells.iloc[pos].reset_index(drop=True), shifted, ["F"])
    assert drift["F"] == pytest.approx(1.0)
    out = cs.transferred_bag(cells, drift, pos, shifted)
    assert out["F"].mean() == pytest.approx(cells["F"].mean() + 1.0)
    assert out["F"].iloc[pos].tolist() == shifted["F"].tolist()  # the measured rows
    others = [i for i in range(10) if i not in pos]
    np.testing.assert_allclose(out["F"].iloc[others], cells["F"].iloc[others] + 1.0)
    assert cells["F"].iloc[0] == pytest.approx(out["F"].iloc[0] - 1.0)  # input left as it was
    # a sampled cell that fails QC under the shift keeps its shifted status
    shifted.loc[0, "QC_STATUS"] = "no_nucleus"
    assert cs.transferred_bag(cells, drift, pos, shifted)["QC_STATUS"].iloc[2] == "no_nucleus"


def test_icc_of_an_offset_matches_its_formula():
    a = np.random.default_rng(1).normal(size=20_000)
    assert cs.icc_agreement(a, a) == 1.0
    # two raters, offset d subject-SDs, no noise: ICC = 2 s^2 / (2 s^2 + d^2) -> 1 / (1 + d^2/2)
    for d in (0.25, 1.0):
        assert cs.icc_agreement(a, a + d * a.std(ddof=1)) == pytest.approx(1 / (1 + d**2 / 2),
                                                                            abs=1e-3)
    # noise as large as the spread between subjects: rows x = (a, a + e), MS_R = 2 var(a + e/2)
    # = 2.5, MS_E = E[(e/2)^2] * 2 = 0.5, MS_C ~ 0: ICC = (2.5 - 0.5) / (2.5 + 0.5) = 2/3
    noisy = a + np.random.default_rng(2).normal(size=a.size)
    assert cs.icc_agreement(a, noisy) == pytest.approx(2 / 3, abs=0.02)
    assert np.isnan(cs.icc_agreement([1.0], [1.0]))


def test_feature_stability_applies_the_bar_to_the_worst_shift():
    rng = np.random.default_rng(3)
    n = 400
    means = pd.DataFrame({"steady": rng.normal(0, 2, n), "moved": rng.normal(0, 2, n),
                          "flat": np.ones(n)})
    small = pd.DataFrame({"steady": 0.2, "moved": 0.2, "flat": 0.0}, index=means.index)
    big = pd.DataFrame({"steady": -0.4, "moved": 1.2, "flat": 0.0}, index=means.index)
    t = cs.feature_stability(means, {"a": small, "b": big})
    # drifts in SD units: steady 0.1 and -0.2, moved 0.1 and 0.6 (SD 2, to sampling error)
    assert t.loc["steady", "drift_b"] == pytest.approx(-0.2, abs=0.02)
    assert t.loc["moved", "max_abs_drift"] == pytest.approx(0.6, abs=0.05)
    assert t["stable"].to_dict() == {"steady": True, "moved": False, "flat": False}
    assert t.loc["steady", "min_icc"] == pytest.approx(1 / (1 + 0.2**2 / 2), abs=0.01)
    assert cs.stable_features(t) == ["steady"]
    # the bar is what decides: a looser one lets the moved feature in
    assert cs.stable_features(cs.feature_stability(means, {"a": small, "b": big}, bar=0.7)) \
        == ["steady", "moved"]
