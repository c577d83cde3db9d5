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


def test_feature_workers_import_no_heavy_module(tmp_path):
    # Issue 21: a feature worker imports what its task runs and nothing else: pandas,
    # scikit-learn, scipy, scikit-image, matplotlib and the boosters cost start-up time and
    # resident memory in every worker process (pandas alone about 80 MiB). A fresh
    # interpreter runs the workers' task on one image, cache written, then read back.
    import subprocess
    import sys

    import cv2

    from cellfeat.synthetic import draw_cell, sample_patient

    rng = np.random.default_rng(0)
    image, _, _ = draw_cell(rng, sample_patient(rng, 1))
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipelines.run.tasks import FeatureSettings, process_patient\n"
        f"args = ('P', [Path({str(path)!r})], FeatureSettings(), Path({str(tmp_path)!r}))\n"
        "computed, cached = process_patient(*args), process_patient(*args)\n"
        "assert computed[0].column('QC_STATUS').to_pylist() == ['ok']\n"
        "assert cached[0].equals(computed[0])\n"
        "heavy = ('pandas', 'sklearn', 'scipy', 'skimage', 'matplotlib', 'xgboost', "
        "'lightgbm', 'torch')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_worker_table_is_the_frame_that_pandas_writes(synthetic_root):
    # the workers' Arrow table (built without pandas) and compute_patient's DataFrame give
    # the same Parquet columns, types and values, NaN features and failed images included
    import pyarrow as pa

    from pipelines.run.tasks import compute_table

    files = sorted(sorted((synthetic_root / "trainset").glob("P*"))[0].glob("*.jpg"))[:3]
    blobs = [f.read_bytes() for f in files] + [b""]  # "unreadable: empty file"
    names = [f.name for f in files] + ["bad.jpg"]
    frame, meta, crops = compute_patient("P", names, blobs, FeatureSettings())
    table, meta2, crops2 = compute_table("P", names, blobs, FeatureSettings())
    expected = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.equals(expected.schema)
    for name in expected.column_names:
        assert table.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert table.column("QC_DETAIL").null_count == 0
    assert expected.column("Nucleus_Shape_Area").null_count == 1  # the bad image's NaN
    assert table.column("Nucleus_Shape_Area").null_count == 1
    assert meta == meta2 and np.array_equal(crops, crops2)
