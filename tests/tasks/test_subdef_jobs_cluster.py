"""Issue 21's multi-host test: 200 images archived on a PostgreSQL databox, their `subdefCreation`
jobs in a [store] on the same PostgreSQL server, built by two `worker:execute` processes and the
daemon; one worker killed -9 mid-way has its jobs finished by the others once its heartbeat (a 2 s
[store] lease) expired. Each record built once, every thumbnail and preview of the right size."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from repository import DataboxSettings, open_databox
from schedulerd.settings import Secret
from tests.engine.conftest import CONSOLE, Site, site  # noqa: F401  (fixture)
from tests.pgserver import PASSWORD, PgServer, pg_database, pg_server  # noqa: F401  (fixtures)

N = 200
SIZES = {"thumbnail": 240, "preview": 1024}
SHAPES = ((1600, 1200), (1200, 1600), (1500, 1000), (1100, 1100), (2000, 800))


def fitted(w: int, h: int, box: int) -> tuple[int, int]:
    """The size a sub-definition of `box` pixels has: the longest side `box`, never enlarged."""
    scale = min(1.0, box / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def config(server: PgServer, store_db: str, box_db: str, hot: Path) -> str:
    return f"""
        [store]
        url = "{server.url(store_db)}"
        password = "env:SCHEDULERD_TEST_PGPASS"
        lease = "2s"
        [databoxes.main]
        url = "{server.url(box_db)}"
        password = "env:SCHEDULERD_TEST_PGPASS"
        storage = "var/storage"
        [tasks.inbox]
        type = "archive"
        databox = "main"
        collection = "inbox"
        hotfolder = "{hot}"
        cold = 0
        bootstrap = true
        period = "1h"
        [jobs.types.subdefCreation]
        max_attempts = 3
        retry_delay = "200ms"
        [queues.subdefCreation]
        workers = 1
        """


def worker(site: Site, node: str) -> subprocess.Popen:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    return subprocess.Popen([str(CONSOLE), "--config", str(site.config), "worker:execute", "--queue-name",
                             "subdefCreation", "-m", "2", "--node", node],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=site.root)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_workers_and_the_daemon_build_every_record_once_a_killed_workers_jobs_finished_by_others(  # noqa: F811
        pg_server: PgServer, pg_database: str, site: Site, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("SCHEDULERD_TEST_PGPASS", PASSWORD)
    box_db = pg_server.database(template="template0")
    hot = site.root / "hot"
    site.write(config(pg_server, pg_database, box_db, hot), scheduler='node = "daemon"\n')
    site.console("task:run", "inbox", "--no-progress", check=True)  # bootstrap: the hotfolder and databox
    rng = random.Random(21)
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(N):
        w, h = SHAPES[i % len(SHAPES)]
        name = f"img{i:03d}.jpg"
        Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(hot / name)
        shapes[name] = (w, h)
    site.console("task:run", "inbox", "--no-progress", check=True, timeout=120)
    jobs = lambda sql: pg_server.sql(sql, pg_database)  # noqa: E731
    assert jobs("SELECT count(*), count(DISTINCT payload->>'record') FROM jobs WHERE type = 'subdefCreation' "
                "AND state = 'waiting'") == [(N, N)]

    a, b = worker(site, "wA"), worker(site, "wB")
    try:
        site.console("scheduler:start", check=True)
        # kill -9 wA while it runs a job, once it has built some: the claims it holds are orphaned
        wait_for(lambda: jobs("SELECT count(*) FROM jobs WHERE node = 'wA' AND state = 'finished'")[0][0] >= 10,
                 60, "wA finishing 10 jobs")
        wait_for(lambda: jobs("SELECT 1 FROM jobs WHERE node = 'wA' AND state = 'running'"), 30, "wA running a job")
        a.kill()
        a.wait(10)
        orphans = [r[0] for r in jobs("SELECT id FROM jobs WHERE node = 'wA' AND state = 'running'")]
        wait_for(lambda: jobs("SELECT count(*) FROM jobs WHERE state = 'finished'")[0][0] == N, 90,
                 f"{N} jobs finished")
    finally:
        a.kill()
        b.send_signal(signal.SIGTERM)
        b_out = b.communicate(timeout=30)[0]
    rows = jobs("SELECT id, payload->>'record', node, attempts, summary FROM jobs WHERE type = 'subdefCreation'")
    assert len(rows) == N and len({r[1] for r in rows}) == N
    by_node = {node: sum(1 for r in rows if r[2] == node) for node in ("wA", "wB", "daemon")}
    assert all(by_node.values()), (by_node, b_out)  # every process built some
    # the killed worker's running jobs were finished by the others, in a second attempt
    assert orphans, "wA was killed between two jobs"
    for jid, _, node, attempts, _ in (r for r in rows if r[0] in orphans):
        assert node != "wA" and attempts == 2, (jid, node, attempts)
    assert all(r[3] == 1 for r in rows if r[0] not in orphans)  # the others: claimed once
    # built once: each job built its record, except an orphan whose build wA had finished before the kill
    built = [r for r in rows if r[4].endswith(" built") and "already built" not in r[4]]
    already = [r for r in rows if "already built" in r[4]]
    assert len(built) + len(already) == N and all(r[0] in orphans for r in already), rows

    settings = DataboxSettings(url=pg_server.url(box_db), password=Secret(PASSWORD), storage=site.root / "var/storage")
    with open_databox(settings, create=False) as db:
        records = db.list_records(with_fields=False)
        assert len(records) == N
        for rec in records:
            assert rec.subdefs_version == rec.doc_version, rec.label
            made = db.subdefs(rec.id)
            assert set(made) == set(SIZES), rec.label
            w, h = shapes[rec.original_name]
            for name, box in SIZES.items():
                sd = made[name]
                with Image.open(sd.path) as im:
                    assert im.size == (sd.width, sd.height) == fitted(w, h, box), (rec.label, name, im.size)
    pg_server.drop(box_db)
