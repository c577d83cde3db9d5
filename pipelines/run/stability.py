"""Colour stability: does a patient's call survive another lab's colours?

Out of fold, each held-out patient is scored as it is and under every shift of
:data:`cellfeat.augment.SHIFT_PANEL`. The shift is applied to the decoded pixels of a fixed
sample of each patient's images (:data:`SAMPLE_K` images, :data:`cellfeat.stability.SAMPLE_RULE`),
the very segmentation and features of the feature stage run on the shifted copies (the
per-patient task of :mod:`pipelines.run.tasks`), and the patient's whole bag under the shift
is estimated from its sample (:func:`cellfeat.stability.transferred_bag`: the sampled cells
as shifted, every other cell moved by the sample's mean drift; the pixel-dispersion score
moved by its change on the sample). ``python -m pipelines.bench.colour --sample-check``
measures how close that estimate's flip rate is to the one of fully shifted bags.

For each shift we report the share of out-of-fold calls that flip, the largest change of
PROBA and the balanced accuracy as-is vs shifted. ``cellfeat train`` runs it on the chosen
candidate (with the screened inputs, and with every feature for comparison, on the same
folds) and writes ``stability.json`` into the report folder with the per-feature stability
table (:func:`cellfeat.stability.feature_stability`) that chose the inputs; the training
report (:mod:`pipelines.report.markdown`) draws and explains it, and
:mod:`pipelines.bench.colour` measures feature-level drift and the ``--augment`` comparison.

Shifted features are cached per patient and shift under ``FEATURES/shifted`` by a hash of
the image bytes, the feature settings and the shift's parameters, like the feature stage's
cache, so a re-run costs only the fits.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.augment import SHIFT_PANEL, STABILITY_PANEL, ColourShift

from ..report.markdown import STABILITY_JSON

from . import tasks as code

#: The goal under every shift of the panel (issue 22): at most 1 call in 100 flips, and the
#: balanced accuracy moves by at most 0.01.
FLIP_TARGET, DBA_TARGET = 0.01, 0.01
#: Images per patient shifted by the training check, and the seed of their choice
#: (:func:`cellfeat.stability.sample_images`). Measured on dlmi (``python -m
#: pipelines.bench.colour --sample-check``): see the README's colour-stability section.
SAMPLE_K, SAMPLE_SEED = 8, 0
#: Colour-shifted copies of every training patient that ``cellfeat train`` adds
#: (:class:`cellfeat.models.invariance.ColourAugmented`), and the seed of their shifts. On
#: dlmi (``python -m pipelines.bench.colour --screen --augment 2 --nested``, same folds):
#: out-of-fold flips 20 -> 13 of 1,200 at equal nested balanced accuracy (0.912 both).
AUGMENT_COPIES, AUGMENT_SEED = 2, 0


def augment_shifts(k: int = AUGMENT_COPIES, seed: int = AUGMENT_SEED) -> tuple:
    """The ``k`` random shifts of the training copies (:func:`cellfeat.augment.random_shift`).

    Drawn, not the panel: training on the panel's own shifts would make the panel's flip
    figures optimistic."""
    from cellfeat.augment import random_shift

    return tuple(random_shift(np.random.default_rng([seed, 1000 + i])) for i in range(k))


def colour_copies(cohort, feat_dir, frame: pd.DataFrame, *, k: int = AUGMENT_COPIES,
                  seed: int = AUGMENT_SEED, n_jobs=-1, progress=False) -> pd.DataFrame:
    """``frame`` with the :data:`cellfeat.models.invariance.COPIES` column: each patient's
    bag under ``k`` random shifts, estimated from the same sample of images as the check
    (:func:`transferred_frames`). Labels are never read."""
    from cellfeat.models.invariance import with_copies

    images = {pid: cohort.images.get(pid, []) for pid in frame.index}
    positions = sample_positions(images, SAMPLE_K, SAMPLE_SEED)
    frames, _ = transferred_frames(frame, positions, sample_shifts(
        images, positions, feat_dir, augment_shifts(k, seed), n_jobs=n_jobs,
        progress=progress))
    return with_copies(frame, frames)


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


def _shifted(blob, shift):
    """The decoded image shifted, or what :func:`_decoded` gave when it is not an image."""
    d = _decoded(blob)
    return shift.apply(d) if isinstance(d, np.ndarray) else d


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
                    with_crops: bool = False, ruler_files=None):
    """One patient's cell table, patient row and (``with_crops``) nucleus crops under each
    shift: ``{name: (cells, meta, crops or None)}``.

    ``ruler_files``: all the patient's images, when ``files`` is a sample of them: the
    patient's red-cell ruler under each shift is measured on all of them (as the feature
    stage would on the shifted smear: a sample of a few images holds too few whole red
    cells at a larger magnification), the features on ``files`` only.

    Cached per (patient, shift) by content: image bytes, feature settings, shift parameters.
    """
    import cv2

    cv2.setNumThreads(1)
    names = [Path(f).name for f in files]
    blobs = code.read_blobs(files)
    base = code.patient_key(pid, names, blobs, settings)
    if ruler_files is not None:
        every = code.read_blobs(ruler_files)
        base = code.patient_key(base, [Path(f).name for f in ruler_files], every, settings)
    out, decoded = {}, None
    for shift in shifts:
        key = f"{base}-{shift.key}"
        hit = code.cache_load(cache_dir, key)
        if hit is None:
            decoded = decoded or [_decoded(b) for b in blobs]
            moved = [_shift_blob(d, shift) for d in decoded]
            ruler = None
            if ruler_files is not None:  # decoded and shifted only as far as it measures
                ruler = code.patient_ruler(every, lambda b, shift=shift: _shifted(b, shift))[0]
            cells, meta, crops = code.compute_patient(pid, names, moved, settings, ruler=ruler)
            code.cache_store(cache_dir, key, cells, meta, crops)
        else:
            cells, meta, crops = hit
        out[shift.name] = (cells, meta, crops if with_crops else None)
    return pid, out


def shifted_features(images: dict, feat_dir, shifts=SHIFT_PANEL, *, settings=None,
                     n_jobs: int = -1, progress: bool = False, with_crops: bool = False,
                     ruler_images: dict | None = None) -> dict:
    """Cell and patient tables of the shifted images of ``images`` (ID -> files).

    ``ruler_images`` (ID -> all the patient's files), when ``images`` holds samples: each
    patient's ruler under a shift is measured on all its images (:func:`shifted_patient`).

    Returns ``{shift name: (cells, patients, crops)}``: the same forms as ``cells.parquet``,
    ``patients.parquet`` and ``crops/<ID>.npy`` of the feature stage (crops, ID -> array,
    only ``with_crops``, for the CNN candidates; else None).
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    settings = settings or code.FeatureSettings()
    cache_dir = Path(feat_dir) / "shifted"
    cache_dir.mkdir(parents=True, exist_ok=True)
    items = [(pid, files) for pid, files in images.items() if files]
    parts = {s.name: ([], [], {}) for s in shifts}
    bar = tqdm(total=sum(len(f) for _, f in items) * len(shifts), unit="img",
               desc="shifted features", disable=not progress)
    tasks = (delayed(shifted_patient)(pid, files, settings, tuple(shifts), cache_dir,
                                      with_crops=with_crops,
                                      ruler_files=(ruler_images or {}).get(pid))
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


# ------------------------------------------------------------------ a sample of each patient


def sample_positions(images: dict, k: int = SAMPLE_K, seed: int = SAMPLE_SEED) -> dict:
    """ID -> positions (in the patient's file order, which is its cell rows' order) of the
    images :func:`cellfeat.stability.sample_images` keeps."""
    from cellfeat.stability import sample_images

    return {pid: sample_images(str(pid), [Path(f).name for f in files], k, seed)
            for pid, files in images.items() if files}


def _pixel_score(files) -> float:
    """The pixel dispersion of the decodable images among ``files``, as the feature stage
    computes it (:class:`cellfeat.heterogeneity.PixelSums`)."""
    from cellfeat.heterogeneity import PixelSums

    sums = PixelSums()
    for item in map(_decoded, code.read_blobs(files)):
        if isinstance(item, np.ndarray):
            sums.add(item)
    return sums.value()


def sample_shifts(images: dict, positions: dict, feat_dir, shifts=SHIFT_PANEL, *,
                  n_jobs: int = -1, progress: bool = False) -> dict:
    """The sampled images of every patient, as they are and under each shift.

    Returns ``{"asis": {ID: pixel score of the sample}, name: {ID: (cells, pixel score)}}``
    for each shift, the cells being the shifted sample's rows in ``positions`` order.
    """
    from cellfeat.heterogeneity import PIXEL_SCORE

    sub = {pid: [images[pid][i] for i in pos] for pid, pos in positions.items()}
    res = shifted_features(sub, feat_dir, shifts, n_jobs=n_jobs, progress=progress,
                           ruler_images={pid: images[pid] for pid in sub})
    out = {"asis": {pid: _pixel_score(files) for pid, files in sub.items()}}
    for name, (cells, patients, _) in res.items():
        pix = (patients.set_index("ID")[PIXEL_SCORE] if len(patients)
               else pd.Series(dtype=float))
        groups = dict(tuple(cells.groupby("ID", sort=False))) if len(cells) else {}
        out[name] = {pid: (groups[pid].drop(columns=["ID", "FILE"]).reset_index(drop=True),
                           float(pix.get(pid, np.nan)))
                     for pid in sub if pid in groups}
    return out


#: How the unsampled cells of a bag move under a shift (:func:`transferred_frames`):
#: ``spread`` (what ships), the patient's own drift shrunk toward the cohort's
#: (:func:`cellfeat.stability.shrunk_drifts`) plus, cell by cell, one of its sampled cells'
#: deviations from that drift; ``shrunk``, the shrunk drift alone; ``raw``, the sample's
#: mean drift as it is; ``cohort``, the cohort's mean drift for every patient.
DRIFT_MODES = ("spread", "shrunk", "raw", "cohort")


def _residuals(deltas: pd.DataFrame) -> pd.DataFrame:
    """The sampled cells' deltas minus their mean, for cells usable both ways."""
    d = deltas.dropna(how="all")
    return d - d.mean()


def _seed(pid, shift: str) -> list[int]:
    """A fixed seed per patient and shift (the draw of residuals is reproducible)."""
    import hashlib

    return [int(hashlib.sha256(f"{pid}/{shift}".encode()).hexdigest()[:8], 16)]


def transferred_frames(frame: pd.DataFrame, positions: dict, sampled: dict, *,
                       mode: str = "spread"):
    """Each shift's cohort frame estimated from the samples, and each patient's drift.

    For each shift and patient: the drift of every cell feature on the sample
    (:func:`cellfeat.stability.bag_drift`), the pixel-dispersion score's change on the
    sample, and the whole bag under the shift (:func:`cellfeat.stability.transferred_bag`:
    the sampled cells as shifted, the others moved as ``mode`` says, see
    :data:`DRIFT_MODES`).

    Returns ``(frames, drifts)``: ``{name: cohort frame}`` on the rows of ``frame`` and
    ``{name: DataFrame}`` of the samples' mean drifts (patients × cell features, plus the
    pixel score when ``frame`` has it; NaN where a sample has no cell usable both ways).
    """
    from cellfeat.features import FEATURE_NAMES
    from cellfeat.heterogeneity import PIXEL_SCORE
    from cellfeat.stability import cell_deltas, shrunk_drifts, transferred_bag

    if mode not in DRIFT_MODES:
        raise ValueError(f"mode must be one of {DRIFT_MODES}, got {mode!r}")
    feats = [f for f in FEATURE_NAMES if len(frame) and f in frame["CELLS"].iloc[0].columns]
    pixel = PIXEL_SCORE in frame
    frames, drifts = {}, {}
    for name, by_pid in sampled.items():
        if name == "asis":
            continue
        deltas = {}
        for pid, (moved, _) in by_pid.items():
            if pid not in frame.index:
                continue
            pos = positions[pid]
            if len(moved) != len(pos):
                raise ValueError(f"{pid}: {len(moved)} shifted rows for {len(pos)} sampled "
                                 f"images")
            deltas[pid] = cell_deltas(frame.at[pid, "CELLS"].iloc[pos].reset_index(drop=True),
                                      moved, feats)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a sample without a usable pair
            raw = pd.DataFrame({pid: d.mean() for pid, d in deltas.items()}).T
        raw = raw.reindex(index=frame.index, columns=feats)
        if pixel:
            raw[PIXEL_SCORE] = [by_pid[pid][1] - sampled["asis"].get(pid, np.nan)
                                if pid in by_pid else np.nan for pid in frame.index]
        fill = raw.mean()
        if mode in ("spread", "shrunk"):
            move = shrunk_drifts(deltas).reindex(index=frame.index, columns=feats)
        elif mode == "raw":
            move = raw[feats]
        else:
            move = pd.DataFrame([fill[feats]] * len(frame), index=frame.index)
        move = move.fillna(fill[feats])
        out = frame.copy()
        out["CELLS"] = [transferred_bag(cells, move.loc[pid], positions[pid], by_pid[pid][0],
                                        residuals=_residuals(deltas[pid]) if mode == "spread"
                                        and pid in deltas else None,
                                        seed=_seed(pid, name))
                        if pid in by_pid and len(cells) else cells
                        for pid, cells in zip(frame.index, frame["CELLS"])]
        if pixel:
            out[PIXEL_SCORE] = frame[PIXEL_SCORE] + raw[PIXEL_SCORE].fillna(fill[PIXEL_SCORE])
        frames[name], drifts[name] = out, raw
    return frames, drifts


# ------------------------------------------------------------------ out-of-fold stability


def oof_stability(estimator, X: pd.DataFrame, shifted: dict, y, *, folds=5, repeats=1, seed=0,
                  drifts: dict | None = None, n_jobs: int = 1) -> dict:
    """Out-of-fold PROBA and calls of each patient as-is and under each shift.

    The folds are :class:`~sklearn.model_selection.RepeatedStratifiedKFold` (``folds``,
    ``repeats``, ``seed``), the same as :func:`cellfeat.evaluation.evaluate_candidates`.
    In each fold ``estimator`` is fitted on the training patients of ``X`` (to train with
    colour-shifted copies, wrap it in :class:`cellfeat.models.invariance.ColourAugmented`
    and give ``X`` the copies) and scores the held-out patients of ``X`` and of every frame
    in ``shifted``. With ``drifts`` (shift name -> patients × features, as
    :func:`transferred_frames` returns), the held-out patients are also scored moved by the
    *training* patients' mean drift of each shift (:func:`cellfeat.stability.drifted_frame`,
    what ``cellfeat score`` does for a new patient), under the names ``cohort:<shift>``.
    Returns ``{"asis"|name: {"proba", "pred"}}`` with arrays of shape (repeats, n_patients);
    ``"asis"`` also has ``"threshold"``, each call's decision threshold.
    """
    from joblib import Parallel, delayed
    from sklearn.base import clone
    from sklearn.model_selection import RepeatedStratifiedKFold

    from cellfeat.decision import call
    from cellfeat.stability import drifted_frame

    y = np.asarray(y).astype(int)
    splits = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats,
                                          random_state=seed).split(np.zeros(len(y)), y))
    frames = {"asis": X, **{k: v.loc[X.index] for k, v in shifted.items()}}
    drifts = {k: v.reindex(X.index) for k, v in (drifts or {}).items()}

    def fit(k):
        tr = splits[k][0]
        return clone(estimator).fit(X.iloc[tr], y[tr])

    # the fits run in parallel; the held-out patients are scored here, so that the shifted
    # frames (many, each as large as the cohort) are never copied to the workers
    models = Parallel(n_jobs=n_jobs)(delayed(fit)(k) for k in range(len(splits)))
    names = [*frames, *[f"cohort:{n}" for n in drifts]]
    out = {n: {"proba": np.full((repeats, len(y)), np.nan),
               "pred": np.full((repeats, len(y)), -1)} for n in names}
    out["asis"]["threshold"] = np.full((repeats, len(y)), np.nan)
    for k, model in enumerate(models):
        (tr, te), r = splits[k], k // folds
        out["asis"]["threshold"][r, te] = getattr(model, "threshold_", 0.5)
        test = {n: f.iloc[te] for n, f in frames.items()}
        for name, d in drifts.items():
            test[f"cohort:{name}"] = drifted_frame(X.iloc[te], d.iloc[tr].mean())
        for n, f in test.items():
            p = model.predict_proba(f)[:, 1]
            out[n]["proba"][r, te] = p
            # a calibrated call is PROBA against its threshold: no second pass of the inputs
            out[n]["pred"][r, te] = (model.classes_[call(p, model.threshold_).astype(int)]
                                     if hasattr(model, "threshold_") else model.predict(f))
    return out


