"""The SQL schema of a databox (documented in docs/databox.md) and its migrations."""

from __future__ import annotations

import sqlite3

VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS collections (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id                  INTEGER PRIMARY KEY,
    collection_id       INTEGER NOT NULL REFERENCES collections(id),
    type                TEXT NOT NULL DEFAULT 'record' CHECK (type IN ('record', 'story')),
    original_name       TEXT,
    document            TEXT,             -- path relative to storage; NULL for a story without one
    size                INTEGER,
    sha256              TEXT,
    mime                TEXT,
    status              INTEGER NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 4294967295),
    created             TEXT NOT NULL,    -- ISO-8601 UTC
    updated             TEXT NOT NULL,
    document_changed    TEXT NOT NULL,
    doc_version         INTEGER NOT NULL DEFAULT 1,
    subdefs_version     INTEGER,          -- doc_version the sub-definitions were built from
    subdef_error        TEXT,
    subdef_error_version INTEGER,
    metadata_dirty      INTEGER NOT NULL DEFAULT 0,  -- > 0: fields changed since last written
    ingest_token        TEXT UNIQUE       -- set by the archive task's journal
);
CREATE INDEX IF NOT EXISTS records_collection ON records(collection_id, id);
CREATE INDEX IF NOT EXISTS records_sha256 ON records(sha256);
CREATE INDEX IF NOT EXISTS records_need_subdefs ON records(id)
    WHERE type = 'record' AND document IS NOT NULL
      AND (subdefs_version IS NULL OR subdefs_version < doc_version)
      AND (subdef_error_version IS NULL OR subdef_error_version < doc_version);
CREATE INDEX IF NOT EXISTS records_metadata_dirty ON records(id) WHERE metadata_dirty > 0;
CREATE TABLE IF NOT EXISTS story_children (
    story_id  INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    record_id INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    PRIMARY KEY (story_id, record_id)
);
CREATE INDEX IF NOT EXISTS story_children_record ON story_children(record_id);
CREATE TABLE IF NOT EXISTS fields (
    record_id INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (record_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fields_name_value ON fields(name, value);
CREATE TABLE IF NOT EXISTS subdefs (
    record_id   INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,            -- relative to storage when inside it
    width       INTEGER,
    height      INTEGER,
    size        INTEGER,
    created     TEXT NOT NULL,
    doc_version INTEGER NOT NULL,
    PRIMARY KEY (record_id, name)
);
-- a document's own text (PDF, plain text), for the full-text index only
CREATE TABLE IF NOT EXISTS document_text (
    record_id INTEGER PRIMARY KEY REFERENCES records(id) ON DELETE CASCADE,
    text      TEXT NOT NULL
);
"""


def connect(path: str, *, timeout: float = 10.0) -> sqlite3.Connection:
    """A connection in WAL mode with durable commits, usable from worker threads."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        # a new databox: 16 KiB pages make set-based rule passes over spread records cheaper
        conn.execute("PRAGMA page_size = 16384")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":  # pragma: no cover - only on filesystems without shared memory
        raise sqlite3.OperationalError(f"cannot use WAL mode on {path} (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or check that an existing one is a version this code knows."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _statements(SCHEMA):
            conn.execute(stmt)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(VERSION),))
        elif int(row[0]) > VERSION:
            raise sqlite3.DatabaseError(f"databox schema version {row[0]} is newer than this program ({VERSION})")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split the schema script into statements (executescript would commit on its own)."""
    out, buf = [], []
    for line in script.splitlines():
        line = line.split("--", 1)[0].rstrip()
        if not line:
            continue
        buf.append(line)
        if line.endswith(";"):
            stmt = "\n".join(buf)
            if sqlite3.complete_statement(stmt):
                out.append(stmt)
                buf = []
    return out
