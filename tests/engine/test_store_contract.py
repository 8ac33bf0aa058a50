"""One contract for the stores, run against both back-ends: SQLite files and a real PostgreSQL.

Whatever the daemon relies on (state store: wanted states, counters, run history, values; job
store: add, claim, outcomes, chains, priorities, pause, cancel, retry, recovery, retention)
must hold the same on either; the PostgreSQL server is tests/pgserver.py's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schedulerd.config import SchedulerSettings
from schedulerd.jobstore import JobError, Outcome
from schedulerd.states import IllegalTransition, JobState, Wanted
from schedulerd.store import Run
from schedulerd.stores import StoreSettings, open_job_store, open_state_store
from tests.pgserver import PASSWORD, store_settings


class Backend:
    """Opens stores of one back-end; every store opened is closed at the test's end."""

    def __init__(self, sch: SchedulerSettings, store: StoreSettings):
        self.sch, self.store = sch, store
        self.opened: list[Any] = []

    def _keep(self, s: Any) -> Any:
        self.opened.append(s)
        return s

    def jobs(self) -> Any:
        return self._keep(open_job_store(self.sch, self.store))

    def states(self) -> Any:
        return self._keep(open_state_store(self.sch, self.store))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    sch = SchedulerSettings(state_dir=tmp_path / "state")
    if request.param == "sqlite":
        b = Backend(sch, StoreSettings())
    else:
        server = request.getfixturevalue("pg_server")
        b = Backend(sch, store_settings(server, request.getfixturevalue("pg_database")))
    yield b
    for s in b.opened:
        s.close()


def ended(job_id: int, kind: str, **kw: Any) -> Outcome:
    return Outcome(job_id, kind, time.time(), **kw)


def claim_all(store: Any, queue: str = "q", node: str = "n1", limit: int = 100) -> list[int]:
    return [j.id for j in store.claim_many(queue, node, limit)]


# --- job store ----------------------------------------------------------------------


def test_add_get_list_and_claim_in_priority_order(backend: Backend) -> None:
    s = backend.jobs()
    low = s.add("command", "q", {"argv": ["true"]}, title="low", max_attempts=2)
    high = s.add("command", "q", {"n": 1}, title="high", priority=5)
    other = s.add("command", "other", {})
    job = s.get(high)
    assert (job.type, job.queue, job.payload, job.title, job.priority, job.state) == \
        ("command", "q", {"n": 1}, "high", 5, JobState.WAITING)
    assert abs(job.created - time.time()) < 5 and job.next_attempt_at <= time.time() + 1
    assert [j.id for j in s.list()] == [other, high, low]
    assert [j.id for j in s.list(queue="q")] == [high, low]
    assert [j.id for j in s.list(state="waiting", limit=1)] == [other]
    assert [j.id for j in s.list(before=other)] == [high, low]  # the next page of a listing
    assert [j.id for j in s.list(queue="q", before=high)] == [low]
    assert s.queue_names() == {"q", "other"} and s.queues_with_work() == {"q", "other"}
    first = s.claim("q", "n1")
    assert first is not None and first.id == high and first.state is JobState.RUNNING
    assert (first.attempts, first.node) == (1, "n1") and first.started is not None
    assert claim_all(s) == [low]
    assert s.claim("q", "n1") is None
    assert s.get(low).state is JobState.RUNNING
    with pytest.raises(JobError, match="no job with id 999"):
        s.get(999)


