"""Shared fixtures: a small synthetic cohort written once per session, the real-data path."""

from pathlib import Path

import pytest

from cellfeat.synthetic import write_cohort

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
