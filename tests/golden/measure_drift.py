"""How far the golden numbers move with the BLAS code path: the evidence behind the
tolerances of ``tests/test_golden.py`` (issue 30).

Scores the golden fixture, and measures a few synthetic images (segmentation and every
feature), in a fresh process under each environment below, and prints per environment the
largest absolute and relative difference from ``expected.json`` (PROBA, THRESHOLD, the
explainer's cell scores) and whether the feature values equal, bit for bit, those of the
first environment. OpenBLAS reads ``OPENBLAS_NUM_THREADS`` and ``OPENBLAS_CORETYPE``
(which kernel a DYNAMIC_ARCH build runs) when it loads, so each needs its own process; the
kernel that then ran is read back with threadpoolctl::

    python tests/golden/measure_drift.py [CORETYPE ...]     # default: Haswell Sandybridge Prescott
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

_CHILD = r"""
import json, sys
import numpy as np, pandas as pd
from threadpoolctl import threadpool_info
from cellfeat.models import cohort_frame
from cellfeat.measure import measure_image
from cellfeat.synthetic import draw_cell, sample_patient
from pipelines.bundle import load_bundle
from pipelines.run.stages import score_frame
g = sys.argv[1]
models, meta = load_bundle(g + "/bundle.skops")
clinical = pd.read_csv(g + "/clinical.csv", index_col="ID", dtype={"GENDER": "string"})
frame = cohort_frame(clinical, pd.read_parquet(g + "/cells.parquet"),
                     pd.read_parquet(g + "/patients.parquet"))
pred = score_frame(models, frame)
scores = models["explainer"].cell_scores(frame)
rng = np.random.default_rng(3)
feats = []
for label in (0, 1, 0, 1):
    img = draw_cell(rng, sample_patient(rng, label))[0]
    row, _ = measure_image(img)
    feats.append({k: float(v).hex() for k, v in row.items() if isinstance(v, float)})
blas = [(i["prefix"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
        if i["user_api"] == "blas"]
print(json.dumps({"proba": pred["PROBA"].tolist(), "threshold": pred["THRESHOLD"].tolist(),
                  "label": pred["LABEL"].tolist(), "triage": pred["TRIAGE"].tolist(),
                  "status": pred["STATUS"].tolist(),
                  "cell_scores": [list(map(float, s)) for s in scores],
                  "features": feats, "blas": blas}))
"""


def run(env: dict) -> dict | None:
    """The child's figures, or None where it died (a kernel this CPU cannot run: SIGILL)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(HERE)], env=full,
                          capture_output=True, text=True)
    if done.returncode:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _feature_diff(got: list[dict], want: list[dict]) -> tuple[float, list[str]]:
    """Largest relative difference of the feature values, and the features that moved."""
    worst, moved = 0.0, set()
    for g, w in zip(got, want):
        for k in w:
            a, b = float.fromhex(g[k]), float.fromhex(w[k])
            if g[k] != w[k] and not (a != a and b != b):
                moved.add(k)
                worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
    return worst, sorted(moved)


def _diff(got, want) -> tuple[float, float]:
    import numpy as np

    got, want = np.asarray(got, float), np.asarray(want, float)
    if got.size == 0:
        return 0.0, 0.0
    a = np.abs(got - want)
    return float(a.max()), float((a / np.abs(want)).max())


def main(coretypes: list[str]) -> int:
    import numpy as np

    expected = json.loads((HERE / "expected.json").read_text())
    want = {k: [float.fromhex(v) for v in expected[k]] for k in ("proba", "threshold")}
    want_cells = np.concatenate([[float.fromhex(v) for v in s] for s in expected["cell_scores"]]
                                + [[]])
    envs = [{}] + [{"OPENBLAS_NUM_THREADS": t, **({"OPENBLAS_CORETYPE": c} if c else {})}
                   for c in ["", *coretypes] for t in ("1", "2")]
    first = None
    worst = {"proba": (0, 0), "threshold": (0, 0), "cells": (0, 0)}
    for env in envs:
        name = " ".join(f"{k}={v}" for k, v in env.items()) or "(as set)"
        r = run(env)
        if r is None:
            print(f"{name:55s} refused (the process died: a kernel this CPU cannot run)")
            continue
        first = first or r
        cells = np.concatenate([np.asarray(s, float) for s in r["cell_scores"]] + [[]])
        d = {"proba": _diff(r["proba"], want["proba"]),
             "threshold": _diff(r["threshold"], want["threshold"]),
             "cells": _diff(cells, want_cells)}
        for k, v in d.items():
            worst[k] = tuple(max(a, b) for a, b in zip(worst[k], v))
        calls = (r["label"], r["triage"], r["status"]) == (first["label"], first["triage"],
                                                          first["status"])
        frel, moved = _feature_diff(r["features"], first["features"])
        kernels = ", ".join(sorted({f"{a} {n}t" for _, a, n in r["blas"]}))
        print(f"{name:55s} kernel {kernels:16s} " + "  ".join(
            f"{k} abs {a:.2e} rel {b:.2e}" for k, (a, b) in d.items())
            + (f"  features same" if not moved else
               f"  features: {len(moved)} moved, rel {frel:.2e} ({', '.join(moved[:4])})")
            + f"  calls {'same' if calls else 'DIFFER'}")
    print("largest: " + "  ".join(f"{k} abs {a:.2e} rel {b:.2e}" for k, (a, b) in worst.items())
          + f"  (float64 eps {np.finfo(float).eps:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["Haswell", "Sandybridge", "Prescott"]))
