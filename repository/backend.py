"""The seam between a Databox and its database: SQLite (the default, `path`) or PostgreSQL (`url`).

Both back-ends offer the same small surface: `begin()` -> a connection speaking the Databox's `?`
SQL, `commit()`, `rollback()`, `query()`, `reserve_ids()`, `exists()`, `migrate()`, `close()`, and
`column()`, the two spellings the Databox's statements need (`greatest`, `for_update`). Statements
that differ otherwise are named in repository.postgres (QUERIES) and repository.schema (SQLite);
the task types' set-based pieces in repository.bulk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from . import schema
from .settings import DataboxSettings


class Backend(Protocol):
    kind: str  # "sqlite" | "postgresql"
    where: str  # the database as messages show it
    greatest: str  # the two-argument maximum: max (SQLite) | greatest (PostgreSQL)
    for_update: str  # appended to a read that a write of the same transaction depends on

    def exists(self) -> bool: ...
    def migrate(self) -> None: ...
    def begin(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    @property
    def connection(self) -> Any: ...
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
    def column(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
    def reserve_ids(self, c: Any, n: int) -> list[int]: ...
    def after_copy(self, c: Any) -> None: ...
    def close(self) -> None: ...


class SqliteBackend:
    """One SQLite file in WAL mode; a write transaction is BEGIN IMMEDIATE (writers queue)."""

    kind = "sqlite"
    greatest = "max"
    for_update = ""

    def __init__(self, path: Path):
        self.path = path
        self.where = str(path)
        self._conn: sqlite3.Connection | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = schema.connect(str(self.path))
        schema.migrate(self._conn)

    @property
    def connection(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def begin(self) -> sqlite3.Connection:
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        self.connection.execute("ROLLBACK")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.connection.execute(sql, params).fetchall()

    def column(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = self.connection.cursor()
        cur.row_factory = None  # plain tuples
        return [r[0] for r in cur.execute(sql, params)]

    def reserve_ids(self, c: sqlite3.Connection, n: int) -> list[int]:
        """Under the write lock (BEGIN IMMEDIATE) the next ids are ours."""
        first = (c.execute("SELECT max(id) FROM records").fetchone()[0] or 0) + 1
        return list(range(first, first + n))

    def after_copy(self, c: sqlite3.Connection) -> None:
        """Rows came with their ids: nothing to do (SQLite's ids follow the highest one)."""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def open_backend(settings: DataboxSettings) -> Backend:
    if settings.url is not None:
        from .postgres import PgBackend

        return PgBackend(settings)
    assert settings.path is not None
    return SqliteBackend(Path(settings.path))


def database_errors() -> tuple[type[Exception], ...]:
    """The exceptions a database of either back-end raises (psycopg only when installed)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return (sqlite3.DatabaseError,)
    return (sqlite3.DatabaseError, psycopg.Error)


def integrity_errors() -> tuple[type[Exception], ...]:
    """A constraint refused a write (a duplicate ingest token, a missing collection)."""
    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError)
