"""A synthetic lymphocytosis cohort, deterministic from a seed, with ground-truth masks.

It stands in for the real data in tests and in ``make demo``, and it is the ground truth
of the segmentation tests. Each image imitates a Sysmex crop: a pale plasma background,
overlapping red cells with central pallor, one centred lymphocyte (dark purple nucleus
with chromatin texture inside a bluish cytoplasm rim), sometimes a platelet or a
neighbouring white cell cut by the border, and per-smear stain drift.

The class signal follows what haematologists look for. Tumoral (CLL-like) patients'
lymphocytes are homogeneous: similar small, round, dense nuclei with a thin rim of
cytoplasm. Reactive patients' lymphocytes are heterogeneous: varied sizes, irregular or
paler nuclei, wider and sometimes deep-blue cytoplasm. A share of tumoral patients (:data:`ATYPICAL_SHARE`) look reactive, so
images alone are not enough either. Clinical attributes follow the real
cohort (tumoral patients older, with higher, heavy-tailed lymphocyte counts) with enough
overlap that the clinical data alone is not enough.

Colours come from a :class:`Palette`: :data:`DEFAULT_PALETTE` (cream plasma, mauve red
cells, lavender cytoplasm, purple chromatin, as in a May-Grünwald-Giemsa smear) unless a
palette is passed; :func:`random_palette` draws another lab's colours from the wide,
documented :data:`PALETTE_RANGES` (``write_cohort(..., palette="random")`` gives every
smear its own), for testing that segmentation does not depend on one stain's hues.

Layout written by :func:`write_cohort` (the challenge layout, see :mod:`cellfeat.data`)::

    ROOT/trainset/trainset_true.csv   ROOT/trainset/P<i>/000000.jpg ...
    ROOT/testset/testset_data.csv     ROOT/testset/P<j>/000000.jpg ...
    ROOT/groundtruth/<split>/P<i>/000000_nucleus.png, 000000_cell.png
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np

__all__ = ["CellParams", "PatientParams", "Palette", "DEFAULT_PALETTE", "PALETTE_RANGES",
           "random_palette", "draw_cell", "sample_patient", "write_cohort", "mask_paths",
           "hard_case", "HARD_CASES", "atypical_cell", "ATYPICAL_KINDS"]

SIZE = 224
#: Share of tumoral patients drawn with reactive-looking lymphocytes.
ATYPICAL_SHARE = 0.15


@dataclass(frozen=True)
class Palette:
    """RGB colours (0-255) of one smear's populations, before per-smear stain drift, blur
    and noise: ``plasma`` (background), ``red_cells``, ``cytoplasm`` and ``deep_cytoplasm``
    (a basophilic cell's, before its per-cell depth factor), ``chromatin`` and
    ``pale_chromatin`` (open chromatin; texture is added to both), ``neighbour`` (another
    white cell's nucleus cut by the border) and ``platelet``."""

    plasma: tuple[float, float, float]
    red_cells: tuple[float, float, float]
    cytoplasm: tuple[float, float, float]
    deep_cytoplasm: tuple[float, float, float]
    chromatin: tuple[float, float, float]
    pale_chromatin: tuple[float, float, float]
    neighbour: tuple[float, float, float]
    platelet: tuple[float, float, float]


#: The colours the generator always had (a May-Grünwald-Giemsa look).
DEFAULT_PALETTE = Palette(plasma=(238, 222, 205), red_cells=(200, 160, 178),
                          cytoplasm=(182, 175, 215), deep_cytoplasm=(120, 130, 200),
                          chromatin=(85, 45, 125), pale_chromatin=(140, 95, 175),
                          neighbour=(95, 55, 135), platelet=(120, 70, 150))

#: Ranges of :func:`random_palette` (uniform, each channel drawn independently). Stained
#: colours are optical densities against the plasma, OD_c = ln(plasma_c / colour_c), so
#: every hue is possible (pink, orange, grey or green red cells; blue, grey, pink or
#: yellowish cytoplasm; any dark chromatin), under the constraints that make a smear
#: readable at all (``constraints``, on mean OD over the channels): chromatin at least 2.5
#: times as dense as both red cells and cytoplasm; red cells and cytoplasm visible against
#: the plasma (mean OD >= 0.12 and >= 0.08); cytoplasm and red cells distinguishable (OD
#: vectors >= 0.15 apart). Pale chromatin is the chromatin's OD times a factor; deep
#: cytoplasm is the cytoplasm's OD scaled to a share of the chromatin's mean OD, so that
#: it can be as dense as pale chromatin (the hard case of :data:`HARD_CASES`; in
#: :data:`DEFAULT_PALETTE` pale chromatin is 0.49 and deep cytoplasm 0.40 of chromatin).
PALETTE_RANGES = {
    "plasma": (180.0, 250.0),          # 8-bit value, each channel
    "red_cells_od": (0.05, 0.8),       # each channel
    "cytoplasm_od": (0.0, 0.6),        # each channel
    "chromatin_od": (0.5, 2.3),        # each channel
    "pale_chromatin_factor": (0.45, 0.65),
    "deep_cytoplasm_share": (0.3, 0.5),
    "constraints": {"chromatin_over_others": 2.5, "red_cells_min": 0.12,
                    "cytoplasm_min": 0.08, "cytoplasm_red_cells_distance": 0.15},
}


def random_palette(rng: np.random.Generator | int) -> Palette:
    """Draw a palette from :data:`PALETTE_RANGES`: the same seed or generator state gives the
    same palette (draws that break a constraint are redrawn from the same generator).

    Examples
    --------
    >>> random_palette(3) == random_palette(3)
    True
    """
    rng = np.random.default_rng(rng)
    r, k = PALETTE_RANGES, PALETTE_RANGES["constraints"]
    while True:
        plasma = rng.uniform(*r["plasma"], size=3)
        rbc, cyto, chrom = (rng.uniform(*r[f"{n}_od"], size=3)
                            for n in ("red_cells", "cytoplasm", "chromatin"))
        pale = float(rng.uniform(*r["pale_chromatin_factor"]))
        deep = float(rng.uniform(*r["deep_cytoplasm_share"]))
        if (chrom.mean() >= k["chromatin_over_others"] * max(rbc.mean(), cyto.mean())
                and rbc.mean() >= k["red_cells_min"] and cyto.mean() >= k["cytoplasm_min"]
                and np.linalg.norm(cyto - rbc) >= k["cytoplasm_red_cells_distance"]):
            break
    colour = lambda od: tuple(float(v) for v in plasma * np.exp(-od))  # noqa: E731
    return Palette(plasma=tuple(float(v) for v in plasma), red_cells=colour(rbc),
                   cytoplasm=colour(cyto),
                   deep_cytoplasm=colour(cyto * deep * chrom.mean() / cyto.mean()),
                   chromatin=colour(chrom), pale_chromatin=colour(pale * chrom),
                   neighbour=colour(0.9 * chrom), platelet=colour(0.75 * chrom))


@dataclass(frozen=True)
class PatientParams:
    """Per-patient generation parameters (what makes a bag tumoral or reactive)."""

    label: int
    nucleus_radius: float  # mean nucleus radius, px
    radius_spread: float  # per-cell sd of nucleus radius, px
    irregularity: float  # amplitude of boundary harmonics, fraction of radius
    rim: tuple[float, float]  # cytoplasm rim width range, px
    pale_share: float  # share of cells with pale, open chromatin
    deep_blue_share: float  # share of cells with deep-blue cytoplasm
    stain: tuple[float, float, float]  # per-smear multiplicative stain drift (R, G, B)
    age: float
    lymph_count: float
    gender: str


@dataclass(frozen=True)
class CellParams:
    nucleus_radius: float
    elongation: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for k = 2, 3, 4, 5
    rim: float
    pale: bool
    deep_blue: bool
    wrap: int = 0  # red cells pressed into the cytoplasm (drawn over it, outside the cell)
    blue_depth: float = 1.0  # deep-blue cytoplasm colour multiplier (< 1 darker)
    folds: tuple[tuple[int, float, float], ...] = ()  # nucleus only: (k, amplitude, phase)


def sample_patient(rng: np.random.Generator, label: int) -> PatientParams:
    """Draw one patient's parameters for ``label`` (0 reactive, 1 tumoral)."""
    stain = tuple(float(s) for s in rng.normal(1.0, 0.04, size=3))
    gender = "M" if rng.random() < (0.62 if label else 0.5) else "F"
    # Some tumoral patients (atypical or prolymphocytic forms) look reactive under the
    # microscope: their images alone mislead, their clinical data does not.
    reactive_look = label == 0 or rng.random() < ATYPICAL_SHARE
    if label == 1:
        age = float(np.clip(rng.normal(71, 11), 35, 97))
        count = float(np.exp(rng.normal(np.log(14.0), 1.0)))
    else:
        age = float(np.clip(rng.normal(55, 17), 18, 95))
        count = float(np.exp(rng.normal(np.log(7.0), 0.45)))
    if not reactive_look:
        return PatientParams(
            label=1, nucleus_radius=rng.uniform(24, 30), radius_spread=rng.uniform(1.0, 2.8),
            irregularity=rng.uniform(0.01, 0.06), rim=(2.0, rng.uniform(4.0, 8.0)),
            pale_share=rng.uniform(0.0, 0.1), deep_blue_share=0.0, stain=stain,
            age=age, lymph_count=max(count, 3.0), gender=gender)
    return PatientParams(
        label=label, nucleus_radius=rng.uniform(25, 32), radius_spread=rng.uniform(2.0, 5.5),
        irregularity=rng.uniform(0.03, 0.09), rim=(3.0, rng.uniform(6.0, 16.0)),
        pale_share=rng.uniform(0.05, 0.35), deep_blue_share=rng.uniform(0.0, 0.25), stain=stain,
        age=age, lymph_count=max(count, 3.0), gender=gender)


def _sample_cell(rng: np.random.Generator, p: PatientParams) -> CellParams:
    radius = float(np.clip(rng.normal(p.nucleus_radius, p.radius_spread), 16, 48))
    harmonics = tuple((float(rng.uniform(0, p.irregularity)), float(rng.uniform(0, 2 * np.pi)))
                      for _ in range(4))
    rim = float(rng.uniform(*p.rim))
    # reactive-looking cells (rim from 3 px) sometimes have abundant cytoplasm, up to a
    # nucleus radius wide, pressed around neighbouring red cells
    if p.rim[0] >= 3 and rng.random() < 0.15:
        rim = float(radius * rng.uniform(0.5, 0.9))
    wrap = int(rng.integers(1, 4)) if rim >= 8 and rng.random() < 0.5 else 0
    return CellParams(
        nucleus_radius=radius, elongation=float(rng.uniform(1.0, 1.25)), harmonics=harmonics,
        rim=rim, pale=bool(rng.random() < p.pale_share),
        deep_blue=bool(rng.random() < p.deep_blue_share), wrap=wrap,
        blue_depth=float(rng.uniform(0.85, 1.05)))


def _radial_polygon(cx, cy, radius, elongation, angle, harmonics, n=96, folds=()):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k, (amp, phase) in zip(range(2, 6), harmonics):
        r += amp * np.cos(k * t + phase)
    for k, amp, phase in folds:  # higher harmonics: clefts and lobes (ATYPICAL_KINDS)
        r += amp * np.cos(k * t + phase)
    x = radius * r * np.cos(t) * elongation
    y = radius * r * np.sin(t) / elongation
    ca, sa = np.cos(angle), np.sin(angle)
    xs, ys = cx + ca * x - sa * y, cy + sa * x + ca * y
    return np.stack([xs, ys], axis=1)


def _fill(shape, poly) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _smooth_noise(rng, shape, sigma, amplitude):
    import cv2

    noise = rng.normal(0, 1, size=shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    noise /= noise.std() + 1e-6
    return noise * amplitude


def draw_cell(rng: np.random.Generator, patient: PatientParams, cell: CellParams | None = None,
              palette: Palette = DEFAULT_PALETTE):
    """Draw one 224×224 lymphocyte image in the colours of ``palette``.

    Returns
    -------
    image : ndarray of uint8, shape (224, 224, 3), RGB
    nucleus : ndarray of bool, shape (224, 224)
        Ground-truth nucleus mask.
    cell_mask : ndarray of bool, shape (224, 224)
        Ground-truth cell mask (nucleus + cytoplasm).
    """
    import cv2

    if cell is None:
        cell = _sample_cell(rng, patient)
    shape = (SIZE, SIZE)
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = palette.plasma
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img += (_smooth_noise(rng, shape, 30, 4))[:, :, None]

    # red cells: mauve discs with a paler centre, overlapping, everywhere but the centre
    n_rbc = rng.integers(14, 24)
    for _ in range(n_rbc):
        for _try in range(10):
            cx, cy = rng.uniform(-10, SIZE + 10, size=2)
            if np.hypot(cx - SIZE / 2, cy - SIZE / 2) > 45:
                break
        r = rng.uniform(17, 24)
        # blend only inside the disc's bounding box: the whole-image version costs 10x
        y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), SIZE)
        x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), SIZE)
        colour = np.array(palette.red_cells, np.float32) + rng.normal(0, 5, 3)
        if y1 <= y0 or x1 <= x0:
            continue
        d = np.hypot(xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy)
        disc = np.clip((r - d) / 1.5, 0, 1)
        pallor = np.exp(-((d / (0.45 * r)) ** 2))
        alpha = (disc * (0.95 - 0.45 * pallor))[:, :, None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + colour * alpha

    # a neighbouring white cell cut by the border, sometimes
    if rng.random() < 0.2:
        side = rng.integers(4)
        pos = rng.uniform(30, SIZE - 30)
        cx, cy = [(pos, -8), (SIZE + 8, pos), (pos, SIZE + 8), (-8, pos)][side]
        nb = _fill(shape, _radial_polygon(cx, cy, rng.uniform(22, 30), 1.1, 0, ((0.03, 0),) * 4))
        img[nb] = palette.neighbour

    # the lymphocyte: cytoplasm, then nucleus, centred with a little jitter
    cx, cy = SIZE / 2 + rng.normal(0, 4, 2)
    angle = rng.uniform(0, np.pi)
    npoly = _radial_polygon(cx, cy, cell.nucleus_radius, cell.elongation, angle, cell.harmonics,
                            n=192 if cell.folds else 96, folds=cell.folds)
    nucleus = _fill(shape, npoly)
    ox, oy = rng.normal(0, cell.rim * 0.3, 2)
    cpoly = _radial_polygon(cx + ox, cy + oy, cell.nucleus_radius + cell.rim, cell.elongation,
                            angle, tuple((a * 0.5, ph) for a, ph in cell.harmonics))
    cell_mask = _fill(shape, cpoly) | nucleus
    cyto_colour = (np.array(palette.deep_cytoplasm, np.float32) * cell.blue_depth
                   if cell.deep_blue else np.array(palette.cytoplasm, np.float32))
    img[cell_mask] = cyto_colour + rng.normal(0, 3, 3)
    # red cells pressed into the cytoplasm: drawn over it, they stay out of the cell; the
    # cytoplasm between them stays in
    for _ in range(cell.wrap):
        r = rng.uniform(17, 22)
        a = rng.uniform(0, 2 * np.pi)
        reach = cell.nucleus_radius * cell.elongation + cell.rim
        # the disc bites into the cytoplasm but keeps 3 px off the nucleus
        dist = max(reach + r * rng.uniform(0.2, 0.6), cell.nucleus_radius * cell.elongation
                   + r + 3)
        rx, ry = cx + dist * np.cos(a), cy + dist * np.sin(a)
        d = np.hypot(xx - rx, yy - ry)
        disc = np.clip((r - d) / 1.5, 0, 1)
        pallor = np.exp(-((d / (0.45 * r)) ** 2))
        alpha = (disc * (0.95 - 0.45 * pallor))[:, :, None]
        colour = np.array(palette.red_cells, np.float32) + rng.normal(0, 5, 3)
        img[:] = img * (1 - alpha) + colour * alpha
        cell_mask &= ~(d < r) | nucleus

    if cell.pale:
        base, amp = np.array(palette.pale_chromatin, np.float32), 22
    else:
        base, amp = np.array(palette.chromatin, np.float32), 14
    chromatin = _smooth_noise(rng, shape, 1.6, amp)
    nuc_px = base[None, :] + chromatin[nucleus][:, None]
    img[nucleus] = nuc_px

    # a platelet near the cell, sometimes
    if rng.random() < 0.25:
        a = rng.uniform(0, 2 * np.pi)
        dist = cell.nucleus_radius + cell.rim + rng.uniform(8, 25)
        px, py = cx + dist * np.cos(a), cy + dist * np.sin(a)
        cv2.circle(img, (int(px), int(py)), int(rng.integers(2, 5)), palette.platelet, -1)

    img *= np.asarray(patient.stain, np.float32)[None, None, :]
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), nucleus, cell_mask