def margin(oof: dict) -> float:
    """:func:`cellfeat.stability.residual_margin` of out-of-fold calls: each shift's
    P(tumoral) against the drift model's (``cohort:<shift>``), over calls and shifts."""
    from cellfeat.stability import residual_margin

    pairs = [(oof[f"cohort:{n}"]["proba"], o["proba"]) for n, o in oof.items()
             if f"cohort:{n}" in oof]
    if not pairs:
        return 0.0
    return residual_margin(np.concatenate([a.ravel() for a, _ in pairs]),
                           np.concatenate([b.ravel() for _, b in pairs]))


def flagged(oof: dict, margin_logit: float = 0.0) -> np.ndarray:
    """Which out-of-fold calls the stability interval of ``score`` flags (repeats,
    n_patients): the hull of the as-is and ``cohort:<shift>`` P(tumoral), each widened by
    ``margin_logit`` log-odds, straddles the call's threshold (compared as printed)."""
    from scipy.special import expit

    from cellfeat.decision import call, logit

    base = oof["asis"]
    ell = np.stack([logit(base["proba"]),
                    *[logit(o["proba"]) for n, o in oof.items() if n.startswith("cohort:")]])
    low, high = expit(ell.min(axis=0) - margin_logit), expit(ell.max(axis=0) + margin_logit)
    thr = base.get("threshold", np.full(base["proba"].shape, 0.5))
    out = np.zeros(low.shape, bool)
    for idx in np.ndindex(low.shape):
        out[idx] = call([low[idx]], thr[idx])[0] != call([high[idx]], thr[idx])[0]
    return out


