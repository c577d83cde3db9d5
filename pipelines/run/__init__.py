"""The ``cellfeat`` command and its stages (synthetic, features, train, score, demo).

cli         the argument parser, exit statuses, one-line errors
stages      what each stage does, from parsed arguments to files and a first screen
features    the feature stage: every image of a cohort -> cells.parquet, qc.csv, ...
tasks       one patient's feature task, and its content-addressed cache
cluster     the same tasks on a Dask cluster
stability   the colour-stability check that training runs on the chosen model
outputs     where a stage may write: never inside the cohort, never over others' files

May import :mod:`pipelines.report`, :mod:`pipelines.bundle`, :mod:`pipelines.io` and
:mod:`cellfeat`; nothing imports it but :mod:`pipelines.bench`.
"""