#: The kinds of cell that are hard to segment, drawn by :func:`hard_case`.
HARD_CASES = ("deep_blue_pale", "abundant_pale", "wrapping")


def hard_case(rng: np.random.Generator, kind: str, palette: Palette = DEFAULT_PALETTE):
    """Draw one cell of a kind that is hard to segment, with its true masks.

    ``"deep_blue_pale"``: deep-blue (basophilic) cytoplasm, 4–14 px wide, around a pale,
    open chromatin, the two about as dark on a stain-contrast channel; ``"abundant_pale"``:
    pale cytoplasm half to 0.9 of a nucleus radius wide against the cream plasma;
    ``"wrapping"``: cytoplasm 8–18 px wide pressed around two or three red cells. A reactive
    patient's stain drift and shapes otherwise, in the colours of ``palette``.

    Returns
    -------
    image, nucleus, cell_mask
        As :func:`draw_cell`.
    """
    if kind not in HARD_CASES:
        raise ValueError(f"kind must be one of {HARD_CASES}, got {kind!r}")
    p = sample_patient(rng, 0)
    c = _sample_cell(rng, p)
    if kind == "deep_blue_pale":
        c = replace(c, pale=True, deep_blue=True, rim=float(rng.uniform(4, 14)), wrap=0)
    elif kind == "abundant_pale":
        c = replace(c, deep_blue=False, rim=float(c.nucleus_radius * rng.uniform(0.5, 0.9)),
                    wrap=0)
    else:
        c = replace(c, rim=float(rng.uniform(8, 18)), wrap=int(rng.integers(2, 4)))
    return draw_cell(rng, p, c, palette)


