"""cellfeat: explainable triage of reactive vs tumoral lymphocytosis.

The library is pure: arrays and DataFrames in, arrays and DataFrames out. It never
prints, exits or reads environment variables; :mod:`pipelines` does the I/O.

Modules
-------
data          read a patient cohort (clinical CSV + image folders) and account for it
synthetic     a deterministic synthetic cohort with ground-truth masks (and random palettes)
segment       nucleus / whole-cell segmentation against each image's own plasma
features      one function per cell feature, and the registry of names
measure       one image -> one feature row (what the feature workers run)
extract       ``CellFeatureExtractor``: images -> one feature row per cell
augment       colour shifts of a smear (white balance, gamma, stain, JPEG) and the panel
bags          per-patient aggregation of cell rows
heterogeneity bag heterogeneity scores
pixels        pixel-space dispersion of a bag, streamed
mil           multiple-instance SVMs (MI-SVM, mi-SVM) and their bag features
cnn           the optional torch CNN image expert
zone          the overlap zone: the counts at which the count alone cannot decide
decision      from a score to a call: calibration, decision and triage thresholds
models        the candidates, their inputs, the selection rule and the fallback routing
evaluation    nested patient-level CV of the rule, overall and in the zone
intervals     confidence intervals that re-run the procedure across outer folds
"""

__version__ = "0.1.0"
