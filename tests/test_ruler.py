"""The red-cell ruler (cellfeat.ruler): synthetic red cells of a known diameter."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cellfeat.augment import rescale
from cellfeat.segment import segment_nucleus
from cellfeat.ruler import (CANONICAL_DIAMETER, CANONICAL_FIELD, MIN_RED_CELLS, red_cell_diameters, ruler_of,
                            to_canonical)

PLASMA, RED, PALLOR, CHROMATIN = (238, 222, 205), (200, 160, 178), (222, 200, 198), (85, 45, 125)


def smear(diameter=40, size=224, *, pairs=True, border=True, lymphocyte=True):
    """A smear image with whole red cells of ``diameter`` px (a paler centre: the central
    pallor), and, as the ruler must ignore them, red cells cut by the border, overlapping
    pairs and a lymphocyte's nucleus with a cytoplasm rim at the centre."""
    img = np.full((size, size, 3), PLASMA, np.uint8)
    r = diameter / 2
    whole = [(0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8), (0.5, 0.15)]
    for fx, fy in whole:
        c = (int(round(fx * size)), int(round(fy * size)))
        cv2.circle(img, c, int(round(r)), RED, -1, lineType=cv2.LINE_AA)
        cv2.circle(img, c, int(round(0.4 * r)), PALLOR, -1, lineType=cv2.LINE_AA)
    if border:  # centres on the border: half cells
        for c in ((0, size // 2), (size - 1, size // 2)):
            cv2.circle(img, c, int(round(r)), RED, -1, lineType=cv2.LINE_AA)
    if pairs:  # two cells overlapping by a third of a diameter
        cx, cy = int(0.5 * size), int(0.85 * size)
        for dx in (-int(0.33 * diameter), int(0.33 * diameter)):
            cv2.circle(img, (cx + dx, cy), int(round(r)), RED, -1, lineType=cv2.LINE_AA)
    if lymphocyte:
        cv2.circle(img, (size // 2, size // 2), int(0.7 * diameter), (182, 175, 215), -1)
        cv2.circle(img, (size // 2, size // 2), int(0.55 * diameter), CHROMATIN, -1)
    return img


@pytest.mark.parametrize("diameter", [30, 40, 46])
def test_median_diameter_of_whole_red_cells(diameter):
    # five whole cells of the drawn diameter; the border's half cells, the overlapping
    # pair and the lymphocyte are left out. Tolerance 4 %: the anti-aliased edge read at
    # half resolution (RULER_STEP = 2) is within a pixel of the drawn circle.
    d = red_cell_diameters(smear(diameter))
    assert len(d) == 5
    assert np.median(d) == pytest.approx(diameter, rel=0.04)


def test_pallor_open_and_filled():
    # without the pallor filled, each red cell would be a ring (far under a disk's area)
    img = smear(40, pairs=False, border=False, lymphocyte=False)
    d = red_cell_diameters(img)
    assert len(d) == 5 and np.median(d) == pytest.approx(40, rel=0.04)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_diameter_follows_the_magnification(factor):
    # rescale(x f) makes every red cell f times wider: the ruler follows within 4 %
    img = smear(40, size=300)
    d0 = np.median(red_cell_diameters(img))
    d1 = np.median(red_cell_diameters(rescale(img, factor)))
    assert d1 / d0 == pytest.approx(factor, rel=0.04)


def test_packed_smear_falls_back_to_the_default():
    # a smear packed with white cells (no red cell): none measured, the default ruler
    img = np.full((224, 224, 3), PLASMA, np.uint8)
    for c in ((56, 56), (168, 56), (56, 168), (168, 168), (112, 112)):
        cv2.circle(img, c, 40, CHROMATIN, -1)
    per = [red_cell_diameters(img)] * 10
    assert all(len(d) == 0 for d in per)
    assert ruler_of(per) == (CANONICAL_DIAMETER, "default", 0)


def test_ruler_of_is_the_median_over_every_red_cell():
    per = [np.array([40.0, 42.0]), np.array([]), np.array([44.0, 46.0, 48.0])]
    assert ruler_of(per) == (44.0, "patient", 5)
    assert ruler_of(per[:1]) == (CANONICAL_DIAMETER, "default", 2)  # under MIN_RED_CELLS
    assert MIN_RED_CELLS == 5


def test_to_canonical_scales_the_ruler():
    img = smear(40, size=150)
    out, ruler = to_canonical(img, 40.0)
    # factor D0 / D: a 150 px image becomes round(150 * 45.6 / 40) = 171 px, its ruler
    # 40 * 171 / 150 = 45.6 px
    assert out.shape[:2] == (round(150 * CANONICAL_DIAMETER / 40),) * 2
    assert ruler == pytest.approx(40 * 171 / 150)
    assert np.median(red_cell_diameters(out)) == pytest.approx(CANONICAL_DIAMETER, rel=0.04)
    # a larger one is centre-cropped to the canonical field of view: 224 px of 340
    big, ruler = to_canonical(smear(30), 30.0)
    assert big.shape[:2] == (CANONICAL_FIELD, CANONICAL_FIELD)
    assert ruler == pytest.approx(30 * 340 / 224)
    # within 1 % of the canonical ruler the image is left as it is
    same, ruler = to_canonical(img, CANONICAL_DIAMETER * 1.005)
    assert same is img and ruler == CANONICAL_DIAMETER * 1.005


# ------------------------------------------------------------------ real data (issue 29)

WBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "wbc-tecom"


def _dlmi_nucleus_diameters(root, per_patient=3):
    """Lymphocyte nucleus equivalent diameters, in red-cell diameters, of the first
    ``per_patient`` images of every dlmi training patient, each patient's ruler measured on
    all its images (as the feature stage does)."""
    from cellfeat.data import load_cohort
    from pipelines.run import tasks

    cohort = load_cohort(root)
    out = []
    for pid in cohort.clinical.index[cohort.clinical["SPLIT"] == "trainset"]:
        files = cohort.images.get(pid, [])
        if not files:
            continue
        images = tasks.decode_all(tasks.read_blobs(files))
        (ruler, _, _), _ = tasks.patient_ruler(images)
        for im in images[:per_patient]:
            canon, px = to_canonical(im, ruler)
            seg = segment_nucleus(canon)
            if seg.ok:
                a = np.count_nonzero(seg.nucleus) / px ** 2
                out.append(2 * np.sqrt(a / np.pi))
    return np.array(out)


@pytest.fixture
def wbc_root():
    if not (WBC / "labels.csv").is_file():
        pytest.skip(f"wbc-tecom not found at {WBC}")
    return WBC


@pytest.mark.realdata
@pytest.mark.xfail(strict=True, reason=(
    "wbc-tecom's red cells are pale ghost rings, broken and mostly cut by its 120 px crops: "
    "the ruler finds no whole red cell in any of its 300 images and falls back to the "
    "default (45.6 px), so its lymphocytes' nuclei read 0.98 red-cell diameters (44.8 px) "
    "against 1.38 on dlmi (all 9,948 usable cells); equal medians would need a wbc-tecom "
    "red cell of 32.5 px"))
def test_wbc_tecom_nucleus_in_red_cells_matches_dlmi(wbc_root, real_root):
    # the expert masks' nuclei (label 255) of the 53 lymphocytes, in the ruler found on
    # wbc-tecom's images (one lab, one magnification: one ruler for the set)
    labels = pd.read_csv(wbc_root / "labels.csv", dtype=str)
    images = [cv2.cvtColor(cv2.imread(str(wbc_root / "images" / f"{i}.png")), cv2.COLOR_BGR2RGB)
              for i in labels["IMAGE"]]
    ruler, source, _ = ruler_of([red_cell_diameters(im) for im in images])
    lym = labels.loc[labels["CELL_TYPE"] == "lymphocyte", "IMAGE"]
    nd = [2 * np.sqrt(np.count_nonzero(
        cv2.imread(str(wbc_root / "masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) == 255)
        / np.pi) / ruler for i in lym]
    dlmi = _dlmi_nucleus_diameters(real_root)
    # the bar: medians within 10 %
    assert source == "patient"
    assert np.median(nd) == pytest.approx(np.median(dlmi), rel=0.10)
