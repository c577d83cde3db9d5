"""What a person reads: reports, pages and pictures, computed from the stages' numbers.

markdown    the training report: README.md, metrics.json and its figures; the first screen
html        the self-contained HTML pages (scoring and training): their context and rendering
explain     what a call is explained with: training ranges, contributions, cells that move it
figures     the pages' pictures as inline data URIs (SVG figures, JPEG cell tiles)
glossary    plain words for the registry's names
plots       contours, montages, the QC gallery and the per-patient montages
univariate  out-of-fold univariate AUC of every patient-level feature
templates/  the Jinja templates of the HTML pages

May import :mod:`pipelines.io` and :mod:`cellfeat`; never :mod:`pipelines.run`.
"""
