"""pipelines.report.html: the scoring and training pages, checked in headless Chromium.

The browser tests open the pages as a reader would (file://, no server) and check what
the issue asks: a screenshot that is not blank, every scored patient with a picture,
nothing fetched from the network, and hostile text shown as text. They skip only where
Debian's ``chromium`` is not installed (``.ci/run`` installs it).
"""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from cellfeat.data import load_cohort
from cellfeat.models import make_pipeline
from pipelines.run.features import run_features
from pipelines.report.explain import contributions, leave_one_cell_out, reference_distributions
from pipelines.report.glossary import gloss
from pipelines.report.html import (markdown_blocks, render, score_report_context,
                                   write_score_report, write_train_report)
from pipelines.run.stages import load_frame, score_frame

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<img src=x onerror=alert(1)>"
_chromium_here = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not installed here (apt-get install chromium; "
                                  ".ci/run installs it): the browser checks cannot run")


def needs_chromium(test):
    """A browser check: skipped without Chromium, left out of ``make test-quick``."""
    return pytest.mark.browser(_chromium_here(test))


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def scored(synthetic_root, tmp_path_factory):
    """The synthetic cohort with a hostile image name and a broken image in one unlabelled
    patient, its features, a small clinical + image model, and the scoring page."""
    d = tmp_path_factory.mktemp("html")
    root = d / "cohort"
    shutil.copytree(synthetic_root, root)
    victim = sorted((root / "testset").glob("P*"))[0]
    shutil.copy(sorted(victim.glob("*.jpg"))[0], victim / f"{HOSTILE}.jpg")
    (victim / "broken<b>.jpg").write_bytes(b"not a jpeg")
    cohort = load_cohort(root)
    run_features(cohort, d / "f", n_jobs=1, progress=False, gallery=False)
    frame = load_frame(cohort, d / "f")
    lab = frame[frame["LABEL"].notna()]
    y = lab["LABEL"].astype(int).to_numpy()
    models = {"main": make_pipeline("clinical+bags-logreg").fit(lab, y),
              "clinical": make_pipeline("clinical-logreg").fit(lab, y)}
    meta = {"chosen": "clinical+bags-logreg", "trained": "2026-01-01T00:00:00",
            "n_patients": int(len(y)), "versions": {"cellfeat": "test"},
            "cv": [{"candidate": "nested", "balanced_accuracy": 0.8,
                    "balanced_accuracy_ci_low": 0.7, "balanced_accuracy_ci_high": 0.9}],
            "feature_settings": {"method": "otsu"}, "reference": reference_distributions(lab, y)}
    test = frame[frame["LABEL"].isna()]
    pred = score_frame(models, test)
    kw = dict(cohort=cohort, frame=test, pred=pred, models=models, meta=meta, feat_dir=d / "f")
    page = write_score_report(d / "pred_report.html", **kw)
    return {"dir": d, "page": page, "kw": kw, "lab": lab, "y": y, "victim": victim.name,
            "ids": list(test.index)}


