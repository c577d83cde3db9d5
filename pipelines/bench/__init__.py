"""Measurement tools, run by hand or by ``make bench``; nothing else imports them.

speed   ``python -m pipelines.bench``: feature-stage speed and memory against JPEG decoding,
        MIL fit times, Dask throughput, the segmentation table, the large-cell gallery
colour  feature-level colour drift, and the ``--augment`` stability comparison
mil     MI-SVM / mi-SVM on the classic MIL benchmarks (MUSK1, MUSK2, Elephant)

May import anything in :mod:`pipelines` and :mod:`cellfeat`.
"""