#: Cells unlike any lymphocyte of the cohort, drawn by :func:`atypical_cell` (issue 28: the
#: atypical patients a model must send to cytometry rather than call).
ATYPICAL_KINDS = ("cerebriform", "lobulated")


def atypical_cell(rng: np.random.Generator, kind: str, palette: Palette = DEFAULT_PALETTE):
    """Draw one cell unlike the cohort's lymphocytes, with its true masks.

    ``"cerebriform"``: a Sézary-like lymphocyte, its nucleus outline folded by four
    harmonics of order 6 to 9 (amplitudes 0.05 to 0.10 of the radius each: convoluted,
    grooved, "brain-like"), with abundant pale cytoplasm (0.5 to 0.9 of a nucleus radius);
    ``"lobulated"``: a nucleus cut into 3 or 4 deep lobes (a harmonic of that order with
    amplitude 0.45 to 0.6 of the radius, as in a neutrophil or a flower cell) with a wide
    rim. A tumoral patient's stain drift and size otherwise.

    Returns
    -------
    image, nucleus, cell_mask
        As :func:`draw_cell`.
    """
    if kind not in ATYPICAL_KINDS:
        raise ValueError(f"kind must be one of {ATYPICAL_KINDS}, got {kind!r}")
    p = sample_patient(rng, 1)
    c = _sample_cell(rng, p)
    if kind == "cerebriform":
        folds = tuple((k, float(rng.uniform(0.05, 0.10)), float(rng.uniform(0, 2 * np.pi)))
                      for k in (6, 7, 8, 9))
        c = replace(c, folds=folds, rim=float(c.nucleus_radius * rng.uniform(0.5, 0.9)),
                    deep_blue=False, wrap=0)
    else:
        k = int(rng.integers(3, 5))
        c = replace(c, folds=((k, float(rng.uniform(0.45, 0.6)), float(rng.uniform(0, 6.3))),),
                    rim=float(rng.uniform(10, 16)), deep_blue=False, wrap=0)
    return draw_cell(rng, p, c, palette)


