"""cellfeat.extract: images or paths in, one row per image out, failures carry a reason."""

import numpy as np

from cellfeat.extract import CellFeatureExtractor
from cellfeat.features import FEATURE_NAMES
from cellfeat.synthetic import draw_cell, sample_patient


def test_rows_follow_input_and_failures_have_reasons(tmp_path):
    rng = np.random.default_rng(0)
    img, _, _ = draw_cell(rng, sample_patient(rng, 1))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    blank = np.full((224, 224, 3), 230, np.uint8)
    ex = CellFeatureExtractor().fit()
    out = ex.transform([img, bad, blank, str(bad)])
    assert list(out.columns) == ["QC_STATUS", "QC_DETAIL", *FEATURE_NAMES]
    assert (out["QC_DETAIL"][1:] != "").all()  # every NaN row says why
    assert out["QC_STATUS"][0] == "ok" and out["QC_STATUS"][2] == "blank_image"
    assert out["QC_STATUS"][1].startswith("unreadable") and out["QC_STATUS"][3].startswith("unreadable")
    # a drawn cell has plasma, red cells, nucleus and cytoplasm: every feature but
    # the nucleolus-free ones is defined (at most the ratio of a zero texture contrast)
    assert out.loc[0, FEATURE_NAMES].notna().sum() >= len(FEATURE_NAMES) - 2
    assert out.loc[1:, FEATURE_NAMES].isna().all().all()


def test_subset_and_validation():
    ex = CellFeatureExtractor(features=["Nucleus_Shape_Area"])
    assert list(ex.fit().get_feature_names_out()) == ["QC_STATUS", "QC_DETAIL", "Nucleus_Shape_Area"]
    import pytest

    with pytest.raises(ValueError, match="unknown feature"):
        CellFeatureExtractor(features=["Nope"]).fit()
    with pytest.raises(ValueError, match="method"):
        CellFeatureExtractor(method="x").fit()


def test_sizes_are_never_stretched():
    from cellfeat.extract import measure_image

    huge = np.full((3000, 2500, 3), 230, np.uint8)
    row, seg = measure_image(huge)
    assert row["QC_STATUS"].startswith("rejected") and seg is None
    rng = np.random.default_rng(3)
    img, nucleus, _ = draw_cell(rng, sample_patient(rng, 1))
    small = img[62:162, 62:162]  # a 100x100 crop around the cell, processed as it is
    row, seg = measure_image(small)
    assert row["QC_STATUS"] == "ok" and seg.nucleus.shape == (100, 100)
    assert abs(row["Nucleus_Shape_Area"] - nucleus.sum()) / nucleus.sum() < 0.1


def test_nucleus_crop_inside_and_at_the_border():
    import cv2

    from cellfeat.extract import nucleus_crop
    from cellfeat.segment import segment_nucleus

    rng = np.random.default_rng(5)
    img, _, _ = draw_cell(rng, sample_patient(rng, 1))

    def reference(image, seg, window=96, size=32):  # always through a reflected border
        m = cv2.moments(seg.nucleus.view(np.uint8), binaryImage=True)
        cy, cx = int(round(m["m01"] / m["m00"])), int(round(m["m10"] / m["m00"]))
        half = window // 2
        padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REFLECT_101)
        return cv2.resize(padded[cy:cy + window, cx:cx + window], (size, size),
                          interpolation=cv2.INTER_AREA)

    seg = segment_nucleus(img)
    assert seg.ok
    for window in (96, 200):  # a window inside the image, then one leaving it
        np.testing.assert_array_equal(nucleus_crop(img, seg, window=window),
                                      reference(img, seg, window=window))
