"""File helpers shared by the stages: atomic writes, settings hashes, provenance."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import cellfeat


class StageError(Exception):
    """An error the CLI prints as one line (what, where, how to fix) with exit status 2."""


def settings_hash(settings: dict) -> str:
    """Short, stable hash of a JSON-able settings dict (with the package version)."""
    blob = json.dumps({"version": cellfeat.__version__, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A half-written file is never found under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path, df, **kw) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kw)


def write_parquet(path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
