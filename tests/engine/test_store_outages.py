"""The store going away under a daemon that runs jobs (issue 20): PostgreSQL stopped for 30 s
and started again, and a SQLite jobs.db write-locked by another process for 40 s. The daemon
survives, says so once in scheduler.log, and afterwards every job has finished exactly once:
each attempt records its start and its end in a file (an attempt cut by the outage records no
end and runs again; none ends twice, none overlaps another attempt of its job).

Slow (the outages are the issue's lengths); run by the default `pytest` and so by .ci/run."""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.conftest import Site, hold_write_lock, ping_seconds, stop_site
from tests.pgserver import PASSWORD, PgServer

PY = sys.executable
N = 40
# an attempt: "start LABEL PID" then, 0.3 s later, "end LABEL PID" (appends are atomic lines)
ATTEMPT = ("import os, sys, time; f = open(sys.argv[1], 'a'); "
           "f.write(f'start {sys.argv[2]} {os.getpid()}\\n'); f.flush(); time.sleep(0.3); "
           "f.write(f'end {sys.argv[2]} {os.getpid()}\\n'); f.close()")
CONFIG = """
[jobs.types.command]
max_attempts = 5
retry_delay = "200ms"

[jobs]
keep_finished = 100000

[queues.default]
workers = 2
"""

pytestmark = pytest.mark.slow


def add_jobs(site: Site, out: Path) -> list[int]:
    """N jobs straight into the site's job store (the CLI's job:add, without a process per job)."""
    from schedulerd.config import load
    from schedulerd.jobadd import add_job
    from schedulerd.stores import open_job_store

    config = load(site.config)
    store = open_job_store(config.scheduler, config.store)
    try:
        return [add_job(store, config, "command", {"argv": [PY, "-c", ATTEMPT, str(out), f"j{i}"]})[0]
                for i in range(N)]
    finally:
        store.close()


def ended(out: Path) -> int:
    return out.read_text().count("end ") if out.exists() else 0


def check_each_finished_once(out: Path, site: Site, ids: list[int]) -> None:
    """Every label ended exactly once; no two attempts of one label ran at once; the store agrees."""
    lines = [line.split() for line in out.read_text().splitlines()]
    ends = collections.Counter(label for kind, label, _ in lines if kind == "end")
    assert ends == {f"j{i}": 1 for i in range(N)}, ends
    open_attempts: dict[str, set[str]] = collections.defaultdict(set)
    for kind, label, pid in lines:
        if kind == "start":
            # an earlier attempt of the label that never ended was cut (killed): only one may be open
            assert not open_attempts[label] - {p for p in open_attempts[label] if not alive(p)}, (label, lines)
            open_attempts[label] = {pid}
        else:
            open_attempts[label].discard(pid)
    jobs = {j["id"]: j for j in finished_or_not(site)}
    assert all(jobs[i]["state"] == "finished" for i in ids), [jobs[i] for i in ids if jobs[i]["state"] != "finished"]


def finished_or_not(site: Site) -> list[dict]:
    r = site.console("job:list", "--limit", "1000", "--json")
    return json.loads(r.stdout) if r.returncode == 0 else []


def finished(site: Site) -> int:
    return sum(j["state"] == "finished" for j in finished_or_not(site))


def alive(pid: str) -> bool:
    return os.path.exists(f"/proc/{pid}")


def said_once(log: str, pattern: str) -> None:
    """Each store-failure message (timestamps aside) appears at most once, and at least one does."""
    found = [re.sub(r"^\S+ ", "", line) for line in log.splitlines() if re.search(pattern, line)]
    assert found, log
    assert len(found) == len(set(found)), found


def start_pg_site(site: Site, server: PgServer, db: str, out: Path) -> list[int]:
    site.write(f"""
[store]
url = "{server.url(db)}"
password = "env:SCHEDULERD_TEST_PGPASS"
lease = "3s"
store_retry = "1s"
""" + CONFIG)
    ids = add_jobs(site, out)
    site.console("scheduler:start", check=True)
    return ids


