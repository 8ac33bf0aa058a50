"""A per-task lock that the daemon and a one-shot `task:run` both honour.

flock on `state_dir/locks/NAME.lock`: the kernel drops it when its holder dies,
so a `kill -9` never leaves a task locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_file(path: Path, content: str, mode: int) -> int | None:
    """Take an exclusive flock on `path` without blocking and write `content`; None when held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, content.encode())
    return fd


class TaskLock:
    def __init__(self, lock_dir: Path, name: str):
        self.path = lock_dir / f"{name}.lock"
        self._fd: int | None = None

    def try_acquire(self, holder: str = "") -> bool:
        self._fd = lock_file(self.path, f"{os.getpid()} {holder}", 0o600)
        return self._fd is not None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