def test_two_concurrent_claimers_never_get_the_same_job(backend: Backend) -> None:
    setup = backend.jobs()
    ids = {setup.add("command", "q", {"i": i}) for i in range(300)}
    got: dict[str, list[int]] = {"a": [], "b": []}
    stores = {name: backend.jobs() for name in got}
    go = threading.Barrier(2)

    def claimer(name: str) -> None:
        go.wait()
        while batch := stores[name].claim_many("q", name, 7):
            got[name] += [j.id for j in batch]

    threads = [threading.Thread(target=claimer, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == sorted(ids)
    assert {j.node for j in setup.list(limit=1000)} <= {"a", "b"}


def test_outcomes_finish_retry_fail_and_interrupt(backend: Backend) -> None:
    s = backend.jobs()
    ok, again, later, bad, cut, last = (s.add("command", "q", {}, max_attempts=2) for _ in range(6))
    assert claim_all(s) == [ok, again, later, bad, cut, last]
    s.fail_attempt(last, "boom", None)  # no retry: failed at once
    s.interrupt(last, "too late")  # not running any more: nothing happens
    queues = s.settle_many([
        ended(ok, "finished", summary="done", lines=((time.time(), "INFO", "a line"),)),
        ended(again, "retry", error="flaky", retry_at=time.time()),
        ended(later, "retry", error="flaky", retry_at=time.time() + 3600),
        ended(bad, "failed", error="broken"),
        ended(cut, "interrupted", error="stopped"),
    ])
    assert queues == {"q"}
    assert (s.get(ok).state, s.get(ok).summary, s.get(ok).finished is not None) == (JobState.FINISHED, "done", True)
    assert [line[1:] for line in s.log_lines(ok)] == [("INFO", "a line")]
    assert (s.get(again).state, s.get(again).error) == (JobState.WAITING, "flaky")
    assert s.get(later).next_attempt_at > time.time() + 3000
    assert (s.get(bad).state, s.get(bad).error) == (JobState.FAILED, "broken")
    assert (s.get(cut).state, s.get(cut).error) == (JobState.INTERRUPTED, "stopped")
    assert (s.get(last).state, s.get(last).error) == (JobState.FAILED, "boom")
    assert sorted(claim_all(s)) == sorted([again, cut])  # `later` is not due
    assert s.next_due("q") is not None and s.next_due("q") > time.time() + 3000
    s.settle_many([ended(cut, "interrupted", error="stopped again")])  # attempts used up: failed
    assert s.get(cut).state is JobState.FAILED and "attempts used up (2/2)" in (s.get(cut).error or "")
    s.finish(again, "second time")
    assert s.get(again).state is JobState.FINISHED and s.get(again).attempts == 2


def test_chains_wait_for_their_dependency_and_fail_with_it(backend: Backend) -> None:
    s = backend.jobs()
    a = s.add("command", "q", {})
    b = s.add("command", "q", {}, deps=[a])
    c = s.add("command", "q2", {}, deps=[b])
    assert s.get(c).deps == (b,)
    assert claim_all(s) == [a]  # b waits for a
    s.finish(a, None)
    assert claim_all(s) == [b]
    assert s.settle_many([ended(b, "failed", error="broken")]) == {"q", "q2"}  # c's queue may have news
    assert (s.get(c).state, s.get(c).error) == (JobState.FAILED, f"dependency #{b} failed or was cancelled")
    d = s.add("command", "q", {}, deps=[c])  # added after its dependency failed: failed at once
    assert (s.get(d).state, s.get(d).error) == (JobState.FAILED, f"dependency #{c} is failed")
    with pytest.raises(JobError, match="--after 999: no job with id 999"):
        s.add("command", "q", {}, deps=[999])


def test_cancel_retry_and_their_refusals(backend: Backend) -> None:
    s = backend.jobs()
    a = s.add("command", "q", {})
    b = s.add("command", "q", {}, deps=[a])
    c = s.add("command", "q", {}, deps=[b])
    assert s.cancel(a).state is JobState.CANCELLED
    assert (s.get(b).state, s.get(b).error) == (JobState.FAILED, f"dependency #{a} was cancelled")
    assert (s.get(c).state, s.get(c).error) == (JobState.FAILED, f"dependency #{b} failed or was cancelled")
    with pytest.raises(JobError, match=f"job {a} is cancelled: only .* can be cancelled"):
        s.cancel(a)
    again = s.retry(a)
    assert (again.state, again.attempts, again.finished) == (JobState.WAITING, 0, None)
    with pytest.raises(JobError, match=f"job {a} is waiting: only .* can be retried"):
        s.retry(a)
    with pytest.raises(JobError, match="no job with id 999"):
        s.cancel(999)
    running = s.add("command", "q", {})
    assert running in claim_all(s)
    assert s.cancel(running).state is JobState.CANCELLED
    s.settle_many([ended(running, "finished")])  # the end of a cancelled attempt changes nothing
    assert s.get(running).state is JobState.CANCELLED


def test_recover_interrupts_only_this_nodes_running_jobs(backend: Backend) -> None:
    s = backend.jobs()
    mine, theirs, spent = (s.add("command", "q", {}, max_attempts=m) for m in (3, 3, 1))
    assert s.claim("q", "n1").id == mine and s.claim("q", "n2").id == theirs and s.claim("q", "n1").id == spent
    assert sorted(s.recover("n1")) == [mine, spent]
    assert s.get(mine).state is JobState.INTERRUPTED and s.get(theirs).state is JobState.RUNNING
    assert s.get(spent).state is JobState.FAILED
    assert s.recover("n1") == []


def test_paused_queue_claims_nothing(backend: Backend) -> None:
    s = backend.jobs()
    jid = s.add("command", "q", {})
    s.set_paused("q", True)
    assert s.paused() == {"q"} and s.claim("q", "n1") is None
    s.set_paused("q", False)
    assert s.paused() == set() and claim_all(s) == [jid]


def test_the_next_due_time_is_of_a_job_not_yet_due_at_the_claim_and_none_while_paused(backend: Backend) -> None:
    """next_due(queue, since): what the dispatcher sleeps until after a claim `since` seconds ago.
    Jobs due before it were the claim's (claimed, or blocked until a wake: a dependency, a resume)."""
    s = backend.jobs()
    dep = s.add("command", "other", {})
    blocked = s.add("command", "q", {}, deps=[dep], delay=-30)  # due 30 s ago, its dependency unfinished
    later = s.add("command", "q", {}, delay=3600)
    assert s.claim("q", "n1") is None
    assert abs(s.next_due("q", 10) - s.get(later).next_attempt_at) < 0.01  # `blocked` was due at the claim
    assert abs(s.next_due("q", 60) - s.get(blocked).next_attempt_at) < 0.01  # not yet due 60 s ago
    s.set_paused("q", True)
    assert s.next_due("q", 60) is None  # nothing becomes claimable before the resume
    s.set_paused("q", False)
    assert abs(s.next_due("q") - s.get(later).next_attempt_at) < 0.01
    assert s.next_due("empty") is None


def test_progress_and_log_lines(backend: Backend) -> None:
    s = backend.jobs()
    jid = s.add("command", "q", {})
    s.claim("q", "n1")
    s.set_progress(jid, 3, 10)
    s.append_log(jid, [(1.0, "INFO", "one"), (2.0, "WARNING", "two"), (3.0, "INFO", "three")])
    assert (s.get(jid).done, s.get(jid).total) == (3, 10)
    assert s.log_lines(jid) == [(1.0, "INFO", "one"), (2.0, "WARNING", "two"), (3.0, "INFO", "three")]
    assert s.log_lines(jid, limit=2) == [(2.0, "WARNING", "two"), (3.0, "INFO", "three")]


def test_retention_purges_done_jobs_by_count_and_age(backend: Backend) -> None:
    s = backend.jobs()
    done = [s.add("command", "q", {}) for _ in range(4)]
    waiting = s.add("command", "other", {})
    claim_all(s)
    for jid in done:
        s.finish(jid, None)
        time.sleep(0.01)
    assert s.purge(["finished"], keep=1) == 3
    assert [j.id for j in s.list()] == [waiting, done[-1]]
    assert s.purge(["finished"], max_age=3600) == 0
    time.sleep(0.05)
    assert s.purge(["finished"], max_age=0.01) == 1
    assert [j.id for j in s.list()] == [waiting]


def test_a_transition_outside_the_table_is_refused(backend: Backend) -> None:
    """finished -> running is no arrow of states.JOB_TRANSITIONS: the store's one state-change
    path refuses it before touching the row."""
    s = backend.jobs()
    jid = s.add("command", "q", {})
    claim_all(s)
    s.finish(jid, None)
    if backend.store.url is None:
        from schedulerd.jobstore import move

        with pytest.raises(IllegalTransition), s.transaction() as c:
            move(c, [jid], (JobState.FINISHED,), JobState.RUNNING)
    else:
        from schedulerd.pgstore.jobstore import _move

        with pytest.raises(IllegalTransition), s.db.transaction() as cur:
            _move(cur, "claim_jobs", (JobState.FINISHED,), JobState.RUNNING, queue="q", node="n", limit=1)
    assert s.get(jid).state is JobState.FINISHED


# --- state store --------------------------------------------------------------------


def run(task: str, outcome: str, ago: float = 0.0, **kw: Any) -> Run:
    now = time.time() - ago
    return Run(task, now - 1, now, outcome, **kw)


def test_wanted_states_crashes_and_records(backend: Backend) -> None:
    s = backend.states()
    assert s.wanted("a") is None
    rec = s.task("a")
    assert (rec.wanted, rec.crashes, rec.runs, rec.failures, rec.last_run) == (None, 0, 0, 0, None)
    s.set_wanted("a", Wanted.STOPPED)
    s.set_crashes("a", 3)
    assert s.wanted("a") is Wanted.STOPPED and s.task("a").crashes == 3
    s.save([run("a", "ok"), run("a", "failed", error="boom"), run("b", "stopped")], {"a": 0}, {"b": Wanted.STARTED})
    a, b = s.task("a"), s.task("b")
    assert (a.crashes, a.runs, a.failures, a.last_run.outcome, a.last_run.error) == (0, 2, 1, "failed", "boom")
    assert (b.wanted, b.runs, b.failures) == (Wanted.STARTED, 1, 0)
    s.record_run(run("a", "ok", summary="3 files", source="cli"))
    last = s.history("a", 1)[0]
    assert (last.outcome, last.summary, last.source) == ("ok", "3 files", "cli")
    assert abs(last.ended - time.time()) < 5 and abs(last.ended - last.started - 1) < 0.01


def test_the_records_of_many_tasks_in_one_read_are_each_tasks_own(backend: Backend) -> None:
    """`tasks(names)` (the daemon's start reads every task's state at once, issue 22) gives for
    each name what `task(name)` gives: counters, wanted state, the newest run; unknown names too."""
    s = backend.states()
    s.save([run("a", "ok", ago=30), run("a", "failed", ago=20, error="boom"), run("b", "ok", ago=10),
            run("a", "ok", ago=5, summary="last")], {"c": 4}, {"b": Wanted.STOPPED})
    s.record_run(run("b", "failed", error="by task:run", source="cli"))
    names = ["a", "b", "c", "never-seen"]
    many = s.tasks(names)
    assert set(many) == set(names) and all(many[n] == s.task(n) for n in names), many
    assert (many["a"].last_run.summary, many["b"].last_run.source, many["c"].crashes) == ("last", "cli", 4)
    assert many["never-seen"].last_run is None and many["b"].wanted is Wanted.STOPPED
    assert s.tasks([]) == {}


def test_history_newest_first_and_purged_by_count_and_age(backend: Backend) -> None:
    s = backend.states()
    s.save([run("a", "failed", ago=5000)] + [run("a", "ok", ago=100 - i) for i in range(5)]
           + [run("a", "failed", ago=10)], {}, {})
    runs = s.history("a")
    assert len(runs) == 7 and runs[0].ended > runs[1].ended
    assert len(s.history("a", limit=3)) == 3
    assert s.purge_history(keep_ok=2, keep_failed=100, max_age_ok=86400, max_age_failed=1000) == 3 + 1
    assert [r.outcome for r in s.history("a")] == ["failed", "ok", "ok"]


def test_the_history_retention_is_one_nodes_at_a_time(backend: Backend) -> None:
    """On PostgreSQL the nodes take turns: the one that moves the store's mark forward purges, the
    others skip while it is younger than `every` (each pass sorts the whole history). A SQLite
    file has one daemon: always its turn."""
    a, b = backend.states(), backend.states()
    assert a.retention_turn(3600) is True
    assert b.retention_turn(3600) is (backend.store.url is None)
    assert a.retention_turn(3600) is (backend.store.url is None)  # its own mark too
    time.sleep(0.01)
    assert b.retention_turn(0.001) is True  # older than `every`: b's turn


def test_sqlite_retention_finds_its_runs_without_the_write_lock_and_deletes_them_in_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs to delete are found on a connection of the retention's own, then deleted in
    transactions of PURGE_CHUNK: the history writer, a task's schedule cursor and another
    process's write go on between them. In one transaction, 400,000 runs held the write lock 0.9 s
    (and a write of another process fails after busy_timeout)."""
    from schedulerd import store

    monkeypatch.setattr(store, "PURGE_CHUNK", 100)
    s = store.open_store(tmp_path)
    try:
        s.save([run(f"t{i % 10}", "ok", ago=1000 - i, summary=str(i)) for i in range(1000)], {}, {})
        said: list[str] = []
        with s.transaction() as c:
            c.set_trace_callback(said.append)
        assert s.purge_history(keep_ok=20, keep_failed=100, max_age_ok=86400, max_age_failed=86400) == 800
        deletes = [i for i, sql in enumerate(said) if sql.startswith("DELETE FROM runs")]
        assert len(deletes) == 8 and all(said[i - 1] == "BEGIN IMMEDIATE" and said[i + 1] == "COMMIT"
                                         for i in deletes), said
        assert not [sql for sql in said if "ROW_NUMBER" in sql]  # not on the store's own connection
        assert [r.summary for r in s.history("t3", limit=100)] == [str(i) for i in range(993, 799, -10)]
    finally:
        s.close()


def test_sqlite_retention_mends_a_last_run_that_a_pass_stopped_midway_left_behind(tmp_path: Path) -> None:
    """A pass that failed after a chunk deleted a task's newest run (older than its max age) left
    the task naming a run that is gone, and the history writer may since have given that id to
    another task's run (SQLite reuses the highest id). The next pass, with nothing to delete,
    finds each task's last run again."""
    import sqlite3

    from schedulerd.store import open_store

    s = open_store(tmp_path)
    try:
        s.save([run("a", "ok", ago=3000, summary="a older"), run("a", "failed", ago=2000, error="a newest")], {}, {})
        with sqlite3.connect(tmp_path / "schedulerd.db") as c:  # what the stopped pass's chunk did
            gone = c.execute("SELECT max(id) FROM runs").fetchone()[0]
            c.execute("DELETE FROM runs WHERE id=?", (gone,))
        s.save([run("b", "ok", summary="b, with the id a's newest run had")], {}, {})
        with sqlite3.connect(tmp_path / "schedulerd.db") as c:
            assert c.execute("SELECT task FROM runs WHERE id=?", (gone,)).fetchone() == ("b",)
        assert s.purge_history(keep_ok=100, keep_failed=100, max_age_ok=86400, max_age_failed=86400) == 0
        many = s.tasks(["a", "b"])
        assert many["a"].last_run.summary == "a older"
        assert many["b"].last_run.summary == "b, with the id a's newest run had"
    finally:
        s.close()


def test_a_state_file_from_before_last_run_names_each_tasks_last_run_when_opened(tmp_path: Path) -> None:
    """A schedulerd.db written with the index of runs by task (before `tasks.last_run`) is
    upgraded in place: each task's last run found once, the index dropped, the history kept;
    so is one an older schedulerd wrote to again after the upgrade (the index made anew)."""
    import sqlite3

    from schedulerd.store import SCHEMA, SqliteStateStore

    db = tmp_path / "schedulerd.db"
    old_schema = SCHEMA.replace(", last_run INTEGER", "") + "CREATE INDEX runs_task ON runs(task, id);"
    with sqlite3.connect(db) as c:
        c.executescript(old_schema)
        c.executemany("INSERT INTO runs(task, started, ended, outcome, summary) VALUES (?, 0, 1, 'ok', ?)",
                      [("a", "a1"), ("b", "b1"), ("a", "a2")])
        c.executemany("INSERT INTO tasks(name, runs) VALUES (?, ?)", [("a", 2), ("b", 1), ("idle", 0)])
    for again in (False, True):
        s = SqliteStateStore(db)
        try:
            many = s.tasks(["a", "b", "idle"])
            assert [many[n].last_run and many[n].last_run.summary for n in ("a", "b", "idle")] == ["a2", "b1", None]
            assert [r.summary for r in s.history("a")] == ["a2", "a1"] and s.task("a").runs == 2
            s.save([run("b", "ok", summary="b2")], {}, {})
            assert s.task("b").last_run.summary == "b2"
        finally:
            s.close()
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT count(*) FROM sqlite_master WHERE name='runs_task'").fetchone() == (0,)
            if not again:  # an older schedulerd writes to it: its schema makes the index again
                c.executescript(old_schema.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))
                c.execute("INSERT INTO runs(task, started, ended, outcome, summary) VALUES ('b', 0, 1, 'ok', 'b1')")


def test_the_last_run_after_a_purge_is_the_newest_one_left_and_never_another_tasks(backend: Backend) -> None:
    """The purge may delete a task's newest run (older than its max age, or keep = 0): its last
    run is then the newest one left, or none; a run written after that (which may get a deleted
    run's id on SQLite) is never shown as another task's."""
    s = backend.states()
    s.save([run("a", "ok", ago=3000, summary="older ok"), run("a", "failed", ago=2000, error="newest"),
            run("b", "ok", ago=3000)], {}, {})
    assert s.task("a").last_run.error == "newest"
    assert s.purge_history(keep_ok=100, keep_failed=100, max_age_ok=86400, max_age_failed=1000) == 1
    assert s.task("a").last_run.summary == "older ok"
    assert s.purge_history(keep_ok=0, keep_failed=0, max_age_ok=86400, max_age_failed=86400) == 2
    assert s.task("a").last_run is None and s.task("b").last_run is None
    s.save([run("c", "failed", error="c broke")], {}, {})
    many = s.tasks(["a", "b", "c"])
    assert many["a"].last_run is None and many["b"].last_run is None and many["c"].last_run.error == "c broke"
    assert s.task("a").runs == 2 and s.history("a") == []


def test_runs_an_older_schedulerd_writes_after_the_upgrade_are_seen_at_the_next_open(tmp_path: Path) -> None:
    """An older daemon still running when this version upgraded the file (a `task:run` opened it)
    goes on writing runs without `last_run`: the next open finds them."""
    import sqlite3

    from schedulerd.store import SCHEMA, SqliteStateStore

    db = tmp_path / "schedulerd.db"
    old = sqlite3.connect(db, isolation_level=None)
    try:
        old.executescript(SCHEMA.replace(", last_run INTEGER", "") + "CREATE INDEX runs_task ON runs(task, id);")

        def old_write(summary: str) -> None:
            with old:
                old.execute("INSERT INTO runs(task, started, ended, outcome, summary) VALUES ('a', 0, 1, 'ok', ?)",
                            (summary,))
                old.execute("INSERT INTO tasks(name, runs) VALUES ('a', 1) ON CONFLICT(name) DO UPDATE SET runs=runs+1")

        old_write("a1")
        SqliteStateStore(db).close()
        old_write("a2")
        old_write("a3")
    finally:
        old.close()
    s = SqliteStateStore(db)
    try:
        assert s.task("a").last_run.summary == "a3" and [r.summary for r in s.history("a")] == ["a3", "a2", "a1"]
    finally:
        s.close()


def test_a_batch_of_runs_of_many_tasks_is_counted_and_kept_in_order(backend: Backend) -> None:
    """The writer's batch (both stores write it with one statement for the runs and one for the
    counters): each task's counters and history, in the batch's order, with every field kept."""
    s = backend.states()
    outcomes = ["ok", "failed", "ok", "timeout", "stopped", "cancelled"]
    batch = [run(f"t{i % 7}", outcomes[i % 6], ago=1000 - i, summary=f"s{i}" if i % 2 else None,
                 error=f"e{i}" if i % 3 == 0 else None, source="cli" if i % 5 == 0 else "daemon") for i in range(300)]
    s.save(batch, {}, {})
    for t in range(7):
        mine = [r for r in batch if r.task == f"t{t}"]
        rec = s.task(f"t{t}")
        assert (rec.runs, rec.failures) == (len(mine), sum(r.outcome in ("failed", "timeout", "cancelled") for r in mine))
        got = s.history(f"t{t}", 1000)
        assert [(r.summary, r.error, r.source, r.outcome) for r in got] == \
               [(r.summary, r.error, r.source, r.outcome) for r in reversed(mine)]
        assert abs(got[0].started - mine[-1].started) < 1e-3 and rec.last_run.summary == mine[-1].summary


def test_the_history_of_a_task_that_seldom_runs_is_found_behind_the_others(backend: Backend) -> None:
    """A task's runs are found however many runs of other tasks were written since."""
    s = backend.states()
    s.save([run("seldom", "failed", ago=600, error="once")], {}, {})
    for k in range(20):
        s.save([run(f"busy{i}", "ok", ago=500 - k) for i in range(50)], {}, {})
    assert [(r.outcome, r.error) for r in s.history("seldom")] == [("failed", "once")]
    assert s.task("seldom").last_run.error == "once" and len(s.history("busy7", 5)) == 5


def test_values(backend: Backend) -> None:
    s = backend.states()
    assert s.get_value("k") is None
    s.set_value("k", "v1")
    s.set_value("k", "v2")
    assert s.get_value("k") == "v2"
    s.set_value("k", None)
    assert s.get_value("k") is None


def test_two_store_objects_see_each_others_writes(backend: Backend) -> None:
    """Two processes (or nodes) on one store: what one writes, the other reads."""
    a, b = backend.states(), backend.states()
    a.set_wanted("t", Wanted.STARTED)
    assert b.wanted("t") is Wanted.STARTED
    ja, jb = backend.jobs(), backend.jobs()
    jid = ja.add("command", "q", {})
    assert jb.claim("q", "n2").id == jid and ja.claim("q", "n1") is None


def test_coalesced_add_returns_the_job_still_waiting(backend: Backend) -> None:
    s = backend.jobs()
    first = s.add("command", "q", {"record": 1, "b": [1, 2]}, delay=3600, coalesce=True)
    assert s.add("command", "q", {"b": [1, 2], "record": 1}, delay=3600, coalesce=True) == first
    other = s.add("command", "q", {"record": 2}, delay=3600, coalesce=True)
    plain = s.add("command", "q", {"record": 1, "b": [1, 2]})  # without coalesce: a job of its own
    assert len({first, other, plain}) == 3
    claim_all(s)  # `plain` runs; `first` is deferred, still waiting for its first attempt
    assert s.add("command", "q", {"record": 1, "b": [1, 2]}, coalesce=True) == first
    now = s.add("command", "other", {"record": 3})  # not deferred: no twin of a deferred add
    assert s.add("command", "other", {"record": 3}, delay=3600, coalesce=True) != now


def twin_plan(backend: Backend, payload: dict[str, Any]) -> str:
    """How the store's database finds a deferred add's waiting twin (its query plan, statistics fresh)."""
    import json
    import sqlite3

    if backend.store.url is None:
        from schedulerd.jobstore import WAITING_TWIN

        with sqlite3.connect(backend.sch.state_dir / "jobs.db") as c:
            rows = c.execute(f"EXPLAIN QUERY PLAN {WAITING_TWIN}", ("command", "q", json.dumps(payload))).fetchall()
        return "\n".join(str(r[-1]) for r in rows)
    import psycopg
    from psycopg.types.json import Jsonb

    from schedulerd.pgstore.queries import QUERIES

    with psycopg.connect(backend.store.url, password=PASSWORD, autocommit=True) as c:
        c.execute("ANALYZE jobs")
        rows = c.execute(f"EXPLAIN {QUERIES['waiting_twin']}",
                         {"type": "command", "queue": "q", "payload": Jsonb(payload)}).fetchall()
    return "\n".join(r[0] for r in rows)


def test_a_deferred_add_finds_its_waiting_twin_through_an_index(backend: Backend) -> None:
    """A deferred add (coalesce) looks its twin up in the index jobs_twin. It used to read every
    waiting job of its queue: at 20,000 waiting, ~3 ms an add on SQLite and ~9 ms on PostgreSQL."""
    s = backend.jobs()
    s.add_batch("command", "q", [{"record": i} for i in range(5000)], [""] * 5000, delay=3600)
    assert s.add("command", "q", {"record": 4321}, delay=3600, coalesce=True) == s.list(queue="q")[5000 - 1 - 4321].id
    assert sum(s.count_by_queue_state().values()) == 5000
    plan = twin_plan(backend, {"record": 4321})
    assert "jobs_twin" in plan, plan


def test_an_add_retried_with_its_key_makes_one_job(backend: Backend) -> None:
    """An add retried after its commit was lost (the connection dropped after the server committed;
    store.store_call tries again) carries the same idempotency key: the retry gets the job the
    first try made, and makes none. Another key is another job; no key is never a match."""
    s = backend.jobs()
    first = s.add("command", "q", {"record": 1}, key="k-1")
    assert s.add("command", "q", {"record": 1}, key="k-1") == first  # the retry
    assert backend.jobs().add("command", "q", {"record": 1}, key="k-1") == first  # from another store object
    other = s.add("command", "q", {"record": 1}, key="k-2")
    plain = [s.add("command", "q", {"record": 1}) for _ in range(2)]
    assert len({first, other, *plain}) == 4
    assert len(s.list(queue="q")) == 4


def test_a_jobs_db_from_before_add_keys_gets_them_when_opened(tmp_path: Path) -> None:
    """A jobs.db made before jobs had an add_key column is upgraded in place, its jobs kept."""
    import sqlite3

    from schedulerd.jobstore import SCHEMA, SqliteJobStore

    db = tmp_path / "jobs.db"
    with sqlite3.connect(db) as c:
        c.executescript(SCHEMA.replace(", add_key TEXT", ""))
        c.execute("INSERT INTO jobs(type, queue, payload, next_attempt_at, state, created) "
                  "VALUES ('command', 'q', '{}', 0, 'waiting', 0)")
    s = SqliteJobStore(db)
    try:
        assert [j.id for j in s.list()] == [1]
        assert s.add("command", "q", {}, key="k") == s.add("command", "q", {}, key="k") == 2
    finally:
        s.close()


def test_jobs_running_for_a_node_that_does_not_run_them_go_back_uncounted(backend: Backend) -> None:
    """recover_lost: jobs the store has `running` for node n1 that n1 does not run (not in `keep`)
    and that were claimed more than `grace` seconds ago are put back, interrupted, their claim's
    attempt not counted; the ones it runs, another node's and fresh claims are left alone."""
    s = backend.jobs()
    ids = [s.add("command", "q", {"i": i}) for i in range(3)]
    assert claim_all(s, node="n1") == ids
    theirs = s.add("command", "q", {"i": 9})
    assert claim_all(s, node="n2") == [theirs]
    assert s.recover_lost("n1", 3600, {ids[0]}) == []  # claimed just now: an answer may be on its way
    time.sleep(0.05)
    assert s.recover_lost("n1", 0.01, {ids[0]}) == ids[1:]
    jobs = {j.id: j for j in s.list(queue="q")}
    assert [(jobs[i].state, jobs[i].attempts) for i in ids] == [
        (JobState.RUNNING, 1), (JobState.INTERRUPTED, 0), (JobState.INTERRUPTED, 0)]
    assert jobs[theirs].state is JobState.RUNNING
    assert claim_all(s, node="n1") == ids[1:]  # claimed again, once each


def test_a_batch_is_one_add_per_payload_retried_whole(backend: Backend) -> None:
    """add_batch: the ids in the payloads' order; a retry with the batch's key gets the same jobs and
    adds none (also a plain batch, PostgreSQL's one executemany); an empty batch adds nothing."""
    s = backend.jobs()
    assert s.add_batch("command", "q", [], []) == []
    payloads = [{"record": i} for i in range(300)]
    ids = s.add_batch("command", "q", payloads, [f"t{i}" for i in range(300)], key="b-1")
    assert len(set(ids)) == 300 and [s.get(j).payload for j in (ids[0], ids[-1])] == [payloads[0], payloads[-1]]
    assert s.add_batch("command", "q", payloads, [""] * 300, key="b-1") == ids
    assert s.add("command", "q", {"record": 0}, key="b-1") == ids[0]  # a batch of one is keyed as one add
    assert sum(s.count_by_queue_state().values()) == 300



def test_postgresql_notifies_a_queue_only_when_a_job_was_added_to_wait_in_it(pg_server, pg_database) -> None:
    """NOTIFY schedulerd_jobs wakes every node's dispatcher: sent for a new waiting job, not for
    an add that found its deferred twin, a retried add, or an empty batch."""
    import psycopg

    s = Backend(SchedulerSettings(), store_settings(pg_server, pg_database))
    store = s.jobs()
    listener = psycopg.connect(pg_server.url(pg_database), password=PASSWORD, autocommit=True)
    try:
        listener.execute("LISTEN schedulerd_jobs")

        def heard() -> list[str]:
            return [n.payload for n in listener.notifies(timeout=0.5, stop_after=10)]

        first = store.add("command", "q", {"record": 1}, delay=3600, coalesce=True, key="n-1")
        assert heard() == ["q"]
        assert store.add("command", "q", {"record": 1}, delay=3600, coalesce=True) == first  # its twin
        assert store.add("command", "q", {"record": 2}, key="n-1") == first  # a retry
        assert store.add_batch("command", "q", [], []) == []
        assert heard() == []
        store.add_batch("command", "r", [{"record": 3}, {"record": 4}], ["", ""])
        assert heard() == ["r"]
    finally:
        listener.close()
        for opened in s.opened:
            opened.close()