def start_sqlite_site(site: Site, out: Path) -> list[int]:
    # a store call waits 2 s for the lock and is retried after 0.5 s doubling to 30 s: its tries
    # begin 25.5 s and 43.5 s after its first one, which straddle the 40 s lock's end; with a 1 s
    # wait they were 38.5 s and 69.5 s (the jobs resumed ~30 s after the lock went)
    site.write(CONFIG, scheduler='store_busy_timeout = "2s"\n')
    ids = add_jobs(site, out)
    site.console("scheduler:start", check=True)
    return ids


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Site]:
    """A second daemon's site beside `site`, stopped at the end like it."""
    s = Site(tmp_path / "lite")
    yield s
    stop_site(s)


def test_daemons_survive_postgresql_stopped_for_30s_and_jobs_db_locked_for_40s_and_each_job_finishes_once(
        pg_server: PgServer, pg_database, site, lite, tmp_path, monkeypatch) -> None:
    """Two daemons, two outages at once (the suite waits for them once, not one after the other):
    `site` runs its jobs on PostgreSQL, stopped for 30 s; `lite` on SQLite, whose jobs.db another
    process write-locks for 40 s. Each daemon survives, says it once, and every job of each ends
    exactly once afterwards."""
    monkeypatch.setenv("SCHEDULERD_TEST_PGPASS", PASSWORD)
    pg_out, lite_out = tmp_path / "pg-attempts", tmp_path / "lite-attempts"
    pg_ids, lite_ids = start_pg_site(site, pg_server, pg_database, pg_out), start_sqlite_site(lite, lite_out)
    pg_pid, lite_pid = site.pid(), lite.pid()
    site.wait_for(lambda: ended(pg_out) >= 4 and ended(lite_out) >= 4, 30, "the first jobs to end on both")
    locker = hold_write_lock(lite.var / "state" / "jobs.db", 40)
    try:
        pg_server.stop()
        try:
            stopped = time.monotonic()
            site.wait_for(lambda: "the store does not answer" in site.log(), 15, "the outage said")
            lite.wait_for(lambda: "database is locked" in lite.log(), 20, "the lock said")
            for s in (site, lite):
                assert max(ping_seconds(s) for _ in range(3)) < 1.0  # the loop is not stuck on the store
            during = ended(lite_out)
            time.sleep(10)
            assert ended(lite_out) <= during + 2  # the running ones end; nothing new starts meanwhile
            time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
            assert site.pid() == pg_pid and os.path.exists(f"/proc/{pg_pid}")
        finally:
            pg_server.start()
        assert lite.pid() == lite_pid and os.path.exists(f"/proc/{lite_pid}")
    finally:
        locker.wait(60)
    site.wait_for(lambda: finished(site) == N, 120, "every job finished on PostgreSQL")
    lite.wait_for(lambda: finished(lite) == N, 120, "every job finished on SQLite")
    check_each_finished_once(pg_out, site, pg_ids)
    check_each_finished_once(lite_out, lite, lite_ids)
    log = site.log()
    assert log.count("the store does not answer") == 1, log
    said_once(log, r"the store failed|job notifications lost")
    log = lite.log()
    said_once(log, r"the store failed \(OperationalError: database is locked\)")
    for log in (site.log(), lite.log()):
        assert "Traceback" not in log
    os.kill(pg_pid, 0)  # the same daemons, alive
    os.kill(lite_pid, 0)


