"""Durability primitives shared by every writer: fsync of a folder, syncfs(2) of a filesystem.

One syncfs covers a whole batch of files (archive ingest, FTP pulls) where one fsync each
would dominate the cost of small files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path | str) -> None:
    """Make a folder's entries (renames, new names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """`data` as `path`, whole or not at all: a synced temp renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)


def _load_syncfs() -> Any:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


SYNCFS = _load_syncfs()  # None where libc has no syncfs: callers fall back to os.sync()


def syncfs(folder: Path | str) -> None:
    """Make everything written on `folder`'s filesystem durable: one syncfs(2) for a whole batch
    of files (os.sync() where libc has none); OSError when the kernel reports a write-back error."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if SYNCFS is None:
            os.sync()
        elif SYNCFS(fd) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)
