"""What the pages explain a call with: the training cohort's ranges per class (stored in
the bundle), each input's contribution to a patient's score, and the cells whose removal
moves the call most. Numbers only; :mod:`pipelines.report.html` lays them out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellfeat.extract import QC_COLUMN
from cellfeat.heterogeneity import PIXEL_SCORE

from .figures import CLASS_NAMES
from .glossary import gloss

__all__ = ["QUANTILES", "final_step", "fit_heterogeneity", "heterogeneity_values", "reference_distributions",
           "contributions", "leave_one_cell_out"]

#: Quantiles stored per class for the training-cohort reference (bundle meta "reference").
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


# --------------------------------------------------------------------------- training reference

def final_step(model):
    """The last estimator of a Pipeline (or the model itself)."""
    return model.steps[-1][1] if hasattr(model, "steps") else model


def _ok_cells(X: pd.DataFrame) -> pd.DataFrame:
    parts = [c[c[QC_COLUMN] == "ok"].assign(ID=pid) for pid, c in zip(X.index, X["CELLS"]) if len(c)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["ID", QC_COLUMN])


def fit_heterogeneity(X: pd.DataFrame) -> dict | None:
    """The standardisation of :class:`cellfeat.heterogeneity.HeterogeneityScores` learnt on
    the training cohort's usable cells, as JSON-able lists (None without usable cells)."""
    from cellfeat.features import FEATURE_NAMES
    from cellfeat.heterogeneity import HeterogeneityScores

    cells = _ok_cells(X)
    feats = [c for c in FEATURE_NAMES if c in cells]
    try:
        h = HeterogeneityScores(features=feats).fit(cells[["ID", *feats]])
    except ValueError:  # no cell with finite features: nothing to place patients on
        return None
    return {"features": list(h.features_), "center": h.center_.tolist(), "scale": h.scale_.tolist()}


def heterogeneity_values(state: dict | None, X: pd.DataFrame) -> pd.DataFrame:
    """Each patient's ``Bag_Heterogeneity_*`` scores under the stored standardisation, plus
    the pixel dispersion column when the frame has it."""
    from cellfeat.heterogeneity import HeterogeneityScores

    out = pd.DataFrame(index=X.index)
    if state:
        h = HeterogeneityScores(features=state["features"])
        h.features_ = list(state["features"])
        h.center_ = np.asarray(state["center"], float)
        h.scale_ = np.asarray(state["scale"], float)
        cells = _ok_cells(X)
        if len(cells) and all(f in cells for f in h.features_):
            out = h.transform(cells[["ID", *h.features_]]).reindex(X.index)
        else:
            out = pd.DataFrame(np.nan, index=X.index, columns=list(h.get_feature_names_out()))
    if PIXEL_SCORE in X:
        out[PIXEL_SCORE] = pd.to_numeric(X[PIXEL_SCORE], errors="coerce").to_numpy(float)
    return out


def reference_distributions(X: pd.DataFrame, y) -> dict:
    """What the training cohort looked like, for placing a new patient on it.

    Stored in the bundle meta as ``"reference"``: ``"variables"`` maps ``AGE``,
    ``LYMPH_COUNT`` and each heterogeneity score to
    ``{"reactive": {"q": [...], "n": n}, "tumoral": {...}}`` at :data:`QUANTILES`;
    ``"heterogeneity"`` holds the cell-feature standardisation the scores were computed with,
    so a scored patient's scores are comparable whatever model made the call.
    """
    y = np.asarray(y).astype(int)
    het_state = fit_heterogeneity(X)
    cols = {"AGE": pd.to_numeric(X["AGE"], errors="coerce"),
            "LYMPH_COUNT": pd.to_numeric(X["LYMPH_COUNT"], errors="coerce")}
    het = heterogeneity_values(het_state, X)
    cols.update({c: het[c] for c in het.columns})
    out = {"quantiles": list(QUANTILES), "variables": {}, "heterogeneity": het_state}
    for name, values in cols.items():
        v = np.asarray(values, float)
        entry = {}
        for k, cls in enumerate(CLASS_NAMES):
            vv = v[(y == k) & np.isfinite(v)]
            if len(vv):
                entry[cls] = {"q": [float(q) for q in np.quantile(vv, QUANTILES)], "n": int(len(vv))}
        out["variables"][name] = entry
    return out


