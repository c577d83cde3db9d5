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
