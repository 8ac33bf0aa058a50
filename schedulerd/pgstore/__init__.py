"""The PostgreSQL back-end: the state store and the job store on one shared database.

Layout (Procrastinate's habit): `schema.sql` is the whole schema, `migrations/NNNN_*.sql` one
file per change, `queries.sql` every statement the program sends, by name. `store:migrate`
creates or migrates the schema (schedulerd.pgstore.migrate); the daemon and the CLI refuse a
schema older or newer than they know.

Why synchronous connections in worker threads, not psycopg's AsyncConnection: both back-ends
fit one protocol (StateStore, JobStore) whose methods are plain calls, and the daemon already
runs every store call in a worker thread, retried while the store fails (store.store_call);
SQLite has no async driver, so the same shape serves both and no call blocks the event loop.
Connections come from a psycopg_pool ConnectionPool, one connection per call, each call one
transaction. An AsyncConnection will be used for what must wait on the database itself
(LISTEN/NOTIFY), where a thread would be held for nothing.

Time that decides something shared (a job's due time, a claim, retention) is the database's
clock, now(), never a node's: two nodes whose clocks disagree still agree on what is due.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from ..postgres import CONNECT_TIMEOUT, POOL_TIMEOUT, connection_kwargs, describe, open_pool
from ..store import StoreUnavailable
from ..stores import StoreSettings
from .queries import QUERIES

log = logging.getLogger("schedulerd.pgstore")

__all__ = ["CONNECT_TIMEOUT", "POOL_TIMEOUT", "QUERIES", "Database", "connect", "describe"]


def _kwargs(settings: StoreSettings, name: str) -> dict[str, Any]:
    return connection_kwargs(settings.password, f"schedulerd {name}")


def unavailable(settings: StoreSettings, e: Exception) -> StoreUnavailable:
    assert settings.url is not None
    return StoreUnavailable(f"PostgreSQL at {describe(settings.url)}: {str(e).strip()}")


@contextmanager
def connect(settings: StoreSettings, name: str = "cli") -> Iterator[psycopg.Connection]:
    """One connection outside any pool (store:migrate, the schema check): its error is the real
    one (a pool would only say it timed out)."""
    assert settings.url is not None
    try:
        conn = psycopg.connect(settings.url, **_kwargs(settings, name))
    except psycopg.OperationalError as e:
        raise unavailable(settings, e) from None
    try:
        with conn:
            yield conn
    except psycopg.OperationalError as e:
        raise unavailable(settings, e) from None


class Database:
    """A pool of connections to the store; `transaction()` is one call's unit of work."""

    def __init__(self, settings: StoreSettings, name: str, max_size: int = 4):
        assert settings.url is not None
        self.settings = settings
        # min_size 0: connections are made when a call needs one (a CLI command opens none it
        # does not use); `check` replaces a connection the server closed (a restart) before use
        self.pool = open_pool(settings.url, settings.password, f"schedulerd {name}", max_size=max_size)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor]:
        """A cursor inside one transaction, committed at the end; a lost or refused connection,
        or a transaction the server rolled back (serialization), is StoreUnavailable."""
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError as e:
            raise unavailable(self.settings, e) from None

    @contextmanager
    def statement(self) -> Iterator[psycopg.Cursor]:
        """A cursor for one statement that is a transaction by itself (autocommit): no BEGIN and
        COMMIT round trips around it. Only for a single statement (a claim: one UPDATE)."""
        try:
            with self.pool.connection() as conn:
                conn.autocommit = True  # on an idle connection: no round trip
                try:
                    with conn.cursor() as cur:
                        yield cur
                finally:
                    with suppress(psycopg.Error):  # a lost connection is dropped by the pool anyway
                        conn.autocommit = False
        except psycopg.OperationalError as e:
            raise unavailable(self.settings, e) from None

    def close(self) -> None:
        self.pool.close(timeout=5)


def run(cur: psycopg.Cursor, name: str, **params: Any) -> psycopg.Cursor:
    """Execute the named statement of queries.sql."""
    return cur.execute(QUERIES[name], params)
