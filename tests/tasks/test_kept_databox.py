"""A `worker:execute` process keeps its databox open between `subdefCreation` jobs (repository.kept),
and opens it afresh when the database went away: SQLite files removed then made again, a
PostgreSQL database dropped then made again. Real worker process, real databox, real images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from repository import DataboxSettings, open_databox
from schedulerd.settings import Secret
from tests.engine.conftest import CONSOLE, Site, site  # noqa: F401  (fixture)
from tests.pgserver import PASSWORD, USER, PgServer, pg_server  # noqa: F401  (fixture)


class Box:
    """The databox on one back-end: made, removed, and whether the worker holds it open."""

    def __init__(self, backend: str, site: Site, request: pytest.FixtureRequest):  # noqa: F811
        self.backend, self.site = backend, site
        storage = site.root / "var" / "storage"
        if backend == "postgresql":
            self.server: PgServer = request.getfixturevalue("pg_server")
            self.db = self.server.database(template="template0")
            request.addfinalizer(lambda: self.server.sql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)'))
            self.where = f'url = "{self.server.url(self.db)}"\npassword = "{PASSWORD}"'
            self.settings = DataboxSettings(url=self.server.url(self.db), password=Secret(PASSWORD), storage=storage)
        else:
            self.path = site.root / "var" / "main.sqlite"
            self.where = 'path = "var/main.sqlite"'
            self.settings = DataboxSettings(self.path, storage)

    def make(self, colour: str, size: tuple[int, int]) -> None:
        """A new databox with one record (id 1) of a `size` image."""
        if self.backend == "postgresql" and not self.server.sql(f"SELECT 1 FROM pg_database WHERE datname = '{self.db}'"):
            self.server.sql(f'CREATE DATABASE "{self.db}" OWNER {USER} TEMPLATE template0')
        src = self.site.root / f"{colour}.jpg"
        Image.new("RGB", size, colour).save(src)
        with open_databox(self.settings) as db:
            assert db.create_record(db.create_collection("inbox").id, src).id == 1

    def remove(self) -> None:
        if self.backend == "postgresql":
            self.server.sql(f'DROP DATABASE "{self.db}" WITH (FORCE)')
        else:
            for p in self.path.parent.glob("main.sqlite*"):
                p.unlink()

    def held_by(self, pid: int) -> bool:
        """Whether process `pid` has the databox open now."""
        if self.backend == "postgresql":
            return bool(self.server.sql(
                f"SELECT 1 FROM pg_stat_activity WHERE datname = '{self.db}' "
                "AND application_name = 'schedulerd databox'"))
        fds = Path(f"/proc/{pid}/fd")
        return any(os.readlink(fd) == str(self.path) for fd in fds.iterdir() if fd.is_symlink())

    def thumbnail_width(self) -> int | None:
        with open_databox(self.settings, create=False) as db:
            sd = db.subdefs(1).get("thumbnail")
            return None if sd is None else sd.width


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_worker_keeps_its_databox_open_between_jobs_and_reopens_one_that_went_away(
        backend: str, site: Site, request: pytest.FixtureRequest) -> None:  # noqa: F811
    box = Box(backend, site, request)
    site.write(f"""
        [databoxes.main]
        {box.where}
        storage = "var/storage"
        [jobs.types.subdefCreation]
        max_attempts = 1
        [queues.subdefCreation]
        workers = 0
        """)
    box.make("red", (300, 200))
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    worker = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "worker:execute", "--queue-name",
                               "subdefCreation", "-m", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=site.root)

    def run_job() -> dict:
        jid = site.console("job:add", "subdefCreation", "--payload", json.dumps({"databox": "main", "record": 1}),
                           check=True).stdout.strip()
        return site.wait_for(lambda: (j := site.json("job:show", jid)) and j["state"] in ("finished", "failed") and j,
                             60, f"job {jid} to end")

    try:
        job = run_job()
        assert job["state"] == "finished" and "thumbnail" in job["summary"], job
        assert box.thumbnail_width() == 240
        assert box.held_by(worker.pid), "the worker closed its databox after the job"

        box.remove()  # the worker's open databox is now of a database nobody reads: not written to
        if backend == "sqlite":  # (a PostgreSQL database that is gone fails after the pool's 15 s timeout)
            job = run_job()
            assert job["state"] == "failed" and "does not exist yet" in job["error"], job

        box.make("blue", (200, 100))  # a new databox: its record 1 is not built yet
        job = run_job()
        assert job["state"] == "finished" and "thumbnail" in job["summary"], job
        assert box.thumbnail_width() == 200  # written into the new databox (its image is 200 wide)
        assert box.held_by(worker.pid)
    finally:
        worker.send_signal(signal.SIGTERM)
        out = worker.communicate(timeout=30)[0]
    assert worker.returncode == 0, out
