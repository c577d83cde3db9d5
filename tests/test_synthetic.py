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
