"""The PostgreSQL back-end of a databox (`[databoxes.NAME] url`): its schema and every statement
this package sends that differs from SQLite's, by name, plus the connection the Databox uses.

The Databox's own statements are written once, with `?` placeholders (`PgConnection` turns them
into psycopg's `%s`); where the two SQL dialects differ the statement is named here (`QUERIES`)
and in repository.schema for SQLite. Connections come from a psycopg_pool pool (synchronous:
callers in the daemon already run the Databox in worker threads); a transaction holds one
connection from BEGIN to COMMIT.

Full text: `record_search` holds each record's name, collection and body (fields, document text)
and a tsvector of their tokens cut as FTS5 cuts them (repository.textsearch), under a GIN index.
It is maintained on write: before each commit, the records whose `updated` moved during the
transaction (every writer sets it: docs/databox.md) get their row rebuilt.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import RowMaker

from schedulerd.postgres import describe, open_pool

from . import textsearch
from .fields import now_iso
from .settings import DataboxSettings

VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS collections (
    id      BIGSERIAL PRIMARY KEY,
    name    TEXT COLLATE "C" NOT NULL UNIQUE,
    created TEXT COLLATE "C" NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id                   BIGSERIAL PRIMARY KEY,
    collection_id        BIGINT NOT NULL REFERENCES collections(id),
    type                 TEXT NOT NULL DEFAULT 'record' CHECK (type IN ('record', 'story')),
    original_name        TEXT COLLATE "C",
    document             TEXT COLLATE "C",
    size                 BIGINT,
    sha256               TEXT COLLATE "C",
    mime                 TEXT COLLATE "C",
    status               BIGINT NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 4294967295),
    created              TEXT COLLATE "C" NOT NULL,
    updated              TEXT COLLATE "C" NOT NULL,
    document_changed     TEXT COLLATE "C" NOT NULL,
    doc_version          INTEGER NOT NULL DEFAULT 1,
    subdefs_version      INTEGER,
    subdef_error         TEXT,
    subdef_error_version INTEGER,
    metadata_dirty       INTEGER NOT NULL DEFAULT 0,
    ingest_token         TEXT COLLATE "C" UNIQUE
);
CREATE INDEX IF NOT EXISTS records_collection ON records(collection_id, id);
CREATE INDEX IF NOT EXISTS records_sha256 ON records(sha256);
CREATE INDEX IF NOT EXISTS records_updated ON records(updated);
CREATE INDEX IF NOT EXISTS records_need_subdefs ON records(id)
    WHERE type = 'record' AND document IS NOT NULL
      AND (subdefs_version IS NULL OR subdefs_version < doc_version)
      AND (subdef_error_version IS NULL OR subdef_error_version < doc_version);
CREATE INDEX IF NOT EXISTS records_metadata_dirty ON records(id) WHERE metadata_dirty > 0;
CREATE TABLE IF NOT EXISTS story_children (
    story_id  BIGINT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    record_id BIGINT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    PRIMARY KEY (story_id, record_id)
);
CREATE INDEX IF NOT EXISTS story_children_record ON story_children(record_id);
CREATE TABLE IF NOT EXISTS fields (
    record_id BIGINT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    name      TEXT COLLATE "C" NOT NULL,
    value     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (record_id, name)
);
CREATE INDEX IF NOT EXISTS fields_name_value ON fields(name, value);
CREATE TABLE IF NOT EXISTS subdefs (
    record_id   BIGINT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    path        TEXT COLLATE "C" NOT NULL,
    width       INTEGER,
    height      INTEGER,
    size        BIGINT,
    created     TEXT COLLATE "C" NOT NULL,
    doc_version INTEGER NOT NULL,
    PRIMARY KEY (record_id, name)
);
CREATE TABLE IF NOT EXISTS document_text (
    record_id BIGINT PRIMARY KEY REFERENCES records(id) ON DELETE CASCADE,
    text      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS record_search (
    record_id  BIGINT PRIMARY KEY REFERENCES records(id) ON DELETE CASCADE,
    updated    TEXT COLLATE "C" NOT NULL,
    name       TEXT NOT NULL,
    collection TEXT NOT NULL,
    body       TEXT NOT NULL,
    terms      tsvector NOT NULL
);
CREATE INDEX IF NOT EXISTS record_search_terms ON record_search USING GIN (terms);
"""

