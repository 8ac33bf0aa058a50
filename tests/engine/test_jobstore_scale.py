"""The SQLite job store's per-job work does not grow with the queue behind it.

Counted in SQLite virtual-machine steps (a progress handler called at every step, set on the
store's connection through its public `transaction()`), not in seconds: the count is the same
on a busy and on a quiet machine. Before: each claim and each job's end walked the index of
every waiting job (the UPDATE's `state IN (...)` took the jobs_state index instead of the
rowid), the next due time and the queues with work read every waiting job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from schedulerd.jobstore import Outcome, SqliteJobStore, open_job_store


def steps_of_a_cycle(state_dir: Path, queued: int) -> dict[str, int]:
    """VM steps of what the daemon does per job, with `queued` no-op jobs waiting."""
    store = open_job_store(state_dir)
    try:
        for start in range(0, queued, 10_000):
            store.add_many([("noop", "default", {}, "")] * min(10_000, queued - start))
        steps = counting(store)
        return {what: counted(steps, call, store) for what, call in CYCLE.items()}
    finally:
        store.close()


def counting(store: SqliteJobStore) -> list[int]:
    """A counter ([n]) of the SQLite VM steps run on the store's connection from now on."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    with store.transaction() as c:
        c.set_progress_handler(count, 1)
    return steps


def counted(steps: list[int], call: Callable[[SqliteJobStore], object], store: SqliteJobStore) -> int:
    steps[0] = 0
    call(store)
    return steps[0]


def claim_and_finish(store: SqliteJobStore) -> None:
    jobs = store.claim_many("default", "n1", 4)
    assert len(jobs) == 4
    store.settle_many([Outcome(j.id, "finished", summary="ok", ended=1.0) for j in jobs])


CYCLE: dict[str, Callable[[SqliteJobStore], object]] = {
    "claim 4 + settle 4": claim_and_finish,
    "next_due": lambda s: s.next_due("default"),
    "queues_with_work": lambda s: s.queues_with_work(),
    "add": lambda s: s.add("noop", "default", {}),
}


def test_claiming_and_settling_a_job_costs_the_same_at_1000_and_at_20000_queued(tmp_path: Path) -> None:
    small = steps_of_a_cycle(tmp_path / "small", 1_000)
    large = steps_of_a_cycle(tmp_path / "large", 20_000)
    for what in CYCLE:
        # the same index seeks; a B-tree one level deeper may add a few steps
        assert large[what] <= small[what] * 1.2 + 50, (what, small[what], large[what], sqlite3.sqlite_version)


def steps_of_a_deferred_add(state_dir: Path, deferred: int) -> int:
    """VM steps of a deferred add (it looks for a deferred twin still waiting) with `deferred`
    other deferred jobs waiting in its queue, of its type, each with its own payload."""
    store = open_job_store(state_dir)
    try:
        for start in range(0, deferred, 10_000):
            store.add_batch("noop", "default", [{"n": i} for i in range(start, min(deferred, start + 10_000))],
                            [""] * min(10_000, deferred - start), delay=3600)
        steps = counting(store)
        return counted(steps, lambda s: s.add("noop", "default", {"n": -1}, delay=3600, coalesce=True), store)
    finally:
        store.close()


def test_a_deferred_add_costs_the_same_at_1000_and_at_20000_deferred_jobs_waiting(tmp_path: Path) -> None:
    """Its twin look-up seeks the index jobs_twin; it used to read every waiting job of the queue
    (~3 ms an add at 20,000 waiting)."""
    small = steps_of_a_deferred_add(tmp_path / "small", 1_000)
    large = steps_of_a_deferred_add(tmp_path / "large", 20_000)
    assert large <= small * 1.2 + 50, (small, large, sqlite3.sqlite_version)


def steps_of_a_paused_queue(state_dir: Path, queued: int) -> dict[str, int]:
    """VM steps of a paused queue's dispatcher (a claim, then the next due time) with `queued` waiting."""
    store = open_job_store(state_dir)
    try:
        for start in range(0, queued, 10_000):
            store.add_many([("noop", "default", {}, "")] * min(10_000, queued - start))
        store.set_paused("default", True)
        steps = counting(store)
        return {"claim": counted(steps, lambda s: s.claim_many("default", "n1", 4), store),
                "next_due": counted(steps, lambda s: s.next_due("default"), store)}
    finally:
        store.close()


