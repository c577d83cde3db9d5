"""Plain words for the registry's names: what the pages print beside
``Bag_Mean_Nucleus_Shape_Solidity`` so that a haematologist can read it."""

from __future__ import annotations

import re

__all__ = ["gloss", "atypical_reason"]


_OBJECTS = {"Nucleus": "nucleus", "Cytoplasm": "cytoplasm", "Cell": "whole cell",
            "ROC": "nuclear indentations"}
_STATS = {"Mean": "mean over cells", "Std": "cell-to-cell SD", "Q10": "10th percentile over cells",
          "Q50": "median over cells", "Q90": "90th percentile over cells"}
_MEASURES = {
    "Area": "size (area, in squared red-cell diameters)",
    "Perimeter": "outline length (in red-cell diameters)", "Solidity": "solidity (1 = no dents)",
    "Convexity": "convexity (1 = smooth outline)", "Circularity": "outline irregularity (1 = round)",
    "MajorAxisLength": "length (in red-cell diameters)",
    "MinorAxisLength": "width (in red-cell diameters)", "Eccentricity": "elongation",
    "BoundaryIrregularity": "boundary irregularity", "NucleusAreaRatio": "nucleus share of the cell",
    "Contrast": "texture contrast",
    "Homogeneity": "texture smoothness", "Energy": "texture uniformity",
    "Entropy": "texture disorder", "Correlation": "texture regularity",
    "Granularity": "granularity (fine dark spots)",
    # features revision 8 (issue 12)
    "EquivalentDiameter": "diameter (in red-cell diameters)", "NucleusOffset": "off-centre nucleus",
    "RedCellIndentation": "dents made by neighbouring red cells",
    "RimWidthMean": "cytoplasm rim width (in red-cell diameters)",
    "RimWidthStd": "unevenness of the cytoplasm rim (in red-cell diameters)",
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
    spread (SD) of nucleus size (area, in squared red-cell diameters)"); "" when the name
    has no known structure."""
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
        # 4 px at the canonical ruler (cellfeat.ruler): a tenth of a red cell
        return f"{obj} {_MEASURES[parts[-2]]} at a coarser scale (a tenth of a red cell)"
    # a feature newer than this glossary: its name's words, so the reader still gets words
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", " ".join(parts[1:])).lower()
    return f"{obj}: {words}"


def _input_words(name: str) -> str:
    """A model input in words, without the "mean over cells of" every input shares."""
    words = gloss(name) or name
    return words.removeprefix(_STATS["Mean"] + " of ")


def atypical_reason(row, bars: dict, top: int = 2) -> str:
    """Why a patient is beyond the atypicality bar, in words (``row``: its line of
    :meth:`cellfeat.atypia.Atypicality.score`; ``bars``: the fitted ``bars_``), e.g.
    "59 % of images failed QC (training patients: at most 23 %); nucleus deepest notch or
    cleft far outside the training range"."""
    parts, outside = [], list(row["OUTSIDE"])[:top]
    if "qc" in row["BEYOND"]:
        parts.append(f"{100 * row['QC_FAILED_SHARE']:.0f} % of images failed QC (training "
                     f"patients: at most {100 * bars['qc']:.0f} %)")
    if "range" in row["BEYOND"] and outside:
        parts.append(" and ".join(_input_words(n) for n in outside)
                     + f" far outside the training range ({row['EXCEEDANCE']:.1f} SD beyond)")
    if "distance" in row["BEYOND"]:
        text = (f"cell measurements far from every training patient's (distance "
                f"{row['DISTANCE']:.1f}, bar {bars['distance']:.1f})")
        if outside and "range" not in row["BEYOND"]:
            text += "; most unusual: " + " and ".join(_input_words(n) for n in outside)
        parts.append(text)
    return "; ".join(parts) or "beyond the atypicality bar"
