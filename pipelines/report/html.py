"""Self-contained HTML reports: one page per scoring run, one page per training run.

The scoring page is what a haematologist reads: a summary table first (call, P(tumoral)
against the decision threshold, triage, status), then one section per patient saying why
(clinical values on the training cohort's distributions, the largest contributions to the
score, heterogeneity against each class's range) and showing the cells that move the call
most. Every figure is inline (SVG or JPEG data URIs): the file travels alone and fetches
nothing. Text reaches the page only through autoescaped Jinja2 templates
(``pipelines/report/templates``), because patient IDs, file names and clinical values are
untrusted input. Numbers are computed here; the templates only lay them out.
"""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

import cellfeat
from cellfeat.extract import QC_COLUMN
from cellfeat.heterogeneity import PIXEL_SCORE

from ..io import write_text

TEMPLATES = Path(__file__).with_name("templates")
#: Quantiles stored per class for the training-cohort reference (bundle meta "reference").
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
CLASS_NAMES = ("reactive", "tumoral")
CLASS_COLOURS = {"reactive": "#4c78a8", "tumoral": "#e45756"}
TILE_PX = 128


# --------------------------------------------------------------------------- rendering

def _env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = lambda x, d=0: "—" if _missing(x) else f"{100 * float(x):.{d}f} %"
    return env


#: The one script each page may run (a file of ``pipelines/report/templates``), allowed by its
#: SHA-256 in the page's Content-Security-Policy: any other inline script, or an event
#: handler such as ``onerror=``, that ever got into a page would not run.
PAGE_SCRIPTS = {"score.html.j2": "sort_table.js"}


def render(template: str, **context) -> str:
    """Render one of ``pipelines/report/templates`` with autoescaping on, its own script inline
    (``page_script``) and that script's hash as the only script the CSP allows."""
    import hashlib

    from markupsafe import Markup

    script = PAGE_SCRIPTS.get(template)
    if script is None:
        js, allowed = "", "'none'"
    else:
        js = (TEMPLATES / script).read_text(encoding="utf-8")
        digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
        allowed = f"'sha256-{digest}'"
    return _env().get_template(template).render(**context, page_script=Markup(js),
                                                 csp_script=Markup(allowed))


def _missing(x) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)) or \
        (not isinstance(x, str) and pd.isna(x))


def _num(x, fmt=".2f") -> str:
    if _missing(x):
        return "—"
    if fmt == "value":  # a measurement of any size: 3 significant digits, no exponent
        v = float(x)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return str(x)


