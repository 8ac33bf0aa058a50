"""One transition point for tasks and jobs (issue 19): the tables in schedulerd.states are what
the code does, an arrow they do not hold raises, and job states change only through jobstore.move."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from schedulerd.config import load
from schedulerd.jobstore import Outcome, move, open_job_store
from schedulerd.runner import RunnerEnv, TaskRunner
from schedulerd.states import (
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    IllegalTransition,
    JobState,
    TaskState,
    Wanted,
    check_job,
    check_task,
)
from schedulerd.store import open_store

CONSOLE = Path(__file__).resolve().parents[2] / "bin" / "console"
ARROW = re.compile(r"state (\w+) -> (\w+)")


def _arrows(site) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for log in (site.var / "log").glob("task-*.log"):
        found |= set(ARROW.findall(log.read_text()))
    return found


def test_every_arrow_the_daemon_takes_is_in_the_table(site, tmp_path):
    """success, failure, backoff, crash, task:start after a crash, run-now, a skip (one-shot holds
    the lock), stop while waiting and while running: each arrow is allowed, and none raised."""
    flag, hold = tmp_path / "fail", tmp_path / "held"
    flag.touch()
    site.write(f"""
[tasks.flaky]
type = "command"
period = "1h"
argv = ["sh", "-c", "test ! -e {flag}"]

