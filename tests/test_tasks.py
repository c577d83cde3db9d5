"""pipelines.run.tasks: one patient's task gives the library's numbers (the imports of the
whole house are checked in tests/test_layout.py)."""

from pathlib import Path

import numpy as np
import pytest

from cellfeat.data import decode_image
from cellfeat.heterogeneity import PIXEL_SCORE, pixel_dispersion, pixel_dispersion_naive
from pipelines.run.tasks import FeatureSettings, compute_patient

ROOT = Path(__file__).resolve().parents[1]

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
    # the CLI's value is the Python API's on the decodable images in file order: to the bit
    # with one BLAS thread, within 2.9e-12 relative with two (issue 30: BLAS splits the
    # image sums across threads by their shapes); the bound of the naive definition below
    # is the tolerance of a value computed another way
    assert meta[PIXEL_SCORE] == pytest.approx(pixel_dispersion(decoded), rel=1e-10, abs=0)
    assert meta["N_PIXEL_IMAGES"] == 5
    # and both are the definition on the images of the first shape (error bound: see
    # cellfeat.heterogeneity.dispersion_from_sums)
    assert meta[PIXEL_SCORE] == pytest.approx(pixel_dispersion_naive(np.stack(same)), abs=1e-8)
    assert len(cells) == len(blobs) == len(crops)


def test_patient_without_decodable_image_has_no_pixel_score():
    _, meta, _ = compute_patient("P", ["a.jpg"], [b"junk"], FeatureSettings())
    assert meta[PIXEL_SCORE] is None and meta["N_PIXEL_IMAGES"] == 0


@pytest.mark.slow  # a child process under a memory cap
def test_an_image_announcing_8000_px_costs_no_memory(synthetic_root, tmp_path):
    # a 198 KiB PNG of 8000x8000 px: decoded, converted and summed as pixels it took 4.4 GB
    # at peak; now it is refused from its header. Run under an address-space cap, so a
    # regression fails here instead of exhausting the test machine.
    import json
    import os
    import subprocess
    import sys

    import cv2

    ok, big = cv2.imencode(".png", np.zeros((8000, 8000, 3), np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    (tmp_path / "big.png").write_bytes(big.tobytes())
    small = sorted(sorted((synthetic_root / "trainset").glob("P*"))[0].glob("*.jpg"))[0]
    cap = 5 << 29     # the imports take about 1 GiB of address space; the old path needed 4.4 GB
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))\n"
            "import sys\nfrom pathlib import Path\n"
            "from pipelines.run.tasks import FeatureSettings, compute_patient\n"
            "files = [Path(f) for f in sys.argv[1:]]\n"
            "cells, meta, _ = compute_patient('P', [f.name for f in files],\n"
            "                                 [f.read_bytes() for f in files], FeatureSettings())\n"
            "import json\n"
            "print(json.dumps([cells['QC_STATUS'].tolist(), meta['N_PIXEL_IMAGES']]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.png"), str(small)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(big) < 300_000
    statuses, n_pixel = json.loads(proc.stdout.strip().splitlines()[-1])
    assert statuses[0] == "rejected: image 8000x8000 larger than 2048 px"
    assert n_pixel == 1        # only the ordinary image entered the pixel sums


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
