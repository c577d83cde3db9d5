"""Colour stability: does a patient's call survive another lab's colours?

Out of fold, each held-out patient is scored as it is and under every shift of
:data:`cellfeat.augment.SHIFT_PANEL`: the shift is applied to each image's decoded pixels,
then the very segmentation and features of the feature stage run on the shifted copy (the
per-patient task of :mod:`pipelines.features`, so the pixel-dispersion score shifts too).
For each shift we report the share of out-of-fold calls that flip, the largest change of
PROBA and the balanced accuracy as-is vs shifted; the training report shows these figures
and ``make bench`` the feature-level drift per family (colour, shape, texture).

Shifted features are cached per patient and shift under ``FEATURES/shifted`` by a hash of
the image bytes, the feature settings and the shift's parameters, like the feature stage's
cache, so a re-run costs only the fits.

``python -m pipelines.stability DATA --features DIR --candidates NAME ...`` measures
stability without training; ``--augment K`` also compares, on the same folds, training with
features of K randomly colour-shifted copies of every training patient (an option: it is
only worth shipping when that paired comparison says so).
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

STABILITY_JSON = "stability.json"
#: Feature families, from the ``Object_Category_Feature`` names of the registry.
FAMILIES = ("Colour", "Shape", "Texture")


def _feature_code():
    """The per-patient feature task's functions, wherever the feature stage keeps them
    (:mod:`pipelines.tasks` after the review's move, :mod:`pipelines.features` before)."""
    import importlib
    from types import SimpleNamespace

    names = ("FeatureSettings", "read_blobs", "patient_key", "compute_patient", "cache_load",
             "cache_store")
    found = {}
    for mod in ("pipelines.tasks", "pipelines.features"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        for n in names:
            if n not in found and hasattr(m, n):
                found[n] = getattr(m, n)
    missing = [n for n in names if n not in found]
    if missing:
        raise ImportError(f"feature-stage functions not found: {missing}")
    return SimpleNamespace(**found)


def family(name: str) -> str:
    """``Cytoplasm_Colour_OD_Basophilia`` -> ``Colour``."""
    parts = name.split("_")
    return parts[1] if len(parts) > 2 else "Other"


# ------------------------------------------------------------------ shifted features


def _decoded(blob):
    """The decoded image, or the input unchanged when it is not a decodable image (the
    feature task then records the same failure as for the original)."""
    from cellfeat.data import ImageReadError, decode_image

    if isinstance(blob, Exception):
        return blob
    try:
        return decode_image(blob)
    except ImageReadError:
        return blob


def _shift_blob(item, shift: ColourShift):
    """Bytes of the shifted image (lossless BMP) from :func:`_decoded`'s output."""
    import cv2

    if not isinstance(item, np.ndarray):
        return item
    ok, buf = cv2.imencode(".bmp", cv2.cvtColor(shift.apply(item), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - BMP encodes any uint8 RGB array
        raise RuntimeError("BMP encoding failed")
    return buf.tobytes()


def shifted_patient(pid: str, files, settings, shifts, cache_dir: Path | None, *,
                    with_crops: bool = False):
    """One patient's cell table, patient row and (``with_crops``) nucleus crops under each
    shift: ``{name: (cells, meta, crops or None)}``.

    Cached per (patient, shift) by content: image bytes, feature settings, shift parameters.
    """
    import cv2

    code = _feature_code()
    cv2.setNumThreads(1)
    names = [Path(f).name for f in files]
    blobs = code.read_blobs(files)
    base = code.patient_key(pid, names, blobs, settings)
    out, decoded = {}, None
    for shift in shifts:
        key = f"{base}-{shift.key}"
        hit = code.cache_load(cache_dir, key)
        if hit is None:
            decoded = decoded or [_decoded(b) for b in blobs]
            moved = [_shift_blob(d, shift) for d in decoded]
            cells, meta, crops = code.compute_patient(pid, names, moved, settings)
            code.cache_store(cache_dir, key, cells, meta, crops)
        else:
            cells, meta, crops = hit
        out[shift.name] = (cells, meta, crops if with_crops else None)
    return pid, out


def shifted_features(images: dict, feat_dir, shifts=SHIFT_PANEL, *, settings=None,
                     n_jobs: int = -1, progress: bool = False, with_crops: bool = False) -> dict:
    """Cell and patient tables of the shifted images of ``images`` (ID -> files).

    Returns ``{shift name: (cells, patients, crops)}``: the same forms as ``cells.parquet``,
    ``patients.parquet`` and ``crops/<ID>.npy`` of the feature stage (crops, ID -> array,
    only ``with_crops``, for the CNN candidates; else None).
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    code = _feature_code()
    settings = settings or code.FeatureSettings()
    cache_dir = Path(feat_dir) / "shifted"
    cache_dir.mkdir(parents=True, exist_ok=True)
    items = [(pid, files) for pid, files in images.items() if files]
    parts = {s.name: ([], [], {}) for s in shifts}
    bar = tqdm(total=sum(len(f) for _, f in items) * len(shifts), unit="img",
               desc="shifted features", disable=not progress)
    tasks = (delayed(shifted_patient)(pid, files, settings, tuple(shifts), cache_dir,
                                      with_crops=with_crops)
             for pid, files in items)
    for pid, res in Parallel(n_jobs=n_jobs, return_as="generator")(tasks):
        for name, (cells, meta, crops) in res.items():
            parts[name][0].append(cells)
            parts[name][1].append(meta)
            if with_crops:
                parts[name][2][pid] = crops
            bar.update(len(cells))
    bar.close()
    out = {}
    for name, (cells, metas, crops) in parts.items():
        out[name] = (pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(),
                     pd.DataFrame(metas), crops if with_crops else None)
    return out


def shifted_frames(frame: pd.DataFrame, clinical: pd.DataFrame, shifted: dict) -> dict:
    """Cohort frames (:func:`cellfeat.models.cohort_frame`) of the shifted features, on the
    rows of ``frame`` (with ``CROPS`` when :func:`shifted_features` collected them)."""
    from cellfeat.models import cohort_frame

    return {name: cohort_frame(clinical.loc[frame.index], cells, patients, crops=crops)
            for name, (cells, patients, crops) in shifted.items()}


# ------------------------------------------------------------------ out-of-fold stability


def oof_stability(estimator, X: pd.DataFrame, shifted: dict, y, *, folds=5, repeats=1, seed=0,
                  augment: dict | None = None, n_jobs: int = 1) -> dict:
    """Out-of-fold PROBA and calls of each patient as-is and under each shift.

    The folds are :class:`~sklearn.model_selection.RepeatedStratifiedKFold` (``folds``,
    ``repeats``, ``seed``), the same as :func:`cellfeat.evaluation.evaluate_candidates`.
    In each fold ``estimator`` is fitted on the training patients as they are (plus, with
    ``augment``, the same patients' rows of each frame in ``augment``: colour-shifted copies
    with the same label) and scores the held-out patients of ``X`` and of every frame in
    ``shifted``. Returns ``{"asis"|name: {"proba", "pred"}}`` with arrays of shape
    (repeats, n_patients).
    """
    from joblib import Parallel, delayed
    from sklearn.base import clone
    from sklearn.model_selection import RepeatedStratifiedKFold

    y = np.asarray(y).astype(int)
    splits = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats,
                                          random_state=seed).split(np.zeros(len(y)), y))
    frames = {"asis": X, **{k: v.loc[X.index] for k, v in shifted.items()}}

    def task(k):
        tr, te = splits[k]
        Xt, yt = X.iloc[tr], y[tr]
        if augment:
            ids = X.index[tr]
            Xt = pd.concat([Xt, *[f.loc[ids] for f in augment.values()]])
            Xt.index = pd.RangeIndex(len(Xt))  # copies are other rows, not the same patient
            yt = np.concatenate([yt] * (1 + len(augment)))
        model = clone(estimator).fit(Xt, yt)
        return k, {n: (model.predict_proba(f.iloc[te])[:, 1], model.predict(f.iloc[te]))
                   for n, f in frames.items()}

    out = {n: {"proba": np.full((repeats, len(y)), np.nan),
               "pred": np.full((repeats, len(y)), -1)} for n in frames}
    for k, res in Parallel(n_jobs=n_jobs)(delayed(task)(k) for k in range(len(splits))):
        r, te = k // folds, splits[k][1]
        for n, (p, c) in res.items():
            out[n]["proba"][r, te] = p
            out[n]["pred"][r, te] = c
    return out


def summarise(oof: dict, y) -> dict:
    """Flip share, PROBA change and balanced accuracy per shift and over the whole panel."""
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(y).astype(int)
    base = oof["asis"]
    ba = lambda pred: float(np.mean([balanced_accuracy_score(y, p) for p in pred]))
    ba0 = ba(base["pred"])
    rows, flips, calls, dmax, dba = {}, 0, 0, 0.0, 0.0
    for name, o in oof.items():
        if name == "asis":
            continue
        flip = o["pred"] != base["pred"]
        d = np.abs(o["proba"] - base["proba"])
        b = ba(o["pred"])
        rows[name] = {"flips": int(flip.sum()), "calls": int(flip.size),
                      "flip_share": float(flip.mean()),
                      "patients_flipped": int(flip.any(axis=0).sum()),
                      "max_abs_dproba": float(np.nanmax(d)),
                      "median_abs_dproba": float(np.nanmedian(d)),
                      "balanced_accuracy": b, "delta_balanced_accuracy": b - ba0}
        flips += int(flip.sum())
        calls += int(flip.size)
        dmax = max(dmax, float(np.nanmax(d)))
        dba = max(dba, abs(b - ba0))
    overall = {"flips": flips, "calls": calls, "flip_share": flips / calls if calls else np.nan,
               "max_abs_dproba": dmax, "balanced_accuracy": ba0,
               "max_abs_delta_balanced_accuracy": dba,
               "done_when": "flip share <= 1/50 and |delta BA| <= 0.01 for every shift"}
    overall["met"] = bool(calls and all(r["flip_share"] <= 0.02 and
                                        abs(r["delta_balanced_accuracy"]) <= 0.01
                                        for r in rows.values()))
    return {"overall": overall, "shifts": rows}


def colour_stability(cohort, feat_dir, frame: pd.DataFrame, y, estimator, *, folds=5,
                     repeats=1, seed=0, n_jobs=-1, shifts=SHIFT_PANEL, progress=False) -> dict:
    """The stability figures of one candidate on the labelled patients of ``frame``."""
    images = {pid: cohort.images.get(pid, []) for pid in frame.index}
    t0 = time.perf_counter()
    shifted = shifted_frames(frame, cohort.clinical, shifted_features(
        images, feat_dir, shifts, n_jobs=n_jobs, progress=progress,
        with_crops="CROPS" in frame))
    t1 = time.perf_counter()
    oof = oof_stability(estimator, frame, shifted, y, folds=folds, repeats=repeats, seed=seed,
                        n_jobs=n_jobs)
    res = summarise(oof, y)
    res["panel"] = [{"name": s.name, "description": s.description, **s.params()}
                    for s in shifts]
    res["folds"], res["repeats"], res["seed"] = folds, repeats, seed
    res["seconds"] = {"shifted_features": t1 - t0, "fits": time.perf_counter() - t1}
    return res


def stage_hook(cohort, feat_dir, frame, y, chosen: str, report_dir, args, log=print) -> dict:
    """Training-stage hook: stability of the chosen candidate into ``report_dir``."""
    from cellfeat.models import make_pipeline

    res = colour_stability(cohort, feat_dir, frame, y, make_pipeline(chosen),
                           folds=args.folds, repeats=min(args.repeats, 2), seed=args.seed,
                           n_jobs=args.jobs, progress=not args.quiet)
    res["candidate"] = chosen
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / STABILITY_JSON).write_text(json.dumps(res, indent=1, default=float))
    _plot(res, report_dir / "stability.png")
    o = res["overall"]
    log(f"  colour stability ({len(res['shifts'])} shifts, out of fold): {o['flips']} of "
        f"{o['calls']} calls flip, max |dPROBA| {o['max_abs_dproba']:.3f}, max |dBA| "
        f"{o['max_abs_delta_balanced_accuracy']:.3f}")
    return res


def _plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["shifts"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    share = [100 * res["shifts"][n]["flip_share"] for n in names]
    axes[0].barh(names, share, color="tab:red")
    axes[0].axvline(2.0, color="k", ls=":", lw=0.8)
    axes[0].set(xlabel="calls that flip (%)", title="flipped calls (dotted: 1 in 50)")
    dp = [res["shifts"][n]["max_abs_dproba"] for n in names]
    axes[1].barh(names, dp, color="tab:blue")
    axes[1].set(xlabel="largest |change of PROBA|", title="PROBA change")
    axes[1].set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_lines(report_dir) -> list[str]:
    """The Markdown section of the training report (empty if the hook did not run)."""
    p = Path(report_dir) / STABILITY_JSON
    if not p.exists():
        return []
    res = json.loads(p.read_text())
    o = res["overall"]
    lines = ["## Colour stability", "",
             f"Out of fold ({res['repeats']}×{res['folds']}-fold, the CV folds), each held-out "
             f"patient of `{res.get('candidate', '?')}` is scored as it is and after every image "
             f"is rewritten by each colour shift of the panel (`cellfeat.augment.SHIFT_PANEL`), "
             f"features recomputed. Overall: **{o['flips']} of {o['calls']} calls flip** "
             f"({100 * o['flip_share']:.1f} %), largest PROBA change "
             f"{o['max_abs_dproba']:.3f}, balanced accuracy as-is {o['balanced_accuracy']:.3f} "
             f"(largest move {o['max_abs_delta_balanced_accuracy']:.3f}). Goal: at most 1 call "
             f"in 50 flips and BA moves by at most 0.01 under each shift: "
             f"{'met' if o['met'] else 'not met'}.", "",
             "| shift | what it does | flipped calls | max abs dPROBA | balanced accuracy |",
             "|---|---|---|---|---|"]
    desc = {s["name"]: s["description"] for s in res["panel"]}
    for name, r in res["shifts"].items():
        lines.append(f"| `{name}` | {desc.get(name, '')} | {r['flips']}/{r['calls']} "
                     f"({100 * r['flip_share']:.1f} %) | {r['max_abs_dproba']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} ({r['delta_balanced_accuracy']:+.3f}) |")
    lines += ["", "![colour stability](stability.png)", ""]
    return lines


# ------------------------------------------------------------------ feature-level drift


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

    from .stages import _cohort_frame, _features

    p = argparse.ArgumentParser(prog="python -m pipelines.stability", description=__doc__,
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
    feat_dir = _features(ns, cohort)
    frame = _cohort_frame(cohort, feat_dir)
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
