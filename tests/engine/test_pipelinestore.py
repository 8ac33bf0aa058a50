"""schedulerd.pipelinestore on both back-ends (SQLite jobs.db and a real PostgreSQL): a step's parts
go in with their jobs, each part matched to its own job; a step's output is every part's, in order,
read from the run's rows even after the retention purged the parts' jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schedulerd.jobstore import Outcome
from schedulerd.pipelinestore import PartJob, RunRow, open_pipeline_store
from schedulerd.plugin import Item, ItemKind
from schedulerd.stores import StoreSettings, open_job_store
from tests.pgserver import store_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    from schedulerd.config import SchedulerSettings

    sch = SchedulerSettings(state_dir=tmp_path / "state")
    sch.state_dir.mkdir()
    settings = StoreSettings()
    if request.param == "postgresql":
        settings = store_settings(request.getfixturevalue("pg_server"), request.getfixturevalue("pg_database"))
    pipelines = open_pipeline_store(sch.state_dir, settings)
    jobs = open_job_store(sch, settings)
    yield pipelines, jobs
    jobs.close()
    pipelines.close()


def _items(n: int) -> list[Item]:
    return [Item(ItemKind.EVENT, fields={"n": str(i)}) for i in range(n)]


def test_parts_get_their_own_jobs_and_the_output_survives_purged_jobs(stores: tuple[Any, Any]) -> None:
    pipelines, jobs = stores
    jobs.add("noop", "elsewhere", {})  # ids of the step's jobs do not start at 1
    items = _items(5)
    rid = pipelines.create_run("p", "manual", ["0:noop"], items)
    run: RunRow = pipelines.run(rid)
    parts = [PartJob("pipelineStep", "pipeline.p.0", {"pipeline": "p", "run": rid, "step": 0, "part": k,
                                                      "items": [i.to_json()]}, f"part {k}", 1)
             for k, i in enumerate(items)]
    assert pipelines.start_step(run, "0:noop", 5, parts, 1)
    assert not pipelines.start_step(run, "0:noop", 5, parts, 1)  # started once
    claimed = sorted(jobs.claim_many("pipeline.p.0", "n1", 10), key=lambda j: j.id)
    assert [j.payload["part"] for j in claimed] == [0, 1, 2, 3, 4]  # part k's row points at part k's job
    with pipelines.transaction() as c:
        rows = c.execute("SELECT part, job FROM pipeline_parts WHERE run=? ORDER BY part", (rid,)).fetchall()
    assert [(int(p), int(j)) for p, j in rows] == [(j.payload["part"], j.id) for j in claimed]
    # part 2 returned two items, part 4 none; the others their input
    pipelines.set_part_output(rid, 0, 2, [Item(ItemKind.EVENT, fields={"n": "2a"}), Item(ItemKind.EVENT, fields={"n": "2b"})])
    pipelines.set_part_output(rid, 0, 4, [])
    jobs.settle_many([Outcome(j.id, "finished", 0.0, node="n1") for j in claimed])
    assert jobs.purge(["finished"]) >= 5  # the retention's work, before the driver looked
    counts, error = pipelines.part_states(run)
    assert counts == {"finished": 5} and error is None
    out = json.loads(pipelines.step_output(run))
    assert [i["fields"]["n"] for i in out] == ["0", "1", "2a", "2b", "3"]
    assert pipelines.finish_step(run, "0:noop", 5, pipelines.step_output(run), started=True)
    assert pipelines.steps(rid)[0].items_out == 5


def test_a_step_whose_parts_returned_nothing_new_passes_its_input_on_as_it_is(stores: tuple[Any, Any]) -> None:
    pipelines, jobs = stores
    items = _items(3)
    rid = pipelines.create_run("p", "manual", ["0:noop"], items)
    run = pipelines.run(rid)
    part = PartJob("pipelineStep", "pipeline.p.0", {"pipeline": "p", "run": rid, "step": 0, "part": 0,
                                                    "items": [i.to_json() for i in items]}, "all", 1)
    assert pipelines.start_step(run, "0:noop", 3, [part], None)
    counts, error = pipelines.part_states(run)
    assert counts == {"waiting": 1} and error is None
    assert [Item.from_json(d) for d in json.loads(pipelines.step_output(run))] == items
    assert pipelines.finish_step(run, "0:noop", 3, pipelines.step_output(run), started=True)
    assert pipelines.step_input(pipelines.run(rid)) == items  # the next step's input


def test_a_due_time_makes_one_run_of_its_pipeline(stores: tuple[Any, Any]) -> None:
    """The schedule trigger's key: a second run for one due time (another node's) is not made."""
    pipelines, _ = stores
    item = [Item(ItemKind.EVENT, fields={"due": "2026-01-01T03:00:00.000Z"})]
    first = pipelines.create_scheduled_run("p", ["0:noop"], item, 1767236400.0)
    assert first is not None
    assert pipelines.create_scheduled_run("p", ["0:noop"], item, 1767236400.0) is None
    assert pipelines.create_scheduled_run("q", ["0:noop"], item, 1767236400.0) is not None  # another pipeline's
    pipelines.create_run("p", "manual", ["0:noop"], item)  # runs without a due time never meet the key
    pipelines.create_run("p", "manual", ["0:noop"], item)
    assert [r.due for r in pipelines.runs() if r.pipeline == "p"] == [None, None, 1767236400.0]
    assert pipelines.last_due("p") == 1767236400.0 and pipelines.last_due("none") is None


def test_a_jobs_db_made_before_due_times_gets_the_key(tmp_path: Path) -> None:
    import sqlite3

    from schedulerd.pipelinestore import SQLITE_SCHEMA

    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "jobs.db") as c:
        c.executescript(SQLITE_SCHEMA.replace(", due REAL", ""))
        c.execute("INSERT INTO pipeline_runs(pipeline, trigger, state, steps, input, created) "
                  "VALUES ('p', 'schedule', 'finished', '[]', '[]', 1.0)")
    c.close()
    pipelines = open_pipeline_store(tmp_path / "state", StoreSettings())
    try:
        assert pipelines.runs()[0].due is None and pipelines.last_due("p") is None
        assert pipelines.create_scheduled_run("p", ["0:noop"], [], 5.0) is not None
        assert pipelines.create_scheduled_run("p", ["0:noop"], [], 5.0) is None
    finally:
        pipelines.close()


def test_two_nodes_starting_one_step_at_once_start_it_once_and_the_loser_raises_nothing(
        tmp_path: Path, pg_server: Any, pg_database: str, caplog: pytest.LogCaptureFixture) -> None:
    """Two nodes' drivers (two stores, each its own pool) advance one run at the same moment: both
    read that the step has no row, both insert it. The race is made certain by a lock on
    pipeline_steps held until both wait for it. The step starts once, with one job per part, and
    the node that lost says so at debug level only (before: a unique violation, logged by the
    driver as "could not advance" with its traceback)."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from schedulerd.config import load
    from schedulerd.pgstore import connect
    from schedulerd.pipelinerun import advance

    settings = store_settings(pg_server, pg_database)
    (tmp_path / "s.toml").write_text('[pipelines.p]\nsteps = [{ type = "noop", parallel = 2 }]\n')
    config = load(tmp_path / "s.toml")
    nodes = [open_pipeline_store(tmp_path, settings) for _ in range(2)]
    waiting = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
               "AND wait_event_type = 'Lock'")
    try:
        run = nodes[0].run(nodes[0].create_run("p", "manual", ["0:noop"], _items(3)))
        caplog.set_level(logging.DEBUG, "schedulerd.pipelines")
        with connect(settings, "test") as lock, ThreadPoolExecutor(2) as pool:
            try:
                lock.execute("LOCK TABLE pipeline_steps IN EXCLUSIVE MODE")  # reads pass, inserts wait
                done = [pool.submit(advance, node, config, run) for node in nodes]
                deadline = time.monotonic() + 20
                while pg_server.sql(waiting, pg_database)[0][0] < 2:  # a new session: fresh statistics
                    assert time.monotonic() < deadline and not any(f.done() for f in done), \
                        [f.exception() for f in done if f.done()]
                    time.sleep(0.02)
            finally:
                lock.rollback()  # the lock goes: both inserts go on
            woken = [f.result(timeout=20) for f in done]  # neither raised
        assert sorted(woken, key=len) == [set(), {"pipeline.p.0"}]  # the winner wakes the step's queue
        said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "schedulerd.pipelines"]
        assert said == [(logging.DEBUG, "pipeline p run 1: step 0:noop was started by another node")], said
        steps = nodes[0].steps(run.id)
        assert [(s.step, s.parts) for s in steps] == [(0, 3)]
        with nodes[0].transaction() as c:
            assert c.execute("SELECT count(*) FROM jobs").fetchone()[0] == 3
            assert c.execute("SELECT count(*) FROM pipeline_parts").fetchone()[0] == 3
    finally:
        for node in nodes:
            node.close()