def _pair(p, threshold) -> tuple[str, str]:
    """P(tumoral) and its threshold at :data:`cellfeat.decision.DECIMALS`, the precision
    the call compares them at: a call is tumoral exactly when the first, as printed, is at
    least the second, as printed (0.692 against 0.692 is tumoral)."""
    from cellfeat.decision import DECIMALS

    return _num(p, f".{DECIMALS}f"), _num(threshold, f".{DECIMALS}f")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def svg_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/svg+xml`` URI (text kept as text: small, and
    sharp when printed); closes the figure."""
    plt = _plt()
    buf = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "cellfeat"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_uri(path: Path) -> str:
    """An image file's bytes as a data URI (PNG, JPEG or SVG by suffix)."""
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml"}[path.suffix.lower()]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def jpeg_uri(image: np.ndarray, quality: int = 88) -> str:
    """An RGB uint8 array as a ``data:image/jpeg`` URI."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


# --------------------------------------------------------------------------- glossary

_OBJECTS = {"Nucleus": "nucleus", "Cytoplasm": "cytoplasm", "Cell": "whole cell",
            "ROC": "nuclear indentations"}
_STATS = {"Mean": "mean over cells", "Std": "cell-to-cell SD", "Q10": "10th percentile over cells",
          "Q50": "median over cells", "Q90": "90th percentile over cells"}
_MEASURES = {
    "Area": "size (area)", "Perimeter": "outline length", "Solidity": "solidity (1 = no dents)",
    "Convexity": "convexity (1 = smooth outline)", "Circularity": "outline irregularity (1 = round)",
    "MajorAxisLength": "length", "MinorAxisLength": "width", "Eccentricity": "elongation",
    "BoundaryIrregularity": "boundary irregularity", "NucleusAreaRatio": "nucleus share of the cell",
    "Contrast": "texture contrast",
    "Homogeneity": "texture smoothness", "Energy": "texture uniformity",
    "Entropy": "texture disorder", "Correlation": "texture regularity",
    "Granularity": "granularity (fine dark spots)",
    # features revision 8 (issue 12)
    "EquivalentDiameter": "diameter", "NucleusOffset": "off-centre nucleus",
    "RedCellIndentation": "dents made by neighbouring red cells",
    "RimWidthMean": "cytoplasm rim width", "RimWidthStd": "unevenness of the cytoplasm rim",
    "Basophilia": "blueness (basophilia) against the red cells",
    "NucleusDensityRatio": "stain density relative to the nucleus",
    "Heterogeneity": "unevenness of the stain", "ClumpingIndex": "chromatin clumping",
    "GranuleFraction": "share covered by granules", "NucleolusCount": "number of nucleoli",
    "NucleolusAreaFraction": "share of the nucleus taken by nucleoli",
    # features revision 9 (issue 24)
    "DeepestConcavity": "deepest notch or cleft", "Hairiness": "hairiness (villi) of the outline",
    "NucleolusProminence": "nucleolus prominence (its palest spot)",
    "GranuleSizeMean": "size of the chromatin clumps",
    "GranuleSizeSpread": "spread of the chromatin clump sizes",
    "RedDensityCorrelation": "coarseness of the chromatin (red-light texture)",
}
_NAMED = {
    "Clinical_Age": "age in years",
    "Clinical_LogLymphCount": "lymphocyte count (log of 10⁹/L)",
    "Clinical_GenderMale": "sex (1 = male)",
    "Bag_NCells": "number of cell images",
    "Bag_QCFailedShare": "share of images that failed quality control",
    "Bag_Heterogeneity_FeatureDispersion": "how much the cells differ from each other",
    "Bag_Heterogeneity_CovTrace": "total variance of the cell features",
    "Bag_Heterogeneity_CovLogDet": "volume of the cloud of cell features",
    "Bag_Heterogeneity_OutlierShare": "share of cells unlike the others",
    "Bag_Heterogeneity_PixelDispersion": "pixel variation between the images",
    "Image_Logit": "score of the image-only model (log-odds)",
    "MIL_Score_Max": "most tumoral-looking cell (MI-SVM score)",
    "MIL_Score_Mean": "average MI-SVM cell score",
    "MIL_Score_TopKMean": "average of the most tumoral-looking cells (MI-SVM)",
    "MIL_Score_ShareAbove0": "share of cells the MI-SVM calls tumoral-looking",
    "CellType_ReactiveShare_AboveQ50": "share of cells more reactive-looking than half of "
                                       "the training cells",
    "CellType_ReactiveShare_AboveQ90": "share of cells more reactive-looking than 90 % of "
                                       "the training cells",
    "CellType_ReactiveScore_Q10": "10th percentile of the cells' reactive-look score",
    "CellType_ReactiveScore_Q50": "median of the cells' reactive-look score",
    "CellType_ReactiveScore_Q90": "90th percentile of the cells' reactive-look score",
}


def gloss(name: str) -> str:
    """Plain words for a registry name (``Bag_Std_Nucleus_Shape_Area`` -> "cell-to-cell
    spread (SD) of nucleus size (area)"); "" when the name has no known structure."""
    if name in _NAMED:
        return _NAMED[name]
    m = re.fullmatch(r"Bag_(Mean|Std|Q\d+)_(.+)", name)
    if m:
        inner = gloss(m.group(2))
        stat = _STATS.get(m.group(1), m.group(1))
        return f"{stat} of {inner}" if inner else stat
    parts = name.split("_")
    if len(parts) < 3 or parts[0] not in _OBJECTS:
        return ""
    obj = _OBJECTS[parts[0]]
    if parts[1] == "Colour" and len(parts) == 5:
        space, ch, kind = parts[2], parts[3], parts[4]
        if kind == "MeanRatio":
            return f"{obj} colour ({space} {ch}) relative to the image"
        if kind == "StdRatio":
            return f"{obj} colour variation ({space} {ch}) relative to the image"
        if kind == "RelRBC":
            return f"{obj} colour ({space} {ch}) relative to the red cells"
        if kind == "Mean":
            return f"{obj} colour ({space} {ch}, mean value)"
        return f"{obj} colour ({space} {ch}, {kind})"
    measure = _MEASURES.get(parts[-1])
    if measure:
        return f"{obj} {measure}"
    if parts[-1] == "D4" and _MEASURES.get(parts[-2]):  # the same texture, 4 px apart
        return f"{obj} {_MEASURES[parts[-2]]} at a coarser scale (4 px)"
    # a feature newer than this glossary: its name's words, so the reader still gets words
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", " ".join(parts[1:])).lower()
    return f"{obj}: {words}"


# --------------------------------------------------------------------------- training reference

def _final_step(model):
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
                                       f"{type(_final_step(model)).__name__}"}
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
    return {"kind": "additive", "rows": rows, "bias": ex["bias"], "method": ex["method"],
            "total": float(c.sum() + ex["bias"]), "rest": float(c.sum() - c[order].sum())}


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


