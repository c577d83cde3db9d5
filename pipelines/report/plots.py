"""Pictures for people: cell galleries with contours, ROC curves, confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


CONTOUR_COLOURS = {"nucleus": (0, 220, 0), "hull": (255, 230, 0), "cell": (230, 40, 40)}


def draw_contours(image: np.ndarray, seg) -> np.ndarray:
    """A copy of ``image`` with nucleus (green), hull/ROC (yellow) and whole-cell (red,
    nucleus + cytoplasm: ``seg.cell_contour``) outlines."""
    import cv2

    out = image.copy()
    if seg is None or not seg.contour.size:
        return out
    # the whole cell (nucleus + cytoplasm) first, so the nucleus outline stays on top
    if seg.cell_contour.size:
        cv2.drawContours(out, [seg.cell_contour.reshape(-1, 1, 2)], -1, CONTOUR_COLOURS["cell"], 1)
    cv2.drawContours(out, [seg.hull_contour.reshape(-1, 1, 2)], -1, CONTOUR_COLOURS["hull"], 1)
    cv2.drawContours(out, [seg.contour.reshape(-1, 1, 2)], -1, CONTOUR_COLOURS["nucleus"], 1)
    return out


def montage(tiles, titles, path, *, cols=8, suptitle=None, tile_inches=1.6):
    """Save a grid of images with small titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(tiles), 1)
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches, rows * tile_inches + 0.4),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, title in zip(axes.ravel(), tiles, titles):
        ax.imshow(tile)
        ax.set_title(title, fontsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell_gallery(cohort, qc: pd.DataFrame, path, *, settings, n_ok=24, n_failed=8, seed=0):
    """Random usable cells with their contours, then random QC failures with the reason."""
    from cellfeat.data import ImageReadError, read_image
    from cellfeat.segment import segment_nucleus

    rng = np.random.default_rng(seed)
    ok = qc[qc["QC_STATUS"] == "ok"]
    bad = qc[qc["QC_STATUS"] != "ok"]
    pick = [ok.iloc[i] for i in rng.choice(len(ok), min(n_ok, len(ok)), replace=False)]
    pick += [bad.iloc[i] for i in rng.choice(len(bad), min(n_failed, len(bad)), replace=False)]
    folders = {pid: (files[0].parent if files else None) for pid, files in cohort.images.items()}
    tiles, titles = [], []
    for row in pick:
        f = folders[row["ID"]] / row["FILE"]
        try:
            img = read_image(f)
        except ImageReadError:
            img = np.full((64, 64, 3), 255, np.uint8)
            seg = None
        else:
            seg = segment_nucleus(img, settings.method, channel=settings.channel) \
                if img.shape[0] >= 32 and img.shape[1] >= 32 else None
        tiles.append(draw_contours(img, seg))
        titles.append(f"{row['ID']}/{row['FILE']}\n{row['QC_STATUS'][:28]}")
    montage(tiles, titles, path, suptitle="nucleus (green), convex hull (yellow), cell (red)")


def patient_montages(cohort, frame, explainer, pred, out_dir, *, method="otsu", k=8):
    """One PNG per scored patient: the cells that weigh most in the call, with contours.

    Cells are ranked by the MI-SVM instance score of the bundle's explainer: the highest
    scores (most tumoral-looking) for a tumoral call, the lowest for a reactive call.
    """
    from cellfeat.data import ImageReadError, read_image
    # here, not at the top: the feature stage's gallery needs no scikit-learn (which
    # cellfeat.decision imports), a second of its serial tail
    from cellfeat.decision import DECIMALS
    from cellfeat.segment import segment_nucleus

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for _, row in pred.iterrows():
        pid = row["ID"]
        files = cohort.images.get(pid, [])
        cells = frame.loc[pid, "CELLS"]
        if not len(cells) or not files:
            continue
        ok = np.flatnonzero((cells["QC_STATUS"] == "ok").to_numpy())
        if not len(ok):
            continue
        scores = explainer.cell_scores(frame.loc[[pid]])[0]
        tumoral = row["LABEL"] == 1 if not pd.isna(row["LABEL"]) else True
        order = np.argsort(-scores if tumoral else scores)[:k]
        tiles, titles = [], []
        for j in order:
            f = files[ok[j]]
            try:
                img = read_image(f)
            except ImageReadError:
                continue
            tiles.append(draw_contours(img, segment_nucleus(img, method)))
            titles.append(f"{f.name}  score {scores[j]:+.2f}")
        call = "no call" if pd.isna(row["LABEL"]) else ("tumoral" if row["LABEL"] == 1 else "reactive")
        # PROBA and THRESHOLD at the precision the call compares them at (DECIMALS)
        montage(tiles, titles, out_dir / f"{pid}.png", cols=4, suptitle=(
            f"{pid}: {call} (P(tumoral) = {row['PROBA']:.{DECIMALS}f}, tumoral if >= "
            f"{row.get('THRESHOLD', float('nan')):.{DECIMALS}f}; "
            f"triage: {row.get('TRIAGE', '') or 'n/a'}; {row['STATUS']}); "
            f"cells ranked by MI-SVM score"))