@pytest.mark.parametrize("started, now", [(2, None), (None, 2)], ids=["parallel-then-not", "not-then-parallel"])
def test_a_steps_output_maps_parts_to_items_as_they_were_built_when_parallel_changes_mid_run(
        stores: tuple[Any, Any], tmp_path: Path, started: int | None, now: int | None) -> None:
    """A reload turns `parallel` on or off while the step runs (or a node of the cluster has the
    other setting): the step's output still holds every item's output, once each, in order (before:
    only part 0's output with `parallel` turned off; part 0's output and then the raw input items
    with it turned on)."""
    from schedulerd.config import load
    from schedulerd.pipelinerun import advance

    pipelines, jobs = stores

    def config(parallel: int | None) -> Any:
        path = tmp_path / f"p{parallel}.toml"
        path.write_text(f'[pipelines.p]\nsteps = [{{ type = "noop"{f", parallel = {parallel}" if parallel else ""} }}]\n')
        return load(path)

    items = _items(4)
    run = pipelines.run(pipelines.create_run("p", "manual", ["0:noop"], items))
    assert advance(pipelines, config(started), run) == {"pipeline.p.0"}
    claimed = sorted(jobs.claim_many("pipeline.p.0", "n1", 10), key=lambda j: j.id)
    assert len(claimed) == (4 if started else 1)
    for job in claimed:  # each part's job returns its items marked as done (as archive returns records)
        done = [Item(ItemKind.EVENT, fields={"n": d["fields"]["n"] + "'"}) for d in job.payload["items"]]
        pipelines.set_part_output(run.id, 0, job.payload["part"], done)
    jobs.settle_many([Outcome(j.id, "finished", 0.0, node="n1") for j in claimed])
    advance(pipelines, config(now), run)  # the configuration changed meanwhile
    ended = pipelines.run(run.id)
    assert ended.state.value == "finished", ended
    assert [i.fields["n"] for i in pipelines.step_input(ended)] == ["0'", "1'", "2'", "3'"]
    assert pipelines.steps(run.id)[0].items_out == 4