def cell_tile(path: Path, method: str) -> np.ndarray:
    """One cell image with its nucleus (green) and whole-cell (red) outlines, scaled to
    :data:`TILE_PX` on its longer side; lines drawn thick enough to survive the scaling."""
    import cv2

    from cellfeat.data import read_image
    from cellfeat.segment import segment_nucleus

    img = read_image(path)
    seg = segment_nucleus(img, method) if min(img.shape[:2]) >= 32 else None
    h, w = img.shape[:2]
    f = TILE_PX / max(h, w)
    if seg is not None and seg.status == "ok":
        img = outline_cell(img, seg, thickness=max(1, int(round(1 / f))))
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def outline_cell(image: np.ndarray, seg, *, thickness: int = 1) -> np.ndarray:
    """A copy of ``image`` with the whole-cell outline (red) under the nucleus outline
    (green), in the colours of :data:`pipelines.report.plots.CONTOUR_COLOURS`."""
    import cv2

    from .plots import CONTOUR_COLOURS

    out = image.copy()
    cell = getattr(seg, "cell_contour", None)
    if cell is not None and cell.size:
        cnts = [cell.reshape(-1, 1, 2)]
    else:
        cnts, _ = cv2.findContours(seg.cell.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, list(cnts), -1, CONTOUR_COLOURS["cell"], thickness)
    cv2.drawContours(out, [seg.contour.reshape(-1, 1, 2)], -1, CONTOUR_COLOURS["nucleus"], thickness)
    return out


# --------------------------------------------------------------------------- figures

