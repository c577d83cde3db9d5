"""cellfeat: explainable triage of reactive vs tumoral lymphocytosis.

The library is pure: arrays and DataFrames in, arrays and DataFrames out. It never
prints, exits or reads environment variables; :mod:`pipelines` does the I/O.

Modules
-------
data          read a patient cohort (clinical CSV + image folders) and account for it
synthetic     a deterministic synthetic cohort with ground-truth masks
segment       nucleus / cell / ROC segmentation (Otsu, K-means)
features      one function per cell feature, and the registry of names
measure       one image -> one feature row (what the feature workers run)
extract       ``CellFeatureExtractor``: images -> one feature row per cell
bags          per-patient aggregation of cell rows
heterogeneity bag heterogeneity scores
pixels        pixel-space dispersion of a bag, streamed
mil           multiple-instance SVMs (MI-SVM, mi-SVM) and their bag features
models        the candidate pipelines compared by patient-level CV
"""

__version__ = "0.1.0"
