"""The stages behind the ``cellfeat`` command (each takes the parsed arguments)."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

import cellfeat
from cellfeat.data import DEFAULT_REFERENCE_DATE, Cohort, load_cohort
from cellfeat.features import FEATURE_NAMES

from .features import FeatureSettings, run_features
from ..io import StageError, write_csv
from .outputs import check_outputs
from .progress import show_progress


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def _features_dir(args) -> Path:
    if args.features is not None:
        return args.features
    return Path("build/features") / Path(args.data).resolve().name


def _load(args) -> Cohort:
    cohort = load_cohort(args.data, reference_date=args.reference_date)
    s = cohort.summary()
    _log(f"cohort {args.data}: {s['patients']} patients ({s['labelled']} labelled: "
         f"{s['reactive']} reactive, {s['tumoral']} tumoral; {s['unlabelled']} unlabelled), "
         f"{s['images']} images")
    warn = cohort.issues[cohort.issues["level"] == "warning"]
    for _, r in warn.head(20).iterrows():
        _log(f"  warning: {r['kind']}: {r['patient'] or r['path']}: {r['detail']}")
    if len(warn) > 20:
        _log(f"  ... {len(warn) - 20} more warnings")
    ignored = (cohort.issues["kind"] == "ignored_file").sum()
    if ignored:
        _log(f"  ignored {ignored} non-image files (listed in issues.csv)")
    return cohort


def _load_patient(args) -> Cohort:
    """One patient's cohort from the folder of its images and --age, --count, --sex."""
    from cellfeat.data import load_patient

    cohort = load_patient(args.data, age=args.age, lymph_count=args.count, gender=args.sex,
                          reference_date=args.reference_date)
    (pid, files), = cohort.images.items()
    _log(f"patient {pid} (the folder's name): {len(files)} images; age {args.age:g}, "
         f"lymphocyte count {args.count:g} x10^9/L, sex {args.sex or 'unknown (imputed)'}")
    ignored = (cohort.issues["kind"] == "ignored_file").sum()
    if ignored:
        _log(f"  ignored {ignored} other entries of {args.data} (listed in issues.csv)")
    return cohort


def feature_stage(args, cohort: Cohort, sub: str | None = None, gallery: bool = True,
                  computed: dict | None = None) -> Path:
    """Run the features stage into the feature folder (or its ``sub`` folder, sharing the
    folder's per-patient cache) and return where the tables are; ``gallery``: also draw
    gallery.png; ``computed``: patients already computed in memory (:func:`run_features`)."""
    base = _features_dir(args)
    out = base / sub if sub else base
    settings = FeatureSettings(method=args.method)
    client = None
    if getattr(args, "scheduler", None):
        from .cluster import connect

        client = connect(args.scheduler)
        workers = len(client.scheduler_info().get("workers", {}))
        _log(f"features: on Dask scheduler {args.scheduler} ({workers} workers, "
             f"{args.dask_mode} mode); dashboard: {client.dashboard_link or 'none'}")
    try:
        res = run_features(cohort, out, settings=settings, n_jobs=args.jobs, gallery=gallery,
                           progress=show_progress(args), client=client,
                           dask_mode=getattr(args, "dask_mode", "shared"),
                           cache_dir=base / "cache", computed=computed)
    finally:
        if client is not None:
            client.close()
    by = ", ".join(f"{k} {v}" for k, v in sorted(res["by_status"].items()))
    _log(f"features: {res['images']} images of {res['patients']} patients in "
         f"{res['seconds']:.1f} s ({res['images_per_s']:.0f} img/s): {by}")
    from cellfeat.ruler import CANONICAL_DIAMETER, MIN_RED_CELLS

    _log(f"  red-cell ruler: median {res['ruler_px']:.1f} px per patient; sizes converted to "
         f"red-cell diameters (images resampled to {CANONICAL_DIAMETER:g} px per red cell)")
    if res["ruler_default"]:
        _log(f"  {len(res['ruler_default'])} patient(s) with under {MIN_RED_CELLS} whole red "
             f"cells (a packed smear hides them): sizes at the default ruler "
             f"({CANONICAL_DIAMETER:g} px, dlmi's), not their own: "
             f"{', '.join(map(str, res['ruler_default'][:10]))}")
    if res["retried"]:
        _log(f"  re-run after a worker was lost or a task failed: {', '.join(res['retried'])}")
    _log(f"  wrote {out}/cells.parquet, qc.csv, issues.csv" + (", gallery.png" if gallery else ""))
    return out