def distribution_figure(panels: list[dict]) -> str | None:
    """Small multiples: each panel shows the training cohort's per-class range of one
    variable (box 25-75 %, whiskers 5-95 %, tick at the median) and the patient's value."""
    panels = [p for p in panels if p["ref"]]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(3.9, 0.78 * len(panels) + 0.1), squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        for k, cls in enumerate(CLASS_NAMES):
            if cls not in p["ref"]:
                continue
            q = p["ref"][cls]["q"]
            yk = 1 - k
            col = CLASS_COLOURS[cls]
            ax.plot([q[1], q[5]], [yk, yk], color=col, lw=1)
            ax.add_patch(plt.Rectangle((q[2], yk - 0.28), q[4] - q[2], 0.56, color=col, alpha=0.35, lw=0))
            ax.plot([q[3], q[3]], [yk - 0.28, yk + 0.28], color=col, lw=1.5)
        if not _missing(p["value"]):
            ax.axvline(p["value"], color="black", lw=1.6)
        ax.set_yticks([1, 0], [c for c in CLASS_NAMES], fontsize=7)
        ax.set_ylim(-0.6, 1.6)
        if p.get("log"):
            _log_axis(ax)
        ax.tick_params(axis="x", labelsize=7)
        value = "missing" if _missing(p["value"]) else format(p["value"], p.get("fmt", ".3g"))
        ax.set_title(f"{p['title']}: {value}", fontsize=8, loc="left")
        for s in ("top", "right"):
            ax.spines[s].set_visible(False)
    fig.tight_layout(pad=0.4, h_pad=0.6)
    return svg_uri(fig)


def _log_axis(ax):
    """Log scale with a few plain-number ticks (1, 2, 5, 10, ...) that never overlap."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [m * 10.0 ** e for e in range(-2, 5) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.xaxis.set_major_formatter(fmt)


# --------------------------------------------------------------------------- score page

def _thresholds(meta: dict, pred: pd.DataFrame, model) -> tuple[float | None, float | None]:
    """Decision and triage thresholds: the prediction columns, then the bundle meta, then
    the fitted model's own tuned threshold."""
    dec = None
    if "THRESHOLD" in pred and pred["THRESHOLD"].notna().any():
        dec = float(pred["THRESHOLD"].dropna().iloc[0])
    decision = meta.get("decision") if isinstance(meta.get("decision"), dict) else {}
    for value in (decision.get("threshold"), meta.get("threshold")):
        if dec is None and isinstance(value, (int, float)):
            dec = float(value)
    if dec is None:
        last = _final_step(model)
        for attr in ("best_threshold_", "threshold_"):
            if isinstance(getattr(last, attr, None), (int, float, np.floating)):
                dec = float(getattr(last, attr))
                break
    tri = None
    t = meta.get("triage") if isinstance(meta.get("triage"), dict) else {}
    for value in (decision.get("triage_threshold"), t.get("threshold")):
        if tri is None and isinstance(value, (int, float)):
            tri = float(value)
    return dec, tri


def _nested(meta: dict) -> dict | None:
    if isinstance(meta.get("nested"), dict):
        return meta["nested"]
    for row in meta.get("cv", []) or []:
        if row.get("candidate") == "nested":
            return row
    return None


def _qc_reasons(feat_dir: Path | None, ids) -> pd.DataFrame:
    cols = ["ID", "FILE", QC_COLUMN, "QC_DETAIL"]
    if feat_dir is None or not (Path(feat_dir) / "cells.parquet").is_file():
        return pd.DataFrame(columns=cols)
    import pyarrow.parquet as pq

    have = pq.read_schema(Path(feat_dir) / "cells.parquet").names
    cells = pd.read_parquet(Path(feat_dir) / "cells.parquet", columns=[c for c in cols if c in have])
    cells = cells[cells["ID"].isin(set(ids))].reset_index(drop=True)
    if "QC_DETAIL" not in cells:
        cells["QC_DETAIL"] = ""
    return cells


