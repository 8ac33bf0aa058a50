"""The durable job queue's storage, behind the small `JobStore` interface.

Claims are transactional (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE SKIP
LOCKED), so a job runs once even with two daemons on one store.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import sqlite3
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .states import JobState, check_job, job_sources
from .store import DEFAULT_BUSY_TIMEOUT, SqliteFile

CLAIMABLE = ("waiting", "interrupted")
# a job put back by recover_lost: the store had it running for a node that did not run it
LOST_CLAIM = "interrupted: claimed for this node, which never got the claim (its connection was lost)"


class JobError(Exception):
    """Bad input or an impossible transition; the message names the job or argument."""


@dataclass(frozen=True)
class Job:
    id: int
    type: str
    queue: str
    payload: dict[str, Any]
    title: str
    priority: int
    deps: tuple[int, ...]
    attempts: int
    max_attempts: int
    next_attempt_at: float
    state: JobState
    done: int | None
    total: int | None
    summary: str | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    node: str | None

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["state"] = self.state.value
        d["deps"] = list(self.deps)
        return d


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, written with others in one transaction by `settle_many`."""

    job_id: int
    kind: str  # finished | retry | failed | interrupted | cancelled
    ended: float
    summary: str | None = None
    error: str | None = None
    retry_at: float | None = None
    lines: tuple[tuple[float, str, str], ...] = ()
    node: str | None = None  # the node whose claim this attempt was: on PostgreSQL only it may settle it


class JobStore(Protocol):
    def add(self, type: str, queue: str, payload: dict[str, Any], *, title: str = "", priority: int = 0,
            max_attempts: int = 1, deps: Sequence[int] = (), delay: float = 0.0, coalesce: bool = False,
            key: str | None = None) -> int: ...
    def add_batch(self, type: str, queue: str, payloads: Sequence[dict[str, Any]], titles: Sequence[str], *,
                  priority: int = 0, max_attempts: int = 1, deps: Sequence[int] = (), delay: float = 0.0,
                  coalesce: bool = False, key: str | None = None) -> builtins.list[int]: ...
    def claim(self, queue: str, node: str) -> Job | None: ...
    def claim_many(self, queue: str, node: str, limit: int) -> list[Job]: ...
    def settle_many(self, outcomes: Sequence[Outcome]) -> set[str]: ...
    def finish(self, job_id: int, summary: str | None) -> None: ...
    def fail_attempt(self, job_id: int, error: str, retry_at: float | None) -> None: ...
    def interrupt(self, job_id: int, error: str) -> None: ...
    def cancel(self, job_id: int) -> Job: ...
    def retry(self, job_id: int) -> Job: ...
    def change_priority(self, job_id: int, delta: int) -> Job: ...
    def count_by_queue_state(self) -> dict[tuple[str, str], int]: ...
    def get(self, job_id: int) -> Job: ...
    def list(self, state: str | None = None, queue: str | None = None, limit: int = 1000,
             before: int | None = None) -> list[Job]: ...
    def recover(self, node: str) -> builtins.list[int]: ...
    def recover_orphans(self, node: str, grace: float) -> builtins.list[int]: ...
    def recover_lost(self, node: str, grace: float, keep: Collection[int]) -> builtins.list[int]: ...
    def cancelled_among(self, ids: Collection[int]) -> set[int]: ...
    def purge(self, states: Sequence[str], keep: int = 0, max_age: float | None = None) -> int: ...
    def set_progress(self, job_id: int, done: int, total: int | None) -> None: ...
    def append_log(self, job_id: int, lines: Sequence[tuple[float, str, str]]) -> None: ...
    def log_lines(self, job_id: int, limit: int = 200) -> builtins.list[tuple[float, str, str]]: ...
    def set_paused(self, queue: str, paused: bool) -> None: ...
    def paused(self) -> set[str]: ...
    def next_due(self, queue: str, since: float = 0.0) -> float | None: ...
    def queue_names(self) -> set[str]: ...
    def queues_with_work(self) -> set[str]: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, queue TEXT NOT NULL, payload TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '', priority INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1, next_attempt_at REAL NOT NULL, state TEXT NOT NULL,
    done INTEGER, total INTEGER, summary TEXT, error TEXT, created REAL NOT NULL, started REAL,
    finished REAL, node TEXT, add_key TEXT);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(queue, state, priority DESC, id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, finished);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(queue, priority DESC, id) WHERE state IN ('waiting','interrupted');
