"""A per-task lock that the daemon and a one-shot `task:run` both honour.

flock on `state_dir/locks/NAME.lock`: the kernel drops it when its holder dies,
so a `kill -9` never leaves a task locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class TaskLock:
    def __init__(self, lock_dir: Path, name: str):
        self.path = lock_dir / f"{name}.lock"
        self._fd: int | None = None

    def try_acquire(self, holder: str = "") -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {holder}".encode())
        self._fd = fd
        return True

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
