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


def test_shrunk_drift_by_hand():
    deltas = {"A": pd.DataFrame({"F": [1.0, 3.0]}), "B": pd.DataFrame({"F": [5.0, 7.0]})}
    b = cs.shrunk_drifts(deltas)["F"]
    # means 2 and 6 (cohort 4); pooled within variance (2 + 2) / 2 = 2, so v = 2/2 = 1;
    # var of the means (ddof 1) = 8, tau^2 = 8 - 1 = 7, weight 7 / (7 + 1): 4 -/+ 7/8 * 2
    assert b.tolist() == [pytest.approx(2.25), pytest.approx(5.75)]
    # no noise inside a patient: its own drift is kept as it is
    same = {"A": pd.DataFrame({"F": [2.0, 2.0]}), "B": pd.DataFrame({"F": [6.0, 6.0]})}
    assert cs.shrunk_drifts(same)["F"].tolist() == [2.0, 6.0]
    # patients that differ only by sampling noise: everyone gets about the cohort's drift
    rng = np.random.default_rng(0)
    noisy = {i: pd.DataFrame({"F": 1.0 + rng.normal(0, 3, 8)}) for i in range(300)}
    b = cs.shrunk_drifts(noisy)["F"]
    raw = pd.Series({i: d["F"].mean() for i, d in noisy.items()})
    assert b.std() < 0.3 * raw.std() and b.mean() == pytest.approx(raw.mean())
    # a patient without a usable pair gets the cohort's drift
    deltas["C"] = pd.DataFrame({"F": [np.nan]})
    assert cs.shrunk_drifts(deltas)["F"]["C"] == pytest.approx(4.0)