def summarise(oof: dict, y, margin_logit: float = 0.0) -> dict:
    """Flip share, PROBA change and balanced accuracy per shift and over the whole panel.

    Entries of ``oof`` named ``cohort:<shift>`` (see :func:`oof_stability`) are not shifts:
    they make the ``interval`` figures, how well the call's stability interval that ``score``
    computes (:func:`flagged`, widened by ``margin_logit``) foresees the flips:
    ``flagged_share`` (calls whose interval straddles the threshold), ``flips_caught``
    (flipped calls, on any shift, that were flagged) of ``flips`` (calls that flip on at
    least one shift).
    """
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(y).astype(int)
    base = oof["asis"]
    ba = lambda pred: float(np.mean([balanced_accuracy_score(y, p) for p in pred]))
    ba0 = ba(base["pred"])
    rows, flips, calls, dmax, dba = {}, 0, 0, 0.0, 0.0
    any_flip = np.zeros(base["pred"].shape, bool)
    for name, o in oof.items():
        if name == "asis" or name.startswith("cohort:"):
            continue
        flip = o["pred"] != base["pred"]
        any_flip |= flip
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
               "done_when": f"flip share <= {FLIP_TARGET} and |delta BA| <= {DBA_TARGET} "
                            f"for every shift"}
    overall["met"] = bool(calls and all(r["flip_share"] <= FLIP_TARGET and
                                        abs(r["delta_balanced_accuracy"]) <= DBA_TARGET
                                        for r in rows.values()))
    out = {"overall": overall, "shifts": rows}
    if any(n.startswith("cohort:") for n in oof):
        flag = flagged(oof, margin_logit)
        out["interval"] = {"calls": int(flag.size), "flagged": int(flag.sum()),
                           "flagged_share": float(flag.mean()), "margin_logit": margin_logit,
                           "flips": int(any_flip.sum()),
                           "flips_caught": int((any_flip & flag).sum())}
    return out


