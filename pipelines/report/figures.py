"""The pictures of the HTML pages, as inline data URIs: SVG figures, JPEG cell tiles with
their outlines, and the training cohort's ranges with one patient on them. Every page
travels alone, so nothing is linked; the numbers drawn come from the callers."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["svg_uri", "file_uri", "jpeg_uri", "cell_tile", "outline_cell",
           "distribution_figure", "missing", "CLASS_NAMES", "CLASS_COLOURS", "TILE_PX"]

CLASS_NAMES = ("reactive", "tumoral")
CLASS_COLOURS = {"reactive": "#4c78a8", "tumoral": "#e45756"}
TILE_PX = 128


def missing(x) -> bool:
    """None, NaN, NA or an infinite number: nothing to draw or print."""
    return x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)) or \
        (not isinstance(x, str) and pd.isna(x))


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
        if not missing(p["value"]):
            ax.axvline(p["value"], color="black", lw=1.6)
        ax.set_yticks([1, 0], [c for c in CLASS_NAMES], fontsize=7)
        ax.set_ylim(-0.6, 1.6)
        if p.get("log"):
            _log_axis(ax)
        ax.tick_params(axis="x", labelsize=7)
        value = "missing" if missing(p["value"]) else format(p["value"], p.get("fmt", ".3g"))
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
