"""A per-task lock that the daemon and a one-shot `task:run` both honour.

One file for every task, `state_dir/locks/tasks.lock`: a task's lock is an open file
description lock (fcntl F_OFD_SETLK: flock's semantics, held per open file and dropped by the
kernel when its holder dies, so a `kill -9` never leaves a task locked) on one byte, at an
offset made from the task's name (62 bits of its BLAKE2b hash: two of 10,000 names share a
byte with a chance of about 1e-11). Why not a file per task: creating 10,000 lock files at a
first start was a third of its CPU time (system time: an inode and a directory entry each).
A process opens the file once for all its tasks (`LockFile`: one descriptor, not one per
task) and keeps it open while any of its TaskLocks is in use: an iteration's lock is then one
fcntl to take and one to drop (opening and closing the file at each iteration was a tenth of
the daemon's CPU per no-op iteration). Its own tasks share that open file description, to which
OFD locks never say no, so the process keeps the bytes it holds itself in a set.
A holder that names itself (`task:run`) leaves its name in `NAME.holder` while it holds the
lock; the daemon's iterations write nothing.
"""

from __future__ import annotations

import fcntl
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


class LockFile:
    """This process's one open file description of `locks/tasks.lock`, shared by its TaskLocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users = 0  # TaskLocks that took a lock since they were last closed
        self.held: set[int] = set()  # bytes this process holds (the description never refuses itself)
        self._fd: int | None = None

    def fd(self) -> int:
        """The open file; opened again when the file was removed meanwhile (a lock on a removed
        file would exclude nobody: a task:run locks the file it creates anew)."""
        if self._fd is not None and os.fstat(self._fd).st_nlink:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None  # locks held on the removed file go with it: none would exclude anybody
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the locks directory is made at the first lock
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def lock(self, byte: int) -> bool:
        if byte in self.held:
            return False
        try:
            fcntl.fcntl(self.fd(), fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another open file
            return False
        self.held.add(byte)
        return True

    def unlock(self, byte: int) -> None:
        self.held.discard(byte)
        if self._fd is not None:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))

    def leave(self) -> None:
        """A TaskLock is closed: the file is closed with the last one (a daemon with no task running)."""
        self.users -= 1
        if self.users <= 0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.held.clear()


_FILES: dict[Path, LockFile] = {}


def _lock_file(lock_dir: Path) -> LockFile:
    path = lock_dir / LOCKS_FILE
    file = _FILES.get(path)
    if file is None:
        file = _FILES[path] = LockFile(path)
    return file


class TaskLock:
    def __init__(self, lock_dir: Path, name: str):
        self.file = _lock_file(lock_dir)
        self.path = self.file.path
        self.name = name
        self._byte = _byte(name)
        self._held = False
        self._using = False  # counted in file.users: took a lock since it was last closed
        self._noted = False  # a holder's note was left (removed at release)

    @property
    def note(self) -> Path:
        return self.path.parent / f"{self.name}.holder"

    def try_acquire(self, holder: str = "") -> bool:
        """`holder`: a name left in `NAME.holder` while held (the daemon gives none)."""
        if self._held:
            return True  # already held by this very object
        if not self._using:
            self._using = True
            self.file.users += 1
        if not self.file.lock(self._byte):
            return False
        self._held = True
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
        """Dropping the byte's lock; the holder's note goes first."""
        if self._held:
            self._held = False
            try:
                if self._noted:
                    self.note.unlink(missing_ok=True)
            finally:
                self.file.unlock(self._byte)

    def close(self) -> None:
        """Released, and this lock no longer keeps the shared file open (the runner's loop ended)."""
        self.release()
        if self._using:
            self._using = False
            self.file.leave()
