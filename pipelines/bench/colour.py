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

from cellfeat.augment import SHIFT_PANEL, STABILITY_PANEL

from ..run.progress import show_progress
from ..run.stability import (margin, oof_stability, shifted_features, shifted_frames,
                             summarise)

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


# ------------------------------------------------------------------ sampled vs full


def _flips(oof: dict, asis: str, moved: str) -> np.ndarray:
    return oof[moved]["pred"] != oof[asis]["pred"]


def design_frames(frame: pd.DataFrame, positions: dict, sampled: dict) -> dict:
    """The ways of estimating a patient's flip from its sample, as cohort frames named
    ``<design>:<shift>`` (and ``kbag:asis``):

    - ``spread``, ``shrunk``, ``raw``, ``cohort``: the whole bag, the sample as shifted and
      every other cell moved by the patient's shrunk drift plus a sampled cell's deviation
      (what ships), by the shrunk drift alone, by the sample's mean drift, or by the
      cohort's (:func:`pipelines.run.stability.transferred_frames`);
    - ``kbag``: the K-image bag as shifted, against the K-image bag as it is (``kbag:asis``);
    - ``swap``: the whole bag with only the sampled cells shifted (the rest as they are).
    """
    from cellfeat.heterogeneity import PIXEL_SCORE
    from cellfeat.stability import transferred_bag

    from ..run.stability import DRIFT_MODES, transferred_frames

    out = {}
    for mode in DRIFT_MODES:
        frames, _ = transferred_frames(frame, positions, sampled, mode=mode)
        out.update({f"{mode}:{n}": f for n, f in frames.items()})
    pixel = PIXEL_SCORE in frame

    def kbag(rows_of, pix_of):
        f = frame.copy()
        f["CELLS"] = [rows_of(pid, c) for pid, c in zip(frame.index, frame["CELLS"])]
        if pixel:
            f[PIXEL_SCORE] = [pix_of(pid, v) for pid, v in zip(frame.index, frame[PIXEL_SCORE])]
        return f

    out["kbag:asis"] = kbag(lambda pid, c: c.iloc[positions[pid]].reset_index(drop=True)
                            if pid in positions else c,
                            lambda pid, v: sampled["asis"].get(pid, v))
    none = pd.Series(dtype=float)
    for name, by_pid in sampled.items():
        if name == "asis":
            continue
        out[f"kbag:{name}"] = kbag(lambda pid, c: by_pid[pid][0] if pid in by_pid else c,
                                   lambda pid, v: by_pid[pid][1] if pid in by_pid else v)
        out[f"swap:{name}"] = kbag(
            lambda pid, c: transferred_bag(c, none, positions[pid], by_pid[pid][0])
            if pid in by_pid else c, lambda pid, v: v)
    return out


