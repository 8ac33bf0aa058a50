"""Databoxes kept open between the jobs of one process (`subdefCreation`, `writeMetadatas`,
`deleteRecord`): opening one costs a schema check in a write transaction (on PostgreSQL a pool,
an advisory lock and the whole schema script), closing a SQLite one a WAL checkpoint; a job's
own work on the databox is one read and one transaction.

A job takes a databox (`KEPT.take(settings)`) for itself and gives it back when done; a databox
given back after an error (`broken=True`) is closed, and the next job opens a fresh one. A
SQLite file renamed, replaced or removed since it was opened (databox:copy, a restore) is seen at
the next take: the old connection is closed and the file opened anew, or DataboxMissing raised
when it is gone, so a kept connection never writes to a file nobody reads any more. Changed
settings (a reload) open anew too. Every databox still open is closed at the process's exit.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass

from .databox import Databox, open_databox
from .settings import DataboxSettings

KEEP_IDLE = 8  # idle databoxes kept per database: as many as a process runs jobs at once, usually


def _identity(settings: DataboxSettings) -> tuple[int, int] | None:
    """The SQLite file's (device, inode), None when it does not exist; None on PostgreSQL too."""
    if settings.path is None:
        return None
    try:
        st = os.stat(settings.path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class _Kept:
    db: Databox
    identity: tuple[int, int] | None  # of the SQLite file when it was opened


class KeptDataboxes:
    """Open databoxes of this process, idle ones by database (`settings.where`)."""

    def __init__(self, keep_idle: int = KEEP_IDLE):
        self.keep_idle = keep_idle
        self._idle: dict[str, list[_Kept]] = {}
        self._out: dict[int, _Kept] = {}  # id(db) -> taken by a job
        self._lock = threading.Lock()
        self._registered = False

    def take(self, settings: DataboxSettings) -> Databox:
        """An open databox for `settings`, for this caller alone until `give_back`; blocking (call
        it in a worker thread). DataboxMissing when it does not exist (it is never created here)."""
        now = _identity(settings)
        stale: list[_Kept] = []
        found = None
        with self._lock:
            idle = self._idle.get(settings.where, [])
            while idle and found is None:
                kept = idle.pop()
                if kept.db.settings == settings and kept.identity == now:
                    found = kept
                else:
                    stale.append(kept)
        for kept in stale:
            kept.db.close()
        if found is None:
            found = _Kept(open_databox(settings, create=False), _identity(settings))
        with self._lock:
            self._out[id(found.db)] = found
            if not self._registered:
                atexit.register(self.close_all)
                self._registered = True
        return found.db

    def give_back(self, db: Databox, *, broken: bool = False) -> None:
        """The job is done with `db`: kept for the next one, or closed when `broken` (an error
        happened while it was taken: its connection may be the cause) or enough are idle."""
        with self._lock:
            kept = self._out.pop(id(db))
            idle = self._idle.setdefault(db.settings.where, [])
            keep = not broken and len(idle) < self.keep_idle
            if keep:
                idle.append(kept)
        if not keep:
            db.close()

    def close_all(self) -> None:
        """Close every idle databox (at exit; taken ones are their jobs' to give back)."""
        with self._lock:
            idle = [k for ks in self._idle.values() for k in ks]
            self._idle.clear()
        for kept in idle:
            kept.db.close()


KEPT = KeptDataboxes()