def test_a_paused_queue_is_looked_at_once_not_per_waiting_job(tmp_path: Path) -> None:
    """Before: the claim tested the pause for every waiting job (20,000 waiting: 20,000 tests)."""
    small = steps_of_a_paused_queue(tmp_path / "small", 1_000)
    large = steps_of_a_paused_queue(tmp_path / "large", 20_000)
    for what in small:
        assert large[what] <= small[what] * 1.2 + 50, (what, small[what], large[what], sqlite3.sqlite_version)


# --- the same on PostgreSQL: shared buffers a statement touches ----------------------------------
# Counted from EXPLAIN (ANALYZE, BUFFERS) of the store's own statements (queries.sql, with the
# parameters PgJobStore passes): shared blocks hit + read while the statement ran, as steady as
# SQLite's VM steps. Each is counted under the plan PostgreSQL makes for the values (a custom
# plan) and under the generic plan a prepared statement gets after psycopg's fifth execution;
# the larger counts. Before migration 0005 and the loose index scan: next_due read every ready
# job of the queue through jobs_ready, queues_with_work every ready job of the table (20,000
# queued: ~270 blocks against ~20 at 1,000).

def pg_buffers(conn, name: str, params: dict[str, object]) -> int:
    """Shared blocks the statement `name` touched once (the fewest of three runs: the first may
    also read catalogs)."""
    from schedulerd.pgstore import QUERIES

    counts = []
    for _ in range(3):
        row = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {QUERIES[name]}", params).fetchone()
        top = row[0][0]["Plan"]
        counts.append(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
    return min(counts)


def pg_blocks_of_a_cycle(pg_server, queued: int) -> dict[str, int]:
    """Shared blocks of the dispatcher's statements with `queued` no-op jobs waiting in `default`
    (and a few in three other queues, four running: what queues_with_work jumps between)."""
    import psycopg

    from schedulerd.jobstore import WAITING
    from tests.pgserver import PASSWORD

    db = pg_server.database()
    try:
        pg_server.sql("INSERT INTO jobs (type, queue, payload) SELECT 'noop', 'default', '{}' "
                      f"FROM generate_series(1, {queued})", db)
        pg_server.sql("INSERT INTO jobs (type, queue, payload) SELECT 'noop', 'q' || (i % 3), '{}' "
                      "FROM generate_series(1, 30) i", db)
        pg_server.sql("INSERT INTO jobs (type, queue, payload, state, attempts, node, started) "
                      "SELECT 'noop', 'r', '{}', 'running', 1, 'n0', now() FROM generate_series(1, 4)", db)
        blocks: dict[str, int] = {}
        for mode in ("auto", "force_generic_plan"):
            with psycopg.connect(pg_server.url(db), password=PASSWORD, autocommit=True) as conn:
                conn.execute(f"SET plan_cache_mode = {mode}")
                calls: dict[str, dict[str, object]] = {
                    "claim_jobs": {"queue": "default", "node": "n1", "limit": 4, "to": "running",
                                   "from": [s.value for s in WAITING]},
                    "next_due": {"queue": "default", "since": 0.0},
                    "queues_with_work": {},
                }
                for name, params in calls.items():
                    blocks[name] = max(blocks.get(name, 0), pg_buffers(conn, name, params))
        return blocks
    finally:
        pg_server.drop(db)


def test_on_postgresql_a_claim_the_next_due_time_and_the_queues_with_work_cost_the_same_at_1000_and_20000_queued(
        pg_server) -> None:
    small = pg_blocks_of_a_cycle(pg_server, 1_000)
    large = pg_blocks_of_a_cycle(pg_server, 20_000)
    for what in small:
        # the same index seeks; a B-tree one level deeper adds a block per seek
        assert large[what] <= small[what] * 1.2 + 10, (what, small, large)
