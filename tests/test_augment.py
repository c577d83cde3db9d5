"""Tests of cellfeat.augment: each colour change against its formula worked by hand, then
what the issue asks of a shifted cell (masks kept, colour-normalised features within a
tolerance derived below)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellfeat import augment
from cellfeat.augment import (RANDOM_RANGES, SHIFT_PANEL, ColourShift, gamma, illumination,
                              jpeg, random_shift, scale_optical_density, stain_balance,
                              stain_strength, white_balance)
from cellfeat.features import FEATURE_NAMES


def flat(rgb, size=4):
    return np.tile(np.asarray(rgb, np.uint8), (size, size, 1))


# ---------------------------------------------------------------- formulas by hand


def test_white_balance_multiplies_each_channel_and_clips():
    out = white_balance(flat((100, 200, 250)), (1.04, 1.0, 1.10))
    # 100·1.04 = 104; 200·1 = 200; 250·1.1 = 275 -> clipped to 255
    assert out[0, 0].tolist() == [104, 200, 255]


def test_gamma_by_hand():
    out = gamma(flat((0, 128, 255)), 0.92)
    # 255·(128/255)^0.92 = 255·exp(0.92·ln 0.50196) = 135.2 -> 135; 0 and 255 are fixed
    assert out[0, 0].tolist() == [0, 135, 255]


def test_srgb_round_trip_and_reference_value():
    v = np.linspace(0, 1, 11)
    assert np.allclose(augment.linear_to_srgb(augment.srgb_to_linear(v)), v)
    # sRGB 0.5 decodes to 0.21404 (IEC 61966-2-1: ((0.5+0.055)/1.055)^2.4)
    assert augment.srgb_to_linear(0.5) == pytest.approx(0.21404, abs=1e-5)


def test_optical_density_scaling_by_hand():
    img = flat((128, 128, 128))
    out = scale_optical_density(img, (2.0, 1.0, 0.5), light=(255, 255, 255))
    # light at 255 -> x0 = 1; T = srgb_to_linear(128/255) = 0.21586.
    # s = 2: T² = 0.046597 -> sRGB 0.23888 -> 60.9 -> 61
    # s = 0.5: √T = 0.46461 -> sRGB 0.70895 -> 180.8 -> 181
    assert out[0, 0].tolist() == [61, 128, 181]


def test_optical_density_leaves_background_and_brighter_pixels_alone():
    img = flat((240, 230, 220))
    img[0, 0] = (250, 250, 250)  # brighter than the light on every channel
    out = scale_optical_density(img, (1.3, 1.3, 1.3), light=(240, 230, 220))
    assert out[1, 1].tolist() == [240, 230, 220]
    assert out[0, 0].tolist() == [250, 250, 250]


def test_stain_strength_darkens_stained_pixels_only():
    img = flat((235, 225, 210), size=10)
    img[5, 5] = (90, 50, 130)  # a nucleus pixel
    out = stain_strength(img, 1.2)
    assert out[0, 0].tolist() == [235, 225, 210]  # the background is the light
    assert (out[5, 5].astype(int) < img[5, 5]).all()


def test_stain_balance_bluer_absorbs_more_red_less_blue():
    img = flat((235, 225, 210), size=10)
    img[5, 5] = (140, 100, 170)
    out = stain_balance(img, 0.1)
    r, g, b = out[5, 5].astype(int)
    assert r < 140 and g == 100 and b > 170


def test_illumination_is_the_bright_percentile():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :, 0] = np.arange(100).reshape(10, 10)  # values 0..99, one pixel each
    img[:, :, 1] = 50
    # the 99th percentile of 100 distinct values: the 99th smallest, 98 (and at least 1)
    assert illumination(img).tolist() == [98.0, 50.0, 1.0]


def test_jpeg_is_deterministic_and_close():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(150, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
    a, b = jpeg(img, 70), jpeg(img, 70)
    assert (a == b).all()
    assert np.abs(a.astype(int) - img).mean() < 10
    with pytest.raises(ValueError):
        jpeg(img, 0)


def test_identity_shift_and_validation():
    img = flat((10, 120, 250))
    assert (ColourShift().apply(img) == img).all()
    with pytest.raises(ValueError):
        ColourShift(gains=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError):
        ColourShift(stain_blue=1.5)
    with pytest.raises(ValueError):
        white_balance(np.zeros((4, 4), np.uint8), (1, 1, 1))


def test_composition_equals_steps_in_order():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    s = ColourShift(gains=(1.05, 1.0, 0.95), gamma=0.9)
    step = gamma(white_balance(img, s.gains), s.gamma)
    # the LUT rounds once where the steps round twice: at most one grey level apart
    assert np.abs(s.apply(img).astype(int) - step).max() <= 1


def test_panel_is_fixed_and_named():
    names = [s.name for s in SHIFT_PANEL]
    assert len(set(names)) == len(names)
    assert all(s.description for s in SHIFT_PANEL)
    # the two shifts of issue 14
    warm = SHIFT_PANEL[0]
    assert warm.gamma == 0.92 and warm.gains[0] > 1 > warm.gains[2]
    blue = SHIFT_PANEL[1]
    assert blue.stain_strength > 1 and blue.stain_blue > 0
    assert len({s.key for s in SHIFT_PANEL}) == len(SHIFT_PANEL)


@pytest.mark.parametrize("seed", range(20))
def test_random_shift_is_seeded_and_in_range(seed):
    s = random_shift(seed)
    assert s == random_shift(seed) and s.key == random_shift(seed).key
    assert all(RANDOM_RANGES["gain"][0] <= g <= RANDOM_RANGES["gain"][1] for g in s.gains)
    assert RANDOM_RANGES["gamma"][0] <= s.gamma <= RANDOM_RANGES["gamma"][1]
    lo, hi = RANDOM_RANGES["stain_strength"]
    assert lo <= s.stain_strength <= hi
    assert abs(s.stain_blue) <= RANDOM_RANGES["stain_blue"][1]
    assert s.jpeg_quality is None or 65 <= s.jpeg_quality <= 95


# ---------------------------------------------------------------- a shifted cell

N_CELLS = 16
#: Shifts checked on cells: the panel and random draws nobody tuned against.
SHIFTS = list(SHIFT_PANEL) + [random_shift(np.random.default_rng([14, i])) for i in range(3)]


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def cells():
    """Synthetic cells whose segmentation matches their ground truth (nucleus IoU >= 0.9):
    a cell the segmentation already gets wrong says nothing about colour."""
    from cellfeat.segment import segment_nucleus
    from cellfeat.synthetic import draw_cell, sample_patient

    rng = np.random.default_rng(0)
    out = []
    while len(out) < N_CELLS:
        image, nucleus, _ = draw_cell(rng, sample_patient(rng, len(out) % 2))
        seg = segment_nucleus(image)
        if seg.ok and _iou(seg.nucleus, nucleus) >= 0.9:
            out.append((image, seg))
    return out


def _kind(shift) -> str:
    return "jpeg" if shift.jpeg_quality is not None else "colour"


def _moved(cells, shift, mask):
    """(cell index, status, IoU) of each cell whose ``mask`` ("nucleus" or "cell") has IoU
    < 0.95 with its unshifted self (issue 14: a shifted copy keeps its masks)."""
    from cellfeat.segment import segment_nucleus

    bad = []
    for k, (image, seg) in enumerate(cells):
        moved = segment_nucleus(shift.apply(image))
        iou = _iou(getattr(seg, mask), getattr(moved, mask)) if moved.ok else 0.0
        if iou < 0.95:
            bad.append((k, moved.status, round(float(iou), 3)))
    return bad


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: s.name)
def test_shift_keeps_nucleus_masks(cells, shift):
    bad = _moved(cells, shift, "nucleus")
    assert not bad, f"cells whose nucleus moved under {shift.name}: {bad}"


def _cell_mask_params():
    # Measured with the segmentation of issue 22 (colour read relative to each image's
    # plasma): every colour shift keeps all 16 cell masks, the random draw random-3112ec61
    # included (it moved one cell to IoU 0.79 when the cell was found by hue). Strict
    # xfail where it does not, so a mark goes the day its case passes.
    jpeg = ("JPEG re-encoding smears the pale cytoplasm's colour at its edge: one synthetic "
            "cell in 16 falls to IoU 0.94 (quality 70) and 0.94 (the draw at quality 88)")
    out = []
    for s in SHIFTS:
        marks = [pytest.mark.xfail(reason=jpeg, strict=True)] if _kind(s) == "jpeg" else []
        out.append(pytest.param(s, id=s.name, marks=marks))
    return out


@pytest.mark.parametrize("shift", _cell_mask_params())
def test_shift_keeps_cell_masks(cells, shift):
    bad = _moved(cells, shift, "cell")
    assert not bad, f"cells whose cell mask moved under {shift.name}: {bad}"


def _families():
    from cellfeat.features import FEATURE_NAMES

    fam = {}
    for n in FEATURE_NAMES:
        parts = n.split("_")
        fam.setdefault(parts[1] if len(parts) > 2 else "Other", []).append(n)
    return fam


@pytest.fixture(scope="module")
def drift(cells):
    """Systematic change of each feature family under each shift.

    For feature f over the cells segmented "ok" both ways, z_f = |mean(f(shifted) −
    f(original))| / sd(f across the original cells): how far the shift moves a bag's mean
    of f, in cell-to-cell spreads. A family's drift is the median of z_f over its features.
    The signed mean matters, not each cell's |change|: a patient's call reads bag
    statistics, where cell-level noise averages out and a colour shift, the same for every
    cell, does not.
    """
    from cellfeat.features import FEATURE_NAMES, compute_features
    from cellfeat.segment import segment_nucleus

    names = list(FEATURE_NAMES)
    base = pd.DataFrame([compute_features(im, seg) for im, seg in cells])[names]
    sd = base.std(ddof=1).where(lambda s: s > 0)
    fam = _families()
    out = {}
    for shift in SHIFTS:
        rows, keep = [], []
        for im, _ in cells:
            im2 = shift.apply(im)
            seg2 = segment_nucleus(im2)
            keep.append(seg2.ok)
            rows.append(compute_features(im2, seg2) if seg2.ok else {})
        d = (pd.DataFrame(rows, columns=names) - base)[np.array(keep)]
        z = (d.mean() / sd).abs()
        out[shift.name] = {f: float(np.nanmedian(z[cols])) for f, cols in fam.items()}
    return out


#: Tolerance of a family's drift: 1/√80 = 0.11. A dev patient has about 80 cells (9,698
#: images of 120 dlmi patients), so the mean of a feature over a bag already varies by
#: sd/√80 with which cells the analyser happened to photograph; a colour shift that moves
#: the bag mean by less than that is lost in the sampling noise the models are trained
#: with.
TOLERANCE = 1 / np.sqrt(80)

#: Families not invariant yet under some kind of shift, with the reason (xfail, never a
#: looser tolerance). Measured with features revision 6 on these 16 cells.
NOT_YET = {
    ("Colour", "jpeg"): "JPEG re-encoding (4:2:0 chroma subsampling, quantisation) smears "
    "colour across region edges: a local change that references in the same image cannot "
    "cancel (colour bag bias 0.25 cell SD at quality 70, 0.14 at 88)",
    ("Texture", "jpeg"): "JPEG re-encoding removes pixel-scale chromatin detail that the "
    "GLCM measures: texture bag bias 0.20 cell SD at quality 70, 0.25 at 88 here; on dlmi "
    "the nucleus GLCM features' bag means move 1.6-2.1 cell SDs at quality 70",
}


def _drift_params():
    out = []
    for f in ("Shape", "Texture", "Colour"):
        for s in SHIFTS:
            why = NOT_YET.get((f, _kind(s)))
            marks = [pytest.mark.xfail(reason=why, strict=False)] if why else []
            out.append(pytest.param(f, s.name, marks=marks, id=f"{f}-{s.name}"))
    return out


@pytest.mark.parametrize("fam,shift", _drift_params())
def test_features_within_tolerance(drift, fam, shift):
    assert drift[shift][fam] <= TOLERANCE, (
        f"{fam} features' bag means move {drift[shift][fam]:.3f} cell SDs under {shift}")


# ---------------------------------------------------------------- references on real images

DLMI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dlmi"
#: Colour features read as optical densities against the image's own plasma and red cells
#: (cellfeat.features). The OD heterogeneities are left out: they are coefficients of
#: variation of the per-pixel density D of texture (linear light), which the references
#: enter only as an offset, and which gamma on encoded values moves 0.25-0.28 cell SD.
REFERENCE_RELATIVE = [n for n in FEATURE_NAMES if "_Colour_OD_" in n and "Heterogeneity" not in n]
#: Gain, gamma and stain-strength shifts: the panel's colour shifts, the largest red gain of
#: RANDOM_RANGES (dlmi's plasma is at 250-254 in red: +6 % saturates it, the case of issue
#: 22), a gain on every channel, and the ends of RANDOM_RANGES' gamma and stain strength
#: one at a time.
REFERENCE_SHIFTS = [s for s in SHIFT_PANEL if s.jpeg_quality is None] + [
    ColourShift("red-gain-1.06", gains=(1.06, 1.0, 1.0)),
    ColourShift("gains-1.05", gains=(1.05, 1.05, 1.05)),
    ColourShift("gamma-0.88", gamma=0.88), ColourShift("gamma-1.12", gamma=1.12),
    ColourShift("stain-0.85", stain_strength=0.85), ColourShift("stain-1.2", stain_strength=1.2)]
#: Not yet within the tolerance, with the reason (xfail, never a looser tolerance).
REFERENCE_NOT_YET = {
    "gamma-1.12": "measured 0.116 cell SD (Nucleus_Colour_OD_G_RelRBC) against 0.112: gamma "
    "acts on encoded values and a stain on linear light, and no one encoding of OD cancels "
    "both (cellfeat.features, 'The offset c0'); 0.110 with another sample of masks",
}


@pytest.fixture(scope="module")
def dev_cells():
    """One image from each of 30 labelled dev patients (every 4th by ID), the first of its
    first ten that segments "ok", with its segmentation."""
    from cellfeat.data import load_cohort, read_image
    from cellfeat.segment import segment_nucleus

    if not (DLMI / "trainset" / "trainset_true.csv").is_file():
        pytest.skip(f"real data not found at {DLMI}")
    cohort = load_cohort(DLMI)
    labelled = cohort.clinical.index[cohort.clinical["LABEL"] >= 0]
    out = []
    for pid in sorted(labelled)[::4][:30]:
        for f in cohort.images[pid][:10]:
            image = read_image(f)
            seg = segment_nucleus(image)
            if seg.ok:
                out.append((image, seg))
                break
    assert len(out) == 30
    return out


@pytest.fixture(scope="module")
def reference_drift(dev_cells):
    """|mean change| of each reference-relative colour feature over the 30 cells under each
    shift, in SDs of the feature across the 30 (cells of 30 patients), the masks held fixed
    (the references are on trial here, not the segmentation)."""
    from cellfeat.features import compute_features

    names = REFERENCE_RELATIVE
    base = pd.DataFrame([compute_features(im, seg, names) for im, seg in dev_cells])
    sd = base.std(ddof=1)
    out = {}
    for shift in REFERENCE_SHIFTS:
        moved = pd.DataFrame([compute_features(shift.apply(im), seg, names)
                              for im, seg in dev_cells])
        out[shift.name] = ((moved - base).mean() / sd).abs()
    return out


def _reference_params():
    out = []
    for s in REFERENCE_SHIFTS:
        why = REFERENCE_NOT_YET.get(s.name)
        marks = [pytest.mark.xfail(reason=why, strict=False)] if why else []
        out.append(pytest.param(s.name, id=s.name, marks=marks))
    return out


@pytest.mark.parametrize("shift", _reference_params())
def test_reference_relative_colour_on_dev_images(reference_drift, shift):
    # Tolerance TOLERANCE (above): a bag mean's own sampling noise. Before issue 22 (plasma
    # taken at 255 where saturated, OD on ln(v + 1)) the worst feature moved 0.64 cell SD
    # under red-gain-1.06, 0.36 under warm-wb, 0.19 under blue-dark-stain.
    z = reference_drift[shift]
    assert len(z) == 8 and z.notna().all()
    assert z.max() <= TOLERANCE, (
        f"{z.idxmax()} moves {z.max():.3f} cell SDs under {shift}:\n{z.round(3)}")


# ------------------------------------------------------------------ rescaling (issue 29)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_rescale_scales_a_disc(factor):
    import cv2

    from cellfeat.augment import rescale

    # a disc of radius 40 at the centre of a 224 px crop: radius 40 f afterwards, area
    # pi (40 f)^2 (paper value; the anti-aliased edge within 3 %), same crop size, and the
    # plasma around it
    img = np.full((224, 224, 3), (238, 222, 205), np.uint8)
    cv2.circle(img, (112, 112), 40, (85, 45, 125), -1)
    out = rescale(img, factor)
    assert out.shape == img.shape
    dark = np.count_nonzero(out[..., 1] < 130)
    assert dark == pytest.approx(np.pi * (40 * factor) ** 2, rel=0.03)
    assert out[0, 0].tolist() == [238, 222, 205]


def test_stability_panel_is_colour_then_scale():
    from cellfeat.augment import SCALE_PANEL, SHIFT_PANEL, STABILITY_PANEL

    assert STABILITY_PANEL == SHIFT_PANEL + SCALE_PANEL
    assert {s.factor for s in SCALE_PANEL} >= {0.8, 1.25}
    assert len({s.key for s in STABILITY_PANEL}) == len(STABILITY_PANEL)