CREATE INDEX IF NOT EXISTS jobs_queue_state ON jobs(state, queue);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(queue, next_attempt_at) WHERE state IN ('waiting','interrupted');
-- a deferred add's look-up of a deferred twin still waiting (WAITING_TWIN); without it each such add
-- read every waiting job of its queue: ~3 ms an add at 20,000 waiting. Jobs not deferred stay out
-- of it: an add of one pays no index entry (~2 us of ~16)
CREATE INDEX IF NOT EXISTS jobs_twin ON jobs(type, queue, payload)
    WHERE state='waiting' AND attempts=0 AND next_attempt_at > created;
CREATE TABLE IF NOT EXISTS job_deps (job INTEGER NOT NULL, dep INTEGER NOT NULL, PRIMARY KEY (job, dep));
CREATE INDEX IF NOT EXISTS job_deps_dep ON job_deps(dep);
CREATE TABLE IF NOT EXISTS job_logs (job INTEGER NOT NULL, ts REAL NOT NULL, level TEXT NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs(job);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0);
"""


class AddOne:
    """`add` of both stores: a batch of one (`add_batch`)."""

    def add(self: JobStore, type: str, queue: str, payload: dict[str, Any], *, title: str = "", priority: int = 0,
            max_attempts: int = 1, deps: Sequence[int] = (), delay: float = 0.0, coalesce: bool = False,
            key: str | None = None) -> int:
        """A new waiting job's id. `coalesce`: when a job of the same type, queue and payload still
        waits for its first attempt (a deferred one), its id instead, and nothing is added. `key`:
        the add's idempotency key; when a job was made with it (the add is a retry of one whose
        commit was lost), its id."""
        return self.add_batch(type, queue, [payload], [title], priority=priority, max_attempts=max_attempts,
                              deps=deps, delay=delay, coalesce=coalesce, key=key)[0]


def batch_key(key: str | None, i: int) -> str | None:
    """The idempotency key of a batch's i-th job: the batch's key and its place (the first job's is
    the key itself, so a batch of one is keyed as a single add)."""
    return key if key is None or i == 0 else f"{key}.{i}"


# the key of the add that made a job (a uuid its caller drew once): an add retried after its
# commit was lost finds its job instead of making a second one. A jobs.db made before the column
# gets it when opened (SqliteJobStore.__init__), then this index.
ADD_KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS jobs_add_key ON jobs(add_key) WHERE add_key IS NOT NULL"


# add(coalesce=True): a deferred job of the same type, queue and payload still waiting for its first
# attempt, found through the index jobs_twin. Deferred: added to wait before its first attempt
# (`next_attempt_at > created`: a type's `defer`, or an add's own delay)
WAITING_TWIN = ("SELECT id FROM jobs WHERE type=? AND queue=? AND payload=? AND state='waiting' AND attempts=0 "
                "AND next_attempt_at > created ORDER BY id LIMIT 1")


def _made_by(c: sqlite3.Connection, key: str | None) -> dict[str | None, int]:
    """{idempotency key: job id} of the jobs an earlier try of the batch keyed `key` made (a try
    commits all its jobs or none): one range read of jobs_add_key for the whole batch, whose keys
    are `key` and `key.N` (batch_key), instead of a look-up per job. The range [key, key + "/")
    holds them ("." sorts just before "/") and maybe another batch's keys, which are left out."""
    if key is None:
        return {}
    rows = c.execute("SELECT add_key, id FROM jobs WHERE add_key >= ? AND add_key < ?", (key, key + "/"))
    return {k: jid for k, jid in rows if k == key or k.startswith(key + ".")}


COLUMNS = ("id, type, queue, payload, title, priority, attempts, max_attempts, next_attempt_at, state, done, total, "
           "summary, error, created, started, finished, node")


