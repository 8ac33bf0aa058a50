"""A per-task lock that the daemon and a one-shot `task:run` both honour.

flock on `state_dir/locks/NAME.lock`: the kernel drops it when its holder dies,
so a `kill -9` never leaves a task locked. The file is open only while the lock is
held (an iteration): ten thousand idle tasks hold no descriptor, so the daemon's
open files grow with the iterations running, not with the tasks configured (the
open and close cost about 3 us an iteration). The holder line is written only when
it changed: no metadata write per iteration on the event loop.
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
        self._fd: int | None = None  # open while the lock is held

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the locks directory is made at the first lock
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_acquire(self, holder: str = "") -> bool:
        if self._fd is not None:
            return True  # already held by this very object (flock on the same file)
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        record = f"{os.getpid()} {holder}"[:HOLDER_WIDTH].ljust(HOLDER_WIDTH).encode()
        if os.pread(fd, HOLDER_WIDTH, 0) != record:  # written once per holder, not per iteration
            os.pwrite(fd, record, 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Unlock and close (closing the file drops the flock too; the unlock says so first)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.release()