@pytest.fixture(scope="module")
def train_page(tmp_path_factory):
    """A training report folder as pipelines.report writes it (README.md, metrics.json,
    figures), with a hostile string in a table cell, rendered to index.html."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = tmp_path_factory.mktemp("train_report")
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.plot([0, 0.2, 1], [0, 0.8, 1])
    fig.savefig(d / "roc.png", dpi=80)
    fig.savefig(d / "extra.png", dpi=80)
    plt.close(fig)
    (d / "README.md").write_text("\n".join([
        "# cellfeat training report", "", "24 labelled patients; `nested` is the nested-CV "
        "estimate of the *whole* procedure.", "", "**Chosen: `clinical-logreg`**", "",
        "| candidate | balanced accuracy |", "|---|---|", f"| {HOSTILE} | 0.800 |",
        "| nested | 0.750 |", "", "![ROC](roc.png) ![outside](../secret.png)", "",
        "## Heterogeneity", "", "- `Bag_Heterogeneity_CovTrace`: 0.6", ""]))
    (d / "metrics.json").write_text(json.dumps({
        "chosen": "clinical-logreg", "n_patients": 24, "n_tumoral": 16,
        "candidates": {"nested": {"balanced_accuracy": 0.75, "balanced_accuracy_ci_low": 0.6,
                                  "balanced_accuracy_ci_high": 0.9, "roc_auc": 0.8}}}))
    return write_train_report(d)


# --------------------------------------------------------------------------- browser helpers

def chromium(page: Path, tmp: Path, *flags) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *flags, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


class DomIndex(HTMLParser):
    """Text, <img> elements and which patient section each image sits in."""

    def __init__(self):
        super().__init__()
        self.text, self.imgs, self.sections = [], [], {}
        self._section = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("id"):
            self._section, self._depth = a["id"], 0
            self.sections[self._section] = {"imgs": 0, "text": []}
        elif tag == "section":
            self._depth += 1
        if tag == "img":
            self.imgs.append(a)
            if self._section:
                self.sections[self._section]["imgs"] += a.get("src", "").startswith("data:image/")

    def handle_endtag(self, tag):
        if tag == "section":
            if self._depth:
                self._depth -= 1
            else:
                self._section = None

    def handle_data(self, data):
        self.text.append(data)
        if self._section:
            self.sections[self._section]["text"].append(data)


def dom_of(page, tmp) -> DomIndex:
    dom = DomIndex()
    dom.feed(chromium(page, tmp, "--dump-dom", "--virtual-time-budget=3000").stdout)
    return dom


#: Chromium's own service calls, made whatever the page (seen in its net log with the flags
#: above on an empty page): component updates, account probe, network time.
BROWSER_CALLS = ("http://update.googleapis.com/service/update2/",
                 "https://update.googleapis.com/service/update2/",
                 "https://accounts.google.com/ListAccounts?", "http://clients2.google.com/time/")


def requests_of(page, tmp) -> list[str]:
    """URLs of the network requests Chromium's net log recorded while it loaded the page,
    less the browser's own service calls (:data:`BROWSER_CALLS`)."""
    log = tmp / "net.json"
    log.unlink(missing_ok=True)
    chromium(page, tmp, f"--log-net-log={log}", "--net-log-capture-mode=Default", "--dump-dom",
             "--virtual-time-budget=3000", "--disable-features=NetworkTimeServiceQuerying")
    urls = set(re.findall(r'"url"\s*:\s*"([^"]+)"', log.read_text(errors="replace")))
    return sorted(u for u in urls if not u.startswith(BROWSER_CALLS + ("file:", "data:")))


@needs_chromium
def test_net_log_sees_a_page_request(tmp_path):
    # the control for the no-request checks below: a page that loads one image from a
    # local port (refused at once) shows that request in the net log
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><p>x</p><img src="http://127.0.0.1:9/leak.png">')
    assert requests_of(page, tmp_path) == ["http://127.0.0.1:9/leak.png"]


def assert_not_blank(page, tmp):
    import matplotlib.image as mpimg

    shot = tmp / "shot.png"
    chromium(page, tmp, f"--screenshot={shot}", "--window-size=1366,1600", "--hide-scrollbars")
    img = mpimg.imread(shot)[..., :3]
    ink = (img < 0.85).any(axis=-1).mean()
    # a blank page is uniformly white (std 0, ink 0); text and figures give both
    assert img.std() > 0.02 and ink > 0.005, f"screenshot looks blank (ink {ink:.4f})"


def assert_self_contained(html: str):
    # every src/href of the page is inline data or a same-page anchor; no CSS url(...)
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), \
        [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    assert "url(" not in html and "@import" not in html
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I)


# --------------------------------------------------------------------------- unit checks

def test_gloss_reads_registry_names():
    # expected words: assembled from the name's parts by the glossary tables in html.py
    assert gloss("Bag_Std_Nucleus_Shape_Area") == \
        "cell-to-cell SD of nucleus size (area, in squared red-cell diameters)"
    assert gloss("Bag_Q90_ROC_Colour_LAB_L_MeanRatio") == \
        "90th percentile over cells of nuclear indentations colour (LAB L) relative to the image"
    assert gloss("Clinical_LogLymphCount") == "lymphocyte count (log of 10⁹/L)"
    assert gloss("Something_Unknown") == ""
    assert gloss("Bag_Std_Cell_Shape_EquivalentDiameter") == \
        "cell-to-cell SD of whole cell diameter (in red-cell diameters)"
    assert gloss("Nucleus_Texture_GLCM_Contrast_D4") == \
        "nucleus texture contrast at a coarser scale (a tenth of a red cell)"
    # a registry name the glossary does not know yet still reads as words
    assert gloss("Cell_Shape_SomethingNew") == "whole cell: shape something new"