def records_in(db: Path) -> list[int]:
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return []
    try:
        return [r[0] for r in conn.execute("SELECT id FROM records")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def archive_site(site, more_tasks: str, scheduler: str):
    """A databox with a collection, a hotfolder and an archive task `inbox` (period 200 ms) that
    queues a subdefCreation job per record into `subdefs`, a queue no worker takes; returns
    (hotfolder, databox settings)."""
    from repository import DataboxSettings, open_databox

    hot, box = site.var / "hot", DataboxSettings(site.var / "main.sqlite", site.var / "storage")
    hot.mkdir(parents=True)
    (hot / ".phrasea.xml").write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\n<record/>\n')
    with open_databox(box) as db:
        db.create_collection("photos")
    site.write(f"""
[databoxes.main]
path = "{box.path}"
storage = "{box.storage}"

[tasks.inbox]
type = "archive"
period = "200ms"
databox = "main"
collection = "photos"
hotfolder = "{hot}"
cold = 0

{more_tasks}
[queues.subdefs]
workers = 0
""", scheduler=scheduler)
    return hot, box


def test_jobs_a_task_queues_while_jobs_db_is_locked_wait_off_the_loop_and_are_not_lost(site) -> None:
    """An archive task queues a subdefCreation job per new record (`ctx.add_job`) while another
    process holds jobs.db's write lock: the control socket and another task keep answering on
    time meanwhile, and once the lock goes every record has its job."""
    # a write gives up before the lock goes
    hot, box = archive_site(site, '[tasks.tick]\ntype = "noop"\nperiod = "100ms"\n', 'store_busy_timeout = "2s"\n')
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: (site.var / "state" / "jobs.db").exists(), 15, "jobs.db")
    locker = hold_write_lock(site.var / "state" / "jobs.db", 6)
    try:
        for i in range(5):
            (hot / f"f{i}.bin").write_bytes(f"file {i} ".encode() + os.urandom(8))
        site.wait_for(lambda: len(records_in(box.path)) == 5, 5, "the records archived while jobs.db is locked")
        pings = [ping_seconds(site) for _ in range(10)]
        assert max(pings) < 1.0, pings  # the loop is not waiting for jobs.db
        ticks = site.task("tick")["runs"]
        site.wait_for(lambda: site.task("tick")["runs"] > ticks + 5, 2, "the other task's iterations")
        assert locker.poll() is None  # all of it while the lock was held
    finally:
        locker.wait(30)
    ids = records_in(box.path)

    def queued() -> set[int]:
        return {j["payload"]["record"] for j in finished_or_not(site) if j["type"] == "subdefCreation"}
    site.wait_for(lambda: queued() == set(ids), 20, "a job per record once the lock went")
    assert site.pid() is not None


def test_a_daemon_stopped_while_an_archive_task_waits_to_queue_a_records_job_still_queues_it(site) -> None:
    """The archive task commits a record, then queues its job (`ctx.add_job`) while another process
    holds jobs.db's write lock; the daemon is stopped meanwhile and cuts the task after its
    stop_timeout. The add, cancelled, still writes its job once the lock goes (within ADD_GRACE):
    after the daemon ended every record has its job, none twice. Before, the cancel dropped it."""
    import sqlite3

    from schedulerd.client import Client

    hot, box = archive_site(site, "", 'store_busy_timeout = "1s"\nstop_timeout = "1s"\n')
    site.console("scheduler:start", check=True)
    pid = site.pid()
    jobs_db = site.var / "state" / "jobs.db"
    site.wait_for(lambda: jobs_db.exists(), 15, "jobs.db")
    locker = hold_write_lock(jobs_db, 6)
    try:
        (hot / "f0.bin").write_bytes(b"file 0 " + os.urandom(8))
        site.wait_for(lambda: len(records_in(box.path)) == 1, 5, "the record archived while jobs.db is locked")
        Client(site.socket, 5).call("shutdown")
        assert locker.poll() is None  # stopped while the lock was held
    finally:
        locker.wait(30)
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the daemon did not end"
    with sqlite3.connect(jobs_db) as c:
        queued = [json.loads(p)["record"] for t, p in c.execute("SELECT type, payload FROM jobs")
                  if t == "subdefCreation"]
    assert sorted(queued) == sorted(records_in(box.path)), (queued, site.log())