def evidence_text(route: str, zone: str, count, limit) -> str:
    """Which evidence drove a call, in plain words (route and overlap zone of the patient)."""
    count_txt = f"{float(count):.1f} ×10⁹/L" if not _missing(count) else "unknown"
    limit_txt = f"{float(limit):.1f}" if not _missing(limit) else "?"
    if route == "none" or not route:
        return "No call: neither usable cells nor age and count."
    if route == "image":
        return ("Age or lymphocyte count is missing: the call rests on the cells alone "
                "(the image-only model).")
    if route == "clinical":
        text = "No usable cell: the call rests on age and lymphocyte count alone (the clinical model)."
        if zone == "overlap":
            text += (f" The count ({count_txt}) lies in the overlap zone (at or below {limit_txt}), "
                     f"where the clinical data are weak.")
        return text
    if zone == "overlap":
        return (f"Lymphocyte count {count_txt} lies in the overlap zone (at or below {limit_txt}, "
                f"the highest count of a reactive training patient): reactive and tumoral "
                f"patients overlap here, so the call rests on the cells, read with age and count.")
    if zone == "count":
        return (f"Lymphocyte count {count_txt} is above every reactive training patient's "
                f"({limit_txt}): at such counts every training patient was tumoral, so the count "
                f"carries most of the call; the cells are read too.")
    return "The call reads the cells, age and lymphocyte count together."


def score_report_context(*, cohort, frame: pd.DataFrame, pred: pd.DataFrame, models: dict,
                         meta: dict, feat_dir=None, data=None, k: int = 8) -> dict:
    """Everything the scoring page shows, as plain data (numbers, strings, data URIs)."""
    method = (meta.get("feature_settings") or {}).get("method", "otsu")
    dec, tri = _thresholds(meta, pred, models["main"])
    nested = _nested(meta)
    zone_meta = meta.get("zone") if isinstance(meta.get("zone"), dict) else {}
    ref = (meta.get("reference") or {}).get("variables", {})
    cells_long = _qc_reasons(feat_dir, frame.index)
    files_of = {pid: {p.name: p for p in cohort.images.get(pid, [])} for pid in frame.index}
    pred = pred.set_index("ID", drop=False)
    het = heterogeneity_values((meta.get("reference") or {}).get("heterogeneity"), frame)
    patients, summary = [], []
    for pid in frame.index:
        r = pred.loc[pid]
        X1 = frame.loc[[pid]]
        label = r["LABEL"]
        call = "no call" if pd.isna(label) else ("tumoral" if int(label) == 1 else "reactive")
        route = str(r.get("MODEL") or "")
        model = models.get(route) if route else None
        proba = None if pd.isna(r["PROBA"]) else float(r["PROBA"])
        thr = float(r["THRESHOLD"]) if "THRESHOLD" in r and not pd.isna(r["THRESHOLD"]) else dec
        triage = str(r["TRIAGE"]) if "TRIAGE" in r and not pd.isna(r["TRIAGE"]) else None
        mine = cells_long[cells_long["ID"] == pid].reset_index(drop=True)
        unusable = [{"file": f, "reason": s,
                     "detail": d if isinstance(d, str) and d and d not in s else ""}
                    for f, s, d in zip(mine["FILE"], mine[QC_COLUMN], mine["QC_DETAIL"]) if s != "ok"]
        # placement on the training cohort
        clin = [{"title": "age (years)", "value": X1["AGE"].iloc[0], "ref": ref.get("AGE"), "fmt": ".0f"},
                {"title": "lymphocyte count (10⁹/L, log scale)", "value": X1["LYMPH_COUNT"].iloc[0],
                 "ref": ref.get("LYMPH_COUNT"), "log": True, "fmt": ".1f"}]
        het_names = [n for n in ref if n.startswith("Bag_Heterogeneity_")]
        het_fig = None
        if het_names and int(r["N_CELLS_USED"]) > 0:
            values = het.loc[pid] if pid in het.index else {}
            het_fig = distribution_figure([{"title": gloss(n) or n, "value": values.get(n),
                                            "ref": ref[n]} for n in het_names])
        contrib = contributions(model, X1) if model is not None else {
            "kind": "none", "why": "no model could score this patient"}
        tiles, ranking_note = [], None
        if model is not None and route not in ("clinical", "none"):
            tiles, ranking_note = _ranked_tiles(model, X1, mine, files_of[pid], call, method, k)
        n_found, n_used = int(r["N_CELLS"]), int(r["N_CELLS_USED"])
        gender = X1["GENDER"].iloc[0]   # pd.NA when blank or unknown: its truth value raises
        gender = None if _missing(gender) else str(gender)
        p_text, thr_text = _pair(proba, thr)
        zone = str(r["ZONE"]) if "ZONE" in r and isinstance(r["ZONE"], str) else ""
        summary.append({"id": pid, "anchor": f"p{len(summary)}", "call": call, "proba": proba,
                        "p_text": p_text, "thr_text": thr_text,
                        "threshold": thr, "triage": triage, "status": str(r["STATUS"]),
                        "n_used": n_used, "n_found": n_found, "zone": zone,
                        "in_training": bool(r.get("IN_TRAINING", False)),
                        "evidence": evidence_text(route, zone, X1["LYMPH_COUNT"].iloc[0],
                                                  zone_meta.get("limit"))})
        patients.append({**summary[-1], "model": route, "age": X1["AGE"].iloc[0],
                         "count": X1["LYMPH_COUNT"].iloc[0], "gender": gender,
                         "clinical_fig": distribution_figure(clin), "het_fig": het_fig,
                         "het_missing": not het_names, "contrib": contrib, "tiles": tiles,
                         "ranking_note": ranking_note, "unusable": unusable})
    statuses = pred["STATUS"].map(lambda s: str(s).split(":")[0]).value_counts()
    qc_counts = cells_long[QC_COLUMN].map(lambda s: str(s).split(":")[0]).value_counts()
    return {
        "title": "cellfeat scoring report", "generated": datetime.now().isoformat(timespec="seconds"),
        "data": str(data) if data is not None else str(cohort.root),
        "model": {"name": meta.get("chosen", "?"),
                  "version": (meta.get("versions") or {}).get("cellfeat", "?"),
                  "trained": meta.get("trained", "?"), "n_patients": meta.get("n_patients"),
                  "nested": nested, "threshold": dec, "triage": tri, "zone": zone_meta or None,
                  "triage_meta": meta.get("triage") if isinstance(meta.get("triage"), dict) else None},
        "in_training": int(sum(p["in_training"] for p in patients)),
        "cellfeat_version": cellfeat.__version__,
        "qc": {"patients": len(pred), "statuses": statuses.to_dict(),
               "images": int(len(cells_long)), "image_statuses": qc_counts.to_dict()},
        "summary": summary, "patients": patients,
        "unusable_total": sum(len(p["unusable"]) for p in patients),
    }


