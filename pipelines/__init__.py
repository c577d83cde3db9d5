"""cellfeat's front end: the only place with file I/O policy, caching, progress bars, reports
and talking to the user. The library (:mod:`cellfeat`) stays pure.

Packages and modules, and which way they may import (front end -> run -> library)
---------------------------------------------------------------------------------
run/       the ``cellfeat`` command and its stages: cli, stages, the feature stage and its
           per-patient tasks, Dask, the colour-stability check of training, the checks of
           output paths. May import report/, bundle/, io and cellfeat.
report/    what a person reads: the training report (Markdown, metrics.json, figures), the
           HTML pages, montages and galleries, the univariate table, the templates. May
           import io and cellfeat, never run/.
bench/     measurement tools (``make bench``, the MIL benchmark, colour drift). May import
           anything in this package.
bundle/    model files: safe saving and loading of skops bundles, booster checks, the table
           of what training writes. Imports io, cellfeat and report.explain (a constant).
io         atomic writes, settings hashes and ``StageError``, shared by all of the above.
"""