def stage_synthetic(args):
    from cellfeat.synthetic import write_cohort

    write_cohort(args.out, n_train=args.train, n_test=args.test, cells=tuple(args.cells),
                 seed=args.seed)
    _log(f"synthetic cohort written to {args.out} ({args.train} labelled + {args.test} "
         f"unlabelled patients, masks under {args.out}/groundtruth)")


def _check_outputs(args, *targets):
    """Refuse, before anything is written, an output inside the cohort or over a file
    cellfeat did not write (pipelines.run.outputs); the feature folder is always one."""
    features = ("--features", _features_dir(args), "features")
    check_outputs([features, *targets], cohort=args.data, force=getattr(args, "force", False))


def stage_features(args):
    _check_outputs(args)
    feature_stage(args, _load(args))


def load_frame(cohort: Cohort, feat_dir: Path) -> pd.DataFrame:
    """The cohort frame (:func:`cellfeat.models.cohort_frame`) of ``cohort`` from the tables
    the feature stage wrote into ``feat_dir``."""
    from cellfeat.models import cohort_frame

    cells = pd.read_parquet(feat_dir / "cells.parquet")
    patients = pd.read_parquet(feat_dir / "patients.parquet")
    crops = {p.stem: np.load(p, allow_pickle=False) for p in (feat_dir / "crops").glob("*.npy")}
    return cohort_frame(cohort.clinical, cells, patients, crops=crops or None)


#: The clinical-only model every figure is read against (and the clinical fallback).
COMPARATOR = "clinical-logreg"


