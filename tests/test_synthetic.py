"""cellfeat.synthetic: determinism, masks line up with the drawing, class signal."""

import hashlib

import cv2
import numpy as np

from cellfeat.synthetic import draw_cell, mask_paths, sample_patient, write_cohort


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    a = write_cohort(tmp_path / "a", n_train=3, n_test=1, cells=(2, 3), seed=3)
    b = write_cohort(tmp_path / "b", n_train=3, n_test=1, cells=(2, 3), seed=3)
    c = write_cohort(tmp_path / "c", n_train=3, n_test=1, cells=(2, 3), seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_masks_line_up_with_drawing():
    rng = np.random.default_rng(0)
    for label in (0, 1):
        p = sample_patient(rng, label)
        for _ in range(5):
            img, nucleus, cell = draw_cell(rng, p)
            assert img.shape == (224, 224, 3) and img.dtype == np.uint8
            assert nucleus.sum() > 500 and (nucleus <= cell).all()
            g = img[:, :, 1].astype(float)
            inner = cv2.erode(nucleus.astype(np.uint8), np.ones((5, 5))).astype(bool)
            ring = cv2.dilate(cell.astype(np.uint8), np.ones((9, 9))).astype(bool) & ~cell
            # chromatin absorbs green: the nucleus is darker in G than the plasma around
            assert g[inner].mean() < g[ring].mean() - 40


def test_written_masks_match_images(synthetic_root):
    img_path = next((synthetic_root / "trainset").glob("P*/000000.jpg"))
    n, c = mask_paths(synthetic_root, "trainset", img_path.parent.name, img_path.name)
    nuc = cv2.imread(str(n), cv2.IMREAD_GRAYSCALE) > 0
    img = cv2.imread(str(img_path))[:, :, ::-1]
    assert nuc.shape == img.shape[:2]
    assert img[nuc][:, 1].mean() < img[~cv2.imread(str(c), 0).astype(bool)][:, 1].mean() - 40


def test_class_signal_heterogeneity():
    # reactive patients' nuclei vary more in size than tumoral ones (by construction)
    rng = np.random.default_rng(1)
    spread = {0: [], 1: []}
    for label in (0, 1):
        for _ in range(6):
            p = sample_patient(rng, label)
            areas = [draw_cell(rng, p)[1].sum() for _ in range(8)]
            spread[label].append(np.std(areas) / np.mean(areas))
    assert np.mean(spread[0]) > np.mean(spread[1])


def test_hard_cases_masks_and_determinism():
    import pytest

    from cellfeat.synthetic import HARD_CASES, hard_case

    for kind in HARD_CASES:
        a = hard_case(np.random.default_rng(5), kind)
        b = hard_case(np.random.default_rng(5), kind)
        assert all((x == y).all() for x, y in zip(a, b))
        img, nucleus, cell = a
        assert (nucleus <= cell).all() and nucleus.sum() > 500
        g = img[:, :, 1].astype(float)
        inner = cv2.erode(nucleus.astype(np.uint8), np.ones((5, 5))).astype(bool)
        cyto = cv2.erode((cell & ~nucleus).astype(np.uint8), np.ones((3, 3))).astype(bool)
        if kind == "deep_blue_pale":
            # deep-blue cytoplasm as dark in green as pale chromatin, within 40 levels
            # (colours of draw_cell: G 130 x blue_depth 0.85-1.05 against 95 + texture)
            assert abs(g[cyto].mean() - g[inner].mean()) < 40
        if kind == "abundant_pale":
            # the cytoplasm is at least half a nucleus radius wide: its area at least
            # (1.5^2 - 1) = 1.25 times the nucleus's, less the elongation's spread
            assert cell.sum() - nucleus.sum() > nucleus.sum()
    with pytest.raises(ValueError, match="kind"):
        hard_case(np.random.default_rng(0), "unknown")


def test_wrapping_red_cells_stay_out_of_the_cell():
    from cellfeat.synthetic import hard_case

    rng = np.random.default_rng(2)
    for _ in range(5):
        img, nucleus, cell = hard_case(rng, "wrapping")
        # red cells bite into the cytoplasm: the cell is no longer convex
        cnts, _ = cv2.findContours(cell.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
        c = max(cnts, key=cv2.contourArea)
        assert cv2.contourArea(c) < 0.97 * cv2.contourArea(cv2.convexHull(c))


def test_random_palette_is_seeded_and_keeps_a_smear_readable():
    from cellfeat.synthetic import DEFAULT_PALETTE, PALETTE_RANGES, random_palette

    assert random_palette(4) == random_palette(4) != random_palette(5)
    k = PALETTE_RANGES["constraints"]
    lo, hi = PALETTE_RANGES["plasma"]
    plasmas = []
    for seed in range(200):
        p = random_palette(seed)
        plasma = np.array(p.plasma)
        assert ((lo <= plasma) & (plasma <= hi)).all()
        od = {n: np.log(plasma / np.array(getattr(p, n)))
              for n in ("red_cells", "cytoplasm", "chromatin", "pale_chromatin", "deep_cytoplasm")}
        # the documented constraints, on mean OD over the channels (small slack: float)
        assert od["chromatin"].mean() >= k["chromatin_over_others"] * max(
            od["red_cells"].mean(), od["cytoplasm"].mean()) - 1e-9
        assert od["red_cells"].mean() >= k["red_cells_min"] - 1e-9
        assert np.linalg.norm(od["cytoplasm"] - od["red_cells"]) >= k[
            "cytoplasm_red_cells_distance"] - 1e-9
        # pale chromatin and deep cytoplasm: a share of chromatin's density, as documented
        share = od["deep_cytoplasm"].mean() / od["chromatin"].mean()
        assert PALETTE_RANGES["deep_cytoplasm_share"][0] - 1e-9 <= share
        assert share <= PALETTE_RANGES["deep_cytoplasm_share"][1] + 1e-9
        plasmas.append(plasma)
    # wide: every channel of the plasma spans most of its range over 200 draws
    spread = np.ptp(np.array(plasmas), axis=0)
    assert (spread > 0.9 * (hi - lo)).all()
    assert DEFAULT_PALETTE.plasma == (238, 222, 205)  # the colours the generator always had


def test_cohort_in_random_palettes(tmp_path):
    import pytest

    a = write_cohort(tmp_path / "a", n_train=3, n_test=0, cells=(2, 2), seed=3, palette="random")
    b = write_cohort(tmp_path / "b", n_train=3, n_test=0, cells=(2, 2), seed=3, palette="random")
    assert _digest(a) == _digest(b)
    corners = {tuple(cv2.imread(str(p))[2, 2]) for p in sorted(a.rglob("000000.jpg"))}
    assert len(corners) == 3  # each smear its own plasma (or a red cell in its corner)
    with pytest.raises(ValueError):
        write_cohort(tmp_path / "c", n_train=1, n_test=0, cells=(1, 1), palette="pastel")