# The daemon asks this every few seconds: one index seek per queue (jumping from one queue name
# to the next in jobs_ready) instead of reading every waiting job (100,000 waiting: 400,000 VM
# steps); running jobs are few (the workers' slots).
QUEUES_WITH_WORK = """
WITH RECURSIVE ready(name) AS (
    SELECT (SELECT MIN(queue) FROM jobs INDEXED BY jobs_ready WHERE state IN ('waiting','interrupted'))
    UNION ALL
    SELECT (SELECT MIN(queue) FROM jobs INDEXED BY jobs_ready WHERE state IN ('waiting','interrupted')
            AND queue > ready.name) FROM ready WHERE ready.name IS NOT NULL)
SELECT name FROM ready UNION SELECT queue FROM jobs WHERE state='running'
"""


# The dispatcher's sleep: when the next job of a queue becomes due that was not due `since`
# seconds ago (when its claim looked), by the store's clock; None when there is none or the queue
# is paused. The jobs already due then were the claim's: it took the claimable ones, and the
# others start only after something that wakes the dispatcher (a resume, a dependency's end, a
# retry); counting them (they stay due) made a paused queue's dispatcher ask again at once.
NEXT_DUE = """
SELECT CASE WHEN EXISTS (SELECT 1 FROM queues WHERE name=? AND paused=1) THEN NULL ELSE
    (SELECT MIN(next_attempt_at) FROM jobs INDEXED BY jobs_due
     WHERE queue=? AND state IN ('waiting','interrupted') AND next_attempt_at>?) END
"""


ADD_ONE = object()  # a `move` column value: the column's value plus one
# the columns `move` may set besides state (their names go into the SQL text)
MOVABLE_COLUMNS = frozenset({"attempts", "next_attempt_at", "done", "total", "summary", "error", "started",
                             "finished", "node"})


def move(c: sqlite3.Connection, ids: Sequence[int], from_states: Collection[JobState], to: JobState,
         **columns: object) -> int:
    """The one way a job's state changes: `ids` still in one of `from_states` go to `to` (each arrow
    checked against states.JOB_TRANSITIONS; an illegal one raises IllegalTransition), with `columns`
    set as well. A job changed meanwhile (by another process) is left alone: returns how many moved."""
    if not ids or not from_states:
        return 0
    for old in from_states:
        check_job(old, to)
    unknown = set(columns) - MOVABLE_COLUMNS
    if unknown:
        raise ValueError(f"jobstore.move: no column {', '.join(sorted(unknown))}")
    sets = ["state=?"] + [f"{k}={k}+1" if v is ADD_ONE else f"{k}=?" for k, v in columns.items()]
    values = [to.value] + [v for v in columns.values() if v is not ADD_ONE]
    olds = [s.value for s in from_states]
    # NOT INDEXED: the rows are found by id (rowid). Without it SQLite (no statistics) walks the
    # jobs_state index over every job in the old states: each claim and each job's end read the
    # whole queue (90,000 VM steps per UPDATE at 10,000 waiting jobs instead of ~100).
    sql = (f"UPDATE jobs NOT INDEXED SET {', '.join(sets)} WHERE id IN ({','.join('?' * len(ids))}) "
           f"AND state IN ({','.join('?' * len(olds))})")
    return c.execute(sql, (*values, *ids, *olds)).rowcount


WAITING = (JobState.WAITING, JobState.INTERRUPTED)  # not started, or to be started again
CANCELLABLE = job_sources(JobState.CANCELLED)  # job:cancel
RETRYABLE = (JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED)  # job:retry (running -> waiting is the engine's)