def stage_train(args):
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    from cellfeat.atypia import Atypicality
    from cellfeat.cnn import torch_available
    from cellfeat.decision import DECIMALS
    from cellfeat.evaluation import NO_RAILS, nested_cv
    from cellfeat.heterogeneity import PIXEL_SCORE
    from cellfeat.mil import MISVM
    from cellfeat.models import (CANDIDATES, CNN_CANDIDATES, DEFAULT_CANDIDATES, FALLBACKS,
                                 REFERENCE_CANDIDATES, MILFeatures, ModelChoice,
                                 available_candidates, cv_depth, make_pipeline)
    from cellfeat.zone import ZONE_RULE, in_zone, zone_limit

    from ..bundle import save_bundle
    from ..report.explain import reference_distributions
    from ..report.html import write_train_report
    from ..report.markdown import RULE, first_screen, write_report
    from cellfeat.models.invariance import ColourAugmented, without_copies

    from .stability import AUGMENT_COPIES, AUGMENT_SEED, bundle_entry, colour_copies, colour_sample
    from .stability import stage_hook as colour_stability

    _check_outputs(args, ("--model", args.model, "bundle"),
                   *([("--report", args.report, "report")] if args.report else []))
    cohort = _load(args)
    if cohort.reference_date > datetime.now().date().isoformat():   # ISO dates sort as text
        raise StageError(f"--reference-date {cohort.reference_date} is in the future: ages "
                         f"would be computed at a date not reached yet (and the bundle "
                         f"would be refused)")
    # where a training run's time goes (issue 21: all of it <= 1.5x features + nested CV)
    clock = {"start": time.perf_counter()}
    feat_dir = feature_stage(args, cohort)
    clock["features"] = time.perf_counter()
    frame = load_frame(cohort, feat_dir)
    lab = frame[frame["LABEL"].notna()]
    if lab["LABEL"].nunique() < 2:
        raise StageError(f"{args.data}: need labelled patients of both classes; found "
                         f"{lab['LABEL'].value_counts().to_dict()}")
    y = lab["LABEL"].astype(int).to_numpy()
    target = getattr(args, "target_sensitivity", 0.95)
    if not 0 < target <= 1:
        raise StageError(f"--target-sensitivity must be in (0, 1], got {target}")
    available = available_candidates()
    skipped = None
    if args.candidates:
        names = list(args.candidates)
    else:
        names = list(DEFAULT_CANDIDATES)
        if getattr(args, "cnn", False):
            names += [n for n in CNN_CANDIDATES if n in available]
        if not torch_available():
            skipped = ("  CNN candidates skipped: torch is not installed "
                       "(pip install 'cellfeat[cnn]')")
        elif not getattr(args, "cnn", False):
            skipped = "  CNN candidates skipped: pass --cnn to include them"
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise StageError(f"unknown candidate(s) {unknown}; choose from {', '.join(CANDIDATES)}")
    missing = [n for n in names if n not in available]
    if missing:
        raise StageError(f"candidate(s) {missing} need torch: pip install 'cellfeat[cnn]'")
    # the comparator, the fallbacks and the reference models always get figures on the same
    # folds; complexity order (CANDIDATES order) is the tie-break, whatever order was given
    fitted = set(names) | {COMPARATOR, *FALLBACKS.values(), *REFERENCE_CANDIDATES}
    order = [n for n in CANDIDATES if n in fitted]
    inner = (3, 2)  # inner folds, repeats: calibration, thresholds and the choice
    # the log says what training will do before the colour check's minutes, not after
    _log(f"train: rule = {RULE.format(inner=inner[0], repeats=inner[1])}")
    _log(f"  candidates (simplest first): {', '.join(n for n in order if n in names)}; "
         f"figures only: {', '.join(n for n in order if n not in names) or 'none'}")
    if skipped:
        _log(skipped)
    # issue 22: the cell features that another lab's colours move little are the model
    # inputs; measured label-free on a fixed sample of the training patients' own images
    t0 = clock["frames"] = time.perf_counter()
    check = colour_sample(cohort, feat_dir, lab, n_jobs=args.jobs, progress=show_progress(args))
    kept = check["kept"]
    _log(f"  colour screen: {len(kept)} of {len(check['table'])} inputs pass (mean drift of "
         f"the patient mean <= {bundle_entry(check)['bar']} between-patient SD under every "
         f"shift), from {check['sample']['images']} shifted images in "
         f"{time.perf_counter() - t0:.0f} s")
    if not kept:
        raise StageError(f"{args.data}: no cell feature passes the colour-stability bar; see "
                         f"the drift table that `python -m pipelines.bench.colour` prints")
    # ... and each image candidate also learns from colour-shifted copies of its training
    # patients (random shifts, not the panel's), judged by the flips they remove
    t0 = time.perf_counter()
    fit_frame = colour_copies(cohort, feat_dir, lab, n_jobs=args.jobs, progress=show_progress(args))
    _log(f"  colour copies: {AUGMENT_COPIES} randomly shifted copies of every training "
         f"patient, estimated from the same sample, in {time.perf_counter() - t0:.0f} s")
    candidates = [(n, make_pipeline(n, calibrated=False, features=kept)) for n in order]
    candidates = [(n, est if n == COMPARATOR else ColourAugmented(est))
                  for n, est in candidates]
    try:
        from cellfeat.evaluation import check_cohort_size

        check_cohort_size(y, (args.folds, inner[0], *cv_depth(order)))
        zone_limit(lab["LYMPH_COUNT"], y)
    except ValueError as exc:
        raise StageError(f"{args.data}: {exc}") from None
    _log(f"  nested CV: {args.repeats}x{args.folds}-fold outer CV of the whole rule on "
         f"{len(y)} patients")
    t0 = clock["colour check"] = time.perf_counter()
    bar = tqdm(total=args.folds * args.repeats, desc="outer folds", unit="fold",
               disable=not show_progress(args))
    # issue 28: patients unlike every training patient are flagged, on the inputs the
    # models read (the screened cell features' patient means)
    atypicality = Atypicality(features=[f for f in kept if f != PIXEL_SCORE])
    rule_args = dict(eligible=names, fallbacks=FALLBACKS, target_sensitivity=target,
                     atypicality=atypicality)
    with threadpool_limits(1):  # BLAS threads fight joblib's workers on small problems
        res = nested_cv(candidates, fit_frame, y, folds=args.folds, repeats=args.repeats,
                        inner_folds=inner[0], inner_repeats=inner[1], seed=args.seed,
                        n_jobs=args.jobs, callback=bar.update, **rule_args)
        bar.close()
        clock["nested CV"] = time.perf_counter()
        _log(f"  nested CV took {clock['nested CV'] - t0:.0f} s; fitting the rule on all "
             f"{len(y)} patients ...")
        rule = ModelChoice(candidates, cv=inner[0], repeats=inner[1], random_state=args.seed,
                           **rule_args).fit(fit_frame, y)
        explainer = MILFeatures(MISVM(C=0.1, random_state=0)).fit(lab, y)
    summary = res.summary()
    chosen, final = rule.chosen_, rule.model_
    gain = res.versus("nested", COMPARATOR)
    gain_auc = {k: gain[k] for k in ("auc_delta", "auc_ci95")}
    # the saved models are the fitted candidates without the copies' wrapper (same calls)
    for m in rule.models_.values():
        without_copies(m)
    fallbacks = {k: m for k, m in rule.routes_.items() if k != "main"}
    rails = rails_entry(res, summary, rule.atypicality_, NO_RAILS)
    in_zone_now = in_zone(lab["LYMPH_COUNT"], rule.zone_limit_)
    zone = {"rule": ZONE_RULE, "limit": rule.zone_limit_,
            "training_reactive": int((in_zone_now & (y == 0)).sum()),
            "training_tumoral": int((in_zone_now & (y == 1)).sum()),
            **res.zone_summary("nested", COMPARATOR)}
    meta = {
        "chosen": chosen, "cell_features": list(FEATURE_NAMES),
        "feature_settings": json.loads((feat_dir / "settings.json").read_text()),
        "reference_date": cohort.reference_date, "cv": summary.reset_index(names="candidate")
        .to_dict(orient="records"), "folds": args.folds, "repeats": args.repeats,
        "inner_folds": inner[0], "inner_repeats": inner[1], "seed": args.seed,
        "n_patients": int(len(y)), "n_tumoral": int(y.sum()),
        "trained": datetime.now().isoformat(timespec="seconds"), "versions": _versions(),
        "training_ids": [str(i) for i in lab.index],
        "selection": {"rule": RULE.format(inner=inner[0], repeats=inner[1]),
                      "candidates": [n for n in order if n in names],
                      "complexity_order": order, "comparator": COMPARATOR,
                      "fallbacks": dict(FALLBACKS),
                      "figures_only": [n for n in order if n not in names],
                      "inner_log_loss_in_sample": rule.selection_, "chosen": chosen,
                      "nested_choices": pd.Series(res.chosen).value_counts().to_dict()},
        "nested": {k: float(summary.loc["nested", k]) for k in summary.columns},
        "zone": zone,
        "rails": rails,
        "images_vs_clinical": {k: gain[k] for k in ("delta", "ci95")} | gain_auc,
        "triage": {**res.triage_summary("nested"), "threshold": final.triage_threshold_},
        "decision": {"threshold": final.threshold_, "triage_threshold": final.triage_threshold_,
                     "target_sensitivity": target, "platt": list(final.platt_),
                     "decimals": DECIMALS,
                     "fallback_thresholds": {k: {"threshold": m.threshold_,
                                                 "triage_threshold": m.triage_threshold_}
                                             for k, m in fallbacks.items()}},
    }
    report_dir = args.report or Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    # issues 14, 22: out-of-fold flips of the chosen candidate; its interval margin is saved
    stab = colour_stability(check, fit_frame, y, chosen, report_dir, args, log=_log)
    meta["colour_stability"] = bundle_entry(check, stab["margin_logit"])
    meta["colour_stability"]["copies"] = {"k": AUGMENT_COPIES, "seed": AUGMENT_SEED}
    model_bundle = {"main": final, "explainer": explainer, "atypicality": rule.atypicality_,
                    **fallbacks}
    meta["reference"] = reference_distributions(lab, y)  # for the HTML report
    save_bundle(args.model, pipeline=model_bundle, meta=meta)
    write_report(report_dir, res, summary, chosen, final, lab, y, meta)
    write_train_report(report_dir)  # index.html: the same report, self-contained
    latest = Path("reports/latest")
    if args.report is None:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(report_dir.resolve())
    clock["end"] = time.perf_counter()
    _log(f"  model: {args.model}   report: {report_dir}/README.md")
    _log("  " + time_split(clock))
    print("\n".join(first_screen(meta)))
    return 0


