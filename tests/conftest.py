"""Shared fixtures: a small synthetic cohort written once per session, the real-data path.

The tests fit hundreds of small models; a BLAS or OpenMP pool per process on top of the
processes that joblib starts oversubscribes two cores badly (measured: the gated-mixture
explanation test took 66 s with the default pools on a loaded machine, 2.6 s with one
thread). So the suite runs single-threaded native code unless told otherwise; this is set
before NumPy is first imported.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cellfeat.synthetic import write_cohort  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "dlmi"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("syn") / "cohort", n_train=24, n_test=3,
                        cells=(8, 14), seed=7)


@pytest.fixture
def real_root():
    if not (REAL / "trainset" / "trainset_true.csv").is_file():
        pytest.skip(f"real data not found at {REAL}")
    return REAL
