"""The golden fixture: a stored genuine bundle scores its stored patients to the same PROBA,
bit for bit (issue 23: moving modules must not change a call; since then, no change may
alter what an existing bundle says unless it regenerates the fixture and says why).

``tests/golden/`` holds a bundle written by ``cellfeat train`` on a synthetic cohort, the
scored patients' clinical and cell tables, and what that bundle made of them when the
fixture was written (``make_golden.py``, first run on commit 45f3e90, before the move; see
its docstring for when it was made again).
The expected values are stored as float hex, so equality here is exact.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.models import cohort_frame
from pipelines.bundle import load_bundle
from pipelines.run.stages import score_frame

GOLDEN = Path(__file__).resolve().parent / "golden"


def _load():
    models, meta = load_bundle(GOLDEN / "bundle.skops")
    clinical = pd.read_csv(GOLDEN / "clinical.csv", index_col="ID",
                           dtype={"GENDER": "string"})
    cells = pd.read_parquet(GOLDEN / "cells.parquet")
    patients = pd.read_parquet(GOLDEN / "patients.parquet")
    return models, meta, cohort_frame(clinical, cells, patients)


def test_golden_bundle_scores_bit_for_bit():
    expected = json.loads((GOLDEN / "expected.json").read_text())
    models, meta, frame = _load()
    assert meta["chosen"] == expected["chosen"]
    pred = score_frame(models, frame)
    assert pred["ID"].tolist() == expected["ids"]
    assert pred["MODEL"].tolist() == expected["model"]
    assert pred["STATUS"].tolist() == expected["status"]
    # every route is exercised: main, image only (no age), clinical only (no images)
    assert {"main", "image", "clinical"} <= set(expected["model"])
    assert [float(v).hex() for v in pred["PROBA"]] == expected["proba"]
    assert [float(v).hex() for v in pred["THRESHOLD"]] == expected["threshold"]
    scores = models["explainer"].cell_scores(frame)
    assert [[float(v).hex() for v in s] for s in scores] == expected["cell_scores"]


def test_golden_check_can_fail():
    """The comparison is sensitive: one ulp on one probability is a difference."""
    expected = json.loads((GOLDEN / "expected.json").read_text())
    models, _, frame = _load()
    p = score_frame(models, frame)["PROBA"].to_numpy().copy()
    p[0] = np.nextafter(p[0], 1.0)
    assert [float(v).hex() for v in p] != expected["proba"]