#: The rails of issue 28 in words, as the report and the bundle state them.
RAILS_RULE = ("above the overlap-zone limit the clinical comparator's P(tumoral) is a floor "
              "under the chosen model's, and every patient there is sent to cytometry; a "
              "patient beyond the atypicality bar is sent to cytometry wherever it lies")


def rails_entry(res, summary: pd.DataFrame, atypicality, no_rails: str) -> dict:
    """``meta["rails"]``: the rule with the rails against the same rule without them (paired,
    same folds), and the atypicality bars with the share of held-out patients flagged out of
    fold."""
    pair = res.versus("nested", no_rails)
    bare = summary.loc[no_rails]
    flagged = res.atypical
    return {
        "rule": RAILS_RULE,
        "without": {"ba": float(bare["balanced_accuracy"]), "auc": float(bare["roc_auc"]),
                    "zone_ba": float(bare["zone_balanced_accuracy"]),
                    "zone_auc": float(bare["zone_roc_auc"]),
                    "triage_sensitivity": float(bare["triage_sensitivity"]),
                    "triage_spared": float(bare["triage_reactive_spared"])},
        "gain": {k: pair[k] for k in ("delta", "ci95", "auc_delta", "auc_ci95", "zone_delta",
                                      "zone_ci95")},
        "atypical": {"alpha": float(atypicality.alpha),
                     "bars": {k: float(v) for k, v in atypicality.bars_.items()},
                     "oof_flagged": int(flagged.sum()), "oof_calls": int(flagged.size),
                     "oof_share": float(flagged.mean()),
                     "oof_patients": int(flagged.any(axis=0).sum()),
                     "patients": int(flagged.shape[1])},
    }