def screen(frame: pd.DataFrame, drifts: dict, bar: float | None = None):
    """The per-feature stability table of the patients of ``frame`` and the inputs that
    pass (:func:`cellfeat.stability.feature_stability`): the cell features, and the
    pixel-dispersion score, a patient-level input screened by the same bar, when the drifts
    carry it."""
    from cellfeat.features import FEATURE_NAMES
    from cellfeat.heterogeneity import PIXEL_SCORE
    from cellfeat.models.routing import usable_cells
    from cellfeat.stability import STABILITY_BAR, feature_stability, stable_features

    feats = [f for f in FEATURE_NAMES if f in next(iter(drifts.values())).columns]
    ok = usable_cells(frame) > 0
    means = pd.DataFrame([c.loc[c["QC_STATUS"] == "ok", feats].astype(float).mean()
                          for c in frame["CELLS"][ok]], index=frame.index[ok])
    if PIXEL_SCORE in next(iter(drifts.values())).columns and PIXEL_SCORE in frame:
        means[PIXEL_SCORE] = frame.loc[ok, PIXEL_SCORE].astype(float)
    table = feature_stability(means, {n: d.loc[means.index] for n, d in drifts.items()},
                              STABILITY_BAR if bar is None else bar)
    return table, stable_features(table)


def colour_sample(cohort, feat_dir, frame: pd.DataFrame, *, k=SAMPLE_K, seed=SAMPLE_SEED,
                  shifts=STABILITY_PANEL, n_jobs=-1, progress=False) -> dict:
    """The label-free half of the check, run before the models are fitted: the sampled
    shifts of every patient of ``frame``, the transferred frames, the drifts, the stability
    table and the features that pass."""
    from cellfeat.stability import SAMPLE_RULE

    t0 = time.perf_counter()
    images = {pid: cohort.images.get(pid, []) for pid in frame.index}
    positions = sample_positions(images, k, seed)
    sampled = sample_shifts(images, positions, feat_dir, shifts, n_jobs=n_jobs,
                            progress=progress)
    frames, drifts = transferred_frames(frame, positions, sampled)
    table, kept = screen(frame, drifts)
    return {"frames": frames, "drifts": drifts, "table": table, "kept": kept,
            "sample": {"k": k, "seed": seed, "rule": SAMPLE_RULE.format(k=k, seed=seed),
                       "images": int(sum(len(p) for p in positions.values()) * len(shifts))},
            "panel": [{"name": s.name, "description": s.description, **s.params()}
                      for s in shifts],
            "seconds": time.perf_counter() - t0}


