"""``python -m pipelines.bench``: the speed and memory benchmark (:mod:`pipelines.bench.speed`)."""

import sys

from .speed import main

sys.exit(main())
