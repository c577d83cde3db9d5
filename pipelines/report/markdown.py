"""The training report: metrics.json, README.md and the figures it links.

The first screen (:func:`first_screen`, also what ``cellfeat train`` prints) holds
out-of-sample figures only, in this order: the nested-CV estimate of the whole procedure
(selection, calibration, thresholds and fallback routing included) overall and in the
overlap zone, with intervals; the paired gain of that procedure over the clinical
comparator on the same folds, overall and in the zone; the triage figures achieved out of
fold beside their target; and which model the rule picked on all patients, with its
thresholds. Everything below reads each candidate against the clinical comparator on the
same patients and folds; figures that are not out-of-sample say so where they appear.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.evaluation import NO_RAILS

from ..io import write_text

#: Where the train stage leaves the colour-stability figures for this report.
STABILITY_JSON = "stability.json"

#: The selection rule in words (``{inner}``, ``{repeats}``: inner folds and repeats);
#: fixed in code (:class:`cellfeat.models.ModelChoice`) before any result is seen.
RULE = ("each candidate is fitted on the same {repeats}x{inner} inner folds of the training "
        "patients; its inner out-of-fold P(tumoral) is Platt-calibrated and scored by "
        "log-loss, patient by patient; the simplest candidate within one standard error "
        "(of the paired difference) of the lowest log-loss wins (complexity order of "
        "cellfeat.models.CANDIDATES)")


def group_of(name: str) -> str:
    """Which inputs a candidate uses: clinical only, image only, or both."""
    if name.startswith("clinical-"):
        return "clinical only"
    if name.startswith(("bags-", "meanstd-", "mean-")) or name == "cnn":
        return "image only"
    return "clinical + image"


def _pct(x):
    return f"{100 * x:.0f} %"


def _ci(ci, fmt="+.3f"):
    return f"95% CI {ci[0]:{fmt}} to {ci[1]:{fmt}}"


def first_screen(meta: dict) -> list[str]:
    """The lines a reader sees first, from the numbers in ``metrics.json``/the bundle: every
    figure is out of sample (nested CV)."""
    n, g, t, d = meta["nested"], meta["images_vs_clinical"], meta["triage"], meta["decision"]
    z, sel = meta["zone"], meta["selection"]
    comp = sel.get("comparator", "clinical-logreg")
    return [
        f"nested-CV estimate of the whole procedure (selection, calibration, thresholds and "
        f"fallbacks included; {meta['repeats']}x{meta['folds']}-fold, {meta['n_patients']} "
        f"patients): balanced accuracy {n['balanced_accuracy']:.3f} "
        f"({_ci((n['balanced_accuracy_ci_low'], n['balanced_accuracy_ci_high']), '.3f')}), "
        f"ROC AUC {n['roc_auc']:.3f} ({_ci((n['roc_auc_ci_low'], n['roc_auc_ci_high']), '.3f')})",
        f"  in the overlap zone (count <= the highest reactive count of each training fold; "
        f"{z['n_reactive']:.0f} reactive, {z['n_tumoral']:.0f} tumoral per repeat): balanced "
        f"accuracy {z['nested']['ba']:.3f} ({_ci(z['nested']['ci95'], '.3f')}), ROC AUC "
        f"{z['nested']['auc']:.3f} ({_ci(z['nested']['auc_ci95'], '.3f')})",
        f"gain over the clinical comparator ({comp}, same folds, paired): overall "
        f"{g['delta']:+.3f} ({_ci(g['ci95'])}); in the zone {z['gain']['delta']:+.3f} "
        f"({_ci(z['gain']['ci95'])}), from {z['clinical']['ba']:.3f} to {z['nested']['ba']:.3f}",
        f"triage out of fold (threshold chosen inside each training fold): "
        f"{_pct(t['sensitivity'])} of leukaemias sent to cytometry (target "
        f"{_pct(t['target_sensitivity'])}; 95% CI {_pct(t['sensitivity_ci95'][0])}-"
        f"{_pct(t['sensitivity_ci95'][1])}), {_pct(t['specificity'])} of reactive patients "
        f"spared it (95% CI {_pct(t['specificity_ci95'][0])}-{_pct(t['specificity_ci95'][1])})",
        *_rails_lines(meta),
        f"saved model: {sel['chosen']}, picked by the same rule on all {meta['n_patients']} "
        f"patients; LABEL = tumoral when PROBA >= {d['threshold']:.{d.get('decimals', 3)}f}; "
        f"TRIAGE = cytometry when PROBA >= {d['triage_threshold']:.{d.get('decimals', 3)}f}; "
        f"overlap zone: count <= {z['limit']:.2f} x10^9/L",
    ]


def _rails_lines(meta: dict) -> list[str]:
    """The first screen's lines on the rails of issue 28 (none for a bundle without them):
    the rule with them against the same rule without them, paired on the same folds, and
    the share of held-out patients flagged atypical."""
    r = meta.get("rails")
    if not r:
        return []
    g, w, a = r["gain"], r["without"], r["atypical"]
    n, z = meta["nested"], meta["zone"]
    return [
        f"rails (the count decides above the zone: clinical P(tumoral) as a floor, cytometry "
        f"there; atypical patients to cytometry) against the same rule without them, same "
        f"folds, paired: balanced accuracy {n['balanced_accuracy']:.3f} vs {w['ba']:.3f}, "
        f"{g['delta']:+.3f} ({_ci(g['ci95'])}); ROC AUC {n['roc_auc']:.3f} vs {w['auc']:.3f}, "
        f"{g['auc_delta']:+.3f} ({_ci(g['auc_ci95'])}); in the zone {z['nested']['ba']:.3f} vs "
        f"{w['zone_ba']:.3f}, {g['zone_delta']:+.3f} ({_ci(g['zone_ci95'])}); triage without "
        f"them: {_pct(w['triage_sensitivity'])} sent, {_pct(w['triage_spared'])} spared",
        f"atypical patients out of fold: {a['oof_flagged']} of {a['oof_calls']} held-out calls "
        f"({100 * a['oof_share']:.1f} %; {a['oof_patients']} of {a['patients']} patients ever) "
        f"beyond the bar (conformal, at most {100 * a['alpha']:.0f} % of training-like patients "
        f"by construction); bars of the saved model: QC-failed share "
        f"{100 * a['bars']['qc']:.0f} %, distance {a['bars']['distance']:.1f}, "
        f"{a['bars']['range']:.1f} robust SD outside the training range",
    ]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _roc(res, path, names=("nested", "clinical-logreg")):
    """One ROC curve per held-out fold (one fitted procedure each), per model, labelled with
    the AUC the tables report: pairs of patients tested in the same fold, pooled over the
    folds of each repeat and averaged over repeats (:meth:`CVResult.interval`). A curve of
    probabilities pooled across folds, or averaged over repeats, would mix models and show
    another AUC."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours = dict(zip(names, ("tab:red", "tab:gray", "tab:blue", "tab:green")))
    for name in names:
        if name not in res.proba:
            continue
        lines = []
        for r, p in enumerate(res.proba[name]):
            for k in np.unique(res.fold[r]):
                te = (res.fold[r] == k) & np.isfinite(p)
                if len(np.unique(res.y[te])) < 2:
                    continue
                fpr, tpr, _ = roc_curve(res.y[te], p[te])
                lines += ax.plot(fpr, tpr, lw=1.2 if name == "nested" else 0.8, alpha=0.35,
                                 color=colours[name], drawstyle="steps-post")
        auc = res.interval(name, metric="roc_auc")
        if lines:
            lines[0].set_label(f"{name}: AUC {auc.estimate:.3f} (95% CI {auc.low:.3f}-"
                               f"{auc.high:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity (tumoral)",
           title="ROC of each held-out fold\n(AUC: pairs within a fold, as in the tables)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _confusion(res, name, path):
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    cm = sum(confusion_matrix(res.y, p, labels=[0, 1]) for p in res.pred[name]) / len(res.pred[name])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["reactive", "tumoral"],
           yticklabels=["reactive", "tumoral"], xlabel="predicted", ylabel="flow cytometry",
           title=f"{name}\n(mean over repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _calibration(res, names, path):
    from cellfeat.evaluation import reliability

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    for name in names:
        brier = np.mean([np.mean((q - res.y) ** 2) for q in res.proba[name]])
        t = reliability(np.tile(res.y, len(res.proba[name])), res.proba[name].ravel())
        ax.plot(t["predicted"], t["observed"], "o-", lw=2 if name == "nested" else 1,
                label=f"{name} (Brier {brier:.3f})")
    ax.set(xlabel="predicted P(tumoral), out of fold", ylabel="observed share tumoral",
           title="reliability (5 bins, all repeats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _triage_plot(res, meta, path):
    from cellfeat.evaluation import triage_curve

    plt = _plt()
    t = meta["triage"]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for name, style in (("nested", "-"), ("clinical-logreg", "--")):
        c = triage_curve(np.tile(res.y, len(res.proba[name])), res.proba[name].ravel())
        ax.plot(c["reactive_spared"], c["sensitivity"], style, label=name)
    ax.plot(t["specificity"], t["sensitivity"], "o", ms=8, color="tab:red",
            label=f"operating point (target {_pct(t['target_sensitivity'])})")
    ax.axhline(t["target_sensitivity"], color="tab:red", lw=0.6, ls=":")
    ax.set(xlabel="share of reactive patients spared cytometry",
           ylabel="share of leukaemias sent to cytometry", xlim=(0, 1), ylim=(0, 1.02),
           title="triage, out of fold")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def feature_importances(pipeline) -> pd.Series:
    """Importances of the fitted pipeline's final model, with registry names."""
    pipeline = getattr(pipeline, "estimator_", pipeline)  # CalibratedDecision
    last = pipeline[-1]
    if hasattr(last, "features_") and hasattr(last, "coef_"):  # ClinicalLogReg
        return pd.Series(np.abs(np.ravel(last.coef_)), index=last.features_
                         ).sort_values(ascending=False)
    feats = pipeline[:-1]
    model = pipeline[-1]
    try:
        names = [n.split("__")[-1] for n in feats.get_feature_names_out()]
    except Exception:
        return pd.Series(dtype=float)
    last = model[-1] if hasattr(model, "steps") else model
    if hasattr(last, "feature_importances_"):
        vals = np.asarray(last.feature_importances_, float)
    elif hasattr(last, "coef_"):
        vals = np.abs(np.ravel(last.coef_))
    else:
        return pd.Series(dtype=float)
    if len(vals) != len(names):
        return pd.Series(dtype=float)
    return pd.Series(vals, index=names).sort_values(ascending=False)


def _importance_plot(imp: pd.Series, path, title):
    plt = _plt()
    top = imp.head(20)[::-1]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.barh(top.index, top.values)
    ax.tick_params(axis="y", labelsize=6)
    ax.set(title=title, xlabel="importance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _groups_plot(summary, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    rows = summary.drop(index=["nested", NO_RAILS], errors="ignore")
    colours = {"clinical only": "tab:gray", "image only": "tab:blue", "clinical + image": "tab:green"}
    for i, (name, r) in enumerate(rows.iterrows()):
        group = group_of(name)
        ax.errorbar(i, r["balanced_accuracy"], yerr=[[r["balanced_accuracy"] - r["balanced_accuracy_ci_low"]],
                    [r["balanced_accuracy_ci_high"] - r["balanced_accuracy"]]], fmt="o",
                    color=colours[group], label=group)
    h, l = ax.get_legend_handles_labels()
    uniq = dict(zip(l, h))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(rows.index, rotation=35, ha="right", fontsize=7)
    ax.set(ylabel="balanced accuracy (95% CI)", title="image vs clinical, side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def heterogeneity_auc(X, y, *, folds=5, repeats=5, seed=0) -> pd.DataFrame:
    """Univariate AUC of each heterogeneity score for *reactive* (heterogeneous) vs tumoral,
    on out-of-fold scores (standardisation learnt on the training folds), per repeat."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    from cellfeat.models import CellBagFeatures

    cols = None
    aucs = []
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    oof = None
    for k, (tr, te) in enumerate(cv.split(np.zeros(len(y)), y)):
        t = CellBagFeatures().fit(X.iloc[tr]).transform(X.iloc[te])
        cols = cols or [c for c in t.columns if c.startswith("Bag_Heterogeneity_")]
        if oof is None or k % folds == 0:
            oof = pd.DataFrame(np.nan, index=X.index, columns=cols)
        oof.iloc[te] = t[cols].to_numpy()
        if k % folds == folds - 1:
            ok = oof.notna().all(axis=1).to_numpy()
            aucs.append({c: roc_auc_score(y[ok] == 0, oof[c].to_numpy()[ok]) for c in cols})
    a = pd.DataFrame(aucs)
    return pd.DataFrame({"auc_reactive_mean": a.mean(), "auc_reactive_sd": a.std(ddof=1)})


def feature_signal(X: pd.DataFrame, y, *, folds=5, repeats=5, seed=0) -> pd.DataFrame:
    """:func:`pipelines.report.univariate.univariate_auc` of every patient-level feature of a
    cohort frame: mean and SD of each cell feature over the usable cells, and the bag
    features (pixel dispersion) the frame carries."""
    from cellfeat.heterogeneity import PIXEL_SCORE
    from cellfeat.models.frame import long_cells

    from .univariate import patient_table, univariate_auc

    cells = long_cells(X)
    bag = X[[PIXEL_SCORE]] if PIXEL_SCORE in X else None
    table = patient_table(cells, bag_features=bag).reindex(X.index)
    return univariate_auc(table, pd.Series(np.asarray(y), index=X.index), folds=folds,
                          repeats=repeats, seed=seed)


def write_report(out, res, summary: pd.DataFrame, chosen: str, final, X, y, meta) -> Path:
    """metrics.json (the numbers of ``meta`` plus every candidate's row) and README.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _roc(res, out / "roc.png", names=("nested", meta["selection"].get("comparator",
                                                                      "clinical-logreg")))
    _confusion(res, "nested", out / "confusion.png")
    _calibration(res, ["nested", "clinical-logreg"], out / "calibration.png")
    _triage_plot(res, meta, out / "triage.png")
    _groups_plot(summary, out / "image_vs_clinical.png")
    imp = feature_importances(final)
    if len(imp):
        _importance_plot(imp, out / "importances.png", f"feature importances: {chosen}")
        imp.to_csv(out / "importances.csv", header=["importance"])
    res.fold_scores.to_csv(out / "fold_scores.csv", index=False)
    het = heterogeneity_auc(X, y, folds=meta["folds"], repeats=meta["repeats"], seed=meta["seed"])
    het.to_csv(out / "heterogeneity_auc.csv")
    uni = feature_signal(X, y, folds=meta["folds"], repeats=meta["repeats"], seed=meta["seed"])
    uni.to_csv(out / "univariate_auc.csv", index=False)
    comp = meta["selection"].get("comparator", "clinical-logreg")
    paired = {n: res.versus(n, comp) for n in summary.index if n != comp}
    keys = ("n_patients", "n_tumoral", "folds", "repeats", "inner_folds", "inner_repeats",
            "seed", "versions", "selection", "nested", "zone", "images_vs_clinical", "triage",
            "decision")
    metrics = {"chosen": chosen, **{k: meta[k] for k in keys},
               **{k: meta[k] for k in ("colour_stability", "rails") if k in meta},
               "candidates": summary.to_dict(orient="index"),
               "versus_clinical": paired,
               "nested_choices": meta["selection"]["nested_choices"]}
    write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float))

    sel, t = meta["selection"], meta["triage"]

    def row(name, r):
        d = paired.get(name)
        gain = (f"{d['delta']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})" if d
                else "comparator")
        zgain = (f"{d['zone_delta']:+.3f} ({d['zone_ci95'][0]:+.3f} to {d['zone_ci95'][1]:+.3f})"
                 if d and "zone_delta" in d else "comparator")
        role = ("rule" if name == "nested" else "rule without the rails" if name == NO_RAILS
                else "candidate" if name in sel["candidates"] else "figures only")
        return (f"| {name} | {role} | {r.balanced_accuracy:.3f} ± {r.balanced_accuracy_std:.3f} | "
                f"{r.balanced_accuracy_ci_low:.3f}–{r.balanced_accuracy_ci_high:.3f} | {gain} | "
                f"{r.roc_auc:.3f} | {r.zone_balanced_accuracy:.3f} | {zgain} | "
                f"{r.zone_roc_auc:.3f} | {r.brier:.3f} | {r.sensitivity:.3f} | "
                f"{r.specificity:.3f} | {r.triage_sensitivity:.2f} / "
                f"{r.triage_reactive_spared:.2f} |")

    order = ["nested", comp] + [n for n in summary.index if n not in ("nested", comp)]
    order = [n for n in order if n in summary.index]
    inner = sel.get("inner_log_loss_in_sample", {})
    lines = [
        "# cellfeat training report", "",
        *[f"- {x}" for x in first_screen(meta)], "",
        "## How the model was chosen", "",
        f"Rule, fixed before any outer-fold result was seen: {sel['rule']}. Candidates the rule "
        f"chooses from, simplest first: {', '.join(f'`{n}`' for n in sel['candidates'])}"
        + (f"; fitted for their own figures only (fallbacks, baseline): "
           f"{', '.join(f'`{n}`' for n in sel['figures_only'])}" if sel["figures_only"] else "")
        + ".", "",
        f"The first figures above are the nested-CV estimate of this rule: in each of the "
        f"{meta['repeats']}×{meta['folds']} outer folds the rule ran on the training patients "
        f"only (choices: {sel['nested_choices']}) and was scored on the held-out ones, routed "
        f"to a fallback where inputs were missing, as `cellfeat score` does. The "
        f"saved model is what the same rule picked on all {meta['n_patients']} patients: "
        f"**`{chosen}`**. Its inner log-loss per candidate (in-sample for the calibration, "
        f"for ranking only, not an estimate): "
        + ", ".join(f"`{n}` {v['loss']:.3f} (gap {v['gap']:+.3f} ± {v['gap_se']:.3f})"
                    for n, v in inner.items()) + ".",
        "",
        "## Every model against the clinical comparator", "",
        f"{len(y)} labelled patients ({int(np.sum(y == 1))} tumoral, {int(np.sum(y == 0))} "
        f"reactive). Same outer folds for every row; each row's probabilities are calibrated "
        f"and thresholded on its own inner folds. ± is the sd over repeats; 95 % intervals "
        f"re-run the procedure (spread across the re-fitted folds, corrected for their "
        f"overlap: `cellfeat.intervals`); ROC AUC counts pairs of patients tested in the same "
        f"fold; *gain* is the paired balanced-accuracy difference to `{comp}` "
        f"(95 % CI). *Zone* columns: the patients of the overlap zone ({meta['zone']['rule']}; "
        f"learnt in each training fold), where the count cannot decide and the cells must. "
        f"When two CIs overlap, prefer the simpler model.", "",
        "| model | role | balanced accuracy | 95 % CI | gain vs clinical | ROC AUC | "
        "zone BA | zone gain | zone AUC | Brier | sensitivity | specificity | "
        "triage sens. / reactive spared |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[row(n, summary.loc[n]) for n in order], "",
        "![image vs clinical](image_vs_clinical.png)", "",
        "## Calibrated probability, decision and triage", "",
        f"`PROBA` is a Platt-calibrated P(tumoral), fitted on inner out-of-fold predictions of "
        f"the training patients. `LABEL` is tumoral when `PROBA` ≥ `THRESHOLD` = "
        f"{meta['decision']['threshold']:.3f}, the prevalence of tumoral patients in training "
        f"(the balanced-accuracy threshold for a calibrated probability). `TRIAGE` is "
        f"`cytometry` when `PROBA` ≥ {meta['decision']['triage_threshold']:.3f}, the highest "
        f"threshold that sent at least {_pct(t['target_sensitivity'])} of tumoral training "
        f"patients to cytometry out of fold (`cellfeat train --target-sensitivity`).", "",
        f"Out of fold, with the triage threshold chosen inside each training fold (median "
        f"{t['fold_thresholds_median']:.3f}, range {t['fold_thresholds_range'][0]:.3f}–"
        f"{t['fold_thresholds_range'][1]:.3f}): **{_pct(t['specificity'])} of reactive "
        f"patients spared cytometry while {_pct(t['sensitivity'])} of leukaemias are sent to "
        f"it.**", "",
        "![triage](triage.png) ![calibration](calibration.png)", "",
        "![ROC](roc.png) ![confusion](confusion.png)", "",
    ]
    lines += ["## Do heterogeneity scores separate the classes?", "",
              "Univariate ROC AUC for *reactive* (heterogeneous populations) on out-of-fold "
              "scores, mean ± sd over CV repeats (0.5 = no signal).", "",
              "| score | AUC (reactive) |", "|---|---|",
              *[f"| `{n}` | {r.auc_reactive_mean:.3f} ± {r.auc_reactive_sd:.3f} |"
                for n, r in het.iterrows()], ""]
    above = int(uni["ABOVE_NULL"].sum()) if "ABOVE_NULL" in uni else 0
    lines += ["## Which features carry signal on their own?", "",
              "Every patient-level feature (the mean and cell-to-cell SD of each cell feature, "
              "and the bag features), alone: out-of-fold ROC AUC over the same "
              f"{meta['repeats']}×{meta['folds']} folds, with the direction (higher or lower in "
              "tumoral patients) learnt on the training patients of each fold. Among a hundred "
              "features some reach 0.6–0.7 by chance alone, so each AUC is read against "
              "*noise at its rank*: with the labels shuffled (same folds), the 95th percentile "
              "of the AUC that ranked there (and above 0.5). "
              f"**{above} of {len(uni)} features are above the noise at their rank.** "
              "`Bag_NCells` and `Bag_QCFailedShare` describe the acquisition, not the cells: "
              "they are listed for what they are, and are not model inputs. "
              "*spread* is the 5–95 % range of the AUC over the held-out folds (what a cohort "
              "of that size would see). Full table: `univariate_auc.csv` "
              "(`pipelines.report.univariate`).", "",
              "| feature | AUC out of fold | noise at this rank | above noise | spread | "
              "direction | direction stable |",
              "|---|---|---|---|---|---|---|",
              *[f"| `{r.FEATURE}` | {r.AUC_OOF:.3f} | {r.NULL_AUC_AT_RANK:.3f} | "
                f"{'yes' if r.ABOVE_NULL else 'no'} | {r.AUC_OOF_Q05:.2f}–{r.AUC_OOF_Q95:.2f} | "
                f"{r.DIRECTION} | {r.DIRECTION_AGREEMENT:.0%} |" for r in uni.itertuples()], ""]
    if len(imp):
        lines += ["## Feature importances of the chosen model", "",
                  "![importances](importances.png)", "",
                  *[f"- `{n}`: {v:.4f}" for n, v in imp.head(10).items()], ""]
    lines += stability_lines(out)  # stability.json: written by the train stage before this report
    write_text(out / "README.md", "\n".join(lines))
    return out


