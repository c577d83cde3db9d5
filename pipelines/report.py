"""The training report: metrics.json, README.md and the figures it links."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .io import write_text
from .stability import report_lines as stability_report_lines

def group_of(name: str) -> str:
    """Which inputs a candidate uses: clinical only, image only, or both."""
    if name.startswith("clinical-"):
        return "clinical only"
    if name.startswith("bags-") or name == "cnn":
        return "image only"
    return "clinical + image"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _roc(res, path):
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name in res.proba:
        p = np.nanmean(res.proba[name], axis=0)
        fpr, tpr, _ = roc_curve(res.y, p)
        ax.plot(fpr, tpr, lw=2.2 if name == "nested" else 1, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity (tumoral)",
           title="ROC of out-of-fold probabilities\n(averaged over CV repeats)")
    ax.legend(fontsize=6, loc="lower right")
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


def _calibration(res, name, path):
    plt = _plt()
    p = np.nanmean(res.proba[name], axis=0)
    bins = np.linspace(0, 1, 6)
    idx = np.clip(np.digitize(p, bins) - 1, 0, 4)
    xs = [p[idx == b].mean() for b in range(5) if (idx == b).any()]
    ys = [res.y[idx == b].mean() for b in range(5) if (idx == b).any()]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot(xs, ys, "o-")
    ax.set(xlabel="predicted P(tumoral)", ylabel="observed share tumoral",
           title=f"calibration: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def feature_importances(pipeline) -> pd.Series:
    """Importances of the fitted pipeline's final model, with registry names."""
    feats = pipeline[:-1]
    model = pipeline[-1]
    model = getattr(model, "estimator_", model)  # TunedThresholdClassifierCV
    try:
        names = [n.split("__", 1)[-1] for n in feats.get_feature_names_out()]
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
    rows = summary.drop(index="nested", errors="ignore")
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


def write_report(out, res, summary: pd.DataFrame, chosen: str, final, X, y, meta) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _roc(res, out / "roc.png")
    _confusion(res, chosen, out / "confusion.png")
    _calibration(res, chosen, out / "calibration.png")
    _groups_plot(summary, out / "image_vs_clinical.png")
    imp = feature_importances(final)
    if len(imp):
        _importance_plot(imp, out / "importances.png", f"feature importances: {chosen}")
        imp.to_csv(out / "importances.csv", header=["importance"])
    res.fold_scores.to_csv(out / "fold_scores.csv", index=False)
    het = heterogeneity_auc(X, y, folds=meta["folds"], repeats=meta["repeats"], seed=meta["seed"])
    het.to_csv(out / "heterogeneity_auc.csv")
    chosen_counts = pd.Series(res.chosen).value_counts().to_dict()
    metrics = {"chosen": chosen, "candidates": summary.to_dict(orient="index"),
               "nested_choices": chosen_counts, "n_patients": int(len(y)),
               "n_tumoral": int(np.sum(y == 1)), "folds": meta["folds"],
               "repeats": meta["repeats"], "versions": meta["versions"]}
    write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float))
    table = summary.copy()
    fmt = lambda r: (f"| {r.name} | {r.balanced_accuracy:.3f} ± {r.balanced_accuracy_std:.3f} | "
                     f"{r.balanced_accuracy_ci_low:.3f}–{r.balanced_accuracy_ci_high:.3f} | "
                     f"{r.roc_auc:.3f} | {r.sensitivity:.3f} | {r.specificity:.3f} |")
    lines = [
        "# cellfeat training report", "",
        f"{len(y)} labelled patients ({int(np.sum(y == 1))} tumoral, {int(np.sum(y == 0))} "
        f"reactive); {meta['repeats']}×{meta['folds']}-fold stratified CV at patient level, "
        f"every pipeline fitted inside each fold. `nested` is the nested-CV estimate of the "
        f"whole procedure (candidate chosen by 3-fold inner CV in each outer fold; choices: "
        f"{chosen_counts}). Spread: ± is the standard deviation over repeats; the 95 % CI "
        f"bootstraps patients.", "",
        f"**Chosen: `{chosen}`** (refitted on all {len(y)} patients).", "",
        "| candidate | balanced accuracy (mean ± sd) | 95 % CI | ROC AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|",
        *[fmt(r) for _, r in table.iterrows()], "",
        "![image vs clinical](image_vs_clinical.png)", "",
        "![ROC](roc.png) ![confusion](confusion.png) ![calibration](calibration.png)", "",
    ]
    lines += ["## Do heterogeneity scores separate the classes?", "",
              "Univariate ROC AUC for *reactive* (heterogeneous populations) on out-of-fold "
              "scores, mean ± sd over CV repeats (0.5 = no signal).", "",
              "| score | AUC (reactive) |", "|---|---|",
              *[f"| `{n}` | {r.auc_reactive_mean:.3f} ± {r.auc_reactive_sd:.3f} |"
                for n, r in het.iterrows()], ""]
    if len(imp):
        lines += ["## Feature importances of the chosen model", "",
                  "![importances](importances.png)", "",
                  *[f"- `{n}`: {v:.4f}" for n, v in imp.head(10).items()], ""]
    lines += stability_report_lines(out)  # written by pipelines.stability before this report
    write_text(out / "README.md", "\n".join(lines))
    return out
