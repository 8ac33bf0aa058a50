"""A per-task lock that the daemon and a one-shot `task:run` both honour.

One file for every task, `state_dir/locks/tasks.lock`: a task's lock is an open file
description lock (fcntl F_OFD_SETLK: flock's semantics, held per open file and dropped by the
kernel when its holder dies, so a `kill -9` never leaves a task locked) on one byte, at an
offset made from the task's name (62 bits of its BLAKE2b hash: two of 10,000 names share a
byte with a chance of about 1e-11). Why not a file per task: creating 10,000 lock files at a
first start was a third of its CPU time (system time: an inode and a directory entry each).
The file is open only while a lock is held (an iteration): idle tasks hold no descriptor.
A holder that names itself (`task:run`) leaves its name in `NAME.holder` while it holds the
lock; the daemon's iterations write nothing.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import struct
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


LOCKS_FILE = "tasks.lock"
_FLOCK = "@hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)


def _byte(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 2


@functools.cache
def _locks_file(lock_dir: Path) -> Path:
    return lock_dir / LOCKS_FILE  # one Path for all the tasks' locks, not one per task


class TaskLock:
    def __init__(self, lock_dir: Path, name: str):
        self.path = _locks_file(lock_dir)
        self.name = name
        self._byte = _byte(name)
        self._fd: int | None = None  # open while the lock is held
        self._noted = False  # a holder's note was left (removed at release)

    @property
    def note(self) -> Path:
        return self.path.parent / f"{self.name}.holder"

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the locks directory is made at the first lock
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_acquire(self, holder: str = "") -> bool:
        """`holder`: a name left in `NAME.holder` while held (the daemon gives none)."""
        if self._fd is not None:
            return True  # already held by this very object
        fd = self._open()
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, self._byte, 1, 0))
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another open file
            os.close(fd)
            return False
        self._fd = fd
        self._noted = bool(holder)
        if holder:
            self.note.write_text(f"{os.getpid()} {holder}"[:HOLDER_WIDTH])
        return True

    def holder(self) -> str:
        """Who holds the lock when it named itself (`PID task:run`); "" when not said (the daemon)."""
        try:
            pid, _, who = self.note.read_text().partition(" ")
        except OSError:
            return ""  # no note (the daemon leaves none), or one this user may not read
        try:
            os.kill(int(pid), 0)
        except PermissionError:
            pass  # EPERM: the process is there, another user's (a task:run they started)
        except (ProcessLookupError, ValueError, OverflowError):
            return ""  # a note left by a holder killed before it removed it: not the holder
        return f"{pid} {who}".strip()

    def release(self) -> None:
        """Closing the file drops its lock; the holder's note goes first."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._noted:
                    self.note.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.release()