def sample_check(est, lab, y, images, feat_dir, full: dict, *, ks=(4, 8, 16), seeds=(0, 1, 2),
                 folds=5, repeats=2, seed=0, jobs=1, progress=False) -> pd.DataFrame:
    """Flip share of each shift on fully shifted bags (``full``: shift -> frame) against the
    sampled designs of :func:`design_frames`, for each sample size and sampling seed, on the
    same folds and the same fitted models. One row per (K, sampling seed, design, shift):
    ``flip_share``, ``full_flip_share``, ``difference`` (percentage points) and how many
    calls both flag (``agree_flipped``)."""
    from ..run.stability import sample_positions, sample_shifts

    rows = []
    for k in ks:
        for s in seeds:
            positions = sample_positions(images, k, s)
            sampled = sample_shifts(images, positions, feat_dir, STABILITY_PANEL, n_jobs=jobs,
                                    progress=progress)
            frames = {f"full:{n}": f for n, f in full.items()}
            frames.update(design_frames(lab, positions, sampled))
            oof = oof_stability(est, lab, frames, y, folds=folds, repeats=repeats, seed=seed,
                                n_jobs=jobs)
            for shift in full:
                truth = _flips(oof, "asis", f"full:{shift}")
                for design in ("spread", "shrunk", "raw", "cohort", "kbag", "swap"):
                    base = "kbag:asis" if design == "kbag" else "asis"
                    est_flip = _flips(oof, base, f"{design}:{shift}")
                    rows.append({"k": k, "sample_seed": s, "design": design, "shift": shift,
                                 "flip_share": float(est_flip.mean()),
                                 "full_flip_share": float(truth.mean()),
                                 "difference_pp": 100 * float(est_flip.mean() - truth.mean()),
                                 "flips": int(est_flip.sum()), "full_flips": int(truth.sum()),
                                 "agree_flipped": int((est_flip & truth).sum())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ screened vs every feature


def nested_runs(runs: dict, y, *, folds=5, repeats=4, seed=0, jobs=1) -> dict:
    """Nested CV of the default rule under each setting of ``runs`` (tag -> (cohort frame,
    cell features or None, augment: bool)), on the same folds: each one's BA and AUC overall
    and in the zone, and the paired difference of every setting against the first, with
    its interval (:mod:`cellfeat.intervals`)."""
    from threadpoolctl import threadpool_limits

    from cellfeat.evaluation import nested_cv
    from cellfeat.models import (CANDIDATES, DEFAULT_CANDIDATES, FALLBACKS,
                                 REFERENCE_CANDIDATES, make_pipeline)
    from cellfeat.models.invariance import ColourAugmented

    from ..run.stages import COMPARATOR

    fitted = {*DEFAULT_CANDIDATES, COMPARATOR, *FALLBACKS.values(), *REFERENCE_CANDIDATES}
    order = [n for n in CANDIDATES if n in fitted]
    res = {}
    with threadpool_limits(1):
        for tag, (X, feats, aug) in runs.items():
            cands = []
            for n in order:
                est = make_pipeline(n, calibrated=False, features=feats)
                cands.append((n, ColourAugmented(est) if aug and n != COMPARATOR else est))
            res[tag] = nested_cv(cands, X, y, folds=folds, repeats=repeats, inner_folds=3,
                                 inner_repeats=2, seed=seed, n_jobs=jobs,
                                 eligible=list(DEFAULT_CANDIDATES), fallbacks=FALLBACKS)
    out = {}
    for tag, r in res.items():
        sm = r.summary().loc["nested"]
        out[tag] = {"ba": float(sm["balanced_accuracy"]),
                    "ba_ci95": [float(sm["balanced_accuracy_ci_low"]),
                                float(sm["balanced_accuracy_ci_high"])],
                    "auc": float(sm["roc_auc"]), "zone_ba": float(sm["zone_balanced_accuracy"]),
                    "zone_auc": float(sm["zone_roc_auc"]),
                    "choices": pd.Series(r.chosen).value_counts().to_dict(),
                    "versus_clinical": r.versus("nested", COMPARATOR)}
    tags = list(res)
    first = res[tags[0]]
    for tag in tags[1:]:  # same folds and zones: pair them in one result
        for d in ("proba", "pred", "triage"):
            getattr(first, d)[f"nested:{tag}"] = getattr(res[tag], d)["nested"]
        out[f"{tag}_minus_{tags[0]}"] = first.versus(f"nested:{tag}", "nested")
    return out


# ------------------------------------------------------------------ CLI


def _print_summary(tag, s):
    o = s["overall"]
    print(f"{tag}: BA as-is {o['balanced_accuracy']:.3f}; {o['flips']}/{o['calls']} calls flip "
          f"({100 * o['flip_share']:.1f} %), max |dPROBA| {o['max_abs_dproba']:.3f}, max |dBA| "
          f"{o['max_abs_delta_balanced_accuracy']:.3f}")
    for sh, r in s["shifts"].items():
        print(f"    {sh:16s} flips {r['flips']:3d}/{r['calls']}  max|dP| "
              f"{r['max_abs_dproba']:.3f}  median|dP| {r['median_abs_dproba']:.4f}  BA "
              f"{r['balanced_accuracy']:.3f} ({r['delta_balanced_accuracy']:+.3f})")
    for key in ("interval_without_margin", "interval"):
        if key in s:
            iv = s[key]
            print(f"    {key} (cohort drift, margin {iv['margin_logit']:.2f} log-odds): "
                  f"{iv['flagged']}/{iv['calls']} calls flagged, {iv['flips_caught']} of "
                  f"{iv['flips']} flipped calls caught")


def main(argv=None) -> int:
    from cellfeat.data import load_cohort
    from cellfeat.models import make_pipeline

    from cellfeat.models.invariance import augmented, with_copies

    from ..run.stability import augment_shifts, colour_copies, colour_sample
    from ..run.stages import feature_stage, load_frame

    p = argparse.ArgumentParser(prog="python -m pipelines.bench.colour", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--candidates", nargs="+", default=["clinical+mean-ridge"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=-1)
    p.add_argument("--full", action="store_true",
                   help="also score fully shifted bags (every image shifted: the truth the "
                   "sampled check estimates; about 5x the images of the cohort)")
    p.add_argument("--sample-check", type=int, nargs="+", default=None, metavar="K",
                   help="compare the flip share of sampled designs (K images per patient) with "
                   "fully shifted bags, same folds (implies --full)")
    p.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--screen", action="store_true",
                   help="each candidate with every cell feature and with the screened ones")
    p.add_argument("--nested", action="store_true",
                   help="nested CV of the default rule (4 repeats) with the screened inputs, "
                   "and with every feature (--screen) and with copies (--augment), same folds")
    p.add_argument("--augment", type=int, default=0,
                   help="also CV each candidate trained with K colour-shifted copies of every "
                   "training patient (estimated from the sample, random shifts)")
    p.add_argument("--augment-full", action="store_true",
                   help="build the copies of --augment from every image shifted, not from the "
                   "sample")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--progress", action="store_true",
                   help="progress bars even when stderr is not a terminal")
    args = p.parse_args(argv)
    ns = argparse.Namespace(data=args.data, features=args.features, method="otsu",
                            jobs=args.jobs, quiet=args.quiet, progress=args.progress,
                            reference_date="2020-01-01")
    cohort = load_cohort(args.data, reference_date="2020-01-01")
    feat_dir = feature_stage(ns, cohort)
    frame = load_frame(cohort, feat_dir)
    lab = frame[frame["LABEL"].notna()]
    y = lab["LABEL"].astype(int).to_numpy()
    images = {pid: cohort.images.get(pid, []) for pid in lab.index}
    prog = show_progress(args)
    kw = dict(folds=args.folds, repeats=args.repeats, seed=args.seed, n_jobs=args.jobs)
    t0 = time.perf_counter()
    check = colour_sample(cohort, feat_dir, lab, n_jobs=args.jobs, progress=prog)
    print(f"sampled shifts ({check['sample']['images']} images): "
          f"{time.perf_counter() - t0:.0f} s; {len(check['kept'])} of "
          f"{len(check['table'])} features pass the bar", file=sys.stderr)
    results = {"sample": check["sample"], "kept": check["kept"],
               "table": check["table"].reset_index(names="feature").to_dict(orient="records")}
    full = {}
    if args.full or args.sample_check:
        t0 = time.perf_counter()
        full = shifted_frames(lab, cohort.clinical, shifted_features(
            images, feat_dir, STABILITY_PANEL, n_jobs=args.jobs, progress=prog))
        print(f"fully shifted features: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    lab_aug = None
    if args.augment:
        t0 = time.perf_counter()
        if args.augment_full:
            lab_aug = with_copies(lab, shifted_frames(lab, cohort.clinical, shifted_features(
                images, feat_dir, augment_shifts(args.augment, args.seed), n_jobs=args.jobs,
                progress=prog)))
        else:
            lab_aug = colour_copies(cohort, feat_dir, lab, k=args.augment, seed=args.seed,
                                    n_jobs=args.jobs, progress=prog)
        how = "every image shifted" if args.augment_full else "sampled"
        print(f"augmentation copies ({args.augment} random shifts, {how}): "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for name in args.candidates:
        checks = {"screened": check["kept"], **({"all_features": None} if args.screen else {})}
        for tag, feats in (checks.items() if args.sample_check else ()):
            t = sample_check(make_pipeline(name, features=feats), lab, y, images,
                             feat_dir, full, ks=args.sample_check, seeds=args.sample_seeds,
                             folds=args.folds, repeats=args.repeats, seed=args.seed,
                             jobs=args.jobs, progress=prog)
            results[f"{name}/{tag}/sample_check"] = t.to_dict(orient="records")
            g = t.groupby(["design", "k"])
            print(f"{name} [{tag}]: flip share of sampled designs vs fully shifted bags, "
                  f"percentage points (estimate - full), over shifts and sampling seeds:")
            print(g["difference_pp"].agg(["mean", "min", "max"]).round(2).to_string())
            print(t.pivot_table(index=["design", "k", "sample_seed"], columns="shift",
                                values="difference_pp").round(2).to_string())
            tot = t.groupby(["design", "k", "sample_seed"])[["flips", "full_flips"]].sum()
            print(tot.to_string())
        runs = {"screened": (lab, make_pipeline(name, features=check["kept"]))}
        if args.screen:
            runs["all_features"] = (lab, make_pipeline(name))
        if lab_aug is not None:
            runs[f"screened+augment{args.augment}"] = (lab_aug, augmented(name, check["kept"]))
        for tag, (X, est) in runs.items():
            frames = {**{f"sampled:{n}": f for n, f in check["frames"].items()},
                      **{f"full:{n}": f for n, f in full.items()}}
            oof = oof_stability(est, X, frames, y, drifts=check["drifts"], **kw)
            subs = {src: {"asis": oof["asis"],
                          **{k.split(":", 1)[1]: v for k, v in oof.items()
                             if k.startswith(f"{src}:")},
                          **{k: v for k, v in oof.items() if k.startswith("cohort:")}}
                    for src in ("sampled", "full")}
            widen = margin(subs["sampled"])  # as training computes it: from the sample
            for src, sub in subs.items():
                if len(sub) == 1 + len(check["drifts"]):
                    continue
                s = summarise(sub, y, widen)
                s["interval_without_margin"] = summarise(sub, y)["interval"]
                s["per_repeat_ba"] = _per_repeat_ba(oof["asis"]["pred"], y)
                results[f"{name}/{tag}/{src}"] = s
                _print_summary(f"{name} [{tag}, {src} shifts]", s)
        if lab_aug is not None:
            a = np.array(results[f"{name}/screened/sampled"]["per_repeat_ba"])
            b = np.array(results[f"{name}/screened+augment{args.augment}/sampled"]["per_repeat_ba"])
            print(f"  paired BA difference augment - plain per repeat: "
                  f"{np.round(b - a, 3).tolist()} (mean {np.mean(b - a):+.3f})")
    if args.nested:
        t0 = time.perf_counter()
        runs = {"all_features": (lab, None, False)} if args.screen else {}
        runs["screened"] = (lab, check["kept"], False)
        if lab_aug is not None:
            runs[f"screened+augment{args.augment}"] = (lab_aug, check["kept"], True)
        nested = nested_runs(runs, y, folds=args.folds, repeats=4, seed=args.seed,
                             jobs=args.jobs)
        results["nested"] = nested
        for tag in runs:
            r = nested[tag]
            print(f"nested CV of the default rule, {tag}: BA {r['ba']:.3f} ({r['ba_ci95'][0]:.3f}-"
                  f"{r['ba_ci95'][1]:.3f}), AUC {r['auc']:.3f}; zone BA {r['zone_ba']:.3f}, "
                  f"zone AUC {r['zone_auc']:.3f}; choices {r['choices']}")
        for key, d in nested.items():
            if "_minus_" in key:
                print(f"  {key} (paired, same folds): BA {d['delta']:+.3f} ({d['ci95'][0]:+.3f} "
                      f"to {d['ci95'][1]:+.3f}); zone {d['zone_delta']:+.3f} "
                      f"({d['zone_ci95'][0]:+.3f} to {d['zone_ci95'][1]:+.3f})")
        print(f"  nested runs: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
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
