"""Atomic file output: a reader never sees a half-written sub-definition.

Everything is written to a temporary name in the destination's own directory,
flushed to disk, then renamed over the destination (and the directory synced),
so a crash leaves either the old file or the new one, plus at most a stray
`.name.*.tmp` that the next write of the same file replaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from schedulerd.durable import fsync_dir

TMP_SUFFIX = ".tmp"


def temp_name(dest: Path) -> Path:
    """A unique hidden temporary beside `dest` (same filesystem, so rename is atomic)."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path for a tool to write; on success it replaces `dest`.

    The temporary is removed on any error, so failures leave nothing behind.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OSError(f"{dest}: the tool wrote nothing")
        os.chmod(tmp, mode)
        fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_writer(dest: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file; on success it is synced and renamed over `dest`."""
    with atomic_path(dest, mode) as tmp:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
