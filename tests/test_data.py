"""cellfeat.data: layouts, the real export's quirks, accounting, fatal errors."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellfeat.data import (CohortError, ImageReadError, age_at, holds_images, load_cohort,
                           load_patient, parse_dob, read_image)

HEADER = "ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"


def make_flat(tmp_path, csv_text, folders=None, csv_name="clinical.csv"):
    """A flat cohort: one CSV and patient folders holding the named files."""
    (tmp_path / csv_name).write_text(csv_text)
    for pid, files in (folders or {}).items():
        d = tmp_path / pid
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"x")
    return tmp_path


def test_parse_dob_both_formats():
    # the real export writes 11/3/1933 (M/D/YYYY) and 28-04-1943 (DD-MM-YYYY)
    assert parse_dob("11/3/1933") == date(1933, 11, 3)
    assert parse_dob("28-04-1943") == date(1943, 4, 28)
    assert parse_dob(" 1/27/1931 ") == date(1931, 1, 27)


@pytest.mark.parametrize("bad", ["1933-11-03", "13/13/1933", "3.11.1933", "", "yesterday",
                                 "31-02-1950"])
def test_parse_dob_rejects_anything_else(bad):
    with pytest.raises(ValueError):
        parse_dob(bad)


def test_age_at_reference_date():
    # 2020-01-01 minus 1950-01-01 is 25567 days = 70.0 years of 365.25 days
    assert age_at(date(1950, 1, 1), "2020-01-01") == pytest.approx(25567 / 365.25)
    assert age_at(date(1950, 1, 1), "2030-01-01") > age_at(date(1950, 1, 1))


def test_flat_layout_quirks_and_accounting(tmp_path):
    csv = HEADER + ("P1,1,M,11/3/1933,11.2\n"
                    "P2,0,f,28-04-1943,6.5\n"
                    "P3,-1,X,1943/04/28,abc\n"
                    "P4,,F,1/1/1950,-3\n")
    root = make_flat(tmp_path, csv, {
        "P1": ["000000.jpg", "000001.JPG", "a.PNG", "b.tif", "c.TIFF", "d.jpeg",
               ".DS_Store", "Thumbs.db", "notes.txt"],
        "P2": [],
        "P9": ["000000.jpg"],
    })
    (root / "readme.txt").write_text("hello")
    c = load_cohort(root, reference_date="2020-01-01")
    cl = c.clinical
    assert list(cl.index) == ["P1", "P2", "P3", "P4", "P9"]
    assert cl.loc["P2", "GENDER"] == "F"  # lower-case f accepted
    assert pd.isna(cl.loc["P3", "GENDER"]) and pd.isna(cl.loc["P3", "AGE"])
    assert pd.isna(cl.loc["P3", "LYMPH_COUNT"]) and pd.isna(cl.loc["P4", "LYMPH_COUNT"])
    assert cl.loc["P1", "LABEL"] == 1 and cl.loc["P2", "LABEL"] == 0
    assert pd.isna(cl.loc["P3", "LABEL"]) and pd.isna(cl.loc["P4", "LABEL"])
    assert cl.loc["P2", "AGE"] == pytest.approx(age_at(date(1943, 4, 28)))
    assert [p.name for p in c.images["P1"]] == ["000000.jpg", "000001.JPG", "a.PNG", "b.tif",
                                                 "c.TIFF", "d.jpeg"]
    kinds = c.issues.groupby("kind")["path"].apply(lambda s: sorted(Path(p).name for p in s))
    assert kinds["ignored_file"] == [".DS_Store", "Thumbs.db", "notes.txt", "readme.txt"]
    assert kinds["empty_folder"] == ["P2"]
    assert kinds["row_without_folder"] == ["P3", "P4"]
    assert kinds["folder_without_row"] == ["P9"]
    assert not cl.loc["P9", "IN_CSV"] and c.images["P9"]
    # every bad value is reported with the row it came from
    bad = c.issues[c.issues["kind"].isin(["bad_dob", "unknown_gender", "bad_lymph_count"])]
    assert set(bad["path"]) == {"clinical.csv line 4", "clinical.csv line 5"}
    assert sorted(bad["kind"]) == ["bad_dob", "bad_lymph_count", "bad_lymph_count",
                                   "unknown_gender"]


@pytest.mark.parametrize("csv,needle", [
    (HEADER + "P1,1,M,1/1/1950,5\nP1,0,F,1/1/1960,6\n", "duplicate ID 'P1'"),
    (HEADER + "../x,1,M,1/1/1950,5\n", "'../x' is not a plain folder name"),
    (HEADER + "a/b,1,M,1/1/1950,5\n", "'a/b' is not a plain folder name"),
    ("ID,LABEL,DOB,LYMPH_COUNT\nP1,1,1/1/1950,5\n", "missing required column(s): GENDER"),
    ("ID,LABEL,GENDER,LYMPH_COUNT\nP1,1,M,5\n", "DOB or AGE"),
    (HEADER + "P1,2,M,1/1/1950,5\n", "LABEL '2'"),
])
def test_fatal_errors_name_the_culprit(tmp_path, csv, needle):
    make_flat(tmp_path, csv)
    with pytest.raises(CohortError) as err:
        load_cohort(tmp_path)
    assert needle in str(err.value)
    assert "clinical.csv" in str(err.value)


def test_duplicate_reports_both_lines(tmp_path):
    make_flat(tmp_path, HEADER + "P1,1,M,1/1/1950,5\nP2,1,M,1/1/1950,5\nP1,0,F,1/1/1960,6\n")
    with pytest.raises(CohortError, match="line 4: duplicate ID 'P1' \\(first seen on line 2\\)"):
        load_cohort(tmp_path)


def test_age_column_instead_of_dob(tmp_path):
    make_flat(tmp_path, "ID,LABEL,GENDER,AGE,LYMPH_COUNT\nP1,1,M,71.5,5\n", {"P1": ["a.jpg"]})
    assert load_cohort(tmp_path).clinical.loc["P1", "AGE"] == 71.5


def test_dob_after_the_reference_date_is_named(tmp_path):
    make_flat(tmp_path, HEADER + "P1,1,M,3/14/2023,5\nP2,0,F,1/1/1950,5\n",
              {"P1": ["a.jpg"], "P2": ["a.jpg"]})
    c = load_cohort(tmp_path, reference_date="2020-01-01")
    assert np.isnan(c.clinical.loc["P1", "AGE"]) and c.clinical.loc["P2", "AGE"] > 69
    row = c.issues[c.issues["kind"] == "dob_after_reference"].iloc[0]
    assert row["patient"] == "P1" and "born 2023-03-14, after 2020-01-01" in row["detail"]


def test_subset_keeps_the_patients_and_their_issues(tmp_path):
    make_flat(tmp_path, HEADER + "P1,1,M,1/1/1950,5\nP2,0,F,1/1/1950,x\nP3,0,F,1/1/1950,4\n",
              {"P1": ["a.jpg"], "P2": ["a.jpg"], "P3": ["a.jpg", "b.jpg"]})
    (tmp_path / "notes.txt").write_text("a stray file: a cohort-wide issue")
    c = load_cohort(tmp_path)
    s = c.subset(["P3", "P2"])
    assert list(s.clinical.index) == ["P2", "P3"] and set(s.images) == {"P2", "P3"}
    assert s.n_images == 3
    assert set(s.issues["patient"].fillna("")) <= {"P2", ""}
    assert (s.issues["patient"] == "P2").any() and len(c.issues) >= len(s.issues)


def test_needs_exactly_one_csv(tmp_path):
    (tmp_path / "a.csv").write_text(HEADER)
    (tmp_path / "b.csv").write_text(HEADER)
    with pytest.raises(CohortError, match="a.csv, b.csv"):
        load_cohort(tmp_path)
    with pytest.raises(CohortError, match="no such folder"):
        load_cohort(tmp_path / "missing")


def test_one_patients_folder_is_a_cohort_of_one(tmp_path):
    """Issue 30: a folder of one patient's images plus the values typed by hand; the same
    columns and types as a CSV row of load_cohort, everything else in the folder listed."""
    d = tmp_path / "P0042"
    d.mkdir()
    for f in ("001.jpg", "000.JPG", "notes.txt"):
        (d / f).write_bytes(b"x")
    (d / "old").mkdir()
    assert holds_images(d) and not holds_images(tmp_path)
    c = load_patient(d, age=72, lymph_count=5.3, gender=" f")
    assert list(c.clinical.index) == ["P0042"] and c.unlabelled.tolist() == ["P0042"]
    r = c.clinical.loc["P0042"]
    assert (r["GENDER"], r["AGE"], r["LYMPH_COUNT"], r["SPLIT"]) == ("F", 72.0, 5.3, "")
    assert [p.name for p in c.images["P0042"]] == ["000.JPG", "001.jpg"]
    assert sorted(c.issues["detail"]) == ["not an image file name", "sub-folder"]
    (tmp_path / "flat").mkdir()
    flat = load_cohort(make_flat(tmp_path / "flat", HEADER + "P0042,,F,1/1/1948,5.3\n",
                                 {"P0042": ["a.jpg"]}))
    assert c.clinical.dtypes.equals(flat.clinical.dtypes)
    unknown = load_patient(d, age=72, lymph_count=5.3)
    assert unknown.clinical["GENDER"].isna().all()
    assert "unknown_gender" in set(unknown.issues["kind"])


@pytest.mark.parametrize("name, kw, needle", [
    ("P1", dict(age=72, lymph_count=0), "must be a positive number"),
    ("P1", dict(age=-1, lymph_count=5), "age -1 years is implausible"),
    ("P1", dict(age=72, lymph_count=5, gender="X"), "gender 'X' is not M or F"),
    ("-P1", dict(age=72, lymph_count=5), "is the patient ID and must be a plain one"),
    ("empty", dict(age=72, lymph_count=5), "no image files directly in it"),
])
def test_one_patients_folder_refuses_what_cannot_be_scored(tmp_path, name, kw, needle):
    d = tmp_path / name
    d.mkdir()
    if name != "empty":
        (d / "000.jpg").write_bytes(b"x")
    with pytest.raises(CohortError, match=needle):
        load_patient(d, **kw)


def test_challenge_layout_on_synthetic(synthetic_root):
    c = load_cohort(synthetic_root)
    s = c.summary()
    assert s["labelled"] == 24 and s["unlabelled"] == 3
    assert set(c.clinical["SPLIT"]) == {"trainset", "testset"}
    assert c.issues.empty  # the generator writes a clean cohort


@pytest.mark.realdata
def test_real_dlmi_cohort(real_root):
    c = load_cohort(real_root)
    s = c.summary()
    # counts stated in ../shared/data/dlmi/README.md
    assert (s["labelled"], s["reactive"], s["tumoral"], s["unlabelled"]) == (120, 37, 83, 6)
    train = c.clinical.index[c.clinical["SPLIT"] == "trainset"]
    assert sum(len(c.images[p]) for p in train) == 9698
    assert c.clinical["AGE"].notna().all()  # both DOB formats parse
    assert (c.issues["level"] == "warning").sum() == 0


def test_read_image_conversions(tmp_path):
    import cv2

    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "c.png"), rgb[:, :, ::-1])
    assert read_image(tmp_path / "c.png")[0, 0].tolist() == [200, 0, 0]
    cv2.imwrite(str(tmp_path / "g.png"), np.full((40, 50), 77, np.uint8))
    assert read_image(tmp_path / "g.png").shape == (40, 50, 3)
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((40, 50), 257 * 9, np.uint16))
    assert read_image(tmp_path / "g16.png")[0, 0].tolist() == [9, 9, 9]
    rgba = np.dstack([rgb[:, :, ::-1], np.full((40, 50), 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 20])
def test_read_image_unreadable(tmp_path, content):
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match="unreadable"):
        read_image(p)


# ---------------------------------------------------------------- property-based
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

cell_text = st.one_of(st.text(alphabet="0123456789/-.aFfMm ,\"x", max_size=12),
                      st.sampled_from(["", "11/3/1933", "28-04-1943", "M", "f", "12.5", "-1"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(cell_text, cell_text, cell_text, cell_text), min_size=1, max_size=6))
def test_random_csv_rows_are_loaded_or_reported(tmp_path_factory, rows):
    import csv

    root = tmp_path_factory.mktemp("h")
    with open(root / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"])
        for i, (lab, g, dob, cnt) in enumerate(rows):
            w.writerow([f"P{i}", lab, g, dob, cnt])
    try:
        c = load_cohort(root)
    except CohortError as exc:  # only a bad LABEL is fatal among these columns
        assert "LABEL" in str(exc)
        return
    assert list(c.clinical.index) == [f"P{i}" for i in range(len(rows))]
    for i in range(len(rows)):
        r = c.clinical.loc[f"P{i}"]
        reported = set(c.issues.loc[c.issues["patient"] == f"P{i}", "kind"])
        assert pd.notna(r["GENDER"]) or "unknown_gender" in reported
        assert pd.notna(r["AGE"]) or reported & {"bad_dob", "bad_age"}
        assert pd.notna(r["LYMPH_COUNT"]) or "bad_lymph_count" in reported


def test_read_image_palette_and_cmyk(tmp_path):
    from PIL import Image

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15] = (200, 30, 40)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")[0, 0].tolist() == [200, 30, 40]
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    back = read_image(tmp_path / "c.jpg")
    assert back.shape == (20, 30, 3)
    assert np.abs(back[5, 5].astype(int) - [200, 30, 40]).max() < 30  # lossy, but faithful


# --- issue 20: links out of the cohort, images that announce a huge size -----------------

def test_links_out_of_the_cohort_are_not_read_and_are_reported(tmp_path):
    # the outside files used to be read, and shown in the report, as the patient's
    outside = tmp_path / "elsewhere"
    (outside / "P9").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(b"x")
    (outside / "P9" / "a.jpg").write_bytes(b"x")
    (tmp_path / "cohort").mkdir()
    root = make_flat(tmp_path / "cohort", HEADER + "P1,1,M,1/1/1950,10\nP9,0,F,1/1/1960,5\n",
                     {"P1": ["a.jpg", "b.jpg"]})
    (root / "P1" / "secret.jpg").symlink_to(outside / "secret.jpg")
    (root / "P1" / "twin.jpg").symlink_to(root / "P1" / "a.jpg")    # inside: fine
    (root / "P9").symlink_to(outside / "P9", target_is_directory=True)
    cohort = load_cohort(root)
    assert [p.name for p in cohort.images["P1"]] == ["a.jpg", "b.jpg", "twin.jpg"]
    assert cohort.images["P9"] == []
    links = cohort.issues[cohort.issues["kind"] == "link_outside_cohort"]
    assert sorted(Path(p).name for p in links["path"]) == ["P9", "secret.jpg"]
    assert (links["level"] == "warning").all()


def _png_of_size(width, height) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


def test_image_too_large_is_refused_from_its_header_without_decoding(monkeypatch):
    import cv2

    from cellfeat.data import MAX_IMAGE_SIDE, decode_image, image_size

    big = _png_of_size(MAX_IMAGE_SIDE + 1, 40)
    assert image_size(big) == (MAX_IMAGE_SIDE + 1, 40)

    def no_decoding(*a, **k):
        raise AssertionError("decoded")
    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ImageReadError, match=f"rejected: image {MAX_IMAGE_SIDE + 1}x40 larger "
                                             f"than {MAX_IMAGE_SIDE} px"):
        decode_image(big)
