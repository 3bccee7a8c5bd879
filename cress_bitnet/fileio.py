"""Atomic file output: a killed process never leaves a half-written manifest, wav or checkpoint behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``: it replaces ``path`` atomically if the block succeeds, else is removed.

    The temporary name keeps the extension (writers such as soundfile pick the format from it) and includes the pid,
    so concurrent writers of different outputs never collide; it is created by the writer, with normal permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
