"""Colour drift measurements: feature-level drift per family under the shift panel, and the
``--augment`` comparison of training with colour-shifted copies.

``python -m pipelines.bench.colour DATA --features DIR --candidates NAME ...`` measures the
out-of-fold stability of candidates without training (the same figures as the training
report's colour section, :mod:`pipelines.run.stability`); ``--augment K`` also compares, on
the same folds, training with features of K randomly colour-shifted copies of every training
patient (an option: it is only worth shipping when that paired comparison says so).
``make bench`` prints :func:`bench_drift`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.augment import SHIFT_PANEL, ColourShift, random_shift

from ..run.stability import oof_stability, shifted_features, shifted_frames, summarise

#: Feature families, from the ``Object_Category_Feature`` names of the registry.
FAMILIES = ("Colour", "Shape", "Texture")


def family(name: str) -> str:
    """``Cytoplasm_Colour_OD_Basophilia`` -> ``Colour``."""
    parts = name.split("_")
    return parts[1] if len(parts) > 2 else "Other"




def feature_drift(images: list, shifts=SHIFT_PANEL, *, method="otsu",
                  channel="stain") -> pd.DataFrame:
    """Feature-level drift of each family under each shift, on a list of RGB images.

    For every feature f, the z-change of a cell is ``|f(shift(I)) − f(I)| / s_f`` with
    ``s_f`` the standard deviation of f across the unshifted cells (so 1 means the shift
    moves a cell as far as one typical cell-to-cell difference). Only cells segmented "ok"
    both ways count. Returns one row per (shift, family) with the median and 90th
    percentile of the cells' |z|, the bag bias (|mean z| over the cells of each feature:
    how far a bag mean moves, which cell noise cannot explain away; its median and maximum
    over the family's features), the median nucleus IoU and how many cells changed QC
    status.
    """
    from cellfeat.extract import measure_image
    from cellfeat.features import FEATURE_NAMES

    base, segs = [], []
    for im in images:
        row, seg = measure_image(im, method=method, channel=channel)
        base.append(row)
        segs.append(seg)
    base = pd.DataFrame(base)
    ok0 = (base["QC_STATUS"] == "ok").to_numpy()
    sd = base.loc[ok0, list(FEATURE_NAMES)].std(ddof=1)
    fam = pd.Series({n: family(n) for n in FEATURE_NAMES})
    rows = []
    for shift in shifts:
        moved, ious = [], []
        for im, seg in zip(images, segs):
            row, seg2 = measure_image(shift.apply(im), method=method, channel=channel)
            moved.append(row)
            if seg is not None and seg2 is not None and seg.ok and seg2.ok:
                ious.append((seg.nucleus & seg2.nucleus).sum() /
                            max((seg.nucleus | seg2.nucleus).sum(), 1))
        moved = pd.DataFrame(moved)
        ok = ok0 & (moved["QC_STATUS"] == "ok").to_numpy()
        d = (moved.loc[ok, list(FEATURE_NAMES)].to_numpy(float)
             - base.loc[ok, list(FEATURE_NAMES)].to_numpy(float))
        z = pd.DataFrame(d, columns=list(FEATURE_NAMES)) / sd.where(sd > 0)
        bias = z.mean().abs()
        for f in FAMILIES:
            cols = fam.index[fam == f]
            v = z[cols].abs().to_numpy().ravel()
            v = v[np.isfinite(v)]
            b = bias[cols].dropna()
            rows.append({"shift": shift.name, "family": f, "cells": int(ok.sum()),
                         "median_z": float(np.median(v)) if v.size else np.nan,
                         "p90_z": float(np.percentile(v, 90)) if v.size else np.nan,
                         "bag_bias_median": float(b.median()) if len(b) else np.nan,
                         "bag_bias_max": float(b.max()) if len(b) else np.nan,
                         "nucleus_iou_median": float(np.median(ious)) if ious else np.nan,
                         "status_changed": int((ok0 != (moved["QC_STATUS"] == "ok")).sum())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ CLI


def _augment_shifts(k: int, seed: int) -> tuple[ColourShift, ...]:
    # drawn, not the panel: training on the panel would make the panel's figures optimistic
    return tuple(random_shift(np.random.default_rng([seed, 1000 + i])) for i in range(k))


def main(argv=None) -> int:
    from cellfeat.data import load_cohort
    from cellfeat.models import make_pipeline

    from ..run.stages import feature_stage, load_frame

    p = argparse.ArgumentParser(prog="python -m pipelines.bench.colour", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--candidates", nargs="+", default=["clinical+bags-logreg"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=-1)
    p.add_argument("--augment", type=int, default=0,
                   help="also CV each candidate trained with K colour-shifted copies")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    ns = argparse.Namespace(data=args.data, features=args.features, method="otsu",
                            jobs=args.jobs, quiet=args.quiet, reference_date="2020-01-01")
    cohort = load_cohort(args.data, reference_date="2020-01-01")
    feat_dir = feature_stage(ns, cohort)
    frame = load_frame(cohort, feat_dir)
    lab = frame[frame["LABEL"].notna()]
    y = lab["LABEL"].astype(int).to_numpy()
    images = {pid: cohort.images.get(pid, []) for pid in lab.index}
    t0 = time.perf_counter()
    shifted = shifted_frames(lab, cohort.clinical, shifted_features(
        images, feat_dir, SHIFT_PANEL, n_jobs=args.jobs, progress=not args.quiet))
    aug = {}
    if args.augment:
        aug = shifted_frames(lab, cohort.clinical, shifted_features(
            images, feat_dir, _augment_shifts(args.augment, args.seed), n_jobs=args.jobs,
            progress=not args.quiet))
    print(f"shifted features in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results = {}
    for name in args.candidates:
        runs = {"plain": None, **({f"augment{args.augment}": aug} if aug else {})}
        for tag, extra in runs.items():
            oof = oof_stability(make_pipeline(name), lab, shifted, y, folds=args.folds,
                                repeats=args.repeats, seed=args.seed, augment=extra,
                                n_jobs=args.jobs)
            s = summarise(oof, y)
            s["per_repeat_ba"] = _per_repeat_ba(oof["asis"]["pred"], y)
            results[f"{name}/{tag}"] = s
            o = s["overall"]
            print(f"{name} [{tag}]: BA as-is {o['balanced_accuracy']:.3f}; "
                  f"{o['flips']}/{o['calls']} calls flip ({100 * o['flip_share']:.1f} %), "
                  f"max |dPROBA| {o['max_abs_dproba']:.3f}, max |dBA| "
                  f"{o['max_abs_delta_balanced_accuracy']:.3f}")
            for sh, r in s["shifts"].items():
                print(f"    {sh:16s} flips {r['flips']:3d}/{r['calls']}  max|dP| "
                      f"{r['max_abs_dproba']:.3f}  BA {r['balanced_accuracy']:.3f} "
                      f"({r['delta_balanced_accuracy']:+.3f})")
        if aug:
            a = np.array(results[f"{name}/plain"]["per_repeat_ba"])
            b = np.array(results[f"{name}/augment{args.augment}"]["per_repeat_ba"])
            print(f"  paired BA difference augment - plain per repeat: "
                  f"{np.round(b - a, 3).tolist()} (mean {np.mean(b - a):+.3f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=float))
    return 0


def _per_repeat_ba(pred, y) -> list:
    from sklearn.metrics import balanced_accuracy_score

    return [float(balanced_accuracy_score(y, p)) for p in pred]


def bench_drift(files, shifts=SHIFT_PANEL) -> pd.DataFrame:
    """``make bench`` row: :func:`feature_drift` on the decoded images of ``files``."""
    from cellfeat.data import ImageReadError, decode_image

    images = []
    for f in files:
        try:
            images.append(decode_image(Path(f).read_bytes()))
        except (OSError, ImageReadError):
            continue
    return feature_drift(images, shifts)


if __name__ == "__main__":
    sys.exit(main())