def _stability_plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["shifts"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    share = [100 * res["shifts"][n]["flip_share"] for n in names]
    axes[0].barh(names, share, color="tab:red")
    axes[0].axvline(1.0, color="k", ls=":", lw=0.8)
    axes[0].set(xlabel="calls that flip (%)", title="flipped calls (dotted: 1 in 100)")
    dp = [res["shifts"][n]["max_abs_dproba"] for n in names]
    axes[1].barh(names, dp, color="tab:blue")
    axes[1].set(xlabel="largest |change of PROBA|", title="PROBA change")
    axes[1].set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _flip_rows(res: dict, desc: dict) -> list[str]:
    return [f"| `{name}` | {desc.get(name, '')} | {r['flips']}/{r['calls']} "
            f"({100 * r['flip_share']:.1f} %) | {r['max_abs_dproba']:.3f} | "
            f"{r['balanced_accuracy']:.3f} ({r['delta_balanced_accuracy']:+.3f}) |"
            for name, r in res["shifts"].items()]


def feature_table_lines(res: dict, report_dir) -> list[str]:
    """The per-feature stability table (also written as ``feature_stability.csv``)."""
    f = res.get("features")
    if not f:
        return []
    table = pd.DataFrame(f["table"]).set_index("feature")
    table.to_csv(Path(report_dir) / "feature_stability.csv")
    shifts = [c[len("drift_"):] for c in table.columns if c.startswith("drift_")]
    table = table.sort_values("max_abs_drift", ascending=False, na_position="first")
    kept = table["stable"].astype(bool)
    lines = ["### Which features survive another lab's colours", "",
             f"Each cell feature's drift under each shift of the panel: the mean over the "
             f"training patients of the change of the patient mean, in units of the SD of the "
             f"patient means between patients (as radiomics screens features by their "
             f"reproducibility); ICC(A,1) of the patient means as-is vs shifted beside it "
             f"(the lowest over shifts). Measured on the same sample of images, without "
             f"labels. **Bar, fixed before any feature was measured against it: a feature is "
             f"a model input only if |drift| ≤ {f['bar']} SD under every shift.** "
             f"{int(kept.sum())} of {len(table)} pass; the inputs are "
             f"`meta[\"colour_stability\"][\"features\"]` of the bundle. Full table: "
             f"`feature_stability.csv`.", "",
             "| feature | " + " | ".join(f"`{s}`" for s in shifts)
             + " | max abs drift | min ICC | input |",
             "|---|" + "---|" * (len(shifts) + 3)]
    for name, r in table.iterrows():
        cells = " | ".join(f"{r[f'drift_{s}']:+.2f}" for s in shifts)
        lines.append(f"| `{name}` | {cells} | {r['max_abs_drift']:.2f} | {r['min_icc']:.3f} | "
                     f"{'yes' if r['stable'] else 'no'} |")
    return lines + [""]


def stability_lines(report_dir) -> list[str]:
    """The colour-stability section of the training report, and its figure, from the
    ``stability.json`` that :func:`pipelines.run.stability.stage_hook` wrote into the report
    folder (empty if it did not run)."""
    p = Path(report_dir) / STABILITY_JSON
    if not p.exists():
        return []
    res = json.loads(p.read_text())
    _stability_plot(res, Path(report_dir) / "stability.png")
    o = res["overall"]
    sample = res.get("sample") or {}
    how = (f"under each colour shift and rescaling of the panel "
           f"(`cellfeat.augment.STABILITY_PANEL`: another lab's colours, another analyser's "
           f"magnification): "
           f"{sample['rule']}, are rewritten by the shift and their features recomputed, and "
           f"every other cell of the bag is moved by the patient's drift on its sample, shrunk "
           f"toward the cohort's by how much of it is sampling noise "
           f"(`cellfeat.stability.shrunk_drifts`; `python -m pipelines.bench.colour "
           f"--sample-check` compares this estimate with fully shifted bags)" if sample else
           "after every image is rewritten by each colour shift and rescaling of the panel "
           "(`cellfeat.augment.STABILITY_PANEL`), features recomputed")
    lines = ["## Colour stability", "",
             f"Out of fold ({res['repeats']}×{res['folds']}-fold, the CV folds), each held-out "
             f"patient of `{res.get('candidate', '?')}` is scored as it is and {how}. "
             f"Overall: **{o['flips']} of {o['calls']} calls flip** "
             f"({100 * o['flip_share']:.1f} %), largest PROBA change "
             f"{o['max_abs_dproba']:.3f}, largest move of balanced accuracy "
             f"{o['max_abs_delta_balanced_accuracy']:.3f}. Goal: at most 1 call in 100 flips "
             f"and BA moves by at most 0.01 under each shift: "
             f"{'met' if o['met'] else 'not met'}. The balanced accuracies of this table are "
             f"*post-selection*: the candidate was chosen on all patients before these folds "
             f"ran, so they measure how far a shift moves it, not how well it does (that is "
             f"the nested estimate above; as-is here {o['balanced_accuracy']:.3f}).", "",
             "| shift | what it does | flipped calls | max abs dPROBA | BA (post-selection) |",
             "|---|---|---|---|---|"]
    desc = {s["name"]: s["description"] for s in res["panel"]}
    lines += _flip_rows(res, desc)
    lines += ["", "![colour stability](stability.png)", ""]
    every = res.get("all_features")
    if every:
        e = every["overall"]
        lines += [f"The same candidate with every cell feature as input (no screen), same "
                  f"folds: {e['flips']} of {e['calls']} calls flip "
                  f"({100 * e['flip_share']:.1f} %), largest PROBA change "
                  f"{e['max_abs_dproba']:.3f}, largest move of balanced accuracy "
                  f"{e['max_abs_delta_balanced_accuracy']:.3f} (as-is "
                  f"{e['balanced_accuracy']:.3f}).", "",
                  "| shift (every feature) | what it does | flipped calls | max abs dPROBA | "
                  "BA (post-selection) |", "|---|---|---|---|---|",
                  *_flip_rows(every, desc), ""]
    iv = res.get("interval")
    if iv:
        lines += [f"**Calls near the threshold.** `cellfeat score` also calls each patient with "
                  f"its cells moved by the training patients' mean drift under each shift, and "
                  f"widens each of these P(tumoral) by {iv.get('margin_logit', 0):.2f} log-odds "
                  f"(the 95th percentile, out of fold, of how far the shifted calls above "
                  f"strayed from that drift model); where this interval straddles the "
                  f"threshold, the call is marked `STABLE` = no and sent to cytometry. Out of "
                  f"fold (the drift learnt on each training fold): {iv['flagged']} of "
                  f"{iv['calls']} calls marked ({100 * iv['flagged_share']:.1f} %); of the "
                  f"{iv['flips']} calls that flip under at least one shift above, "
                  f"{iv['flips_caught']} were marked.", ""]
    return lines + feature_table_lines(res, report_dir)
