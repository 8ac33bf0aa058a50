"""`ctx.add_job` made once however its store write ends (review item: duplicates on PostgreSQL).

A connection that drops after the server committed the add's INSERT raises OperationalError in
the daemon; store.store_call retries the add, which must find the job the first try made instead
of inserting it again. Made real and deterministic with a TCP relay between the job service and
a real PostgreSQL (tests/pgserver.py): once armed, the relay passes the server's reply to the
next COMMIT to no one and closes both sides, exactly what a network cut at that moment does.
The server has committed (PostgreSQL sends CommandComplete "COMMIT" after the commit), the
client sees its connection lost.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.engine.conftest import Site
from tests.pgserver import PASSWORD, PgServer

if TYPE_CHECKING:
    from schedulerd.jobs import JobService

# PostgreSQL's CommandComplete message for COMMIT: 'C', int32 length (4 + 7), "COMMIT\0"
COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"


class CuttingRelay:
    """127.0.0.1:port -> the server; `arm()`: the next COMMIT's reply is lost with its connection."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cut = threading.Event()  # set once a connection was cut after a COMMIT
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        self.armed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                seen = tail + data
                if from_server and self.armed.is_set() and COMMIT_DONE in seen:
                    self.armed.clear()
                    self.cut.set()
                    break
                tail = seen[-len(COMMIT_DONE):]
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


def relayed_service(pg_server: PgServer, pg_database: str, tmp_path: Path) -> tuple[JobService, CuttingRelay]:
    """A JobService on the test's database, through a CuttingRelay."""
    from schedulerd.config import load
    from schedulerd.jobs import JobService

    relay = CuttingRelay(pg_server.port)
    site = Site(tmp_path / "site")
    site.write(f"""
[store]
url = "postgresql://schedulerd@127.0.0.1:{relay.port}/{pg_database}"
password = "{PASSWORD}"
""")
    config = load(site.config)
    return JobService(config, config.scheduler.state_dir, lambda name: None), relay


@pytest.mark.anyio
async def test_an_add_whose_commit_reply_is_lost_is_retried_into_the_same_job(
        pg_server: PgServer, pg_database: str, tmp_path: Path) -> None:
    """JobService.add (ctx.add_job in the daemon) through the relay: the first try's COMMIT is
    done on the server but its reply lost; the retry makes no second job and returns the first's id."""
    service, relay = relayed_service(pg_server, pg_database, tmp_path)
    try:
        relay.arm()
        jid = await service.add("noop", {"record": 7})
        assert relay.cut.is_set()  # the first try's reply was lost: the add was retried
    finally:
        service.store.close()
        relay.close()
    rows = pg_server.sql("SELECT id FROM jobs", pg_database)
    assert rows == [(jid,)], rows


@pytest.mark.anyio
async def test_a_batch_whose_commit_reply_is_lost_is_retried_into_the_same_jobs(
        pg_server: PgServer, pg_database: str, tmp_path: Path) -> None:
    """JobService.add_many (ctx.add_jobs: an archive pass's jobs) through the relay: the batch's
    COMMIT is done but its reply lost; the retry adds none of its jobs again."""
    service, relay = relayed_service(pg_server, pg_database, tmp_path)
    try:
        relay.arm()
        ids = await service.add_many("noop", [{"record": i} for i in range(1, 51)])
        assert relay.cut.is_set()  # the first try's reply was lost: the batch was retried
    finally:
        service.store.close()
        relay.close()
    assert len(ids) == 50 == len(set(ids))
    rows = pg_server.sql("SELECT id, payload->>'record' FROM jobs ORDER BY id", pg_database)
    assert rows == [(jid, str(i)) for i, jid in enumerate(ids, start=1)], rows


@pytest.mark.anyio
async def test_a_batch_is_added_whole_or_not_at_all(tmp_path: Path) -> None:
    """On the embedded store: the ids come back in the payloads' order, a retried batch (same key)
    gets the same jobs, and a batch with one bad payload adds none of them."""
    from schedulerd.config import load
    from schedulerd.jobadd import add_jobs
    from schedulerd.jobs import JobService
    from schedulerd.jobstore import JobError

    site = Site(tmp_path / "site")
    site.write("")
    config = load(site.config)
    service = JobService(config, config.scheduler.state_dir, lambda name: None)
    try:
        ids = await service.add_many("noop", [{"record": i} for i in range(1, 1001)])
        assert ids == sorted(ids) and len(set(ids)) == 1000
        assert [service.store.get(j).payload["record"] for j in (ids[0], ids[499], ids[-1])] == [1, 500, 1000]
        again, _ = add_jobs(service.store, config, "noop", [{"record": 1}, {"record": 2}], key="k")
        assert add_jobs(service.store, config, "noop", [{"record": 1}, {"record": 2}], key="k")[0] == again
        before = len(service.store.list(limit=5000))
        with pytest.raises(JobError, match="--payload: expected a JSON object"):
            await service.add_many("noop", [{"record": 3}, "not an object", {"record": 4}])  # type: ignore[list-item]
        assert len(service.store.list(limit=5000)) == before == 1002
    finally:
        service.store.close()