def bundle_entry(check: dict, margin_logit: float | None = None) -> dict:
    """What the bundle keeps of the check (``meta["colour_stability"]``): the bar, the
    sample, the inputs kept, each shift's mean drift over the training patients in feature
    units and the interval's margin (:func:`margin`, log-odds), from which ``score``
    computes a new patient's stability interval."""
    from cellfeat.stability import MARGIN_QUANTILE, STABILITY_BAR

    out = {"bar": STABILITY_BAR, "sample": check["sample"], "features": list(check["kept"]),
           "dropped": [f for f in check["table"].index if f not in check["kept"]],
           "drift": {n: {f: float(v) for f, v in d.mean().items() if np.isfinite(v)}
                     for n, d in check["drifts"].items()}}
    if margin_logit is not None:
        out["margin_logit"] = float(margin_logit)
        out["margin_quantile"] = MARGIN_QUANTILE
    return out


def stage_hook(check: dict, frame, y, chosen: str, report_dir, args, log=print) -> dict:
    """Training-stage hook: out-of-fold stability of the chosen candidate with the screened
    inputs and with every feature (same folds), written with the stability table into
    ``report_dir``/:data:`STABILITY_JSON`."""
    from cellfeat.models import make_pipeline
    from cellfeat.models.invariance import COPIES, augmented

    t0 = time.perf_counter()
    kw = dict(folds=args.folds, repeats=min(args.repeats, 2), seed=args.seed, n_jobs=args.jobs)
    # what ships (screened inputs, with the training copies when the frame has them, built
    # as training builds it) beside the chosen candidate on every feature without copies:
    # the "before" of issue 22
    kept = check["kept"]
    runs = {"screened": (augmented(chosen, kept) if COPIES in frame
                         else make_pipeline(chosen, features=kept), frame),
            "all_features": (make_pipeline(chosen),
                             frame.drop(columns=[COPIES], errors="ignore"))}
    res, widen = {}, 0.0
    for tag, (est, X) in runs.items():
        oof = oof_stability(est, X, check["frames"], y, drifts=check["drifts"], **kw)
        if tag == "screened":
            widen = margin(oof)
        res[tag] = summarise(oof, y, margin(oof))
    out = {**res["screened"], "all_features": res["all_features"], "candidate": chosen,
           "panel": check["panel"], "sample": check["sample"], "folds": kw["folds"],
           "repeats": kw["repeats"], "seed": kw["seed"],
           "features": {"bar": bundle_entry(check)["bar"], "kept": check["kept"],
                        "table": check["table"].reset_index(names="feature")
                        .to_dict(orient="records")},
           "margin_logit": widen,
           "seconds": {"sampled_shifts": check["seconds"], "fits": time.perf_counter() - t0}}
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / STABILITY_JSON).write_text(json.dumps(out, indent=1, default=float))
    for tag, r in (("screened inputs", res["screened"]), ("every feature", res["all_features"])):
        o = r["overall"]
        log(f"  colour stability, {tag} ({len(r['shifts'])} shifts, out of fold): {o['flips']} "
            f"of {o['calls']} calls flip, max |dPROBA| {o['max_abs_dproba']:.3f}, max |dBA| "
            f"{o['max_abs_delta_balanced_accuracy']:.3f}")
    return out