# --------------------------------------------------------------------------- contributions

def _feature_names(transformer) -> list[str]:
    return [str(n).split("__", 1)[-1] for n in transformer.get_feature_names_out()]


def _explain(est, Z, names, raw) -> dict | None:
    """Contributions of each input of ``est`` to one patient's log-odds (row 0 of ``Z``).

    ``names``/``raw`` are the model inputs' registry names and unscaled values once a
    feature step has produced them; later steps (imputation, scaling) keep them.
    """
    from sklearn.linear_model import LogisticRegression

    if hasattr(est, "steps"):
        Z2 = Z  # step by step: a sliced Pipeline counts as unfitted in recent scikit-learn
        for _, step in est.steps[:-1]:
            Z2 = step.transform(Z2)
            if names is None:
                names = _feature_names(step)
                raw = np.asarray(Z2, float)[0]
            elif np.shape(Z2)[1] != len(names):
                return None
        return _explain(est.steps[-1][1], Z2, names, raw)
    if hasattr(est, "features_") and hasattr(est, "_z") and hasattr(est, "model_"):
        Z2 = est._z(Z)  # the clinical baseline: its own inputs, then a logistic pipeline
        return _explain(est.model_, Z2, list(est.features_), np.asarray(Z2, float)[0])
    if hasattr(est, "chosen_") and hasattr(est, "model_"):  # a model-choice rule
        return _explain(est.model_, Z, names, raw)
    if hasattr(est, "platt_") and hasattr(est, "estimator_"):
        # Platt scaling is affine in log-odds: a·(Σ c_i + bias) + b, so scaled contributions
        # still add up, to the calibrated log-odds of the P(tumoral) the page shows
        ex = _explain(est.estimator_, Z, names, raw)
        if ex is not None and ex["kind"] == "additive":
            a, b = (float(v) for v in est.platt_)
            ex["contrib"] = a * ex["contrib"]
            ex["bias"] = a * ex["bias"] + b
            ex["method"] += ", calibrated"
        return ex
    if hasattr(est, "gate_coef_"):  # GatedMixture: the expert split
        g = float(est.gate(Z)[0])
        experts = []
        for label, sub in (("image expert", est.image_expert_), ("clinical expert", est.clinical_expert_)):
            p = float(sub.predict_proba(Z)[0, 1])
            experts.append({"label": label, "proba": p, "weight": g if label == "image expert" else 1 - g,
                            "detail": _explain(sub, Z, None, None)})
        return {"kind": "gated", "gate": g, "experts": experts,
                "method": "mixture of experts: P = g·P(image expert) + (1 − g)·P(clinical expert)"}
    if hasattr(est, "estimator_") and not hasattr(est, "coef_"):  # threshold wrappers
        return _explain(est.estimator_, Z, names, raw)
    if getattr(est, "calibrated_classifiers_", None):
        parts = [_explain(cc.estimator, Z, names, raw) for cc in est.calibrated_classifiers_]
        if any(p is None or p["kind"] != "additive" for p in parts):
            return None
        base = parts[0]
        base["contrib"] = np.mean([p["contrib"] for p in parts], axis=0)
        base["bias"] = float(np.mean([p["bias"] for p in parts]))
        base["method"] += "; averaged over the calibration folds, before calibration"
        return base
    if names is None:
        return None
    X = np.asarray(Z, float)[:1]
    if raw is None:
        raw = X[0]
    if isinstance(est, LogisticRegression):
        coef = np.ravel(est.coef_)
        if len(coef) != len(names):
            return None
        return _additive(names, raw, coef * X[0], float(np.ravel(est.intercept_)[0]),
                         "coefficient × standardised value (log-odds)")
    booster = getattr(est, "model_", est)
    if hasattr(booster, "get_booster"):
        import xgboost

        c = booster.get_booster().predict(xgboost.DMatrix(X), pred_contribs=True)[0]
        return _additive(names, raw, c[:-1], float(c[-1]),
                         "SHAP contributions of XGBoost (log-odds)")
    if type(booster).__module__.startswith("lightgbm"):
        c = np.asarray(booster.predict(X, pred_contrib=True))[0]
        return _additive(names, raw, c[:-1], float(c[-1]),
                         "SHAP contributions of LightGBM (log-odds)")
    return None


