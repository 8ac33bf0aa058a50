"""One instance only: an flock on the pidfile, never a pid merely read from it.

A pidfile left by `kill -9` is not locked, so it is detected as stale and replaced.
Beside it, `NAME.json` records where the running daemon listens and writes (socket,
state and log directories): the CLI finds the daemon from it while the config file
cannot be read. The pidfile itself holds only the pid (systemd's PIDFile=).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import NamedTuple

from .tasklock import lock_file


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None):
        super().__init__(f"schedulerd is already running (pid {pid})" if pid else "schedulerd is already running")
        self.pid = pid


class DaemonRecord(NamedTuple):
    """What a running daemon uses, recorded at its start (its config may change or break since).
    A NamedTuple, not a dataclass: the thin CLI reads it without importing `dataclasses`."""

    pid: int
    socket: Path
    state_dir: Path
    log_dir: Path


def record_path(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".json")


def read_record(pidfile: Path) -> DaemonRecord | None:
    try:
        raw = json.loads(record_path(pidfile).read_text())
        return DaemonRecord(int(raw["pid"]), Path(raw["socket"]), Path(raw["state_dir"]), Path(raw["log_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class PidFile:
    def __init__(self, path: Path, record: DaemonRecord | None = None):
        self.path = path
        self.record = record
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = lock_file(self.path, f"{os.getpid()}\n", 0o644)
        if fd is None:
            raise AlreadyRunning(read_pid(self.path))
        os.fsync(fd)
        self._fd = fd
        if self.record is not None:
            self._write_record(self.record)

    def _write_record(self, record: DaemonRecord) -> None:
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in record._asdict().items()}
        tmp = record_path(self.path).with_suffix(".tmp")
        tmp.write_text(json.dumps(fields) + "\n")
        os.replace(tmp, record_path(self.path))

    def release(self) -> None:
        if self._fd is not None:
            for path in (record_path(self.path), self.path):
                try:
                    os.unlink(path)
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