class SqliteJobStore(AddOne, SqliteFile):
    SCHEMA = SCHEMA

    def __init__(self, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        super().__init__(path, busy_timeout)
        with self._lock:
            done = self._conn.execute("SELECT 1 FROM sqlite_master WHERE name='jobs_add_key'").fetchone()
        if done:
            return
        with self.transaction() as c:  # a write only the first time
            if "add_key" not in {r[1] for r in c.execute("PRAGMA table_info(jobs)")}:
                c.execute("ALTER TABLE jobs ADD COLUMN add_key TEXT")
            c.execute(ADD_KEY_INDEX)

    def _row(self, c: sqlite3.Connection, row: tuple[Any, ...]) -> Job:
        deps = tuple(r[0] for r in c.execute("SELECT dep FROM job_deps WHERE job=? ORDER BY dep", (row[0],)))
        (jid, type_, queue, payload, title, prio, att, maxatt, nxt, state, done, total, summ, err, created,
         started, finished, node) = row
        return Job(jid, type_, queue, json.loads(payload), title, prio, deps, att, maxatt, nxt, JobState(state),
                   done, total, summ, err, created, started, finished, node)

    def add_batch(self, type: str, queue: str, payloads: Sequence[dict[str, Any]], titles: Sequence[str], *,
                  priority: int = 0, max_attempts: int = 1, deps: Sequence[int] = (), delay: float = 0.0,
                  coalesce: bool = False, key: str | None = None) -> builtins.list[int]:
        """`add` of each payload (with its title), in one transaction: all are added or none. The
        i-th job's idempotency key is `batch_key(key, i)` (a retried batch gets the jobs its first
        try made)."""
        if not payloads:
            return []
        now = time.time()
        with self.transaction() as c:
            earlier = _made_by(c, key)
            ids: builtins.list[int] = []
            for i, (payload, title) in enumerate(zip(payloads, titles, strict=True)):
                k = batch_key(key, i)
                jid = earlier.get(k)
                ids.append(jid if jid is not None else self._add(c, now, type, queue, payload, title, priority,
                                                                 max_attempts, deps, delay, coalesce, k))
            return ids

    def _add(self, c: sqlite3.Connection, now: float, type: str, queue: str, payload: dict[str, Any], title: str,
             priority: int, max_attempts: int, deps: Sequence[int], delay: float, coalesce: bool,
             key: str | None) -> int:
        if coalesce and not deps:
            row = c.execute(WAITING_TWIN, (type, queue, json.dumps(payload, sort_keys=True))).fetchone()
            if row is not None:
                return int(row[0])
            payload = json.loads(json.dumps(payload, sort_keys=True))  # stored in the order compared
        states = {}
        for d in deps:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (d,)).fetchone()
            if row is None:
                raise JobError(f"--after {d}: no job with id {d}")
            states[d] = row[0]
        cur = c.execute(
            "INSERT INTO jobs(type, queue, payload, title, priority, max_attempts, next_attempt_at, state, created, "
            "add_key) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (type, queue, json.dumps(payload), title, priority, max_attempts, now + delay, "waiting", now, key))
        jid = cur.lastrowid
        assert jid is not None  # set by an INSERT
        if deps:
            c.executemany("INSERT INTO job_deps(job, dep) VALUES (?, ?)", [(jid, d) for d in deps])
        bad = [d for d, s in states.items() if s in ("failed", "cancelled")]
        if bad:
            self._fail(c, jid, f"dependency #{bad[0]} is {states[bad[0]]}", (JobState.WAITING,))
        return jid

    def add_many(self, jobs: Sequence[tuple[str, str, dict[str, Any], str]]) -> list[int]:
        """Bulk insert (type, queue, payload, title) in one transaction, for benchmarks and imports."""
        now = time.time()
        with self.transaction() as c:
            ids: builtins.list[int] = []
            for type_, queue, payload, title in jobs:
                cur = c.execute(
                    "INSERT INTO jobs(type, queue, payload, title, max_attempts, next_attempt_at, state, created) "
                    "VALUES (?,?,?,?,1,?,'waiting',?)", (type_, queue, json.dumps(payload), title, now, now))
                assert cur.lastrowid is not None  # set by an INSERT
                ids.append(cur.lastrowid)
            return ids

    def _fail(self, c: sqlite3.Connection, jid: int, error: str, from_states: Collection[JobState]) -> None:
        """Fail a job still in `from_states` and, transitively, every waiting job that depends on it."""
        if move(c, [jid], from_states, JobState.FAILED, error=error, finished=time.time()):
            self._fail_dependents(c, jid, f"dependency #{jid} failed or was cancelled")

    def _fail_dependents(self, c: sqlite3.Connection, jid: int, error: str) -> None:
        for (dep,) in c.execute(
                "SELECT d.job FROM job_deps d JOIN jobs j ON j.id=d.job WHERE d.dep=? AND j.state IN ('waiting','interrupted')",
                (jid,)).fetchall():
            self._fail(c, dep, error, WAITING)

    def claim(self, queue: str, node: str) -> Job | None:
        jobs = self.claim_many(queue, node, 1)
        return jobs[0] if jobs else None

    def claim_many(self, queue: str, node: str, limit: int) -> list[Job]:
        """Up to `limit` ready jobs of an unpaused queue, marked running for `node`, in one transaction.
        The pause is read once, before the jobs (in the query it was tested for every waiting job:
        a paused queue of 10,000 jobs read them all at every claim)."""
        now = time.time()
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM queues WHERE name=? AND paused=1", (queue,)).fetchone():
                return []
            rows = c.execute(
                # INDEXED BY: the ready jobs in claim order, LIMIT rows read; on jobs_due (next_attempt_at<=?)
                # SQLite would read every due job and sort them
                f"SELECT {COLUMNS} FROM jobs INDEXED BY jobs_ready WHERE queue=? AND state IN ('waiting','interrupted') "
                "AND next_attempt_at<=? "
                "AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id=d.dep WHERE d.job=jobs.id "
                "AND p.state != 'finished') ORDER BY priority DESC, id LIMIT ?", (queue, now, limit)).fetchall()
            if not rows:
                return []
            move(c, [r[0] for r in rows], WAITING, JobState.RUNNING, attempts=ADD_ONE, started=now, node=node,
                 done=None, total=None)
            jobs = []
            for r in rows:
                job = self._row(c, r)
                jobs.append(dataclasses.replace(job, state=JobState.RUNNING, attempts=job.attempts + 1, started=now,
                                                node=node, done=None, total=None))
            return jobs

    def settle_many(self, outcomes: Sequence[Outcome]) -> set[str]:
        """Record ended attempts in one transaction; returns the queues that may now have work
        (the jobs' own, for their free slots, and those of their dependents)."""
        if not outcomes:
            return set()
        with self.transaction() as c:
            for o in outcomes:
                if o.lines:
                    c.executemany("INSERT INTO job_logs(job, ts, level, line) VALUES (?,?,?,?)",
                                  [(o.job_id, *line) for line in o.lines])
                if o.kind == "finished":
                    self._finish(c, o.job_id, o.summary, o.ended)
                elif o.kind == "retry":
                    self._retry_later(c, o.job_id, o.error, o.retry_at)
                elif o.kind == "failed":
                    self._fail(c, o.job_id, o.error or "failed", (JobState.RUNNING,))
                elif o.kind == "interrupted":
                    self._interrupt(c, o.job_id, o.error or "interrupted")
            ids = [o.job_id for o in outcomes]
            marks = ",".join("?" * len(ids))
            return {r[0] for r in c.execute(
                f"SELECT DISTINCT queue FROM jobs WHERE id IN ({marks}) UNION SELECT DISTINCT j.queue FROM job_deps d "
                f"JOIN jobs j ON j.id=d.job WHERE d.dep IN ({marks})", ids + ids)}

    @staticmethod
    def _finish(c: sqlite3.Connection, job_id: int, summary: str | None, ended: float) -> None:
        move(c, [job_id], (JobState.RUNNING,), JobState.FINISHED, summary=summary, error=None, finished=ended)

    @staticmethod
    def _retry_later(c: sqlite3.Connection, job_id: int, error: str | None, retry_at: float | None) -> None:
        move(c, [job_id], (JobState.RUNNING,), JobState.WAITING, error=error, next_attempt_at=retry_at)

    def finish(self, job_id: int, summary: str | None) -> None:
        with self.transaction() as c:
            self._finish(c, job_id, summary, time.time())

    def fail_attempt(self, job_id: int, error: str, retry_at: float | None) -> None:
        with self.transaction() as c:
            if retry_at is None:
                self._fail(c, job_id, error, (JobState.RUNNING,))
            else:
                self._retry_later(c, job_id, error, retry_at)

    def interrupt(self, job_id: int, error: str) -> None:
        with self.transaction() as c:
            self._interrupt(c, job_id, error)

    def _interrupt(self, c: sqlite3.Connection, job_id: int, error: str) -> None:
        row = c.execute("SELECT attempts, max_attempts FROM jobs WHERE id=? AND state='running'", (job_id,)).fetchone()
        if row is None:
            return
        if row[0] >= row[1]:
            self._fail(c, job_id, f"{error}; attempts used up ({row[0]}/{row[1]})", (JobState.RUNNING,))
        else:
            move(c, [job_id], (JobState.RUNNING,), JobState.INTERRUPTED, error=error, next_attempt_at=time.time())

    def recover(self, node: str) -> list[int]:
        """Jobs this node was running when it stopped or died: interrupted, retried while attempts remain."""
        with self.transaction() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM jobs WHERE state='running' AND node=?", (node,))]
            for jid in ids:
                self._interrupt(c, jid, "interrupted: the daemon stopped while it ran")
            return ids

    def recover_orphans(self, node: str, grace: float) -> list[int]:
        """Other nodes' jobs to take over: none here. A SQLite store has no heartbeats; a
        worker:execute process on it recovers its own jobs when it starts again."""
        return []

    def recover_lost(self, node: str, grace: float, keep: Collection[int]) -> list[int]:
        """Jobs the store says `node` runs that it does not run (`keep`: those it runs or has yet
        to save), claimed more than `grace` seconds ago: claims whose answer the node never got.
        Back to their queues, interrupted, their claim's attempt not counted. Read first, written
        only when there are some (no write lock every lease period)."""
        lost = "SELECT id, attempts FROM jobs WHERE state='running' AND node=? AND started<?"
        with self._lock:
            if not [r for r in self._conn.execute(lost, (node, time.time() - grace)) if r[0] not in keep]:
                return []
        with self.transaction() as c:
            rows = [r for r in c.execute(lost, (node, time.time() - grace)).fetchall() if r[0] not in keep]
            for jid, attempts in rows:
                move(c, [jid], (JobState.RUNNING,), JobState.INTERRUPTED, attempts=max(0, attempts - 1),
                     error=LOST_CLAIM, next_attempt_at=time.time())
            return [jid for jid, _ in rows]

    def cancelled_among(self, ids: Collection[int]) -> set[int]:
        """Which of these running jobs were cancelled meanwhile (job:cancel from another process)."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        with self._lock:
            # NOT INDEXED: by id (rowid), not through jobs_state over every cancelled job
            return {r[0] for r in self._conn.execute(
                f"SELECT id FROM jobs NOT INDEXED WHERE state='cancelled' AND id IN ({marks})", list(ids))}

    def cancel(self, job_id: int) -> Job:
        with self.transaction() as c:
            job = self._get(c, job_id)
            self._refuse(job, CANCELLABLE, "cancelled")
            move(c, [job_id], (job.state,), JobState.CANCELLED, finished=time.time())
            self._fail_dependents(c, job_id, f"dependency #{job_id} was cancelled")
            return self._get(c, job_id)

    @staticmethod
    def _refuse(job: Job, allowed: Collection[JobState], verb: str) -> None:
        """job:cancel / job:retry of a job in a state it does not apply to: bad input."""
        if job.state not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise JobError(f"job {job.id} is {job.state.value}: only {names} jobs can be {verb}")

    def retry(self, job_id: int) -> Job:
        with self.transaction() as c:
            job = self._get(c, job_id)
            self._refuse(job, RETRYABLE, "retried")
            move(c, [job_id], (job.state,), JobState.WAITING, attempts=0, next_attempt_at=time.time(), finished=None)
            return self._get(c, job_id)

    def change_priority(self, job_id: int, delta: int) -> Job:
        """Raise (delta > 0) or lower a waiting job's priority: it is claimed before (after) others."""
        with self.transaction() as c:
            job = self._get(c, job_id)
            self._refuse(job, WAITING, "moved up or down")
            c.execute("UPDATE jobs SET priority=priority+? WHERE id=?", (delta, job_id))
            return self._get(c, job_id)

    def _get(self, c: sqlite3.Connection, job_id: int) -> Job:
        row = c.execute(f"SELECT {COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job with id {job_id}")
        return self._row(c, row)

    def get(self, job_id: int) -> Job:
        with self._lock:
            return self._get(self._conn, job_id)

    def list(self, state: str | None = None, queue: str | None = None, limit: int = 1000,
             before: int | None = None) -> list[Job]:
        """Newest first; `before`: only ids below it (the next page of a listing)."""
        where: list[str] = []
        params: list[object] = []
        if before is not None:
            where.append("id<?")
            params.append(before)
        if state:
            where.append("state=?")
            params.append(state)
        if queue:
            where.append("queue=?")
            params.append(queue)
        sql = f"SELECT {COLUMNS} FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC LIMIT ?"
        with self._lock:
            return [self._row(self._conn, r) for r in self._conn.execute(sql, (*params, limit)).fetchall()]

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    def count_by_queue_state(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return {(q, s): n for q, s, n in self._conn.execute(
                "SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state").fetchall()}

    def purge(self, states: Sequence[str], keep: int = 0, max_age: float | None = None) -> int:
        """Delete done jobs in `states`: all but the newest `keep`, or (with max_age) those older than it."""
        marks = ",".join("?" * len(states))
        with self.transaction() as c:
            if max_age is not None:
                ids = [r[0] for r in c.execute(f"SELECT id FROM jobs WHERE state IN ({marks}) AND finished < ?",
                                               (*states, time.time() - max_age))]
            else:
                ids = [r[0] for r in c.execute(f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY finished DESC, "
                                               "id DESC LIMIT -1 OFFSET ?", (*states, keep))]
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                q = ",".join("?" * len(part))
                c.execute(f"DELETE FROM job_logs WHERE job IN ({q})", part)
                c.execute(f"DELETE FROM job_deps WHERE job IN ({q})", part)
                c.execute(f"DELETE FROM jobs WHERE id IN ({q})", part)
            return len(ids)

    def set_progress(self, job_id: int, done: int, total: int | None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE jobs SET done=?, total=? WHERE id=?", (done, total, job_id))

    def append_log(self, job_id: int, lines: Sequence[tuple[float, str, str]]) -> None:
        with self.transaction() as c:
            c.executemany("INSERT INTO job_logs(job, ts, level, line) VALUES (?,?,?,?)",
                          [(job_id, *line) for line in lines])

    def log_lines(self, job_id: int, limit: int = 200) -> builtins.list[tuple[float, str, str]]:
        with self._lock:
            rows = self._conn.execute("SELECT ts, level, line FROM job_logs WHERE job=? ORDER BY rowid DESC LIMIT ?",
                                      (job_id, limit)).fetchall()
        return list(reversed(rows))

    def set_paused(self, queue: str, paused: bool) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO queues(name, paused) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET paused=excluded.paused",
                      (queue, int(paused)))

    def paused(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT name FROM queues WHERE paused=1")}

    def next_due(self, queue: str, since: float = 0.0) -> float | None:
        """When the queue's next job becomes due (see NEXT_DUE): one seek in jobs_due."""
        with self._lock:
            row = self._conn.execute(NEXT_DUE, (queue, queue, time.time() - since)).fetchone()
        return row[0] if row else None

    def queue_names(self) -> set[str]:
        """Every queue that holds jobs, in any state."""
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT DISTINCT queue FROM jobs")}

    def queues_with_work(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._conn.execute(QUEUES_WITH_WORK) if r[0] is not None}


def open_job_store(state_dir: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> SqliteJobStore:
    return SqliteJobStore(state_dir / "jobs.db", busy_timeout)