def _additive(names, raw, contrib, bias, method):
    if len(contrib) != len(names):
        return None
    return {"kind": "additive", "names": list(names), "raw": np.asarray(raw, float),
            "contrib": np.asarray(contrib, float), "bias": bias, "method": method}


def contributions(model, X1: pd.DataFrame, top: int = 8) -> dict:
    """The largest contributions to one patient's score (``X1``: a one-row cohort frame).

    Additive models (logistic regression, XGBoost, LightGBM) give per-input contributions
    in log-odds that sum with ``bias`` to the model's raw score; a gated mixture gives its
    expert split and each expert's contributions. ``{"kind": "none", "why": ...}`` otherwise.
    """
    try:
        ex = _explain(model, X1, None, None)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # report, never fail the run
        return {"kind": "none", "why": f"no breakdown: {type(exc).__name__}: {exc}"}
    if ex is None:
        return {"kind": "none", "why": f"no contribution breakdown for "
                                       f"{type(final_step(model)).__name__}"}
    return _top(ex, top)


def _top(ex, top):
    if ex is None:
        return {"kind": "none", "why": "no contribution breakdown for this expert"}
    if ex["kind"] == "gated":
        ex["experts"] = [{**e, "detail": _top(e["detail"], top // 2 + 1)} for e in ex["experts"]]
        return ex
    c = ex["contrib"]
    order = np.argsort(-np.abs(c))[:top]
    scale = max(float(np.abs(c[order]).max()) if len(order) else 0.0, 1e-12)
    rows = [{"name": ex["names"][i], "parts": ex["names"][i].split("_"),
             "gloss": gloss(ex["names"][i]), "value": float(ex["raw"][i]),
             "contrib": float(c[i]), "width": 50 * abs(float(c[i])) / scale} for i in order]
    clinical = np.array([str(n).startswith("Clinical_") for n in ex["names"]], bool)
    return {"kind": "additive", "rows": rows, "bias": ex["bias"], "method": ex["method"],
            "total": float(c.sum() + ex["bias"]), "rest": float(c.sum() - c[order].sum()),
            "clinical": float(c[clinical].sum()), "cells": float(c[~clinical].sum()),
            "has_cells": bool((~clinical).any())}


# --------------------------------------------------------------------------- cell ranking

def leave_one_cell_out(model, X1: pd.DataFrame, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Change of P(tumoral) when each usable cell is left out of the patient's bag.

    Returns ``(rows, delta)``: the positions of the usable cells in the patient's cell
    table and ``P(all cells) - P(all cells but this one)``; positive = the cell pushes
    the call towards tumoral. Model-agnostic: it asks the call's own model.
    """
    pid = X1.index[0]
    cells = X1["CELLS"].iloc[0]
    rows = np.flatnonzero((cells[QC_COLUMN] == "ok").to_numpy()) if len(cells) else np.empty(0, int)
    if len(rows) < 2:
        return rows, np.full(len(rows), np.nan)
    p_all = float(model.predict_proba(X1)[0, 1])
    crops = X1["CROPS"].iloc[0] if "CROPS" in X1 else None
    deltas = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        bags = X1.loc[[pid] * len(chunk)].copy()
        bags.index = [f"{pid}\x1f{j}" for j in chunk]
        bags["CELLS"] = [cells.drop(index=cells.index[j]).reset_index(drop=True) for j in chunk]
        if crops is not None:
            bags["CROPS"] = [np.delete(crops, j, axis=0) for j in chunk]
        deltas.append(p_all - model.predict_proba(bags)[:, 1])
    return rows, np.concatenate(deltas)


# --------------------------------------------------------------------------- what decided

def _towards(x: float) -> str:
    return "tumoral" if x > 0 else "reactive"


def decision_text(*, call: str, route: str, zone: str, count, limit, contrib: dict | None = None,
                  threshold=None, floor: dict | None = None, atypical: str | None = None,
                  triage: str | None = None) -> str:
    """"What decided" a patient's call, written from the call itself: its route and zone, the
    count's floor where it applied, the atypicality flag, and this patient's own
    contributions (``contrib``, :func:`contributions`), split into the cells' and age and
    count's parts. Every direction it states is the sign of a contribution, and the part
    it says carried the call pushed towards that call, so the text cannot contradict it.

    Parameters
    ----------
    call : "tumoral", "reactive" or "no call"
    route, zone : the prediction's ``MODEL`` and ``ZONE``
    count, limit : the patient's lymphocyte count and the overlap-zone limit
    contrib : the patient's contributions (``kind`` "additive" gives the split)
    threshold : the decision threshold (P(tumoral)), for the log-odds the parts are read
        against
    floor : ``{"cells": P, "clinical": P}`` when the count's floor raised P(tumoral)
    atypical : the reason when the patient is beyond the atypicality bar
    triage : the prediction's ``TRIAGE``
    """
    def num(x, fmt):
        return "unknown" if x is None or not np.isfinite(float(x)) else format(float(x), fmt)

    count_txt, limit_txt = f"{num(count, '.1f')} ×10⁹/L", num(limit, ".1f")
    out = []
    if atypical:
        out.append(f"Atypical cells ({atypical}): sent to cytometry whatever P(tumoral); "
                   f"the model was not fitted on patients like this one.")
    if call == "no call" or route in ("none", ""):
        return " ".join(out + ["No call: neither usable cells nor age and count."])
    if route == "image":
        out.append("The age is missing: the cells are read without it (the image-only model)."
                   if zone == "count" else "Age or lymphocyte count is missing: the call "
                   "rests on the cells alone (the image-only model).")
    elif route == "clinical":
        out.append("No usable cell: the call rests on age and lymphocyte count alone "
                   "(the clinical model).")
    if zone == "count":
        out.append(f"Lymphocyte count {count_txt} is above every reactive training patient's "
                   f"({limit_txt}): every training patient there was tumoral, so the count "
                   f"decides and the cells may not overturn it.")
        if floor:
            out.append(f"The model reading the cells gave P(tumoral) {floor['cells']:.3f}, the "
                       f"clinical model {floor['clinical']:.3f}; the call uses the higher one "
                       f"and is {call}.")
            return " ".join(out + _triage_note(zone, triage, call))
    elif zone == "overlap" and route != "image":
        out.append(f"Lymphocyte count {count_txt} lies in the overlap zone (at or below "
                   f"{limit_txt}, the highest count of a reactive training patient): reactive "
                   f"and tumoral patients overlap here, so the cells must carry the call.")
    if contrib and contrib.get("kind") == "additive":
        out.append(_parts_text(contrib, call, threshold))
    else:
        out.append(f"Called {call}.")
    return " ".join(out + _triage_note(zone, triage, call))


def _parts_text(contrib: dict, call: str, threshold) -> str:
    """Which way the cells and age and count pushed this patient, in log-odds, and which of
    them carried the call (one that pushed towards it; the baseline when none did)."""
    want = 1.0 if call == "tumoral" else -1.0
    parts = []  # as printed (2 decimals): a push that prints as 0.00 is none
    if contrib.get("has_cells", True) and contrib.get("cells") is not None:
        parts.append(("the cells", round(float(contrib["cells"]), 2)))
    if abs(contrib.get("clinical", 0.0)) > 0 or not parts:
        parts.append(("age, sex and count", round(float(contrib.get("clinical", 0.0)), 2)))
    pushed = "; ".join(f"{name} pushed towards {_towards(v)} ({v:+.2f} log-odds)"
                       for name, v in parts if v != 0)
    text = f"Called {call}" + (f": {pushed}." if pushed else ".")
    with_call = [(name, v) for name, v in parts if v * want > 0]
    if with_call:
        name, _ = max(with_call, key=lambda t: abs(t[1]))
        text += f" {name[0].upper() + name[1:]} carried the call towards {call}."
    else:
        cut = ("" if threshold is None else
               f" against the threshold's {float(np.log(threshold / (1 - threshold))):+.2f}")
        text += (f" Neither moved it towards {call}: the call follows the baseline of an "
                 f"average training patient ({float(contrib.get('bias', 0.0)):+.2f} log-odds"
                 f"{cut}).")
    return text


def _triage_note(zone, triage, call) -> list[str]:
    if zone == "count" and triage == "cytometry" and call == "reactive":
        return ["Sent to cytometry all the same: no training patient above the zone limit was "
                "reactive, so sparing cytometry here is never supported."]
    return []