def _frame(n_patients=6, n_cells=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = {f"P{i}": pd.DataFrame({"QC_STATUS": ["ok"] * n_cells,
                                   "Nucleus_Shape_Area": rng.normal(100, 10, n_cells),
                                   "Nucleus_Shape_Solidity": rng.normal(0.9, 0.02, n_cells)})
            for i in range(n_patients)}
    frame = pd.DataFrame({"AGE": 60.0, "LYMPH_COUNT": 5.0, "GENDER": "F",
                          "Bag_Heterogeneity_PixelDispersion": 10.0}, index=list(rows))
    frame["CELLS"] = list(rows.values())
    return frame


def test_transferred_frames_move_every_cell_by_a_uniform_shift():
    frame = _frame()
    positions = {pid: [1, 4, 7] for pid in frame.index}
    # the shift adds 5 to every cell's area and nothing else; pixel score 3 -> 4 on the sample
    sampled = {"asis": {pid: 3.0 for pid in frame.index},
               "s": {pid: (c.iloc[[1, 4, 7]].reset_index(drop=True)
                           .assign(Nucleus_Shape_Area=lambda d: d["Nucleus_Shape_Area"] + 5), 4.0)
                     for pid, c in zip(frame.index, frame["CELLS"])}}
    for mode in stability.DRIFT_MODES:
        frames, drifts = stability.transferred_frames(frame, positions, sampled, mode=mode)
        moved = frames["s"]
        for pid in frame.index:
            np.testing.assert_allclose(moved.at[pid, "CELLS"]["Nucleus_Shape_Area"],
                                       frame.at[pid, "CELLS"]["Nucleus_Shape_Area"] + 5)
            np.testing.assert_allclose(moved.at[pid, "CELLS"]["Nucleus_Shape_Solidity"],
                                       frame.at[pid, "CELLS"]["Nucleus_Shape_Solidity"])
        assert (moved["Bag_Heterogeneity_PixelDispersion"] == 11.0).all()
        assert drifts["s"]["Nucleus_Shape_Area"].tolist() == pytest.approx([5.0] * 6)
    assert (frame.at["P0", "CELLS"]["Nucleus_Shape_Area"] < 200).all()  # input untouched
    with pytest.raises(ValueError):
        stability.transferred_frames(frame, positions, sampled, mode="nope")


def test_screen_keeps_the_stable_inputs_and_the_pixel_score_only_if_it_passes():
    frame = _frame(n_patients=40, seed=1)
    idx = frame.index
    frame["Bag_Heterogeneity_PixelDispersion"] = np.linspace(5, 15, 40)
    sd_area = pd.Series([c["Nucleus_Shape_Area"].mean() for c in frame["CELLS"]]).std()
    drift = pd.DataFrame({"Nucleus_Shape_Area": 0.1 * sd_area,      # 0.1 SD: passes
                          "Nucleus_Shape_Solidity": 0.05,           # many SDs: fails
                          "Bag_Heterogeneity_PixelDispersion": 0.1}, index=idx)
    table, kept = stability.screen(frame, {"s": drift})
    assert table.loc["Nucleus_Shape_Area", "max_abs_drift"] == pytest.approx(0.1)
    assert kept == ["Nucleus_Shape_Area", "Bag_Heterogeneity_PixelDispersion"]
    drift["Bag_Heterogeneity_PixelDispersion"] = 2.0
    assert stability.screen(frame, {"s": drift})[1] == ["Nucleus_Shape_Area"]


def test_summarise_interval_figures_by_hand():
    y = np.array([0, 0, 1, 1])
    asis = {"proba": np.array([[0.1, 0.6, 0.7, 0.9]]), "pred": np.array([[0, 1, 1, 1]])}
    a = {"proba": np.array([[0.1, 0.4, 0.7, 0.9]]), "pred": np.array([[0, 0, 1, 1]])}
    b = {"proba": np.array([[0.1, 0.6, 0.4, 0.9]]), "pred": np.array([[0, 1, 0, 1]])}
    flag = {"proba": np.array([[0.1, 0.45, 0.7, 0.2]]), "pred": np.array([[0, 0, 1, 0]])}
    oof = {"asis": asis, "a": a, "b": b, "cohort:a": flag}
    res = stability.summarise(oof, y)
    # patients 1 and 2 flip (one shift each); the interval (hull of as-is and cohort:a, no
    # threshold given: 0.5) straddles for patients 1 (0.45-0.6) and 3 (0.2-0.9): one caught
    assert res["interval"] == {"calls": 4, "flagged": 2, "flagged_share": 0.5, "flips": 2,
                               "flips_caught": 1, "margin_logit": 0.0}
    assert set(res["shifts"]) == {"a", "b"}  # cohort:* entries are not shifts
    # one log-odds of margin takes patient 2 (0.7: logit 0.85 - 1 < 0) in, patient 0 (0.1) not
    wide = stability.summarise(oof, y, margin_logit=1.0)["interval"]
    assert (wide["flagged"], wide["flips_caught"]) == (3, 2)
    # the margin is the 95th percentile of |logit(shifted) - logit(drift model)|: here only
    # shift a has a drift model, and it strays by 0, logit(.6)-logit(.45), 0, logit(.9)-logit(.2)
    from cellfeat.decision import logit

    d = np.abs(logit(a["proba"]) - logit(flag["proba"])).ravel()
    assert stability.margin(oof) == pytest.approx(np.quantile(d, 0.95))


@pytest.fixture(scope="module")
def small_model():
    """clinical+mean-ridge fitted on 60 patients whose nucleus area carries the label."""
    from cellfeat.models import make_pipeline

    rng = np.random.default_rng(5)
    y = np.array([0, 1] * 30)
    frame = _frame(n_patients=60, n_cells=6, seed=5)
    frame["AGE"] = rng.normal(60, 10, 60)
    frame["LYMPH_COUNT"] = rng.uniform(4, 8, 60)
    frame["CELLS"] = [c.assign(Nucleus_Shape_Area=c["Nucleus_Shape_Area"] + 8 * yi)
                      for c, yi in zip(frame["CELLS"], y)]
    model = make_pipeline("clinical+mean-ridge", features=["Nucleus_Shape_Area"]).fit(frame, y)
    return {"main": model}, frame


def test_interval_calls_flag_the_patients_a_drift_moves_across_the_threshold(small_model):
    models, frame = small_model
    none = cs.interval_calls(models, frame, {"zero": pd.Series({"Nucleus_Shape_Area": 0.0})})
    assert none["STABLE"].all() and (none["PROBA_LOW"] == none["PROBA_HIGH"]).all()
    drifts = {"up": pd.Series({"Nucleus_Shape_Area": 4.0}),
              "down": pd.Series({"Nucleus_Shape_Area": -4.0})}
    iv = cs.interval_calls(models, frame, drifts)
    from cellfeat.models import routed_calls

    base = routed_calls(models, frame)
    thr = base["THRESHOLD"].iloc[0]
    # the flagged patients are exactly those whose range holds the threshold on both sides
    straddles = (iv["PROBA_LOW"] < thr) & (iv["PROBA_HIGH"] >= thr)
    assert (~iv["STABLE"]).sum() > 0
    assert ((~iv["STABLE"]) == straddles).all()
    assert (iv["PROBA_LOW"] <= base["PROBA"]).all() and (base["PROBA"] <= iv["PROBA_HIGH"]).all()
    assert set(", ".join(iv.loc[~iv["STABLE"], "MOVED_BY"]).split(", ")) <= {"up", "down"}


def test_score_sends_calls_a_colour_shift_could_move_to_cytometry(small_model):
    from pipelines.run.stages import score_frame

    models, frame = small_model
    plain = score_frame(models, frame)
    assert (plain["STABLE"] == "").all() and plain["PROBA_LOW"].isna().all()
    colour = {"drift": {"up": {"Nucleus_Shape_Area": 4.0}, "down": {"Nucleus_Shape_Area": -4.0}}}
    pred = score_frame(models, frame, colour=colour)
    moved = pred["STABLE"] == "no"
    assert moved.any() and (pred.loc[~moved, "STABLE"] == "yes").all()
    assert (pred.loc[moved, "TRIAGE"] == "cytometry").all()
    assert pred.loc[moved, "STATUS"].str.contains("near the threshold").all()
    assert not pred.loc[~moved, "STATUS"].str.contains("near the threshold").any()
    # the calls themselves are those of the plain score
    assert (pred["LABEL"] == plain["LABEL"]).all() and (pred["PROBA"] == plain["PROBA"]).all()


def test_transferred_bag_spreads_unsampled_cells_by_the_samples_deviations():
    cells = pd.DataFrame({"QC_STATUS": ["ok"] * 200, "F": np.zeros(200)})
    pos = [0, 1]
    shifted = pd.DataFrame({"QC_STATUS": ["ok", "ok"], "F": [0.0, 2.0]})  # drift 1, dev -1/+1
    resid = cs.cell_deltas(cells.iloc[pos].reset_index(drop=True), shifted, ["F"])
    resid = resid - resid.mean()
    out = cs.transferred_bag(cells, pd.Series({"F": 1.0}), pos, shifted, residuals=resid, seed=3)
    rest = out["F"].iloc[2:]
    assert set(rest) == {0.0, 2.0}  # drift 1 plus one of the deviations, -1 or +1
    assert rest.std() == pytest.approx(1.0, abs=0.1)  # the bag spreads as the sample did
    assert out["F"].mean() == pytest.approx(1.0, abs=0.15)  # centred: the drift stays 1
    again = cs.transferred_bag(cells, pd.Series({"F": 1.0}), pos, shifted, residuals=resid,
                               seed=3)
    assert out.equals(again)  # the draw is fixed by the seed
    plain = cs.transferred_bag(cells, pd.Series({"F": 1.0}), pos, shifted)
    assert (plain["F"].iloc[2:] == 1.0).all()