[tasks.long]
type = "command"
period = "1h"
argv = ["sh", "-c", "touch {hold}; sleep 30"]
""", scheduler='max_crashes = 3\nlog_level = "debug"\n')
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    one_shot = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "task:run", "long", "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        site.wait_for(hold.exists, what="the one-shot to hold the lock of task long")
        site.console("scheduler:start", check=True)
        site.wait_for(lambda: site.task("flaky")["state"] == "crashed", what="three failures")
        site.wait_for(lambda: site.task("long")["state"] == "waiting", what="the skipped first iteration")
    finally:
        one_shot.kill()
        one_shot.wait()
    flag.unlink()
    site.console("task:start", "flaky", check=True)
    site.wait_for(lambda: site.task("flaky")["runs"] == 4, what="the iteration after task:start")
    site.console("task:run-now", "flaky", check=True)
    site.wait_for(lambda: site.task("flaky")["runs"] == 5, what="the run-now iteration")
    site.console("task:run-now", "long", check=True)
    site.wait_for(lambda: site.task("long")["state"] == "running", what="long running")
    site.console("task:stop", "long", check=True)
    site.console("task:stop", "flaky", check=True)
    assert site.console("scheduler:state").returncode == 10  # the daemon is still up
    site.console("scheduler:stop", check=True)

    seen = _arrows(site)
    allowed = {(a.value, b.value) for a, targets in TASK_TRANSITIONS.items() for b in targets}
    assert seen <= allowed, seen - allowed
    assert seen >= {("stopped", "starting"), ("starting", "running"), ("running", "backoff"),
                    ("backoff", "running"), ("running", "crashed"), ("crashed", "starting"),
                    ("running", "waiting"), ("waiting", "running"), ("starting", "waiting"),
                    ("running", "stopping"), ("waiting", "stopping"), ("stopping", "stopped")}
    assert "IllegalTransition" not in site.log() + site.log("flaky") + site.log("long")


def test_an_illegal_arrow_raises():
    with pytest.raises(IllegalTransition, match="stopped -> running"):
        check_task(TaskState.STOPPED, TaskState.RUNNING)
    with pytest.raises(IllegalTransition, match="finished -> waiting"):
        check_job(JobState.FINISHED, JobState.WAITING)
    assert set(TASK_TRANSITIONS) == set(TaskState) and set(JOB_TRANSITIONS) == set(JobState)


def test_the_runner_refuses_an_arrow_the_table_does_not_hold(site):
    """TaskRunner's one place of change checks the table: stopped -> running (an iteration
    without a start) is a bug, and raises."""
    site.write('[tasks.t]\ntype = "command"\nargv = ["true"]\n')
    config = load(site.config)
    store = open_store(config.scheduler.state_dir)
    try:
        env = RunnerEnv(config, store, config.scheduler.state_dir / "locks")
        runner = TaskRunner(config.tasks["t"], env, Wanted.STARTED)
        with pytest.raises(IllegalTransition):
            runner._change(TaskState.RUNNING)
        assert runner.state is TaskState.STOPPED

        async def start_and_stop() -> None:
            async with anyio.create_task_group() as tg:
                runner.start(tg)
                await anyio.sleep(0.3)
                await runner.stop(2)
        anyio.run(start_and_stop)
        assert runner.state is TaskState.STOPPED and runner.runs >= 1
    finally:
        store.close()


def test_a_stop_that_comes_while_a_start_is_written_ends_the_task_without_running_it(site, caplog):
    """A scheduled start writes its cursor before its iteration (a store call: a worker thread);
    a stop that comes meanwhile is seen when the write returns: no iteration, no stopping ->
    running (which raised in the daemon's task group and ended the daemon), and the cursor is
    written back, so the start is not lost. Here the write waits
    for a lock another connection holds on schedulerd.db; under a lease the same wait is the
    database recording the start."""
    import sqlite3

    site.write('[tasks.t]\ntype = "command"\nargv = ["true"]\nschedule = "* * * * *"\ncatch_up = true\n')
    config = load(site.config)
    store = open_store(config.scheduler.state_dir)
    caplog.set_level(logging.INFO, logger="schedulerd.task.t")
    missed = time.time() - 3600
    store.set_value("schedule.cursor.t", repr(missed))  # a start missed an hour ago: due at once
    holder = sqlite3.connect(config.scheduler.state_dir / "schedulerd.db", isolation_level=None)
    try:
        env = RunnerEnv(config, store, config.scheduler.state_dir / "locks")
        runner = TaskRunner(config.tasks["t"], env, Wanted.STARTED)

        async def stop_during_the_write() -> None:
            async with anyio.create_task_group() as tg:
                holder.execute("BEGIN IMMEDIATE")  # the cursor's write waits for this lock
                runner.start(tg)
                await anyio.sleep(0.5)
                tg.start_soon(runner.stop, 5)
                await anyio.sleep(0.3)
                assert runner.state is TaskState.STOPPING
                holder.execute("ROLLBACK")
        anyio.run(stop_during_the_write)
        assert runner.state is TaskState.STOPPED and runner.runs == 0
        assert float(store.get_value("schedule.cursor.t")) == missed  # written back: the start stays due
        assert "the start is left due" in caplog.text
    finally:
        holder.close()
        store.close()


def test_move_refuses_an_illegal_arrow(tmp_path):
    store = open_job_store(tmp_path)
    try:
        jid = store.add("command", "default", {"argv": ["true"]})
        with store.transaction() as c, pytest.raises(IllegalTransition, match="waiting -> finished"):
            move(c, [jid], (JobState.WAITING,), JobState.FINISHED)
        with pytest.raises(ValueError, match="no column payload"):
            with store.transaction() as c:
                move(c, [jid], (JobState.WAITING,), JobState.RUNNING, payload="{}")
        assert store.get(jid).state is JobState.WAITING
        with store.transaction() as c:
            assert move(c, [jid], (JobState.RUNNING,), JobState.WAITING) == 0  # not running: left alone
            assert move(c, [jid], (JobState.WAITING,), JobState.CANCELLED) == 1
    finally:
        store.close()


def test_a_failed_attempt_does_not_overwrite_a_cancel_made_meanwhile(tmp_path):
    """The daemon's attempt failed and its outcome waits for the settler while job:cancel (another
    process, its own connection) cancels the job: the cancel stands, the dependents fail once."""
    daemon, cli = open_job_store(tmp_path), open_job_store(tmp_path)
    try:
        jid = daemon.add("command", "default", {"argv": ["false"]})
        dependent = daemon.add("command", "default", {"argv": ["true"]}, deps=[jid])
        assert [j.id for j in daemon.claim_many("default", "node", 5)] == [jid]
        cli.cancel(jid)
        daemon.settle_many([Outcome(jid, "failed", time.time(), error="RuntimeError: boom")])
        job = cli.get(jid)
        assert job.state is JobState.CANCELLED and job.error is None
        assert cli.get(dependent).error == f"dependency #{jid} was cancelled"
    finally:
        daemon.close()
        cli.close()
