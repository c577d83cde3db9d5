"""cellfeat.segment: nucleus and whole-cell accuracy against true masks (synthetic, hand-drawn
shapes, expert-drawn real cells), statuses, errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from cellfeat.data import load_cohort, read_image
from cellfeat.segment import METHODS, STATUSES, segment_nucleus, threshold_otsu3
from cellfeat.synthetic import mask_paths


def _ious(root, method):
    c = load_cohort(root)
    ious = []
    for pid, files in c.images.items():
        split = c.clinical.loc[pid, "SPLIT"]
        for f in files:
            seg = segment_nucleus(read_image(f), method)
            gt = cv2.imread(str(mask_paths(root, split, pid, f.name)[0]), 0) > 0
            ious.append((seg.nucleus & gt).sum() / max((seg.nucleus | gt).sum(), 1))
    return np.array(ious)


@pytest.mark.parametrize("method", METHODS)
def test_nucleus_iou_on_synthetic(synthetic_root, method):
    # targets from the segmentation issue: median IoU >= 0.95, 5th percentile >= 0.85
    ious = _ious(synthetic_root, method)
    assert len(ious) > 200
    assert np.median(ious) >= 0.95
    assert np.percentile(ious, 5) >= 0.85


def _disc_image(radius=30, centre=(112, 112), size=224):
    img = np.full((size, size, 3), (238, 222, 205), np.uint8)
    cv2.circle(img, centre, radius, (85, 45, 125), -1)
    return img


def test_disc_is_found_with_convex_hull():
    seg = segment_nucleus(_disc_image())
    assert seg.status == "ok"
    # a filled digital disc of radius 30 has about pi*30^2 = 2827 pixels
    assert abs(seg.nucleus.sum() - np.pi * 30 ** 2) / (np.pi * 30 ** 2) < 0.03
    assert (seg.roc & seg.nucleus).sum() == 0
    assert seg.roc.sum() < 0.03 * seg.nucleus.sum()  # a disc is (nearly) its own hull
    assert (seg.nucleus <= seg.hull).all() and (seg.nucleus <= seg.cell).all()


def test_statuses():
    assert segment_nucleus(np.full((224, 224, 3), 200, np.uint8)).status == "blank_image"
    assert segment_nucleus(_disc_image(centre=(112, 55), radius=60)).status == "touches_border"
    img = _disc_image(radius=22, centre=(85, 112))
    cv2.circle(img, (140, 112), 22, (85, 45, 125), -1)
    assert segment_nucleus(img).status == "several_candidates"
    assert segment_nucleus(np.zeros((16, 16, 3), np.uint8)).status == "too_small"
    assert set(STATUSES) >= {"ok", "blank_image", "touches_border", "several_candidates",
                             "no_nucleus", "too_small", "touching_nuclei"}


def test_touching_nuclei_vs_notched_nucleus():
    # two discs of radius 26 whose centres are 50 px apart: a waist of half-width
    # sqrt(26^2 - 25^2) = 7 px between two cores of radius 26
    img = _disc_image(radius=26, centre=(87, 112))
    cv2.circle(img, (137, 112), 26, (85, 45, 125), -1)
    assert segment_nucleus(img).status == "touching_nuclei"
    # one disc with a notch cut into it is a single (kidney-shaped) nucleus
    kidney = _disc_image(radius=32)
    cv2.circle(kidney, (112, 75), 14, (238, 222, 205), -1)
    assert segment_nucleus(kidney).status == "ok"


def test_no_nucleus_far_from_centre():
    assert segment_nucleus(_disc_image(radius=12, centre=(25, 25))).status == "no_nucleus"


@pytest.mark.parametrize("bad", [np.zeros((10, 10)), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((50, 50, 3), np.float32)])
def test_rejects_non_rgb8(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        segment_nucleus(bad)


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        segment_nucleus(_disc_image(), "watershed")



def _mixture_hist(seed):
    # background, red cells + cytoplasm, nucleus: three Gaussian bumps on 0..255
    rng = np.random.default_rng(seed)
    means = np.sort(rng.uniform(20, 235, 3))
    sds, weights = rng.uniform(4, 25, 3), rng.dirichlet([4, 2, 1])
    values = np.concatenate([rng.normal(m, s, int(60000 * w)) for m, s, w in
                             zip(means, sds, weights)])
    return np.bincount(np.clip(values.round(), 0, 255).astype(int), minlength=256)


def _between_class(hist, t1, t2):
    levels = np.arange(256)
    total = 0.0
    for cls in (levels <= t1, (levels > t1) & (levels <= t2), levels > t2):
        p, m = hist[cls].sum(), (hist[cls] * levels[cls]).sum()
        total += m * m / p if p else -np.inf
    return total


@pytest.mark.parametrize("seed", range(40))
def test_otsu3_matches_exhaustive_search(seed):
    # the coarse-to-fine search reaches the exhaustive optimum of the Otsu criterion; where
    # the criterion is flat (overlapping classes) the thresholds may differ by a few levels
    from skimage.filters import threshold_multiotsu

    hist = _mixture_hist(seed).astype(float)
    t1, t2 = threshold_otsu3(hist)
    e1, e2 = threshold_multiotsu(hist=(hist, np.arange(256)), classes=3)
    P, M = np.cumsum(hist), np.cumsum(hist * np.arange(256))  # exhaustive, all a < b
    a, b = np.triu_indices(255, k=1)
    parts = [(P[a], M[a]), (P[b] - P[a], M[b] - M[a]), (P[-1] - P[b], M[-1] - M[b])]
    with np.errstate(divide="ignore", invalid="ignore"):
        crit = sum(np.where(p > 0, m * m / p, -np.inf) for p, m in parts)
    best = crit.max()
    # between-class variance (times N): the criterion minus its constant part
    const = (hist * np.arange(256)).sum() ** 2 / hist.sum()
    assert _between_class(hist, t1, t2) - const >= 0.999 * (best - const)
    assert _between_class(hist, e1, e2) <= best + 1e-9 * best


def test_otsu3_with_values_closer_than_the_grid():
    hist = np.zeros(256)
    hist[[100, 101, 125]] = [500, 400, 300]
    t1, t2 = threshold_otsu3(hist)  # the only split: {100} | {101} | {125}
    assert t1 == 100 and 101 <= t2 < 125
    with pytest.raises(ValueError, match="three"):
        threshold_otsu3(np.bincount([3, 3, 200], minlength=256))


def test_box_holds_every_mask(synthetic_root):
    c = load_cohort(synthetic_root)
    for f in [f for files in c.images.values() for f in files][:60]:
        seg = segment_nucleus(read_image(f))
        if not seg.ok:
            continue
        x0, y0, x1, y1 = seg.box
        inside = np.zeros(seg.nucleus.shape, bool)
        inside[y0:y1, x0:x1] = True
        for mask in (seg.nucleus, seg.hull, seg.cell):
            assert not (mask & ~inside).any()
        # and the box is tight
        union = seg.nucleus | seg.hull | seg.cell
        assert union[y0].any() and union[y1 - 1].any()
        assert union[:, x0].any() and union[:, x1 - 1].any()


# ---------------------------------------------------------------- property-based
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from cellfeat.data import ImageReadError, to_rgb8  # noqa: E402
from cellfeat.extract import measure_image  # noqa: E402


@st.composite
def any_image(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.bool_]))
    h, w = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    kind = draw(st.sampled_from(["random", "flat", "blobs"]))
    if kind == "random":
        return draw(arrays(dtype, shape))
    img = np.zeros(shape, dtype)
    if kind == "blobs" and dtype != np.bool_:
        hi = np.iinfo(dtype).max
        img[...] = hi * 0.9
        yy, xx = np.mgrid[:h, :w]
        for _ in range(draw(st.integers(1, 3))):
            cy, cx, r = draw(st.integers(0, h)), draw(st.integers(0, w)), draw(st.integers(2, 40))
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = hi * 0.3
    return img


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_image(), st.sampled_from(METHODS))
def test_any_array_gets_a_documented_answer(raw, method):
    # nothing raises outside the documented errors; every feature is finite or NaN with
    # a recorded reason
    try:
        img = to_rgb8(raw)
    except ImageReadError:
        return
    row, _ = measure_image(img, method=method)
    assert row["QC_STATUS"] in STATUSES or row["QC_STATUS"].startswith("rejected")
    values = np.array([v for k, v in row.items() if not k.startswith("QC_")], float)
    assert not np.isinf(values).any()
    if np.isnan(values).any():
        assert row["QC_DETAIL"]


def test_component_trimmed_by_the_final_opening():
    # a nucleus with a long thin tail: the tail survives the 3x3 opening of the mask but not
    # the 5x5 opening of the nucleus, so the nucleus ends up much smaller than the component
    img = np.full((224, 224, 3), (235, 215, 220), np.uint8)
    cv2.circle(img, (112, 112), 22, (90, 40, 130), -1)
    cv2.line(img, (112, 112), (215, 30), (90, 40, 130), 2)
    seg = segment_nucleus(img)
    assert seg.ok
    assert abs(seg.nucleus.sum() - np.pi * 22 ** 2) < 0.05 * np.pi * 22 ** 2
    assert seg.cell.sum() >= seg.nucleus.sum()


# ---------------------------------------------------------------- whole cell
# colours of cellfeat.synthetic.draw_cell (RGB); DEEP_CYTO a little darker than its deep blue
PLASMA, RBC = (238, 222, 205), (200, 160, 178)
PALE_CYTO, DEEP_CYTO = (182, 175, 215), (105, 115, 190)
CHROMATIN, PALE_CHROMATIN = (85, 45, 125), (140, 95, 175)


def _smear(seed=0, rbc_centres=((30, 30), (190, 40), (35, 190), (195, 195), (112, 20),
                                (20, 112), (205, 112), (112, 205))):
    # cream plasma with red cells around the border, a little noise (as a JPEG would have)
    rng = np.random.default_rng(seed)
    img = np.full((224, 224, 3), PLASMA, np.float32)
    for c in rbc_centres:
        cv2.circle(img, c, 19, RBC, -1)
    img += rng.normal(0, 2, img.shape)
    return img


def _u8(img):
    return np.clip(cv2.GaussianBlur(img, (0, 0), 0.7), 0, 255).astype(np.uint8)


def _mask(shape, draw):
    m = np.zeros(shape, np.uint8)
    draw(m)
    return m.astype(bool)


def test_pale_cytoplasm_against_cream_plasma():
    img = _smear()
    cv2.circle(img, (112, 112), 50, PALE_CYTO, -1)
    cv2.circle(img, (112, 112), 28, CHROMATIN, -1)
    seg = segment_nucleus(_u8(img))
    assert seg.ok
    truth = _mask((224, 224), lambda m: cv2.circle(m, (112, 112), 50, 1, -1))
    # the cell is the drawn disc of radius 50 (pi * 50^2 = 7854 px), within the blur
    assert (seg.cell & truth).sum() / (seg.cell | truth).sum() > 0.93
    assert (seg.cytoplasm == (seg.cell & ~seg.nucleus)).all()
    assert seg.cell_contour.shape[1] == 2 and len(seg.cell_contour) > 100
    assert set(seg.colours) == {"plasma", "red_cells", "cytoplasm", "chromatin"}
    # the cytoplasm is bluer (lower b*) than the plasma, by construction of the colours
    assert seg.colours["cytoplasm"][2] < seg.colours["plasma"][2] - 10


def test_cytoplasm_wraps_red_cells():
    # red cells pressed into the cytoplasm stay out of the cell; the cytoplasm between them
    # stays in
    img = _smear()
    cv2.circle(img, (112, 112), 52, PALE_CYTO, -1)
    cv2.circle(img, (112, 112), 27, CHROMATIN, -1)
    bites = [(112 + 62, 112), (112 - 44, 112 + 44)]
    for c in bites:
        cv2.circle(img, c, 20, RBC, -1)
    seg = segment_nucleus(_u8(img))
    assert seg.ok
    rbc = _mask((224, 224), lambda m: [cv2.circle(m, c, 20, 1, -1) for c in bites])
    truth = _mask((224, 224), lambda m: cv2.circle(m, (112, 112), 52, 1, -1)) & ~rbc
    assert (seg.cell & rbc).sum() < 0.05 * rbc.sum()
    assert (seg.cell & truth).sum() / (seg.cell | truth).sum() > 0.9
    assert seg.red_cells[rbc].mean() > 0.5 and not (seg.red_cells & seg.cell).any()


def test_deep_blue_cytoplasm_is_not_nucleus():
    # pale chromatin inside deep-blue cytoplasm about as dark on the contrast channel
    img = _smear()
    cv2.circle(img, (112, 112), 42, DEEP_CYTO, -1)
    cv2.circle(img, (112, 112), 30, PALE_CHROMATIN, -1)
    seg = segment_nucleus(_u8(img))
    nuc = _mask((224, 224), lambda m: cv2.circle(m, (112, 112), 30, 1, -1))
    cell = _mask((224, 224), lambda m: cv2.circle(m, (112, 112), 42, 1, -1))
    assert seg.ok
    assert (seg.nucleus & nuc).sum() / (seg.nucleus | nuc).sum() > 0.9
    assert (seg.cell & cell).sum() / (seg.cell | cell).sum() > 0.9


def test_touching_neighbour_stays_out():
    # a second white cell whose cytoplasm touches ours: its nucleus is not part of our cell
    img = _smear()
    cv2.circle(img, (150, 112), 38, PALE_CYTO, -1)
    cv2.circle(img, (100, 112), 38, PALE_CYTO, -1)
    cv2.circle(img, (100, 112), 24, CHROMATIN, -1)
    cv2.circle(img, (165, 112), 22, CHROMATIN, -1)
    seg = segment_nucleus(_u8(img))
    other = _mask((224, 224), lambda m: cv2.circle(m, (165, 112), 22, 1, -1))
    assert seg.status in ("ok", "several_candidates")
    assert not (seg.cell & other).any()
    assert seg.cell[112, 70]  # our own cytoplasm, on the far side


def test_cell_statuses():
    img = _smear(rbc_centres=())
    cv2.circle(img, (112, 190), 45, PALE_CYTO, -1)  # the cytoplasm leaves the image
    cv2.circle(img, (112, 175), 25, CHROMATIN, -1)
    assert segment_nucleus(_u8(img)).status == "cell_touches_border"
    img = _smear()
    cv2.circle(img, (112, 112), 48, PALE_CYTO, -1)  # a nucleus and two lobes 4 px away
    cv2.circle(img, (100, 112), 22, CHROMATIN, -1)
    cv2.circle(img, (133, 131), 12, CHROMATIN, -1)
    cv2.circle(img, (133, 93), 12, CHROMATIN, -1)
    assert segment_nucleus(_u8(img)).status == "multi_lobed"
    assert {"multi_lobed", "cell_touches_border"} <= set(STATUSES)


def _hard_ious(n_per_kind=15, seed=11):
    from cellfeat.synthetic import HARD_CASES, hard_case

    rng = np.random.default_rng(seed)
    out = []
    for kind in HARD_CASES:
        for _ in range(n_per_kind):
            img, nuc, cell = hard_case(rng, kind)
            seg = segment_nucleus(img)
            out.append((kind, (seg.nucleus & nuc).sum() / (seg.nucleus | nuc).sum(),
                        (seg.cell & cell).sum() / (seg.cell | cell).sum()))
    return out


def test_hard_cases_nucleus_and_cell():
    # targets of issue 12: nucleus 5th percentile >= 0.85 on the synthetic hard cases;
    # the whole cell at least as good as on real lymphocytes (median >= 0.90)
    res = _hard_ious()
    nuc = np.array([r[1] for r in res])
    cell = np.array([r[2] for r in res])
    assert np.percentile(nuc, 5) >= 0.85
    assert np.median(cell) >= 0.9
    for kind in {r[0] for r in res}:
        assert np.median([r[2] for r in res if r[0] == kind]) >= 0.88, kind


def test_balance_to_white_by_hand():
    from cellfeat.segment import balance_to_white, white_point

    img = np.zeros((10, 10, 3), np.uint8)
    img[:] = (204, 240, 170)  # the plasma: every percentile of the image
    img[0, 0] = (100, 160, 60)
    assert white_point(img).tolist() == [204, 240, 170]
    out = balance_to_white(img)
    # gains 255/204 = 1.25, 255/240 = 1.0625, 255/170 = 1.5
    assert out[5, 5].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [125, 170, 90]


@pytest.mark.parametrize("gains", [(0.8, 1.0, 0.7), (1.0, 0.8, 0.75), (0.7, 0.85, 1.0)])
def test_masks_ignore_the_lamp_and_white_balance(gains):
    # strong per-channel gains (a yellow, a magenta, a blue cast; nothing clips): the masks
    # are read relative to the plasma, so they stay (only 8-bit rounding differs). Before
    # issue 22 the first cast cut a nucleus to IoU 0.52.
    from cellfeat.synthetic import draw_cell, sample_patient

    rng = np.random.default_rng(3)
    for i in range(12):
        img, _, _ = draw_cell(rng, sample_patient(rng, i % 2))
        tinted = cv2.transform(img, np.diag(gains).astype(np.float32))
        a, b = segment_nucleus(img), segment_nucleus(tinted)
        assert b.ok
        assert (a.nucleus & b.nucleus).sum() / (a.nucleus | b.nucleus).sum() >= 0.97
        assert (a.cell & b.cell).sum() / (a.cell | b.cell).sum() >= 0.97


def test_nucleus_in_random_palettes():
    # target of issue 22: nucleus IoU median and 5th percentile >= 0.85 on synthetic cells
    # each drawn in its own random palette (cellfeat.synthetic.PALETTE_RANGES); 200 cells,
    # because a 5th percentile of fewer moves by a few cells. Measured: median 0.981,
    # 5th percentile 0.921 (0.972 / 0.842 with the segmentation before issue 22).
    from cellfeat.synthetic import draw_cell, random_palette, sample_patient

    rng = np.random.default_rng([22, 1])
    ious = []
    for i in range(200):
        img, nuc, _ = draw_cell(rng, sample_patient(rng, i % 2), palette=random_palette(rng))
        seg = segment_nucleus(img)
        ious.append((seg.nucleus & nuc).sum() / max((seg.nucleus | nuc).sum(), 1))
    assert np.median(ious) >= 0.85 and np.percentile(ious, 5) >= 0.85


def test_whole_cell_iou_on_synthetic(synthetic_root):
    c = load_cohort(synthetic_root)
    ious = []
    for pid, files in c.images.items():
        split = c.clinical.loc[pid, "SPLIT"]
        for f in files[:6]:
            seg = segment_nucleus(read_image(f))
            gt = cv2.imread(str(mask_paths(synthetic_root, split, pid, f.name)[1]), 0) > 0
            ious.append((seg.cell & gt).sum() / max((seg.cell | gt).sum(), 1))
    assert np.median(ious) >= 0.9 and np.percentile(ious, 10) >= 0.8


WBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "wbc-tecom"


def test_real_lymphocytes_against_expert_masks():
    # 53 lymphocytes from another lab drawn by an expert (README of the folder); targets
    # of issue 12: whole-cell median IoU >= 0.90, nucleus median >= 0.92
    import pandas as pd

    if not (WBC / "labels.csv").is_file():
        pytest.skip(f"wbc-tecom not found at {WBC}")
    labels = pd.read_csv(WBC / "labels.csv", dtype=str)
    nuc, cell = [], []
    for name in labels.loc[labels["CELL_TYPE"] == "lymphocyte", "IMAGE"]:
        img = cv2.imread(str(WBC / "images" / f"{name}.png"))[:, :, ::-1].copy()
        mask = cv2.imread(str(WBC / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        seg = segment_nucleus(img)
        nuc.append((seg.nucleus & (mask == 255)).sum() / (seg.nucleus | (mask == 255)).sum())
        cell.append((seg.cell & (mask > 0)).sum() / (seg.cell | (mask > 0)).sum())
    assert len(nuc) == 53
    assert np.median(cell) >= 0.90 and np.median(nuc) >= 0.92


def test_nuclei_pressed_flat_are_touching_nuclei():
    # a disc of radius 40 nearly cut in two by a 2 px pale seam: two half-discs pressed flat, no
    # waist; the same seam stopping halfway is a crease in one nucleus
    img = _smear(rbc_centres=())
    cv2.circle(img, (112, 112), 40, CHROMATIN, -1)
    clump = img.copy()
    cv2.line(clump, (80, 112), (144, 112), PLASMA, 2)  # joined by 8 px at both ends
    assert segment_nucleus(_u8(clump)).status == "touching_nuclei"
    crease = img.copy()
    cv2.line(crease, (112, 112), (154, 112), PLASMA, 2)
    assert segment_nucleus(_u8(crease)).status == "ok"