def mask_paths(root, split: str, patient: str, image_name: str) -> tuple[Path, Path]:
    """Where :func:`write_cohort` puts the nucleus and cell masks of one image."""
    stem = Path(image_name).stem
    base = Path(root) / "groundtruth" / split / patient
    return base / f"{stem}_nucleus.png", base / f"{stem}_cell.png"


def _format_dob(rng: np.random.Generator, dob: date) -> str:
    # the real export mixes M/D/YYYY and DD-MM-YYYY in one column
    if rng.random() < 0.8:
        return f"{dob.month}/{dob.day}/{dob.year}"
    return f"{dob.day:02d}-{dob.month:02d}-{dob.year}"


def write_cohort(root, *, n_train: int = 60, n_test: int = 6, cells: tuple[int, int] = (16, 40),
                 tumoral_share: float = 0.69, seed: int = 0, reference_date: str = "2020-01-01",
                 jpeg_quality: int = 92, palette: str = "default") -> Path:
    """Write a synthetic cohort in the challenge layout under ``root``.

    Parameters
    ----------
    root : path-like
        Output folder (created; existing files of the same names are overwritten).
    n_train, n_test : int
        Labelled and unlabelled patients.
    cells : (int, int)
        Inclusive range of images per patient.
    tumoral_share : float
        Expected share of tumoral patients (real cohort: 83 of 120).
    seed : int
        Same seed, same bytes.
    palette : {"default", "random"}
        :data:`DEFAULT_PALETTE` for every smear, or a :func:`random_palette` per patient
        (one smear each), drawn from the patient's own generator.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    import cv2

    if palette not in ("default", "random"):
        raise ValueError(f"palette must be 'default' or 'random', got {palette!r}")
    root = Path(root)
    ss = np.random.SeedSequence(seed)
    label_rng = np.random.default_rng(ss.spawn(1)[0])
    n = n_train + n_test
    n_tum = int(round(tumoral_share * n))
    labels = np.array([1] * n_tum + [0] * (n - n_tum))
    label_rng.shuffle(labels)
    ids = [f"P{i}" for i in label_rng.permutation(n * 2)[:n]]
    ref = date.fromisoformat(reference_date)
    children = ss.spawn(n + 1)[1:]
    rows = {"trainset": [], "testset": []}
    for k, (pid, lab, child) in enumerate(zip(ids, labels, children)):
        split = "trainset" if k < n_train else "testset"
        rng = np.random.default_rng(child)
        p = sample_patient(rng, int(lab))
        colours = random_palette(rng) if palette == "random" else DEFAULT_PALETTE
        n_cells = int(rng.integers(cells[0], cells[1] + 1))
        folder = root / split / pid
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(n_cells):
            img, nuc, cell = draw_cell(rng, p, palette=colours)
            name = f"{j:06d}.jpg"
            ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            (folder / name).write_bytes(buf.tobytes())
            npath, cpath = mask_paths(root, split, pid, name)
            npath.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(npath), nuc.astype(np.uint8) * 255)
            cv2.imwrite(str(cpath), cell.astype(np.uint8) * 255)
        dob = ref - timedelta(days=int(p.age * 365.25))
        gender = p.gender.lower() if rng.random() < 0.05 else p.gender
        rows[split].append((pid, p.label if split == "trainset" else -1, gender,
                            _format_dob(rng, dob), round(p.lymph_count, 2)))
    for split, csv in (("trainset", "trainset_true.csv"), ("testset", "testset_data.csv")):
        lines = ["ID,LABEL,GENDER,DOB,LYMPH_COUNT"]
        lines += [f"{pid},{lab},{g},{dob},{c}" for pid, lab, g, dob, c in rows[split]]
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / csv).write_text("\n".join(lines) + "\n")
    return root
