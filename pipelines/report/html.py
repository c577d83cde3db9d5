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
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

import cellfeat
from cellfeat.extract import QC_COLUMN

from ..io import write_text
from .explain import (contributions, decision_text, final_step, heterogeneity_values,
                      leave_one_cell_out)
from .figures import cell_tile, distribution_figure, file_uri, jpeg_uri, missing
from .glossary import gloss

TEMPLATES = Path(__file__).with_name("templates")


# --------------------------------------------------------------------------- rendering


def status_kind(status) -> str:
    """What the counts of a run group a STATUS by: its text before the first ``:`` or
    ``;`` (``image only`` for ``image only: missing AGE; near the threshold: ...``; the
    near-threshold note is counted from ``STABLE``, not from the text)."""
    return re.split(r"[:;]", str(status), maxsplit=1)[0]

def _env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = lambda x, d=0: "—" if missing(x) else f"{100 * float(x):.{d}f} %"
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


def _num(x, fmt=".2f") -> str:
    if missing(x):
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
        last = final_step(model)
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


#: The ruler columns of cells.parquet the page reads (pipelines.run.tasks.RULER_COLUMNS).
_RULER_PX, _RULER_SOURCE = "Diagnostics_RedCell_RulerPx", "Diagnostics_RedCell_RulerSource"
#: A scored cohort whose red cells differ from training's by more than this share is told
#: so (issue 29): another analyser's magnification.
RULER_WARNING = 0.10


def qc_reasons(feat_dir: Path | None, ids) -> pd.DataFrame:
    cols = ["ID", "FILE", QC_COLUMN, "QC_DETAIL", _RULER_PX, _RULER_SOURCE]
    if feat_dir is None or not (Path(feat_dir) / "cells.parquet").is_file():
        return pd.DataFrame(columns=cols)
    import pyarrow.parquet as pq

    have = pq.read_schema(Path(feat_dir) / "cells.parquet").names
    cells = pd.read_parquet(Path(feat_dir) / "cells.parquet", columns=[c for c in cols if c in have])
    cells = cells[cells["ID"].isin(set(ids))].reset_index(drop=True)
    if "QC_DETAIL" not in cells:
        cells["QC_DETAIL"] = ""
    return cells


def ruler_summary(cells_long: pd.DataFrame, meta: dict) -> dict | None:
    """What the page says of the red-cell ruler: each patient's (px, source), the scored
    cohort's median, training's (``meta["feature_settings"]["ruler_px"]``), their change in
    percent and whether it passes :data:`RULER_WARNING`; None without ruler columns."""
    if _RULER_PX not in cells_long or not len(cells_long):
        return None
    per = cells_long.groupby("ID", sort=False)[[_RULER_PX, _RULER_SOURCE]].first()
    cohort = float(per[_RULER_PX].median())
    training = (meta.get("feature_settings") or {}).get("ruler_px")
    change = 100 * (cohort / training - 1) if training else None
    return {"patients": {pid: (float(r[_RULER_PX]), str(r[_RULER_SOURCE]))
                         for pid, r in per.iterrows()},
            "cohort": cohort, "training": training, "change": change,
            "warn": change is not None and abs(change) > 100 * RULER_WARNING,
            "default": int((per[_RULER_SOURCE] == "default").sum())}