def test_gloss_has_plain_words_for_every_registry_feature():
    from cellfeat.features import FEATURE_NAMES

    fallback = [n for n in FEATURE_NAMES if ":" in gloss(n)]
    assert not fallback, f"features read only as their name's words: {fallback}"


def test_contributions_add_up_to_the_shown_probability(scored):
    # additive explanations: contributions + baseline = log-odds of the P(tumoral) shown
    # (for a calibrated model, Platt's affine map is applied to both sides)
    lab, y = scored["lab"], scored["y"]
    pid = lab.index[0]
    models = [scored["kw"]["models"]["main"], scored["kw"]["models"]["clinical"],
              make_pipeline("clinical+bags-xgb", tuned=False).fit(lab, y)]
    for model in models:
        c = contributions(model, lab.loc[[pid]], top=500)
        assert c["kind"] == "additive", c
        p = model.predict_proba(lab.loc[[pid]])[0, 1]
        assert c["total"] == pytest.approx(np.log(p / (1 - p)), abs=1e-4)
        assert c["rows"][0]["name"] and abs(c["rows"][0]["contrib"]) >= abs(c["rows"][-1]["contrib"])


def test_gated_mixture_gives_its_expert_split(scored):
    lab, y = scored["lab"], scored["y"]
    model = make_pipeline("gated-mixture").fit(lab, y)
    c = contributions(model, lab.iloc[[0]])
    assert c["kind"] == "gated" and [e["label"] for e in c["experts"]] == \
        ["image expert", "clinical expert"]
    g = c["gate"]
    mixed = g * c["experts"][0]["proba"] + (1 - g) * c["experts"][1]["proba"]
    # GatedMixture: p = g·p_image + (1 − g)·p_clinical, inside any pipeline or calibration
    inner = model
    while not hasattr(inner, "gate_coef_"):
        inner = inner.estimator_ if hasattr(inner, "estimator_") else inner.steps[-1][1]
    assert mixed == pytest.approx(inner.predict_proba(lab.iloc[[0]])[0, 1], abs=1e-9)


def test_leave_one_cell_out_asks_the_model_itself(scored):
    model = scored["kw"]["models"]["main"]
    X1 = scored["lab"].iloc[[3]]
    rows, delta = leave_one_cell_out(model, X1, batch=4)  # several batches
    cells = X1["CELLS"].iloc[0]
    assert list(rows) == list(np.flatnonzero((cells["QC_STATUS"] == "ok").to_numpy()))
    p_all = model.predict_proba(X1)[0, 1]
    j = len(rows) // 2
    without = X1.copy()
    without.iat[0, without.columns.get_loc("CELLS")] = cells.drop(index=cells.index[rows[j]])
    assert delta[j] == pytest.approx(p_all - model.predict_proba(without)[0, 1], abs=1e-12)


def test_reference_quantiles_are_the_training_cohort_per_class(scored):
    lab, y = scored["lab"], scored["y"]
    ref = reference_distributions(lab, y)
    ages = lab["AGE"].to_numpy(float)
    for k, cls in enumerate(("reactive", "tumoral")):
        a = ages[(y == k) & np.isfinite(ages)]
        assert ref["variables"]["AGE"][cls]["q"] == pytest.approx(np.quantile(a, ref["quantiles"]))
        assert ref["variables"]["AGE"][cls]["n"] == len(a)
    assert "Bag_Heterogeneity_FeatureDispersion" in ref["variables"]
    json.dumps(ref)  # it travels in the bundle's JSON meta


def test_markdown_embeds_only_figures_of_the_report_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake")
    (tmp_path.parent / "outside.png").write_bytes(b"\x89PNG fake")
    blocks, used = markdown_blocks("# T\n\n![a](a.png) ![b](../outside.png)\n\n| x | y |\n|---|---|\n"
                                   "| 1 | `2` |\n", tmp_path)
    assert [b["kind"] for b in blocks] == ["h", "p", "table"]
    spans = blocks[1]["spans"]
    assert spans[0]["kind"] == "img" and spans[0]["src"].startswith("data:image/png;base64,")
    assert spans[-1] == {"kind": "text", "text": "[figure ../outside.png not found]"}
    assert used == {"a.png"}
    assert blocks[2]["rows"] == [[[{"kind": "text", "text": "1"}], [{"kind": "code", "text": "2"}]]]


