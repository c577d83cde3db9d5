"""When a stage draws progress bars: for a person at a terminal, not into a log (issue 30).

A bar redraws itself in place with carriage returns; in a file every redraw is kept, and
``cellfeat train > train.log`` was mostly redraws, with the first screen after them. So a
bar is drawn only when the stream it goes to is a terminal, or when ``--progress`` asks for
one; ``--quiet`` silences bars whatever else is given. Without bars, each long step says
in one line when it ends what it did and how long it took.
"""

from __future__ import annotations

import sys

__all__ = ["show_progress"]


def show_progress(args, stream=None) -> bool:
    """Whether a stage run with ``args`` (``quiet``, ``progress``) draws bars on ``stream``
    (default ``sys.stderr``, where tqdm draws)."""
    if getattr(args, "quiet", False):
        return False
    if getattr(args, "progress", False):
        return True
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())