def score_report_context(*, cohort, frame: pd.DataFrame, pred: pd.DataFrame, models: dict,
                         meta: dict, feat_dir=None, data=None, k: int = 8) -> dict:
    """Everything the scoring page shows, as plain data (numbers, strings, data URIs)."""
    method = (meta.get("feature_settings") or {}).get("method", "otsu")
    dec, tri = _thresholds(meta, pred, models["main"])
    nested = _nested(meta)
    zone_meta = meta.get("zone") if isinstance(meta.get("zone"), dict) else {}
    ref = (meta.get("reference") or {}).get("variables", {})
    cells_long = qc_reasons(feat_dir, frame.index)
    files_of = {pid: {p.name: p for p in cohort.images.get(pid, [])} for pid in frame.index}
    pred = pred.set_index("ID", drop=False)
    het = heterogeneity_values((meta.get("reference") or {}).get("heterogeneity"), frame)
    ruler = ruler_summary(cells_long, meta)
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
        atypical = str(r.get("ATYPICAL", "")) == "yes"
        odd_tiles = (_atypical_tiles(models["atypicality"], X1, mine, files_of[pid], method, k)
                     if atypical and models.get("atypicality") is not None else [])
        n_found, n_used = int(r["N_CELLS"]), int(r["N_CELLS_USED"])
        gender = X1["GENDER"].iloc[0]   # pd.NA when blank or unknown: its truth value raises
        gender = None if missing(gender) else str(gender)
        p_text, thr_text = _pair(proba, thr)
        zone = str(r["ZONE"]) if "ZONE" in r and isinstance(r["ZONE"], str) else ""
        floor = (_floor(models, X1, route, zone_meta.get("limit"))
                 if route in ("main", "image") and zone == "count" else None)
        status = str(r["STATUS"])
        reason = (status.split("atypical cells: ", 1)[1].split(": sent to cytometry")[0]
                  if atypical and "atypical cells: " in status else None)
        summary.append({"id": pid, "anchor": f"p{len(summary)}", "call": call, "proba": proba,
                        "p_text": p_text, "thr_text": thr_text,
                        "threshold": thr, "triage": triage, "status": str(r["STATUS"]),
                        "n_used": n_used, "n_found": n_found, "zone": zone,
                        "in_training": bool(r.get("IN_TRAINING", False)),
                        "atypical": atypical,
                        "evidence": decision_text(
                            call=call, route=route, zone=zone, count=X1["LYMPH_COUNT"].iloc[0],
                            limit=zone_meta.get("limit"), contrib=contrib, threshold=thr,
                            floor=floor, atypical=reason, triage=triage)})
        patients.append({**summary[-1], "model": route, "age": X1["AGE"].iloc[0],
                         "count": X1["LYMPH_COUNT"].iloc[0], "gender": gender,
                         "clinical_fig": distribution_figure(clin), "het_fig": het_fig,
                         "het_missing": not het_names, "contrib": contrib, "tiles": tiles,
                         "ranking_note": ranking_note, "unusable": unusable,
                         "odd_tiles": odd_tiles,
                         "ruler_px": (ruler or {}).get("patients", {}).get(pid, (None,))[0],
                         "ruler_source": (ruler or {}).get("patients", {}).get(pid,
                                                                               (None, None))[1]})
    statuses = pred["STATUS"].map(status_kind).value_counts()
    qc_counts = cells_long[QC_COLUMN].map(status_kind).value_counts()
    near = int((pred["STABLE"] == "no").sum()) if "STABLE" in pred else 0
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
        "qc": {"patients": len(pred), "statuses": statuses.to_dict(), "near_threshold": near,
               "images": int(len(cells_long)), "image_statuses": qc_counts.to_dict()},
        "summary": summary, "patients": patients, "ruler": ruler,
        "unusable_total": sum(len(p["unusable"]) for p in patients),
    }


def _floor(models: dict, X1: pd.DataFrame, route: str, limit) -> dict | None:
    """``{"cells": P, "clinical": P}`` when the count's floor raised this patient's
    P(tumoral) (:func:`cellfeat.models.routed_calls`), else None."""
    from cellfeat.models import routed_calls

    if missing(limit) or models.get("clinical") is None:
        return None
    if not bool(routed_calls(models, X1, zone_limit=float(limit))["FLOOR"].iloc[0]):
        return None
    model = models.get(route) or models["main"]
    return {"cells": float(model.predict_proba(X1)[0, 1]),
            "clinical": float(models["clinical"].predict_proba(X1)[0, 1])}


def _atypical_tiles(atypicality, X1, mine, files, method, k):
    """The ``k`` usable cells of an atypical patient farthest from the training cells
    (:meth:`cellfeat.atypia.Atypicality.cell_scores`), farthest first."""
    score = atypicality.cell_scores(X1["CELLS"].iloc[0])
    order = [i for i in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
             if np.isfinite(score[i])][:k]
    return _tiles(mine, files, method, [(i, {"score": float(score[i])}) for i in order])


def _tiles(mine, files, method, picks) -> list[dict]:
    """Tiles of the cells ``picks`` ((row of the patient's cell table, extra fields)), in
    that order; a cell whose image is gone or unreadable is left out."""
    from cellfeat.data import ImageReadError

    tiles = []
    for row, extra in picks:
        name = mine["FILE"].iloc[row] if row < len(mine) else None
        path = files.get(name) if name is not None else None
        if path is None:
            continue
        try:
            tile = cell_tile(path, method)
        except ImageReadError:
            continue
        tiles.append({"uri": jpeg_uri(tile), "file": name, **extra})
    return tiles


def _ranked_tiles(model, X1, mine, files, call, method, k):
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
    return _tiles(mine, files, method, [(rows[i], {"delta": float(delta[i])}) for i in order]), note


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