def test_templates_escape_untrusted_text(scored):
    ctx = score_report_context(**scored["kw"])
    ctx["summary"][0]["id"] = ctx["patients"][0]["id"] = HOSTILE
    ctx["data"] = HOSTILE
    html = render("score.html.j2", **ctx)
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_patients_without_a_call_or_images_get_a_section(scored):
    kw = dict(scored["kw"])
    frame = kw["frame"].copy()
    a, b = frame.index[:2]
    frame.at[a, "CELLS"] = frame.at[a, "CELLS"].iloc[:0]           # no images: clinical only
    frame.at[b, "CELLS"] = frame.at[b, "CELLS"].iloc[:0]
    frame.loc[b, "LYMPH_COUNT"] = np.nan                             # and no count: no call
    kw.update(frame=frame, pred=score_frame(kw["models"], frame))
    ctx = score_report_context(**kw)
    by_id = {p["id"]: p for p in ctx["patients"]}
    assert by_id[a]["proba"] is not None and by_id[a]["tiles"] == []
    assert by_id[b]["call"] == "no call" and by_id[b]["p_text"] == "—"
    assert by_id[b]["clinical_fig"].startswith("data:image/svg+xml;base64,")  # age still placed
    html = render("score.html.j2", **ctx)
    assert html.count('<section class="patient"') == len(frame)


def test_probability_and_threshold_are_printed_as_they_are_compared():
    from cellfeat.decision import call
    from pipelines.report.html import _pair

    # rounding both to 2 decimals would print "0.85 against 0.85" for a reactive call
    assert _pair(0.8461, 0.8481) == ("0.846", "0.848")
    assert _pair(0.97, 0.8481) == ("0.970", "0.848")
    # the page never shows a call its numbers contradict: equal as printed is tumoral
    for p, t in [(0.84749, 0.8475), (0.8474, 0.8475), (0.69166, 0.692), (0.6914, 0.69166)]:
        shown_p, shown_t = _pair(p, t)
        assert bool(call(p, t)) == (float(shown_p) >= float(shown_t))


def test_score_page_lists_every_patient_and_unusable_image(scored):
    html = scored["page"].read_text(encoding="utf-8")
    for pid in scored["ids"]:
        assert f">{pid}<" in html
    assert "broken&lt;b&gt;.jpg" in html and "unreadable" in html
    assert_self_contained(html)


# --------------------------------------------------------------------------- in the browser

@needs_chromium
def test_score_page_in_chromium(scored, tmp_path):
    # the page as written, plus a copy whose patient ID and data path are hostile too
    ctx = score_report_context(**scored["kw"])
    ctx["summary"][0]["id"] = ctx["patients"][0]["id"] = HOSTILE
    ctx["data"] = HOSTILE
    hostile = tmp_path / "hostile.html"
    hostile.write_text(render("score.html.j2", **ctx), encoding="utf-8")
    for page in (scored["page"], hostile):
        assert_self_contained(page.read_text(encoding="utf-8"))
        assert_not_blank(page, tmp_path)
        dom = dom_of(page, tmp_path)
        text = "".join(dom.text)
        # every scored patient has its section with at least one inline picture
        assert len(dom.sections) == len(scored["ids"])
        for sec in dom.sections.values():
            assert sec["imgs"] >= 1
        named = {pid for pid in scored["ids"] if any(pid in "".join(s["text"]) for s in dom.sections.values())}
        assert named >= set(scored["ids"][1:])
        # hostile names are text, never elements
        assert f"{HOSTILE}.jpg" in text
        assert all(i.get("src", "").startswith("data:") for i in dom.imgs)
        assert not any("onerror" in i for i in dom.imgs)
        assert "broken<b>.jpg" in text
    assert HOSTILE in "".join(dom_of(hostile, tmp_path).text)
    assert requests_of(hostile, tmp_path) == []


@needs_chromium
def test_train_page_in_chromium(train_page, tmp_path):
    html = train_page.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert "secret.png" in html and html.count("data:image/png;base64,") == 2  # roc + extra
    assert_not_blank(train_page, tmp_path)
    dom = dom_of(train_page, tmp_path)
    text = "".join(dom.text)
    assert HOSTILE in text and "cellfeat training report" in text
    assert len(dom.imgs) == 2 and all(i["src"].startswith("data:image/png") for i in dom.imgs)
    assert requests_of(train_page, tmp_path) == []


