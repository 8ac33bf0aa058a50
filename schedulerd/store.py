"""The state store: wanted states, counters and run history of tasks.

Behind the small `StateStore` protocol so that a PostgreSQL store can replace the
embedded SQLite one when several daemons share one cluster.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import anyio

from .states import CLEAN_OUTCOMES, Wanted

log = logging.getLogger("schedulerd.store")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """A shared store (PostgreSQL) that does not answer: down, unreachable, refusing the login, or
    a transaction lost to a conflict. The message names the store, never its password."""


STORE_ERRORS = (sqlite3.Error, OSError, StoreUnavailable)  # a locked or lost database file, a full disk, ...
RETRY_FIRST = 0.5  # seconds before the first retry of a failed store call; doubles up to RETRY_MAX
RETRY_MAX = 30.0
DEFAULT_BUSY_TIMEOUT = 30.0


class Run(NamedTuple):
    """One iteration in the run history. A named tuple, not a frozen dataclass: the daemon makes
    one per iteration, and a frozen dataclass's __init__ (object.__setattr__ per field) cost
    1.4 us against 0.5-0.7 us, ~2 % of the daemon's CPU per no-op iteration."""

    task: str
    started: float
    ended: float
    outcome: str  # a RunOutcome value: ok | failed | timeout | cancelled | stopped
    error: str | None = None
    summary: str | None = None
    source: str = "daemon"  # daemon | cli
    node: str | None = None  # the node that ran it (a shared store)
    generation: int | None = None  # the task lease it ran under (fencing token; a shared store)


@dataclass(frozen=True)
class TaskRecord:
    name: str
    wanted: Wanted | None
    crashes: int
    runs: int
    failures: int
    last_run: Run | None


class StateStore(Protocol):
    def wanted(self, task: str) -> Wanted | None: ...
    def set_wanted(self, task: str, wanted: Wanted) -> None: ...
    def set_crashes(self, task: str, crashes: int) -> None: ...
    def record_run(self, run: Run) -> None: ...
    def save(self, runs: list[Run], crashes: Mapping[str, int], wanted: Mapping[str, Wanted]) -> None: ...
    def task(self, task: str) -> TaskRecord: ...
    def tasks(self, names: Sequence[str]) -> dict[str, TaskRecord]: ...
    def history(self, task: str, limit: int = 20) -> list[Run]: ...
    def purge_history(self, keep_ok: int, keep_failed: int, max_age_ok: float, max_age_failed: float) -> int: ...
    def retention_turn(self, every: float) -> bool: ...
    def get_value(self, key: str) -> Any: ...
    def set_value(self, key: str, value: str | None) -> None: ...
    def close(self) -> None: ...


