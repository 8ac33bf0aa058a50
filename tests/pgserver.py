"""A real PostgreSQL for the tests, from Debian's server package (`postgresql`).

`initdb` into a temp folder as an unprivileged user (the `postgres` system user when the tests
run as root, else the current user), `pg_ctl start` on a free loopback port with its Unix socket
in that folder: never the host's cluster nor port 5432. One server per test session; each test
gets its own database, cloned from a template (CREATE DATABASE ... TEMPLATE: a file copy, cheap).

Two roles: `postgres` (superuser, no password: trust, for the fixtures) and `schedulerd` with the
password PASSWORD (scram-sha-256 over TCP), owner of every test database, which the daemon uses.
Import the fixtures into a conftest: `from tests.pgserver import pg_server, pg_database  # noqa`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "schedulerd"
PASSWORD = "pg-Test-s3cret-Wq"  # what tests look for in logs and messages: it must never show
MIGRATED = "template_migrated"  # a database with schedulerd's schema, cloned per test


class Missing(Exception):
    """No PostgreSQL server binaries on this machine (the Debian package `postgresql`)."""


def bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise Missing("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin "
                      "(install the Debian package postgresql)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    root: Path
    port: int
    bindir: Path
    as_user: list[str]  # the prefix that runs a server program as the unprivileged user
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str, user: str = USER, query: str = "") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}{'?' + query if query else ''}"

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], check=True,
                       capture_output=True, timeout=timeout)

    def sql(self, statement: str, db: str = "postgres") -> list[tuple]:
        """One statement as the superuser, autocommit (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname=db,
                             autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def database(self, template: str = MIGRATED) -> str:
        """A new database owned by USER, cloned from `template` (template0: empty)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} OWNER {USER} TEMPLATE {template}")
        return name

    def drop(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self.pg_ctl("start", "-w", "-l", str(self.root / "server.log"), "-o", opts)


HBA = f"""
local all all trust
host all postgres 127.0.0.1/32 trust
host all {USER} 127.0.0.1/32 scram-sha-256
"""


def start_server() -> PgServer:
    """initdb + pg_ctl start as an unprivileged user, in a fresh folder under /tmp."""
    bins = bindir()
    root = Path(tempfile.mkdtemp(prefix="schedulerd-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PgServer(root, free_port(), bins, as_user)
    subprocess.run([*as_user, str(bins / "initdb"), "-D", str(server.data), "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True, timeout=120)
    hba = server.data / "pg_hba.conf"
    subprocess.run([*as_user, "sh", "-c", f"cat > {hba}"], input=HBA, text=True, check=True)
    server.start()
    try:
        server.sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        server.sql(f"CREATE DATABASE {MIGRATED} OWNER {USER} TEMPLATE template0")
        _migrate(server, MIGRATED)
    except BaseException:
        server.stop()
        raise
    return server


def _migrate(server: PgServer, db: str) -> None:
    from schedulerd.pgstore.migrate import migrate
    from schedulerd.settings import Secret
    from schedulerd.stores import StoreSettings

    migrate(StoreSettings(url=server.url(db), password=Secret(PASSWORD)))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = start_server()
    except Missing as e:
        pytest.skip(str(e))
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            remove(server.root)


def remove(root: Path) -> None:
    """The server's folder; a file its last process writes while it ends may need a second try."""
    for _ in range(20):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(0.1)


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """A database of its own for one test, with schedulerd's schema; its URL is pg_server.url(name)."""
    name = pg_server.database()
    yield name
    pg_server.drop(name)


def store_settings(server: PgServer, db: str):  # -> schedulerd.stores.StoreSettings
    from schedulerd.settings import Secret
    from schedulerd.stores import StoreSettings

    return StoreSettings(url=server.url(db), password=Secret(PASSWORD))
