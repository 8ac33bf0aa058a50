"""One instance only: an flock on the pidfile, never a pid merely read from it.

A pidfile left by `kill -9` is not locked, so it is detected as stale and replaced.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .tasklock import lock_file


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None):
        super().__init__(f"schedulerd is already running (pid {pid})" if pid else "schedulerd is already running")
        self.pid = pid


class PidFile:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = lock_file(self.path, f"{os.getpid()}\n", 0o644)
        if fd is None:
            raise AlreadyRunning(read_pid(self.path))
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def running_pid(path: Path) -> int | None:
    """The pid of the live daemon holding the lock, or None (no file, or a stale one)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(path) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
