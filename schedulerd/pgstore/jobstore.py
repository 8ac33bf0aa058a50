"""The job store (jobstore.JobStore) on PostgreSQL: the queue several nodes share.

Claims take `FOR UPDATE SKIP LOCKED` (two nodes never get one job, nor wait for each other);
every state change goes through `_move`, which checks each arrow against states.JOB_TRANSITIONS
and runs a named statement guarded by `state = ANY(from)` — as jobstore.move does for SQLite.
Due times, claims and retention use the database's clock.

Across nodes: a change that may give a queue work (a job added or due again, a dependency
finished, a queue resumed) sends `pg_notify('schedulerd_jobs', queue)` in its transaction, and
job:cancel `pg_notify('schedulerd_cancel', id)`: every node listens (schedulerd.pgstore.listen)
and its dispatcher claims at once, without polling. Running jobs of a node whose heartbeat
expired (the `nodes` table) are interrupted by another node (`recover_orphans`), and an attempt
is settled only by the node whose claim it is (Outcome.node).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Collection, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ..jobstore import CANCELLABLE, LOST_CLAIM, RETRYABLE, WAITING, AddOne, Job, JobError, Outcome, batch_key
from ..states import JobState, check_job
from ..stores import StoreSettings
from . import QUERIES, Database, run

RUNNING = (JobState.RUNNING,)


def _job(row: dict[str, Any]) -> Job:
    return Job(**{**row, "state": JobState(row["state"]), "deps": tuple(row["deps"])})


def _moved(cur: psycopg.Cursor, statement: str, from_states: Collection[JobState], to: JobState,
           **params: Any) -> psycopg.Cursor:
    """The one way a job's state changes here: the named statement (claim_jobs, finish_jobs,
    fail_job, ...) moves the jobs it selects that are still in one of `from_states` to `to`; each
    arrow is checked against states.JOB_TRANSITIONS first (IllegalTransition). A job another node
    changed meanwhile is left alone. Returns the cursor holding the rows of the jobs that moved."""
    for old in from_states:
        check_job(old, to)
    if statement == "fail_job":  # its waiting dependents fail with it
        for old in WAITING:
            check_job(old, to)
    olds = [s.value for s in from_states]
    return run(cur, statement, to=to.value, **{"from": olds}, **params)


def _move(cur: psycopg.Cursor, statement: str, from_states: Collection[JobState], to: JobState,
          **params: Any) -> list[int]:
    """_moved: the ids of the jobs that moved."""
    return [r[0] for r in _moved(cur, statement, from_states, to, **params).fetchall()]


def _claim(cur: psycopg.Cursor, queue: str, node: str, limit: int) -> list[Job]:
    """Up to `limit` ready jobs claimed for `node`, read in the same statement (one round trip)."""
    with cur.connection.cursor(row_factory=dict_row) as rows:
        found = [_job(r) for r in _moved(rows, "claim_jobs", WAITING, JobState.RUNNING,  # type: ignore[arg-type]
                                         queue=queue, node=node, limit=limit).fetchall()]
    return sorted(found, key=lambda j: (-j.priority, j.id))


def _refuse(job: Job, allowed: Collection[JobState], verb: str) -> None:
    """job:cancel / job:retry of a job in a state it does not apply to: bad input."""
    if job.state not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise JobError(f"job {job.id} is {job.state.value}: only {names} jobs can be {verb}")


class PgJobStore(AddOne):
    def __init__(self, settings: StoreSettings, max_size: int = 4):
        self.db = Database(settings, "jobs", max_size)

    # --- adding and claiming -------------------------------------------------------
    def add_batch(self, type: str, queue: str, payloads: Sequence[dict[str, Any]], titles: Sequence[str], *,
                  priority: int = 0, max_attempts: int = 1, deps: Sequence[int] = (), delay: float = 0.0,
                  coalesce: bool = False, key: str | None = None) -> builtins.list[int]:
        """`add` of each payload (with its title), in one transaction: all are added or none. The
        i-th job's idempotency key is `batch_key(key, i)` (a retried batch gets the jobs its first
        try made). The queue is notified when a job was added to wait in it."""
        if not payloads:
            return []
        with self.db.transaction() as cur:
            states: dict[int, str] = dict(run(cur, "lock_deps", ids=list(deps)).fetchall()) if deps else {}
            for d in deps:
                if d not in states:
                    raise JobError(f"--after {d}: no job with id {d}")
            if coalesce or deps:  # statement by statement: each may find a twin, or fail on a dependency
                if coalesce and not deps:
                    run(cur, "lock_twins", type=type, queue=queue)
                added = [self._add(cur, type, queue, payload, title, priority, max_attempts, deps, states, delay,
                                   coalesce, batch_key(key, i))
                         for i, (payload, title) in enumerate(zip(payloads, titles, strict=True))]
            else:
                added = self._insert_all(cur, type, queue, payloads, titles, priority, max_attempts, delay, key)
            if any(waiting for _, waiting in added):
                run(cur, "notify_queues", queues=[queue])
            return [jid for jid, _ in added]

    @staticmethod
    def _insert_all(cur: psycopg.Cursor, type: str, queue: str, payloads: Sequence[dict[str, Any]],
                    titles: Sequence[str], priority: int, max_attempts: int, delay: float,
                    key: str | None) -> builtins.list[tuple[int, bool]]:
        """The INSERTs of a plain batch in one executemany (psycopg pipelines them: one round trip
        for the batch, not one per job: 2,000 jobs 164-199 -> 28-42 us a job on loopback); a
        retried batch, whose jobs its first try made, reads them in one query more.
        Returns (id, added now) for each."""
        keys = [batch_key(key, i) for i in range(len(payloads))]
        cur.executemany(QUERIES["insert_job"], [
            {"type": type, "queue": queue, "payload": Jsonb(payload), "title": title, "priority": priority,
             "max_attempts": max_attempts, "delay": delay, "key": k}
            for k, payload, title in zip(keys, payloads, titles, strict=True)], returning=True)
        made: builtins.list[int | None] = []
        while True:
            row = cur.fetchone()
            made.append(None if row is None else int(row[0]))
            if not cur.nextset():
                break
        if None not in made:
            return [(jid, True) for jid in made if jid is not None]
        missing = [k for k, jid in zip(keys, made, strict=True) if jid is None]
        earlier: dict[str | None, int] = dict(run(cur, "jobs_by_add_keys", keys=missing).fetchall())
        return [(jid, True) if jid is not None else (int(earlier[k]), False) for k, jid in zip(keys, made, strict=True)]

    @staticmethod
    def _add(cur: psycopg.Cursor, type: str, queue: str, payload: dict[str, Any], title: str, priority: int,
             max_attempts: int, deps: Sequence[int], states: dict[int, str], delay: float, coalesce: bool,
             key: str | None) -> tuple[int, bool]:
        """One job of a batch with a twin to look for or dependencies: (its id, left waiting now)."""
        if coalesce and not deps:
            twin = run(cur, "waiting_twin", type=type, queue=queue, payload=Jsonb(payload)).fetchone()
            if twin is not None:
                return int(twin[0]), False
        row = run(cur, "insert_job", type=type, queue=queue, payload=Jsonb(payload), title=title,
                  priority=priority, max_attempts=max_attempts, delay=delay, key=key).fetchone()
        if row is None:  # made by an earlier try of this add
            return int(run(cur, "job_by_add_key", key=key).fetchone()[0]), False  # type: ignore[index]
        jid = int(row[0])
        if deps:
            run(cur, "insert_deps", job=jid, deps=list(deps))
        bad = [d for d in deps if states[d] in ("failed", "cancelled")]
        if bad:
            _move(cur, "fail_job", (JobState.WAITING,), JobState.FAILED, id=jid, node=None,
                  error=f"dependency #{bad[0]} is {states[bad[0]]}")
            return jid, False
        return jid, True

    def claim(self, queue: str, node: str) -> Job | None:
        jobs = self.claim_many(queue, node, 1)
        return jobs[0] if jobs else None

    def claim_many(self, queue: str, node: str, limit: int) -> list[Job]:
        """Up to `limit` ready jobs of an unpaused queue, marked running for `node`: one statement."""
        with self.db.statement() as cur:
            return _claim(cur, queue, node, limit)

    def _jobs(self, cur: psycopg.Cursor, ids: list[int]) -> list[Job]:
        if not ids:
            return []
        with cur.connection.cursor(row_factory=dict_row) as rows:
            return [_job(r) for r in run(rows, "jobs_by_ids", ids=ids).fetchall()]  # type: ignore[arg-type]

    # --- ends of attempts ----------------------------------------------------------
    def settle_many(self, outcomes: Sequence[Outcome]) -> set[str]:
        """Record ended attempts in one transaction; returns the queues that may now have work
        (the jobs' own, for their free slots, and those of their dependents)."""
        if not outcomes:
            return set()
        with self.db.transaction() as cur:
            for o in outcomes:
                if o.lines:
                    self._append_log(cur, o.job_id, o.lines)
                if o.kind == "retry":
                    self._retry_later(cur, o.job_id, o.error, (o.retry_at or o.ended) - o.ended, o.node)
                elif o.kind == "failed":
                    _move(cur, "fail_job", RUNNING, JobState.FAILED, id=o.job_id, error=o.error or "failed",
                          node=o.node)
                elif o.kind == "interrupted":
                    self._interrupt(cur, o.job_id, o.error or "interrupted", o.node)
            self._finish(cur, [o for o in outcomes if o.kind == "finished"])
            again = [o.job_id for o in outcomes if o.kind in ("retry", "interrupted")]
            rows = run(cur, "queues_after_settle", ids=[o.job_id for o in outcomes], again=again).fetchall()
            others = sorted(q for q, look in rows if look)
            if others:  # a retry's due time, a dependent's start: other nodes look
                run(cur, "notify_queues", queues=others)
            return {q for q, _ in rows}

    @staticmethod
    def _finish(cur: psycopg.Cursor, outcomes: Sequence[Outcome]) -> None:
        """Finished attempts: one statement per node that ran them (in practice one)."""
        for node in {o.node for o in outcomes}:
            mine = [o for o in outcomes if o.node == node]
            _move(cur, "finish_jobs", RUNNING, JobState.FINISHED, ids=[o.job_id for o in mine],
                  summaries=[o.summary for o in mine], node=node)

    @staticmethod
    def _retry_later(cur: psycopg.Cursor, job_id: int, error: str | None, delay: float,
                     node: str | None = None) -> None:
        """Due again `delay` seconds from now by the database's clock (a node's retry_at is its own clock)."""
        _move(cur, "retry_attempt", RUNNING, JobState.WAITING, id=job_id, error=error, delay=max(0.0, delay),
              node=node)

    def finish(self, job_id: int, summary: str | None) -> None:
        with self.db.transaction() as cur:
            _move(cur, "finish_jobs", RUNNING, JobState.FINISHED, ids=[job_id], summaries=[summary], node=None)

    def fail_attempt(self, job_id: int, error: str, retry_at: float | None) -> None:
        with self.db.transaction() as cur:
            if retry_at is None:
                _move(cur, "fail_job", RUNNING, JobState.FAILED, id=job_id, error=error, node=None)
            else:
                self._retry_later(cur, job_id, error, retry_at - time.time())

    def interrupt(self, job_id: int, error: str) -> None:
        with self.db.transaction() as cur:
            self._interrupt(cur, job_id, error)

    @staticmethod
    def _interrupt(cur: psycopg.Cursor, job_id: int, error: str, node: str | None = None) -> None:
        """A running job (of `node`, when given) back to the queue, or failed when its attempts are used up."""
        row = run(cur, "lock_running_job", id=job_id).fetchone()
        if row is None or (node is not None and row[2] != node):
            return
        attempts, max_attempts = row[0], row[1]
        if attempts >= max_attempts:
            _move(cur, "fail_job", RUNNING, JobState.FAILED, id=job_id, node=node,
                  error=f"{error}; attempts used up ({attempts}/{max_attempts})")
        else:
            _move(cur, "interrupt_job", RUNNING, JobState.INTERRUPTED, id=job_id, error=error)

    def recover(self, node: str) -> list[int]:
        """Jobs this node was running when it stopped or died: interrupted, retried while attempts remain."""
        with self.db.transaction() as cur:
            ids = [r[0] for r in run(cur, "running_on_node", node=node).fetchall()]
            return self._interrupt_all(cur, ids, "interrupted: the daemon stopped while it ran")

    def recover_orphans(self, node: str, grace: float) -> list[int]:
        """Running jobs of other nodes whose heartbeat expired (never of a node that may still run
        them): interrupted, so that any node claims them again while attempts remain."""
        with self.db.transaction() as cur:
            ids = [r[0] for r in run(cur, "orphaned_jobs", node=node, grace=grace).fetchall()]
            return self._interrupt_all(cur, ids, "interrupted: its node stopped sending heartbeats")

    def recover_lost(self, node: str, grace: float, keep: Collection[int]) -> list[int]:
        """Jobs the store says `node` runs that it does not run (`keep`: those it runs or has yet
        to save), claimed more than `grace` seconds ago: claims whose answer the node never got.
        Back to their queues, interrupted, their claim's attempt not counted (jobstore.LOST_CLAIM)."""
        with self.db.transaction() as cur:
            rows = _moved(cur, "unclaim_lost", RUNNING, JobState.INTERRUPTED, node=node, grace=grace,
                          keep=sorted(keep), error=LOST_CLAIM).fetchall()
            if rows:
                run(cur, "notify_queues", queues=sorted({q for _, q in rows}))
            return sorted(jid for jid, _ in rows)

    def _interrupt_all(self, cur: psycopg.Cursor, ids: list[int], error: str) -> list[int]:
        for jid in ids:
            self._interrupt(cur, jid, error)
        if ids:
            run(cur, "notify_queues", queues=sorted({r[0] for r in run(cur, "settled_queues", ids=ids).fetchall()}))
        return ids

    def cancelled_among(self, ids: Collection[int]) -> set[int]:
        if not ids:
            return set()
        with self.db.transaction() as cur:
            return {r[0] for r in run(cur, "cancelled_among", ids=list(ids)).fetchall()}

    # --- admin -----------------------------------------------------------------------
    def cancel(self, job_id: int) -> Job:
        with self.db.transaction() as cur:
            job = self._locked(cur, job_id)
            _refuse(job, CANCELLABLE, "cancelled")
            _move(cur, "cancel_job", (job.state,), JobState.CANCELLED, id=job_id)
            if job.state is JobState.RUNNING:  # the node running it ends the attempt
                run(cur, "notify_cancel", id=job_id)
            for (dep,) in run(cur, "waiting_dependents", id=job_id).fetchall():
                _move(cur, "fail_job", WAITING, JobState.FAILED, id=dep, node=None,
                      error=f"dependency #{job_id} was cancelled")
            return self._get(cur, job_id)

    def retry(self, job_id: int) -> Job:
        with self.db.transaction() as cur:
            job = self._locked(cur, job_id)
            _refuse(job, RETRYABLE, "retried")
            _move(cur, "retry_job", (job.state,), JobState.WAITING, id=job_id)
            run(cur, "notify_queues", queues=[job.queue])
            return self._get(cur, job_id)

    def change_priority(self, job_id: int, delta: int) -> Job:
        """Raise (delta > 0) or lower a waiting job's priority: it is claimed before (after) others."""
        with self.db.transaction() as cur:
            job = self._locked(cur, job_id)
            _refuse(job, WAITING, "moved up or down")
            run(cur, "change_priority", id=job_id, delta=delta)
            return self._get(cur, job_id)

    def _locked(self, cur: psycopg.Cursor, job_id: int) -> Job:
        """The job, its row locked to the transaction's end (its state cannot change under us)."""
        if run(cur, "lock_job", id=job_id).fetchone() is None:
            raise JobError(f"no job with id {job_id}")
        return self._get(cur, job_id)

    def _get(self, cur: psycopg.Cursor, job_id: int) -> Job:
        jobs = self._jobs(cur, [job_id])
        if not jobs:
            raise JobError(f"no job with id {job_id}")
        return jobs[0]

    def get(self, job_id: int) -> Job:
        with self.db.transaction() as cur:
            return self._get(cur, job_id)

    def list(self, state: str | None = None, queue: str | None = None, limit: int = 1000,
             before: int | None = None) -> list[Job]:
        with self.db.transaction() as cur, cur.connection.cursor(row_factory=dict_row) as rows:
            return [_job(r) for r in run(rows, "list_jobs", state=state, queue=queue,  # type: ignore[arg-type]
                                         limit=limit, before=before).fetchall()]

    def count_by_state(self) -> dict[str, int]:
        with self.db.transaction() as cur:
            return dict(run(cur, "count_by_state").fetchall())

    def count_by_queue_state(self) -> dict[tuple[str, str], int]:
        with self.db.transaction() as cur:
            return {(q, s): n for q, s, n in run(cur, "count_by_queue_state").fetchall()}

    def purge(self, states: Sequence[str], keep: int = 0, max_age: float | None = None) -> int:
        """Delete done jobs in `states`: all but the newest `keep`, or (with max_age) those older than it."""
        with self.db.transaction() as cur:
            if max_age is not None:
                return run(cur, "purge_jobs_by_age", states=list(states), age=max_age).rowcount
            return run(cur, "purge_jobs_by_count", states=list(states), keep=keep).rowcount

    # --- progress, logs, queues ----------------------------------------------------------
    def set_progress(self, job_id: int, done: int, total: int | None) -> None:
        with self.db.transaction() as cur:
            run(cur, "set_progress", id=job_id, done=done, total=total)

    def append_log(self, job_id: int, lines: Sequence[tuple[float, str, str]]) -> None:
        with self.db.transaction() as cur:
            self._append_log(cur, job_id, lines)

    @staticmethod
    def _append_log(cur: psycopg.Cursor, job_id: int, lines: Sequence[tuple[float, str, str]]) -> None:
        cur.executemany(QUERIES["append_log"],
                        [{"job": job_id, "ts": ts, "level": level, "line": line} for ts, level, line in lines])

    def log_lines(self, job_id: int, limit: int = 200) -> builtins.list[tuple[float, str, str]]:
        with self.db.transaction() as cur:
            rows = run(cur, "log_lines", job=job_id, limit=limit).fetchall()
        return [tuple(r) for r in reversed(rows)]

    def set_paused(self, queue: str, paused: bool) -> None:
        with self.db.transaction() as cur:
            run(cur, "set_paused", queue=queue, paused=paused)
            if not paused:
                run(cur, "notify_queues", queues=[queue])

    def paused(self) -> set[str]:
        with self.db.transaction() as cur:
            return {r[0] for r in run(cur, "paused_queues").fetchall()}

    def next_due(self, queue: str, since: float = 0.0) -> float | None:
        """When the queue's next job becomes due (jobstore.NEXT_DUE), by the database's clock."""
        with self.db.transaction() as cur:
            row = run(cur, "next_due", queue=queue, since=since).fetchone()
        return row[0] if row else None

    def queue_names(self) -> set[str]:
        with self.db.transaction() as cur:
            return {r[0] for r in run(cur, "queue_names").fetchall()}

    def queues_with_work(self) -> set[str]:
        with self.db.transaction() as cur:
            return {r[0] for r in run(cur, "queues_with_work").fetchall()}

    def close(self) -> None:
        self.db.close()
