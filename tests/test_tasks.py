"""pipelines.run.tasks: one patient's task gives the library's numbers (the imports of the
whole house are checked in tests/test_layout.py)."""


import numpy as np
import pytest

from cellfeat.data import decode_image
from cellfeat.heterogeneity import PIXEL_SCORE, pixel_dispersion, pixel_dispersion_naive
from pipelines.run.tasks import FeatureSettings, compute_patient

def test_patient_pixel_dispersion_is_the_library_function(synthetic_root):
    import cv2

    files = sorted((synthetic_root / "trainset").glob("P*"))[0].glob("*.jpg")
    blobs = [f.read_bytes() for f in sorted(files)][:5]
    first = decode_image(blobs[0])
    # a patient folder with an image of another shape and two undecodable entries
    ok, png = cv2.imencode(".png", np.ascontiguousarray(first[:40, :50, ::-1]))
    blobs = [blobs[0], png.tobytes(), b"not an image", OSError("gone"), *blobs[1:]]
    names = [f"{i}.jpg" for i in range(len(blobs))]
    cells, meta, crops = compute_patient("P", names, blobs, FeatureSettings())
    decoded = [decode_image(b) for b in blobs if isinstance(b, bytes) and b != b"not an image"]
    same = [im for im in decoded if im.shape == first.shape]
    assert len(decoded) == 6 and len(same) == 5
    # the CLI's value is the Python API's on the decodable images in file order, to the bit
    assert meta[PIXEL_SCORE] == pixel_dispersion(decoded)
    assert meta["N_PIXEL_IMAGES"] == 5
    # and both are the definition on the images of the first shape (error bound: see
    # cellfeat.heterogeneity.dispersion_from_sums)
    assert meta[PIXEL_SCORE] == pytest.approx(pixel_dispersion_naive(np.stack(same)), abs=1e-8)
    assert len(cells) == len(blobs) == len(crops)


def test_patient_without_decodable_image_has_no_pixel_score():
    _, meta, _ = compute_patient("P", ["a.jpg"], [b"junk"], FeatureSettings())
    assert meta[PIXEL_SCORE] is None and meta["N_PIXEL_IMAGES"] == 0
