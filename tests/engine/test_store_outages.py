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
from pathlib import Path

import pytest

from tests.engine.conftest import Site, hold_write_lock, ping_seconds
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
    from schedulerd.jobs import add_job
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


def test_a_daemon_survives_postgresql_stopped_for_30s_and_each_job_finishes_once(
        pg_server: PgServer, pg_database, site, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCHEDULERD_TEST_PGPASS", PASSWORD)
    site.write(f"""
[store]
url = "{pg_server.url(pg_database)}"
password = "env:SCHEDULERD_TEST_PGPASS"
lease = "3s"
store_retry = "1s"
""" + CONFIG)
    out = tmp_path / "attempts"
    ids = add_jobs(site, out)
    site.console("scheduler:start", check=True)
    pid = site.pid()
    site.wait_for(lambda: ended(out) >= 4, 30, "the first jobs to end")
    pg_server.stop()
    try:
        stopped = time.monotonic()
        site.wait_for(lambda: "the store does not answer" in site.log(), 15, "the outage said")
        assert max(ping_seconds(site) for _ in range(3)) < 1.0  # the loop is not stuck on the store
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        assert site.pid() == pid and os.path.exists(f"/proc/{pid}")
    finally:
        pg_server.start()
    site.wait_for(lambda: finished(site) == N, 120, "every job finished")
    check_each_finished_once(out, site, ids)
    log = site.log()
    assert log.count("the store does not answer") == 1, log
    said_once(log, r"the store failed|job notifications lost")
    assert "Traceback" not in log
    os.kill(pid, 0)  # the same daemon, alive


def test_a_daemon_survives_jobs_db_locked_for_40s_and_each_job_finishes_once(site, tmp_path) -> None:
    site.write(CONFIG, scheduler='store_busy_timeout = "1s"\n')
    out = tmp_path / "attempts"
    ids = add_jobs(site, out)
    site.console("scheduler:start", check=True)
    pid = site.pid()
    site.wait_for(lambda: ended(out) >= 4, 30, "the first jobs to end")
    locker = hold_write_lock(site.var / "state" / "jobs.db", 40)
    try:
        site.wait_for(lambda: "database is locked" in site.log(), 20, "the lock said")
        assert max(ping_seconds(site) for _ in range(3)) < 1.0
        during = ended(out)
        time.sleep(10)
        assert ended(out) <= during + 2  # the running ones end; nothing new starts meanwhile
        assert site.pid() == pid and os.path.exists(f"/proc/{pid}")
    finally:
        locker.wait(60)
    site.wait_for(lambda: finished(site) == N, 120, "every job finished")
    check_each_finished_once(out, site, ids)
    log = site.log()
    said_once(log, r"the store failed \(OperationalError: database is locked\)")
    assert "Traceback" not in log
    os.kill(pid, 0)


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


def test_jobs_a_task_queues_while_jobs_db_is_locked_wait_off_the_loop_and_are_not_lost(site, tmp_path) -> None:
    """An archive task queues a subdefCreation job per new record (`ctx.add_job`) while another
    process holds jobs.db's write lock: the control socket and another task keep answering on
    time meanwhile, and once the lock goes every record has its job."""
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

[tasks.tick]
type = "noop"
period = "100ms"

[queues.subdefs]
workers = 0
""", scheduler='store_busy_timeout = "2s"\n')  # a write gives up before the lock goes
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
