"""Atomic file writes: write to a temp file in the same directory, fsync, then rename.

A crash or interrupt mid-write leaves either the old file or the new one, never a truncated file,
which is what makes vector files, sweep results and caches safe to resume from.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on clean exit it replaces `path` atomically.

    The temp file is fsynced before the rename, and removed if the block raises, so `path` is never
    left half-written.

    Args:
        path: the file to write (its directory is created if missing).

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8).

    Args:
        path: the file to write.
        text: the content.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically.

    Args:
        path: the file to write.
        data: the content.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