def time_split(clock: dict) -> str:
    """One line: where a training run's time went, from the ``perf_counter`` readings of
    ``clock`` (start, features, frames, colour check, nested CV, end), and its ratio to
    features + nested CV (issue 21's budget: at most 1.5)."""
    t = dict(clock)
    parts = {"features": t["features"] - t["start"],
             "loading the frames": t["frames"] - t["features"],
             "colour check (sample, screen, copies)": t["colour check"] - t["frames"],
             "nested CV": t["nested CV"] - t["colour check"],
             "final fit, colour stability, bundle and report": t["end"] - t["nested CV"]}
    total = t["end"] - t["start"]
    budget = parts["features"] + parts["nested CV"]
    ratio = f"; {total / budget:.2f}x features + nested CV" if budget > 0 else ""
    return (f"train took {total:.0f} s: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items()) + ratio)


def _versions() -> dict:
    import lightgbm
    import sklearn
    import xgboost

    return {"cellfeat": cellfeat.__version__, "scikit-learn": sklearn.__version__,
            "xgboost": xgboost.__version__, "lightgbm": lightgbm.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def score_frame(models: dict, frame: pd.DataFrame, *, zone_limit: float | None = None,
                training_ids=(), colour: dict | None = None) -> pd.DataFrame:
    """Predictions with a STATUS per patient, using fallbacks where inputs are missing.

    The calls are :func:`cellfeat.models.routed_calls`, the very function the nested CV of
    the rule evaluates. ``PROBA`` is the calibrated P(tumoral) of the model named in
    ``MODEL``; ``LABEL`` is 1 (tumoral) when ``PROBA`` reaches ``THRESHOLD``, that model's
    decision threshold, compared as both are printed (:data:`cellfeat.decision.DECIMALS`
    decimals); ``TRIAGE`` is ``cytometry`` when ``PROBA`` reaches its triage threshold,
    else ``none``. A row without a call has all four empty. ``ZONE`` is ``overlap`` when
    the count is at or below the bundle's overlap-zone limit (the images carry the call),
    ``count`` above it; ``IN_TRAINING`` marks patients the model was trained on, whose
    calls are in-sample.

    With ``colour`` (the bundle's ``meta["colour_stability"]``), each call is also made
    with the patient's cells moved by the training cohort's mean drift under each shift of
    the panel, widened by the bundle's margin (:func:`cellfeat.stability.interval_calls`):
    ``PROBA_LOW``-``PROBA_HIGH`` is that stability interval, ``STABLE`` is ``no`` where it
    straddles the threshold, and such a patient goes to cytometry (``TRIAGE``) with a
    STATUS that says why. Without it (older bundles) the three columns are empty."""
    from cellfeat.decision import DECIMALS
    from cellfeat.models import routed_calls
    from cellfeat.models.routing import REQUIRED_CLINICAL, usable_cells
    from cellfeat.zone import zone_names

    from ..report.glossary import atypical_reason

    atypicality = models.get("atypicality")
    calls = routed_calls(models, frame, zone_limit=zone_limit, atypicality=atypicality)
    n_cells = frame["CELLS"].map(len)
    n_used = usable_cells(frame)
    missing = frame[[*REQUIRED_CLINICAL, "GENDER"]].isna()
    called = calls["ROUTE"] != "none"
    out = pd.DataFrame({
        "ID": frame.index,
        "LABEL": pd.array(np.where(called, calls["LABEL"], 0), "Int64"),
        "PROBA": calls["PROBA"].to_numpy(), "THRESHOLD": calls["THRESHOLD"].to_numpy(),
        "TRIAGE": np.where(calls["CYTOMETRY"] == 1, "cytometry", "none"),
        "ZONE": (zone_names(pd.to_numeric(frame["LYMPH_COUNT"], errors="coerce"), zone_limit)
                 if zone_limit is not None else ""),
        "N_CELLS": n_cells.to_numpy(), "N_CELLS_USED": n_used, "STATUS": "",
        "MODEL": np.where(called, calls["ROUTE"], ""),
        "IN_TRAINING": frame.index.astype(str).isin([str(i) for i in training_ids])},
        index=frame.index)
    out["ATYPICAL"] = ""
    if atypicality is not None:
        atyp = atypicality.score(frame)
        assessed = (n_cells > 0).to_numpy()
        out.loc[assessed, "ATYPICAL"] = np.where(atyp["ATYPICAL"].to_numpy()[assessed],
                                                 "yes", "no")
    out.loc[~called.to_numpy(), "LABEL"] = pd.NA
    out.loc[~called.to_numpy(), "TRIAGE"] = ""
    out["PROBA_LOW"], out["PROBA_HIGH"], out["STABLE"] = np.nan, np.nan, ""
    drifts = {n: pd.Series(d, dtype=float) for n, d in ((colour or {}).get("drift") or {}).items()}
    if drifts:
        from cellfeat.stability import interval_calls

        iv = interval_calls(models, frame, drifts, colour.get("margin_logit", 0.0),
                            zone_limit=zone_limit)
        out["PROBA_LOW"], out["PROBA_HIGH"] = iv["PROBA_LOW"], iv["PROBA_HIGH"]
        out["STABLE"] = iv["STABLE"].map({True: "yes", False: "no"}).fillna("").astype(str)
        out.loc[(out["STABLE"] == "no").to_numpy(), "TRIAGE"] = "cytometry"
    for pid, route, n, used, floored in zip(frame.index, calls["ROUTE"], n_cells, n_used,
                                            calls["FLOOR"]):
        why = []
        if missing.loc[pid, list(REQUIRED_CLINICAL)].any():
            why.append("missing " + "/".join(c for c in REQUIRED_CLINICAL if missing.loc[pid, c]))
        if n == 0:
            why.append("no images")
        elif used == 0:
            why.append(f"no usable cells of {n}")
        atypical = out.loc[pid, "ATYPICAL"] == "yes" and route != "none"
        if atypical:
            unlike = (f"atypical cells: {atypical_reason(atyp.loc[pid], atypicality.bars_)}: "
                      f"sent to cytometry")
        if route == "main" and atypical:
            status = unlike + ("; gender unknown, imputed" if missing.loc[pid, "GENDER"] else "")
        elif route == "main":
            status = "ok: gender unknown, imputed" if missing.loc[pid, "GENDER"] else "ok"
        elif route == "none":
            status = "no call: " + "; ".join(why)
        else:
            status = f"{route} only: " + "; ".join(why) + (f"; {unlike}" if atypical else "")
        if floored:
            status += ("; count above the overlap zone: P(tumoral) raised to the clinical "
                       "model's (the count decides there)")
        if out.loc[pid, "STABLE"] == "no":
            status += (f"; near the threshold: colours of another lab (the panel's shifts) "
                       f"give P(tumoral) {out.loc[pid, 'PROBA_LOW']:.{DECIMALS}f}-"
                       f"{out.loc[pid, 'PROBA_HIGH']:.{DECIMALS}f} across "
                       f"{out.loc[pid, 'THRESHOLD']:.{DECIMALS}f}: sent to cytometry")
        out.loc[pid, "STATUS"] = status
    return out[[c for c in out.columns if c != "ATYPICAL"] + ["ATYPICAL"]].reset_index(drop=True)


def _import_skops_lean():
    """Import ``skops.io`` without importing torch and dask (seconds of a cold start).

    skops lists scikit-learn's estimators when it is imported, and the package walk behind
    that imports every sub-package, the array-API wrappers of torch and dask included,
    which import torch and dask.array whenever they are installed (the ``cnn`` and
    ``dask`` extras). Empty placeholders stand in for those wrappers during the import and
    are removed after it; a bundle holding the CNN expert imports torch itself."""
    import sys
    import types

    names = [f"sklearn.externals.array_api_compat.{lib}" for lib in ("torch", "dask", "cupy")]
    if "skops.io" in sys.modules or any(n in sys.modules for n in names):
        return
    for name in names:
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__path__ = []  # a package with no sub-modules for the walk
    try:
        import skops.io  # noqa: F401
    finally:
        parent = sys.modules.get(names[0].rsplit(".", 1)[0])
        for name in names:
            placeholder = sys.modules.pop(name)
            # nor left as an attribute of its package: a later import finds the real one
            if getattr(parent, name.rsplit(".", 1)[1], None) is placeholder:
                delattr(parent, name.rsplit(".", 1)[1])


def _bundle_in_background(path):
    """Start loading the model bundle in a thread (skops's import, the audit, the load and
    its re-checks: :func:`pipelines.bundle.load_bundle`, most of a cold start's first
    second); returns a function that waits for it and returns ``(models, meta)`` or raises
    what the loader raised (a refusal among them)."""
    import threading

    box = {}

    def load():
        try:
            _import_skops_lean()
            from ..bundle import load_bundle

            box["bundle"] = load_bundle(path, feature_names=FEATURE_NAMES)
        except BaseException as exc:  # handed to the caller, which raises it
            box["error"] = exc

    thread = threading.Thread(target=load, name="cellfeat-bundle", daemon=True)
    thread.start()

    def wait():
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["bundle"]

    return wait


def _one_patient_in_memory(args, one: bool) -> dict | None:
    """While the bundle loads: when the command scores exactly one patient, that patient's
    features computed in memory, or found in the feature cache; nothing is written (the
    bundle has not passed its checks yet). Returns ``{pid: (key, (cells, meta, crops),
    cached, seconds)}`` for :func:`run_features`'s ``computed``, or None (more patients, a
    cluster, or a cohort that the load after the bundle will report on)."""
    from cellfeat.data import load_patient

    from .tasks import compute_table, read_patient

    if getattr(args, "scheduler", None):
        return None
    try:  # the ages are computed again at the bundle's date, after it is loaded
        date = args.reference_date or DEFAULT_REFERENCE_DATE
        listing = (load_patient(args.data, age=args.age, lymph_count=args.count,
                                gender=args.sex, reference_date=date) if one
                   else load_cohort(args.data, reference_date=date))
    except Exception:  # said in its place, after the bundle, by the load that counts
        return None
    ids = listing.clinical.index if args.all else listing.unlabelled
    if len(ids) != 1 or not listing.images.get(ids[0]):
        return None
    pid = ids[0]
    if getattr(args, "debug", False):
        _log(f"debug: reading {pid}'s {len(listing.images[pid])} images while the model loads")
    t0 = time.perf_counter()
    settings = FeatureSettings(method=args.method)
    cache = _features_dir(args) / "cache"
    key, names, blobs, hit = read_patient(pid, listing.images[pid], settings,
                                          cache if cache.is_dir() else None, table=True)
    result = hit if hit is not None else compute_table(pid, names, blobs, settings)
    return {pid: (key, result, hit is not None, time.perf_counter() - t0),
            "files": listing.images[pid]}


def stage_score(args):
    out = Path(args.out)
    _check_outputs(args, ("--features", _features_dir(args) / "scored", "features"),
                   ("--out", out, "predictions"),
                   ("--out", out.with_name(out.stem + "_submission.csv"), "submission"),
                   ("--out", out.with_name(out.stem + "_report.html"), "page"),
                   ("--out", out.with_name(out.stem + "_montages"), "montages"))
    # the model loads in a thread while one patient's images are decoded and measured in
    # memory; a refused bundle stops the run before anything is scored or written, and the
    # bundle says at which date the training ages were computed
    bundle = _bundle_in_background(args.model)
    one = getattr(args, "age", None) is not None   # one patient's folder (cli checked --count)
    early = _one_patient_in_memory(args, one)
    models, meta = bundle()
    from cellfeat.decision import DECIMALS

    from ..report.plots import patient_montages

    trained_at = meta.get("reference_date")
    if args.reference_date is None:
        args.reference_date = trained_at or DEFAULT_REFERENCE_DATE
        if not one:
            _log(f"ages computed at {args.reference_date}, the model's reference date "
                 f"(stored in {args.model}); pass --reference-date to change it")
    elif args.reference_date != trained_at and not one:
        _log(f"  note: ages computed at {args.reference_date}; the model was trained with "
             f"ages at {trained_at}")
    cohort = _load_patient(args) if one else _load(args)
    ids = cohort.clinical.index if args.all else cohort.unlabelled
    if not len(ids):
        raise StageError(f"{args.data}: no patient with an unknown label to score "
                         f"(use --all to score labelled patients too)")
    cohort = cohort.subset(ids)          # features only for the patients scored
    late = cohort.issues[cohort.issues["kind"] == "dob_after_reference"]
    if len(late):
        _log(f"  warning: {len(late)} patient(s) born after {args.reference_date}, the date "
             f"at which ages are computed (e.g. {late['patient'].iloc[0]}): their age is "
             f"unknown and they are scored without it. If this cohort was sampled years after "
             f"{args.reference_date}, every age is off by as much: pass --reference-date")
    # the scored patients' tables go beside the training ones, not over them; the
    # per-patient cache is shared, so a patient seen at training is not recomputed
    # no gallery: the montages and the page below show the scored cells, patient by patient
    # (drawing it was most of the time of scoring one patient)
    files = early.pop("files") if early else None
    if early and (list(early) != list(cohort.images)
                  or files != cohort.images[next(iter(early))]):
        early = None  # not the patient scored after all: computed below as any other
    feat_dir = feature_stage(args, cohort, sub="scored", gallery=False, computed=early)
    frame = load_frame(cohort, feat_dir)
    zone = meta.get("zone") or {}
    pred = score_frame(models, frame, zone_limit=zone.get("limit"),
                       training_ids=meta.get("training_ids", ()),
                       colour=meta.get("colour_stability"))
    seen = int(pred["IN_TRAINING"].sum())
    if seen:
        _log(f"  note: {seen} of the {len(pred)} scored patients were training patients of this "
             f"model: their calls are in-sample (the model has seen their labels), not an "
             f"estimate of how it does on new patients; the training report's nested-CV "
             f"figures are that estimate")
    write_csv(out, pred, index=False, float_format=f"%.{DECIMALS}f")  # as compared
    # every scored patient has a row; -1 marks a patient without a call (see STATUS in OUT)
    sub = pd.DataFrame({"Id": pred["ID"], "Predicted": pred["LABEL"].fillna(-1).astype(int)})
    write_csv(out.with_name(out.stem + "_submission.csv"), sub, index=False)
    for _, r in pred[pred["LABEL"].isna()].iterrows():
        _log(f"  no call for {r['ID']} ({r['STATUS'].split(': ', 1)[-1]}): Predicted = -1 "
             f"in {out.stem}_submission.csv")
    for _, r in pred[pred["ATYPICAL"] == "yes"].iterrows():
        _log(f"  atypical cells in {r['ID']}: {r['STATUS'].split('atypical cells: ', 1)[-1]}")
    above = pred[(pred["ZONE"] == "count") & pred["LABEL"].notna()]
    if len(above):
        _log(f"  {len(above)} patient(s) above the overlap zone (count > {zone.get('limit', 0):.2f}): "
             f"sent to cytometry whatever P(tumoral), as no training patient there was reactive")
    mont_dir = out.with_name(out.stem + "_montages")
    patient_montages(cohort, frame, models["explainer"], pred, mont_dir,
                     method=meta["feature_settings"]["method"])
    from ..report.html import status_kind, write_score_report

    counts = pred["STATUS"].map(status_kind).value_counts().to_dict()
    near = int((pred["STABLE"] == "no").sum())
    _log(f"score: {len(pred)} patients: " + ", ".join(f"{k} {v}" for k, v in counts.items())
         + (f"; {near} near the threshold under another lab's colours (sent to cytometry)"
            if near else ""))
    _log(f"  wrote {out}, {out.stem}_submission.csv and {mont_dir}/<ID>.png")

    from ..report.html import qc_reasons, ruler_summary

    ruler = ruler_summary(qc_reasons(feat_dir, frame.index), meta)
    if ruler and ruler["warn"]:
        _log(f"  warning: the red cells of this cohort measure {ruler['cohort']:.1f} px across "
             f"against {ruler['training']:.1f} px in training ({ruler['change']:+.0f} %): "
             f"another magnification; sizes were converted to red-cell diameters")
    html = write_score_report(out.with_name(out.stem + "_report.html"), cohort=cohort, frame=frame,
                              pred=pred, models=models, meta=meta, feat_dir=feat_dir, data=args.data)
    _log(f"  report for people: {html}")
    return 0


def stage_demo(args):
    from types import SimpleNamespace

    from cellfeat.synthetic import write_cohort

    d = Path(args.dir)
    data = d / "cohort"
    t0 = time.perf_counter()
    if not (data / ".complete").exists():
        _log(f"demo: writing the synthetic cohort to {data} ...")
        write_cohort(data, n_train=60, n_test=6, cells=(16, 32), seed=args.seed)
        (data / ".complete").write_text("ok\n")
    common = dict(data=data, reference_date="2020-01-01", features=d / "features",
                  method="otsu", jobs=-1, quiet=args.quiet, scheduler=None, dask_mode="shared",
                  progress=args.progress)
    stage_train(SimpleNamespace(**common, model=d / "model.skops", report=d / "report",
                                folds=5, repeats=2, candidates=None, cnn=False, seed=args.seed))
    stage_score(SimpleNamespace(**common, model=d / "model.skops", out=d / "predictions.csv",
                                all=False))
    metrics = json.loads((d / "report" / "metrics.json").read_text())
    ch = metrics["chosen"]
    nested = metrics["candidates"]["nested"]
    clinical = metrics["candidates"].get("clinical-logreg")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  report:      {d / 'report' / 'README.md'}")
    print(f"  predictions: {d / 'predictions.csv'}")
    print(f"  cross-validated balanced accuracy (nested CV, model choice included): "
          f"{nested['balanced_accuracy']:.3f} (95% CI {nested['balanced_accuracy_ci_low']:.3f}-"
          f"{nested['balanced_accuracy_ci_high']:.3f}); chosen model: {ch}")
    if clinical:
        print(f"  clinical-only baseline: {clinical['balanced_accuracy']:.3f}")
    print(f"  HTML report: {d / 'predictions_report.html'}")
    return 0