# every statement that differs from SQLite's, by name (psycopg placeholders)
QUERIES = {
    "lock_schema": "SELECT pg_advisory_xact_lock(hashtext('schedulerd databox schema'))",
    "has_schema": "SELECT to_regclass('meta') IS NOT NULL",
    "schema_version": "SELECT value FROM meta WHERE key = 'schema_version'",
    "set_schema_version": "INSERT INTO meta(key, value) VALUES ('schema_version', %s)",
    "reserve_ids": "SELECT nextval(pg_get_serial_sequence('records', 'id')) FROM generate_series(1, %s)",
    "reset_sequences": (
        "SELECT setval(pg_get_serial_sequence('records', 'id'), coalesce((SELECT max(id) FROM records), 0) + 1, false), "
        "setval(pg_get_serial_sequence('collections', 'id'), coalesce((SELECT max(id) FROM collections), 0) + 1, false)"),
    "search_stale_since": "SELECT id FROM records WHERE updated >= %s ORDER BY id",
    "search_stale_all": (
        "SELECT r.id FROM records r LEFT JOIN record_search s ON s.record_id = r.id "
        "WHERE s.record_id IS NULL OR s.updated IS DISTINCT FROM r.updated ORDER BY r.id"),
    "search_sources": (
        "SELECT r.id, r.updated, r.original_name, c.name, "
        "(SELECT t.text FROM document_text t WHERE t.record_id = r.id) "
        "FROM records r JOIN collections c ON c.id = r.collection_id WHERE r.id = ANY(%s) ORDER BY r.id"),
    "search_fields": "SELECT record_id, name, value FROM fields WHERE record_id = ANY(%s) ORDER BY record_id, name",
    "search_upsert": (
        "INSERT INTO record_search(record_id, updated, name, collection, body, terms) "
        "VALUES (%s, %s, %s, %s, %s, to_tsvector('simple', %s)) ON CONFLICT (record_id) DO UPDATE SET "
        "updated = excluded.updated, name = excluded.name, collection = excluded.collection, "
        "body = excluded.body, terms = excluded.terms"),
    "search_count": "SELECT count(*) FROM record_search",
    "search_missing": "SELECT i FROM unnest(%s::bigint[]) AS i WHERE i NOT IN (SELECT id FROM records)",
    "search": (
        "SELECT s.record_id, s.name, s.collection, "
        "ts_headline('simple', s.name || E'\\n' || s.body, q, 'StartSel=[, StopSel=], MaxWords=12, MinWords=4'), "
        "-ts_rank(s.terms, q) FROM record_search s, to_tsquery('simple', %s) q "
        "WHERE s.terms @@ q ORDER BY ts_rank(s.terms, q) DESC, s.record_id LIMIT %s"),
}

_SEARCH_BATCH = 1000