def _ranked_tiles(model, X1, mine, files, call, method, k):
    from cellfeat.data import ImageReadError

    try:
        rows, delta = leave_one_cell_out(model, X1)
    except (ValueError, TypeError, KeyError) as exc:  # report, never fail the run
        return [], f"cells could not be ranked: {type(exc).__name__}: {exc}"
    if not len(rows):
        return [], "no usable cells"
    note = None
    if np.isnan(delta).all():
        order = np.arange(min(k, len(rows)))
        note = "only one usable cell: nothing to rank"
    else:
        sign = -1.0 if call == "reactive" else 1.0
        order = np.argsort(-sign * delta, kind="stable")[:k]
    tiles = []
    for i in order:
        name = mine["FILE"].iloc[rows[i]] if rows[i] < len(mine) else None
        path = files.get(name) if name is not None else None
        if path is None:
            continue
        try:
            tile = cell_tile(path, method)
        except ImageReadError:
            continue
        tiles.append({"uri": jpeg_uri(tile), "file": name, "delta": float(delta[i])})
    return tiles, note


def write_score_report(path, **kw) -> Path:
    """Write the scoring page (see :func:`score_report_context` for the arguments)."""
    path = Path(path)
    write_text(path, render("score.html.j2", **score_report_context(**kw)))
    return path


# --------------------------------------------------------------------------- training page

