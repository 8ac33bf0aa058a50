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
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0  # go on

        with store.transaction() as c:
            c.set_progress_handler(count, 1)
        return {what: counted(steps, call, store) for what, call in CYCLE.items()}
    finally:
        store.close()


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


def steps_of_a_paused_queue(state_dir: Path, queued: int) -> dict[str, int]:
    """VM steps of a paused queue's dispatcher (a claim, then the next due time) with `queued` waiting."""
    store = open_job_store(state_dir)
    try:
        for start in range(0, queued, 10_000):
            store.add_many([("noop", "default", {}, "")] * min(10_000, queued - start))
        store.set_paused("default", True)
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        with store.transaction() as c:
            c.set_progress_handler(count, 1)
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