def test_a_jobs_db_made_before_part_items_and_job_ends_gets_them(tmp_path: Path) -> None:
    """An older jobs.db's steps get `part_items` when it is opened: 1 for a step of more than one
    part (only a parallel step has several), none for a step of one part (both map it alike); its
    parts then keep the end of a job deleted."""
    import sqlite3

    from schedulerd.pipelinestore import SQLITE_SCHEMA

    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "jobs.db") as c:
        c.executescript(SQLITE_SCHEMA.replace(" part_items INTEGER,", "").replace(" job_state TEXT, job_error TEXT,", ""))
        for step, parts in ((0, 3), (1, 1)):
            c.execute("INSERT INTO pipeline_steps(run, step, name, state, items_in, parts, started) "
                      "VALUES (1, ?, 'x', 'running', 3, ?, 1.0)", (step, parts))
    c.close()
    pipelines = open_pipeline_store(tmp_path / "state", StoreSettings())
    try:
        with pipelines.transaction() as t:
            assert t.execute("SELECT step, part_items FROM pipeline_steps ORDER BY step").fetchall() == [(0, 1), (1, None)]
            t.execute("INSERT INTO jobs(id, type, queue, payload, next_attempt_at, state, error, created) "
                      "VALUES (7, 'noop', 'q', '{}', 0, 'failed', 'boom', 0)")
            t.execute("INSERT INTO pipeline_parts(run, step, part, job) VALUES (1, 0, 0, 7)")
            t.execute("DELETE FROM jobs WHERE id=7")
            assert t.execute("SELECT job_state, job_error FROM pipeline_parts").fetchall() == [("failed", "boom")]
    finally:
        pipelines.close()


def test_a_failed_part_whose_job_is_purged_before_the_driver_looks_fails_the_run(
        stores: tuple[Any, Any], tmp_path: Path) -> None:
    """The retention (or job:purge) deletes a part's failed job before the driver looked: the step
    and the run fail with the job's error (before: a part whose job was gone counted as finished,
    and the run passed). A part whose job went without its end recorded (a step started before
    the parts kept it) fails the step, saying so."""
    from schedulerd.config import load
    from schedulerd.pipelinerun import advance

    pipelines, jobs = stores
    (tmp_path / "s.toml").write_text('[pipelines.p]\nsteps = [{ type = "noop", parallel = 2 }]\n')
    config = load(tmp_path / "s.toml")
    runs = [pipelines.run(pipelines.create_run("p", "manual", ["0:noop"], _items(3))) for _ in range(2)]
    for run in runs:
        assert advance(pipelines, config, run) == {"pipeline.p.0"}
    claimed = sorted(jobs.claim_many("pipeline.p.0", "n1", 10), key=lambda j: j.id)
    assert len(claimed) == 6
    jobs.settle_many([Outcome(j.id, "failed" if j.payload["part"] == 1 else "finished", 0.0, error="disk full",
                              node="n1") for j in claimed])
    assert jobs.purge(["finished", "failed"]) == 6  # before the driver looked
    with pipelines.transaction() as c:  # the second run's step as one started before parts kept their end
        c.execute("UPDATE pipeline_parts SET job_state=NULL, job_error=NULL WHERE run=?", (runs[1].id,))
    for run in runs:
        advance(pipelines, config, run)
    failed, lost = (pipelines.run(r.id) for r in runs)
    job = next(j.id for j in claimed if j.payload["run"] == runs[0].id and j.payload["part"] == 1)
    assert failed.state.value == "failed" and failed.error == f"step 0 (0:noop): job {job} failed: disk full", failed
    assert pipelines.steps(failed.id)[0].error == f"job {job} failed: disk full"
    first = next(j.id for j in claimed if j.payload["run"] == runs[1].id and j.payload["part"] == 0)
    assert lost.state.value == "failed", lost
    assert lost.error == f"step 0 (0:noop): part 0's job {first} was deleted before its end was recorded", lost