_INLINE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)|\*\*(.+?)\*\*|`([^`]+)`|\[([^\]]+)\]\(([^)\s]+)\)"
                     r"|(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")


def _spans(text: str, folder: Path, used: set) -> list[dict]:
    """Inline Markdown (images, **bold**, `code`, [links]) as typed spans for the template."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        if m.start() > pos:
            out.append({"kind": "text", "text": text[pos:m.start()]})
        if m.group(2) is not None:
            f = folder / m.group(2)
            ok = f.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg") and f.is_file() \
                and f.resolve().parent == folder.resolve()
            if ok:
                used.add(f.name)
                out.append({"kind": "img", "alt": m.group(1), "src": file_uri(f)})
            else:
                out.append({"kind": "text", "text": f"[figure {m.group(2)} not found]"})
        elif m.group(3) is not None:
            out.append({"kind": "strong", "text": m.group(3).replace("`", "")})
        elif m.group(7) is not None:
            out.append({"kind": "em", "text": m.group(7)})
        elif m.group(4) is not None:
            out.append({"kind": "code", "text": m.group(4)})
        elif m.group(5) is not None:  # a link: its words only, a self-contained page links nowhere
            out.append({"kind": "text", "text": f"{m.group(5)} ({m.group(6)})"})
        pos = m.end()
    if pos < len(text):
        out.append({"kind": "text", "text": text[pos:]})
    return out


def markdown_blocks(text: str, folder: Path) -> tuple[list[dict], set]:
    """The subset of Markdown the training report uses (headings, paragraphs, tables,
    bullet lists, inline images) as blocks for the template. Returns the blocks and the
    names of the figures they embed."""
    folder = Path(folder)
    used: set = set()
    blocks: list[dict] = []
    para: list[str] = []

    def flush():
        if para:
            blocks.append({"kind": "p", "spans": _spans(" ".join(para), folder, used)})
            para.clear()

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            flush()
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            flush()
            blocks.append({"kind": "h", "level": len(m.group(1)),
                           "spans": _spans(m.group(2), folder, used)})
        elif line.lstrip().startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                    rows.append([_spans(c, folder, used) for c in cells])
                i += 1
            blocks.append({"kind": "table", "head": rows[0] if rows else [], "rows": rows[1:]})
            continue
        elif re.match(r"^\s*[-*]\s+", line):
            flush()
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                items.append(_spans(re.sub(r"^\s*[-*]\s+", "", lines[i]), folder, used))
                i += 1
            blocks.append({"kind": "ul", "entries": items})
            continue
        else:
            para.append(line.strip())
        i += 1
    flush()
    return blocks, used


def train_report_context(report_dir) -> dict:
    """The training page's data: the report folder's README.md (the same words and tables)
    plus its figures inline and the headline numbers of metrics.json."""
    report_dir = Path(report_dir)
    md = (report_dir / "README.md").read_text(encoding="utf-8")
    blocks, used = markdown_blocks(md, report_dir)
    extra = [{"name": f.name, "src": file_uri(f)} for f in sorted(report_dir.glob("*.png"))
             if f.name not in used]
    metrics = json.loads((report_dir / "metrics.json").read_text()) \
        if (report_dir / "metrics.json").is_file() else {}
    cands = metrics.get("candidates") or {}
    return {"title": "cellfeat training report", "blocks": blocks, "extra": extra,
            "chosen": metrics.get("chosen"), "nested": cands.get("nested"),
            "n_patients": metrics.get("n_patients"), "n_tumoral": metrics.get("n_tumoral"),
            "gain": metrics.get("images_vs_clinical"), "triage": metrics.get("triage"),
            "zone": metrics.get("zone"),
            "generated": datetime.now().isoformat(timespec="seconds"),
            "cellfeat_version": cellfeat.__version__}


def write_train_report(report_dir) -> Path:
    """Write ``index.html`` beside the training report's README.md."""
    path = Path(report_dir) / "index.html"
    write_text(path, render("train.html.j2", **train_report_context(report_dir)))
    return path
