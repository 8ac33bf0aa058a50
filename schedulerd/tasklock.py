"""A per-task lock that the daemon and a one-shot `task:run` both honour.

flock on `state_dir/locks/NAME.lock`: the kernel drops it when its holder dies,
so a `kill -9` never leaves a task locked. The daemon keeps the file open for the
task's lifetime and takes the lock with one flock call per iteration: no metadata
write on the event loop (a thousand tasks at one second each would feel it).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

HOLDER_WIDTH = 64


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
        self._held = False

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def try_acquire(self, holder: str = "") -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        record = f"{os.getpid()} {holder}"[:HOLDER_WIDTH].ljust(HOLDER_WIDTH).encode()
        if os.pread(fd, HOLDER_WIDTH, 0) != record:  # written once per holder, not per iteration
            os.pwrite(fd, record, 0)
        self._held = True
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None and self._held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False

    def close(self) -> None:
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
