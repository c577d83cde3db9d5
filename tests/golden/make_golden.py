"""Write the golden bundle-and-prediction fixture that ``tests/test_golden.py`` checks.

A genuine bundle from ``cellfeat train`` on a small synthetic cohort, the scored patients'
inputs (clinical table and cell tables) and what that bundle made of them: the PROBA of
every route (main, image-only, clinical-only) and the explainer's cell scores, stored as
exact float hex so that "the same" means bit for bit.

It was first made on commit 45f3e90, before ``pipelines/`` and ``cellfeat/models.py`` were
split (issue 23), and the moved code scored it bit for bit (commits d54a500 to 8e8f64d).
It was made again after issues 19 and 20 changed what a bundle holds (repeated inner folds,
the overlap zone in the meta, meta keys checked against what train writes). Regenerate it
only when a change is *meant* to change predictions or the bundle, and say so in the
commit:

    python tests/golden/make_golden.py             # a new bundle and everything
    python tests/golden/make_golden.py --rescore   # the stored bundle scored again

Made again for issues 28 and 29 (the atypicality model and clipped linear candidates in
the bundle, features at revision 11); the expected calls are made as ``score`` makes them,
with the bundle's zone limit (the rails of issue 28).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def _score(models, meta, clinical, cells, patients):
    """What ``cellfeat score`` makes of the inputs: the bundle's zone limit passed as score
    passes it, so the rails of issue 28 (the count's floor, triage above the zone, the
    atypicality flag) are part of what is fixed."""
    from cellfeat.models import cohort_frame

    from pipelines.run.stages import score_frame
    frame = cohort_frame(clinical, cells, patients)
    pred = score_frame(models, frame, zone_limit=(meta.get("zone") or {}).get("limit"))
    scores = models["explainer"].cell_scores(frame)
    return pred, scores


def _expected(meta, pred, scores) -> dict:
    return {"made_on": meta.get("versions", {}), "chosen": meta["chosen"],
            "ids": pred["ID"].tolist(), "model": pred["MODEL"].tolist(),
            "status": pred["STATUS"].tolist(), "zone": pred["ZONE"].tolist(),
            "atypical": pred["ATYPICAL"].tolist(), "proba": _hex(pred["PROBA"]),
            "threshold": _hex(pred["THRESHOLD"]), "cell_scores": [_hex(s) for s in scores]}


def rescore() -> int:
    """Score the stored bundle and inputs again and rewrite ``expected.json`` only (for a
    change in how a bundle's calls are made, with the bundle itself unchanged)."""
    from pipelines.bundle import load_bundle

    models, meta = load_bundle(HERE / "bundle.skops")
    clinical = pd.read_csv(HERE / "clinical.csv", index_col="ID", dtype={"GENDER": "string"})
    pred, scores = _score(models, meta, clinical, pd.read_parquet(HERE / "cells.parquet"),
                          pd.read_parquet(HERE / "patients.parquet"))
    (HERE / "expected.json").write_text(json.dumps(_expected(meta, pred, scores), indent=1)
                                        + "\n")
    print(f"expected.json rewritten from the stored bundle and inputs in {HERE}")
    return 0


def _hex(values) -> list:
    return [float(v).hex() for v in np.asarray(values, float)]


def main() -> int:
    from cellfeat.data import load_cohort
    from cellfeat.synthetic import write_cohort

    from pipelines.bundle import load_bundle
    from pipelines.run.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_cohort(tmp / "cohort", n_train=60, n_test=8, cells=(10, 16), seed=11)
        common = ["--features", str(tmp / "features"), "--reference-date", "2020-01-01",
                  "--jobs", "1", "--quiet"]
        rc = cli(["train", str(data), *common, "--model", str(tmp / "model.skops"),
                  "--report", str(tmp / "report"), "--repeats", "1", "--folds", "3"])
        if rc:
            return rc
        models, meta = load_bundle(tmp / "model.skops")
        cohort = load_cohort(data, reference_date="2020-01-01")
        ids = list(cohort.unlabelled)
        clinical = cohort.clinical.loc[ids].copy()
        cells_all = pd.read_parquet(tmp / "features" / "cells.parquet")
        patients = pd.read_parquet(tmp / "features" / "patients.parquet")
        # every route of score_frame: one patient without an age (image model), one
        # without images (clinical model), one with an unknown gender (main, imputed)
        clinical.loc[ids[0], "AGE"] = np.nan
        clinical.loc[ids[1], "GENDER"] = pd.NA
        cells = cells_all[cells_all["ID"].isin(ids[:-1])].reset_index(drop=True)
        patients = patients[patients["ID"].isin(ids[:-1])].reset_index(drop=True)
        pred, scores = _score(models, meta, clinical, cells, patients)
        HERE.mkdir(exist_ok=True)
        shutil.copy(tmp / "model.skops", HERE / "bundle.skops")
        clinical.to_csv(HERE / "clinical.csv")
        cells.to_parquet(HERE / "cells.parquet", index=False)
        patients.to_parquet(HERE / "patients.parquet", index=False)
        expected = _expected(meta, pred, scores)
        (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"golden fixture written to {HERE} (chosen model: {expected['chosen']}; routes: "
          f"{sorted(set(expected['model']))})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    sys.exit(rescore() if sys.argv[1:] == ["--rescore"] else main())