def test_score_page_says_which_evidence_decided_and_flags_training_patients(scored):
    """Issue 19: every patient's section says in words whether the count or the cells
    carried the call (its side of the overlap zone, its route); training patients scored
    again are flagged as in-sample, on the page and per patient."""
    kw = dict(scored["kw"])
    frame = kw["frame"].copy()
    a, b = frame.index[:2]
    limit = float(frame["LYMPH_COUNT"].median())
    frame.loc[a, "LYMPH_COUNT"] = limit / 2       # in the zone
    frame.loc[b, "LYMPH_COUNT"] = limit * 3       # above it
    pred = score_frame(kw["models"], frame, zone_limit=limit, training_ids=[b])
    meta = {**kw["meta"], "zone": {"limit": limit, "nested": {"ba": 0.85, "ci95": [0.7, 0.95]},
                                   "clinical": {"ba": 0.7}}}
    kw.update(frame=frame, pred=pred, meta=meta)
    ctx = score_report_context(**kw)
    by_id = {p["id"]: p for p in ctx["patients"]}
    assert by_id[a]["zone"] == "overlap" and "the cells must carry" in by_id[a]["evidence"]
    assert by_id[b]["zone"] == "count" and "the count decides" in by_id[b]["evidence"]
    # issue 28: above the zone no training patient was reactive, so nobody is spared there
    assert by_id[b]["triage"] == "cytometry"
    above = pred["ZONE"] == "count"
    assert above.any() and (pred.loc[above, "TRIAGE"] == "cytometry").all()
    assert by_id[b]["in_training"] and not by_id[a]["in_training"]
    assert ctx["in_training"] == 1
    html = render("score.html.j2", **ctx)
    assert "1 of these patients were training patients of this model" in html
    assert html.count("What decided:") == len(frame)
    assert f"count ≤ {limit:.1f}" in html


# --------------------------------------------------------------------------- script policy

#: What a bug that let page text through unescaped could inject: an inline script and an
#: event handler (on an image whose data fails to decode, so its error event fires). Each
#: writes a marker assembled at run time, so the marker is in the DOM only if it ran.
INJECTED = ('<script>document.body.insertAdjacentHTML("beforeend", "<p>" + "SCRIPT" + "RAN</p>")'
            '</script><img src="data:image/png;base64,AAAA" onerror="document.body.'
            'insertAdjacentHTML(\'beforeend\', \'<p>\' + \'HANDLER\' + \'RAN</p>\')">')


def _csp(html: str) -> str:
    return re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1)


def test_pages_allow_only_their_own_script_by_hash(scored, train_page):
    import base64
    import hashlib

    from pipelines.report.html import PAGE_SCRIPTS, TEMPLATES

    score = scored["page"].read_text(encoding="utf-8")
    js = (TEMPLATES / PAGE_SCRIPTS["score.html.j2"]).read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in _csp(score) and f"<script>{js}</script>" in score
    assert "script-src 'none'" in _csp(train_page.read_text(encoding="utf-8"))
    for html in (score, train_page.read_text(encoding="utf-8")):
        assert "unsafe-inline" not in _csp(html).split("script-src")[1]


@needs_chromium
def test_injected_script_and_handler_do_not_run_in_chromium(scored, train_page, tmp_path):
    for page in (scored["page"], train_page):
        html = page.read_text(encoding="utf-8")
        injected = html.replace("<body>", "<body>" + INJECTED, 1)
        # control: under the old policy (script-src 'unsafe-inline') both run, so the
        # marker check below can fail
        old = injected.replace(_csp(html), _csp(html).split("; script-src")[0]
                               + "; script-src 'unsafe-inline'")
        for name, text, ran in (("injected", injected, False), ("old", old, True)):
            path = tmp_path / f"{name}_{page.name}"
            path.write_text(text, encoding="utf-8")
            seen = "".join(dom_of(path, tmp_path).text)
            assert ("SCRIPTRAN" in seen) is ran and ("HANDLERRAN" in seen) is ran, (page, name)
    # the scoring page's own script still runs: it marks every summary heading sortable
    dom = chromium(scored["page"], tmp_path, "--dump-dom", "--virtual-time-budget=3000").stdout
    assert dom.count('style="cursor: pointer;"') == 7  # one per summary column