def connect(path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> sqlite3.Connection:
    """A WAL-mode connection: readers never block the writer, a commit is atomic. A write waits
    up to `busy_timeout` seconds for another process's write lock, then fails ("database is locked")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


# The run history is one table in the order the runs were written, with no index by task, and
# each task's row names its last run (`last_run`). Why: an index by task keeps each task's runs
# together, so a batch of runs changed one index page per task in it, each written whole twice
# (the WAL, then the checkpoint): a run cost the history writer 7 us of CPU on an empty
# table and 21 us at 420,000 runs (100 to 400 a task are kept by default), and the retention 12-14
# us a run deleted; unindexed, a daemon that has run a while spends 40 us per no-op iteration
# instead of 64 (bench_iteration.py --history 250, bench/README.md). The price: a task's history
# is read newest first until `limit` runs are found, the whole table for a task with fewer
# (18 ms at 400,000 runs).
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY, wanted TEXT, crashes INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, last_run INTEGER);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, task TEXT NOT NULL, started REAL NOT NULL, ended REAL NOT NULL,
    outcome TEXT NOT NULL, error TEXT, summary TEXT, source TEXT NOT NULL DEFAULT 'daemon');
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT);
"""
_CLEAN = ", ".join(f"'{o.value}'" for o in sorted(CLEAN_OUTCOMES))  # SQL: outcome IN (_CLEAN)
RUN_COLUMNS = "task, started, ended, outcome, error, summary, source"


class SqliteFile:
    """One SQLite file shared by threads: a lock around one WAL connection, and
    write transactions taken IMMEDIATE so that two processes never interleave."""

    SCHEMA = ""

    def __init__(self, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.path = path
        self._conn = connect(path, busy_timeout)
        self._lock = threading.RLock()
        self._conn.executescript(self.SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteStateStore(SqliteFile):
    """One SQLite file under state_dir; every write is its own short transaction."""

    SCHEMA = SCHEMA

    def __init__(self, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        super().__init__(path, busy_timeout)
        self._reader: sqlite3.Connection | None = None
        self._reading = threading.Lock()
        try:
            # the retention's reads (purge_history) have a connection of their own, opened with the
            # store: one opened and closed at each pass would leave its file descriptor open anyway
            # (SQLite parks it while this process holds locks on the file), one more open file of
            # the daemon after its first pass
            self._reader = connect(path, busy_timeout)
            with self._lock:
                behind = self._behind(self._conn)
            if behind:
                with self.transaction() as c:
                    if self._behind(c):  # again under the write lock: another process may have done it meanwhile
                        self._upgrade(c)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _behind(c: sqlite3.Connection) -> bool:
        """Whether the file needs `_upgrade`: an older schedulerd made it (the index by task, no
        `last_run`), or wrote runs to it since (one still running when this version upgraded it)."""
        if c.execute("SELECT 1 FROM sqlite_master WHERE name='runs_task'").fetchone():
            return True
        if "last_run" not in {r[1] for r in c.execute("PRAGMA table_info(tasks)")}:
            return True
        ahead = c.execute("SELECT (SELECT max(id) FROM runs) > (SELECT coalesce(max(last_run), 0) FROM tasks)")
        return bool(ahead.fetchone()[0])

    def _upgrade(self, c: sqlite3.Connection) -> None:
        if "last_run" not in {r[1] for r in c.execute("PRAGMA table_info(tasks)")}:
            c.execute("ALTER TABLE tasks ADD COLUMN last_run INTEGER")
        c.execute("DROP INDEX IF EXISTS runs_task")
        self._find_last_runs(c)

    @staticmethod
    def _find_last_runs(c: sqlite3.Connection) -> None:
        """Each task's `last_run` found again in one pass over the history: after an upgrade, and
        after a purge that deleted a task's last run (its newest one left, or none)."""
        c.execute("UPDATE tasks SET last_run = NULL WHERE last_run IS NOT NULL")
        c.execute("UPDATE tasks SET last_run = m.id FROM (SELECT task, max(id) AS id FROM runs GROUP BY task) AS m "
                  "WHERE m.task = tasks.name")

    def _ensure(self, c: sqlite3.Connection, task: str) -> None:
        c.execute("INSERT OR IGNORE INTO tasks(name) VALUES (?)", (task,))

    def wanted(self, task: str) -> Wanted | None:
        with self._lock:
            row = self._conn.execute("SELECT wanted FROM tasks WHERE name=?", (task,)).fetchone()
        return Wanted(row[0]) if row and row[0] else None

    def set_wanted(self, task: str, wanted: Wanted) -> None:
        with self.transaction() as c:
            self._ensure(c, task)
            c.execute("UPDATE tasks SET wanted=? WHERE name=?", (wanted.value, task))

    def set_crashes(self, task: str, crashes: int) -> None:
        with self.transaction() as c:
            self._ensure(c, task)
            c.execute("UPDATE tasks SET crashes=? WHERE name=?", (crashes, task))

    def record_run(self, run: Run) -> None:
        self.record_runs([run])

    def record_runs(self, runs: list[Run]) -> None:
        """Many runs in one transaction: the runner batches them to keep the loop responsive."""
        self.save(runs, {}, {})

    def save(self, runs: list[Run], crashes: Mapping[str, int], wanted: Mapping[str, Wanted]) -> None:
        """The daemon's pending writes (finished runs, crash counters, wanted states) in one transaction."""
        if not (runs or crashes or wanted):
            return
        with self.transaction() as c:
            for task, n in crashes.items():
                self._ensure(c, task)
                c.execute("UPDATE tasks SET crashes=? WHERE name=?", (n, task))
            for task, w in wanted.items():
                self._ensure(c, task)
                c.execute("UPDATE tasks SET wanted=? WHERE name=?", (w.value, task))
            self._record_runs(c, runs)

    def _record_runs(self, c: sqlite3.Connection, runs: list[Run]) -> None:
        """The runs appended, then each task's counters and last run from the rows just written
        (the write transaction is held: the ids past the previous last one are this batch's)."""
        if not runs:
            return
        before = c.execute("SELECT coalesce(max(id), 0) FROM runs").fetchone()[0]
        c.executemany(f"INSERT INTO runs({RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                      [(r.task, r.started, r.ended, r.outcome, r.error, r.summary, r.source) for r in runs])
        c.execute(
            f"INSERT INTO tasks(name, runs, failures, last_run) SELECT task, count(*), "
            f"sum(outcome NOT IN ({_CLEAN})), max(id) FROM runs WHERE id > ? GROUP BY task "
            "ON CONFLICT(name) DO UPDATE SET runs=runs+excluded.runs, failures=failures+excluded.failures, "
            "last_run=excluded.last_run", (before,))

    def task(self, task: str) -> TaskRecord:
        return self.tasks([task])[task]

    def tasks(self, names: Sequence[str]) -> dict[str, TaskRecord]:
        """`task()` of many tasks in one query (the daemon's start: 10,000 tasks read one by one
        were 20,000 statements); each task's last run is the one its row names."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT n.value, t.wanted, t.crashes, t.runs, t.failures, r.task, r.started, r.ended, r.outcome, "
                "r.error, r.summary, r.source FROM json_each(?) n LEFT JOIN tasks t ON t.name = n.value "
                "LEFT JOIN runs r ON r.id = t.last_run AND r.task = t.name",
                (json.dumps(list(names)),)).fetchall()
        return {row[0]: TaskRecord(row[0], Wanted(row[1]) if row[1] else None, row[2] or 0, row[3] or 0, row[4] or 0,
                                   Run(*row[5:]) if row[5] is not None else None) for row in rows}

    def history(self, task: str, limit: int = 20) -> list[Run]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE task=? ORDER BY id DESC LIMIT ?",
                                      (task, limit)).fetchall()
        return [Run(*r) for r in rows]

    def purge_history(self, keep_ok: int, keep_failed: int, max_age_ok: float, max_age_failed: float) -> int:
        """Retention set separately for successful and failed runs, by count and by age. The runs to
        delete are found on a connection of their own, without the write lock, then deleted by id
        in short transactions (see _doomed_runs). A pass that fails midway keeps what it deleted;
        the next one goes on."""
        with self._reading:
            assert self._reader is not None  # (set in __init__)
            doomed = _doomed_runs(self._reader, keep_ok, keep_failed, max_age_ok, max_age_failed)
        n = 0
        for i in range(0, len(doomed), PURGE_CHUNK):
            with self.transaction() as c:
                n += c.execute("DELETE FROM runs WHERE id IN (SELECT value FROM json_each(?))",
                               (json.dumps(doomed[i:i + PURGE_CHUNK].tolist()),)).rowcount
        self._mend_last_runs()
        return n

    @staticmethod
    def retention_turn(every: float) -> bool:
        """Always: one daemon uses a state file (a shared store takes turns)."""
        return True

    def _mend_last_runs(self) -> None:
        """Each task's `last_run` found again when one names a run that is gone, or that is another
        task's: a purge deleted a task's newest run (older than its max age, or keep = 0), and
        SQLite may have given its id to a run written since (it reuses the highest id). Rare, so
        looked for (a read) at the end of every pass, also one after a pass that failed midway."""
        find = ("SELECT 1 FROM tasks WHERE last_run IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM runs WHERE runs.id = tasks.last_run AND runs.task = tasks.name) LIMIT 1")
        with self._lock:
            if self._conn.execute(find).fetchone() is None:
                return
        with self.transaction() as c:
            self._find_last_runs(c)

    def close(self) -> None:
        with self._reading:
            if self._reader is not None:
                self._reader.close()
        super().close()

    def get_value(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_value(self, key: str, value: str | None) -> None:
        with self.transaction() as c:
            if value is None:
                c.execute("DELETE FROM kv WHERE key=?", (key,))
            else:
                c.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                          (key, value))


# Retention deletes the runs it found in transactions of this many: each holds the write lock for
# ~10-20 ms, so the history writer, a scheduled task's cursor and another process's write (a
# `task:stop`) go on between them. In one transaction, 400,000 runs kept the lock 0.9 s, and at
# 10,000 tasks several seconds, past which another process's write fails (busy_timeout).
PURGE_CHUNK = 5000


def _doomed_runs(reader: sqlite3.Connection, keep_ok: int, keep_failed: int, max_age_ok: float,
                 max_age_failed: float) -> array[int]:
    """The ids, ascending, of the runs that retention deletes: of each kind (successful or not),
    those older than its max age or past the task's `keep` newest of that kind. One statement, so
    one snapshot, read without the write lock: the window over every run sorts the table (~1 s
    at a million runs). A run found here stays deletable while the chunks go: later runs only
    push it further from its task's newest, and time only ages it. Ascending: a chunk changes a
    few neighbouring pages, and a run written meanwhile never gets the id of one a later chunk
    deletes (SQLite gives a new run the highest id + 1; a doomed run not deleted yet is below it).
    An array: 8 bytes a run (1.6 million at 10,000 tasks)."""
    now = time.time()
    rows = reader.execute(
        f"SELECT id FROM (SELECT id, ended, outcome IN ({_CLEAN}) AS ok, ROW_NUMBER() OVER "
        f"(PARTITION BY task, outcome IN ({_CLEAN}) ORDER BY id DESC) AS rn FROM runs) "
        "WHERE CASE WHEN ok THEN rn > ? OR ended < ? ELSE rn > ? OR ended < ? END ORDER BY id",
        (keep_ok, now - max_age_ok, keep_failed, now - max_age_failed))
    return array("q", (rid for rid, in rows))


def open_store(state_dir: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> SqliteStateStore:
    return SqliteStateStore(state_dir / "schedulerd.db", busy_timeout)


async def store_call(what: str, fn: Callable[..., T], *args: Any, give_up_after: float | None = None) -> T:
    """`fn(*args)` in a worker thread (a store call may wait busy_timeout for a lock: never on the
    event loop), again and again until it succeeds. A store error (a database another process keeps
    locked past the busy timeout, a full disk) is logged once, with the traceback only when it is
    not an OperationalError; retries wait RETRY_FIRST doubling to RETRY_MAX; the recovery is logged.
    With `give_up_after` (seconds), the last error is raised once that time has passed."""
    delay, failed_at = RETRY_FIRST, None
    while True:
        try:
            result = await anyio.to_thread.run_sync(fn, *args)
        except STORE_ERRORS as e:
            from . import metrics  # here: the console imports this module and seldom needs it

            metrics.store_error(type(e).__name__)
            now = anyio.current_time()
            if failed_at is None:
                failed_at = now
                log.warning("%s: the store failed (%s: %s); retrying until it answers", what, type(e).__name__, e,
                            exc_info=not isinstance(e, (sqlite3.OperationalError, StoreUnavailable)))
            if give_up_after is not None and now - failed_at + delay > give_up_after:
                raise
            await anyio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
            continue
        if failed_at is not None:
            log.info("%s: the store answers again after %.1fs", what, anyio.current_time() - failed_at)
        return result