class Row(tuple[Any, ...]):
    """A row readable by position and by column name, as sqlite3.Row is."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}
    cls = type("Row", (Row,), {"_names": names})
    return lambda values: cls(values)


@functools.lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """`?` placeholders (the Databox's SQL, written once for both back-ends) as psycopg's `%s`."""
    return re.sub(r"\?", "%s", sql.replace("%", "%%"))


class PgConnection:
    """One psycopg connection speaking the Databox's `?` SQL: execute, executemany, rows by name."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor(row_factory=_rows)
        return cur.execute(placeholders(sql), params)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor(row_factory=_rows)
        cur.executemany(placeholders(sql), list(seq))
        return cur

    def named(self, name: str, *params: Any) -> psycopg.Cursor[Any]:
        """Run the statement QUERIES[name]."""
        cur = self.raw.cursor(row_factory=_rows)
        return cur.execute(QUERIES[name], params)


class PgBackend:
    """A pool and the transaction in progress (the Databox's lock makes it one at a time)."""

    kind = "postgresql"
    greatest = "greatest"
    for_update = " FOR UPDATE"

    def __init__(self, settings: DataboxSettings, *, max_size: int = 2):
        assert settings.url is not None
        self.where = describe(settings.url)
        self.pool = open_pool(settings.url, settings.password, "schedulerd databox", max_size=max_size)
        self._tx: PgConnection | None = None
        self._since = ""

    # --- schema --------------------------------------------------------------------
    def exists(self) -> bool:
        with self.pool.connection() as conn:
            row = PgConnection(conn).named("has_schema").fetchone()
            return row is not None and bool(row[0])

    def migrate(self) -> None:
        """Create the schema (under an advisory lock: two hosts at once wait), or check its version."""
        with self.pool.connection() as conn, conn.transaction():
            c = PgConnection(conn)
            c.named("lock_schema")
            for stmt in (s for s in SCHEMA.split(";") if s.strip()):
                conn.execute(stmt)
            row = c.named("schema_version").fetchone()
            if row is None:
                c.named("set_schema_version", str(VERSION))
            elif int(row[0]) > VERSION:
                raise psycopg.DatabaseError(f"databox schema version {row[0]} is newer than this program ({VERSION})")

    # --- transactions --------------------------------------------------------------
    def begin(self) -> PgConnection:
        conn = self.pool.getconn()
        conn.autocommit = False
        self._tx = PgConnection(conn)
        self._since = now_iso()
        return self._tx

    def commit(self) -> None:
        tx = self._take()
        try:
            refresh_search(tx, [r[0] for r in tx.named("search_stale_since", self._since)])
            tx.raw.commit()
        except BaseException:
            tx.raw.rollback()
            raise
        finally:
            self.pool.putconn(tx.raw)

    def rollback(self) -> None:
        tx = self._take()
        try:
            tx.raw.rollback()
        finally:
            self.pool.putconn(tx.raw)

    def _take(self) -> PgConnection:
        assert self._tx is not None
        tx, self._tx = self._tx, None
        return tx

    @property
    def connection(self) -> PgConnection | _OneShot:
        """The transaction's connection; outside one, each statement runs on its own (autocommit)."""
        return self._tx if self._tx is not None else _OneShot(self)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._tx is not None:
            return self._tx.execute(sql, params).fetchall()
        with self.pool.connection() as conn:
            return PgConnection(conn).execute(sql, params).fetchall()

    def column(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The first column of `sql`: on the transaction's connection, else on a pooled one."""
        with self.reading() as c:
            return [r[0] for r in c.raw.cursor().execute(placeholders(sql), params)]

    @contextmanager
    def reading(self) -> Iterator[PgConnection]:
        """A connection for statements of QUERIES outside the Databox's transactions."""
        if self._tx is not None:
            yield self._tx
            return
        with self.pool.connection() as conn:
            yield PgConnection(conn)

    def reserve_ids(self, c: PgConnection, n: int) -> list[int]:
        return [r[0] for r in c.named("reserve_ids", n)]

    def after_copy(self, c: PgConnection) -> None:
        """Rows came with their ids (databox:copy): move the id sequences past them, index them all."""
        c.named("reset_sequences")
        refresh_search(c, [r[0] for r in c.named("search_stale_all")])

    def close(self) -> None:
        self.pool.close(timeout=5)


class _Result:
    """The rows of one statement run outside a transaction, read at once."""

    def __init__(self, rows: list[Row], rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Row]:
        return self.rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


class _OneShot:
    """`Databox.connection` outside a transaction: each statement on a pooled connection, committed."""

    def __init__(self, backend: PgBackend):
        self.backend = backend

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        with self.backend.pool.connection() as conn:
            cur = PgConnection(conn).execute(sql, params)
            return _Result(cur.fetchall() if cur.description else [], cur.rowcount)


def refresh_search(c: PgConnection, ids: Sequence[int]) -> int:
    """Rebuild the full-text rows of `ids` (records gone meanwhile have none: ON DELETE CASCADE)."""
    for k in range(0, len(ids), _SEARCH_BATCH):
        part = list(ids[k : k + _SEARCH_BATCH])
        fields: dict[int, list[tuple[str, str]]] = {}
        for rid, name, value in c.named("search_fields", part):
            fields.setdefault(rid, []).append((name, value))
        rows = []
        for rid, updated, original, collection, text in c.named("search_sources", part).fetchall():
            name, coll, body = textsearch.document(original, collection, fields.get(rid, ()), text)
            rows.append((rid, updated, name, coll, body, textsearch.normalized(name, coll, body)))
        if rows:
            c.raw.cursor().executemany(QUERIES["search_upsert"], rows)
    return len(ids)


class PgIndex:
    """The full-text rows of a PostgreSQL databox, with the SQLite index's interface (run_pass,
    reindex, forget_missing, close) for the populateIndex job: rows are kept on write, so a pass
    only rebuilds those whose record changed behind the Databox's back."""

    def __init__(self, settings: DataboxSettings):
        self.backend = PgBackend(settings, max_size=1)
        self.path = self.backend.where

    def run_pass(self, *, full: bool = False, should_stop: Any = None) -> Any:
        from .fulltext import PassResult

        with self.backend.pool.connection() as conn:
            c = PgConnection(conn)
            stale = [r[0] for r in c.named("search_stale_all")]
            return PassResult(indexed=refresh_search(c, stale), removed=0, full=full)

    def reindex(self, ids: Sequence[int]) -> int:
        with self.backend.pool.connection() as conn:
            c = PgConnection(conn)
            refresh_search(c, list(ids))
            return len(c.named("search_missing", list(ids)).fetchall())

    def forget_missing(self, ids: Sequence[int]) -> int:
        """Rows of deleted records went with them (ON DELETE CASCADE): how many of `ids` are gone."""
        with self.backend.pool.connection() as conn:
            return len(PgConnection(conn).named("search_missing", list(ids)).fetchall())

    def close(self) -> None:
        self.backend.close()


def collection_names(settings: DataboxSettings) -> set[str] | None:
    """The collections of a PostgreSQL databox (one short connection); None when it cannot be
    read now (server away, schema not created yet)."""
    from schedulerd.postgres import connection_kwargs

    assert settings.url is not None
    try:
        with psycopg.connect(settings.url, **connection_kwargs(settings.password, "schedulerd config check")) as conn:
            if not conn.execute(QUERIES["has_schema"]).fetchone()[0]:  # type: ignore[index]
                return None
            return {r[0] for r in conn.execute("SELECT name FROM collections")}
    except psycopg.Error:
        return None


def search(settings: DataboxSettings, query: str, *, limit: int = 20) -> list[tuple[int, str, str, str, float]]:
    """(record id, name, collection, snippet, rank) best first; ValueError for an empty query."""
    text = textsearch.tsquery(query)
    backend = PgBackend(settings, max_size=1)
    try:
        with backend.pool.connection() as conn:
            return [tuple(r) for r in PgConnection(conn).named("search", text, int(limit))]
    finally:
        backend.close()