def test_status_kind_groups_a_call_by_its_route_not_by_its_notes():
    """A call near its threshold is fully scored: "ok; near the threshold: ..." counts as
    ok (the page and the CLI counted it apart, as "ok; near the threshold")."""
    from pipelines.report.html import status_kind

    assert status_kind("ok") == "ok"
    assert status_kind("ok; near the threshold: colours of another lab give 0.5-0.7") == "ok"
    assert status_kind("image only: missing AGE; near the threshold: ...") == "image only"
    assert status_kind("no call: no usable cell") == "no call"


# --- "What decided" is written from the call itself (issue 28 point 4) ---------------------

_PUSHED = re.compile(r"(the cells|age, sex and count) pushed towards (tumoral|reactive) "
                     r"\(([+-]\d+\.\d+) log-odds\)")


def _read_back(text, call, zone, cells, clinical):
    """Every statement of ``text`` checked against the numbers it was written from."""
    values = {"the cells": round(cells, 2), "age, sex and count": round(clinical, 2)}
    for part, way, v in _PUSHED.findall(text):
        assert way == ("tumoral" if float(v) > 0 else "reactive"), text
        assert float(v) == pytest.approx(values[part], abs=0.006), text
    for part, way in re.findall(r"(The cells|Age, sex and count) carried the call towards "
                                r"(tumoral|reactive)", text):
        assert way == call, text
        v = values[part[0].lower() + part[1:]]
        assert (v > 0) == (call == "tumoral") and v != 0, text
    if "Neither moved it" in text:
        assert all((v > 0) != (call == "tumoral") or v == 0 for v in values.values()), text
    assert ("the count decides" in text) == (zone == "count"), text
    assert ("the cells must carry" in text) == (zone == "overlap"), text
    assert f"Called {call}" in text or f"is {call}" in text, text


@settings(max_examples=300, deadline=None)
@given(cells=st.floats(-4, 4), clinical=st.floats(-4, 4), bias=st.floats(-3, 3),
       threshold=st.floats(0.2, 0.8), zone=st.sampled_from(["overlap", "count"]),
       floor=st.booleans())
def test_what_decided_never_states_the_opposite_of_the_call(cells, clinical, bias, threshold,
                                                             zone, floor):
    """The call is what the contributions add up to against the threshold (as the model
    makes it); whatever they are, "What decided" states each part's direction as its sign,
    names as carrying the call only a part that pushed towards it, and says the count
    decides exactly above the zone. The text before issue 28 said "the count carries most of
    the call" above the zone beside a reactive call at P 0.000 (its point 2)."""
    from pipelines.report.explain import decision_text

    total = cells + clinical + bias
    call = "tumoral" if total >= np.log(threshold / (1 - threshold)) else "reactive"
    contrib = {"kind": "additive", "cells": cells, "clinical": clinical, "bias": bias,
               "has_cells": True}
    fl = {"cells": 0.2, "clinical": 0.9} if floor and zone == "count" else None
    if fl:
        call = "tumoral" if 0.9 >= threshold else "reactive"
    text = decision_text(call=call, route="main", zone=zone, count=9.0, limit=7.7,
                         contrib=contrib, threshold=threshold, floor=fl,
                         triage="cytometry" if zone == "count" else None)
    _read_back(text, call, zone, cells, clinical)


def test_what_decided_on_the_page_agrees_with_each_call(scored):
    """On a scored page, above and inside the zone, every patient's "What decided" reads
    back against its own contributions and call."""
    kw = dict(scored["kw"])
    frame = kw["frame"].copy()
    limit = float(frame["LYMPH_COUNT"].median())
    frame.iloc[0, frame.columns.get_loc("LYMPH_COUNT")] = limit * 3
    pred = score_frame(kw["models"], frame, zone_limit=limit)
    meta = {**kw["meta"], "zone": {"limit": limit}}
    ctx = score_report_context(**{**kw, "frame": frame, "pred": pred, "meta": meta})
    seen = 0
    for p in ctx["patients"]:
        if p["call"] == "no call" or p["contrib"].get("kind") != "additive":
            continue
        c = p["contrib"]
        if "uses the higher one" not in p["evidence"]:
            _read_back(p["evidence"], p["call"], p["zone"], c["cells"], c["clinical"])
        seen += 1
    assert seen >= 2
