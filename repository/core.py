"""The core of a databox, which every part of `Databox` builds on: its settings, document
storage and backend; one lock and nested transactions (files removed only once the transaction
that forgot them has committed); set-based SQL; collections; reading records by rows.

Synchronous on purpose: callers in the daemon run it through `anyio.to_thread.run_sync`;
the lock makes one `Databox` safe to share between worker threads.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from . import bulk
from .backend import Backend
from .fields import now_iso
from .model import Collection, DuplicateCollection, Record, UnknownCollection, UnknownRecord
from .settings import DataboxSettings
from .storage import DocumentStore

CollectionRef = int | str | Collection

RECORD_COLUMNS = (
    "r.id, r.collection_id, c.name AS collection, r.type, r.original_name, r.document, r.size, r.sha256, "
    "r.mime, r.status, r.created, r.updated, r.document_changed, r.doc_version, r.subdefs_version, "
    "r.subdef_error, r.metadata_dirty"
)
RECORDS_FROM = "records r JOIN collections c ON c.id = r.collection_id"
CHUNK = 500
NAME_MAX = 200


def _check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or name != name.strip():
        raise ValueError(f"bad collection name {name!r}: non-empty, no leading/trailing spaces, {NAME_MAX} characters at most")
    if name.isdigit():
        raise ValueError(f"bad collection name {name!r}: all digits would read as a collection id")
    if any(ord(ch) < 32 for ch in name):
        raise ValueError(f"bad collection name {name!r}: control characters")
    return name


class DataboxCore:
    """Settings, storage, backend, transactions and collections of one databox."""

    def __init__(self, settings: DataboxSettings, backend: Backend):
        self.settings = settings
        self.store = DocumentStore(Path(settings.storage))  # type: ignore[arg-type]
        self.backend = backend
        self._lock = threading.RLock()
        self._depth = 0
        self._after_commit: list[Path] = []

    # --- plumbing ------------------------------------------------------------------

    @property
    def connection(self) -> Any:
        """The connection, for set-based SQL (see docs/databox.md); use `transaction()`. SQLite:
        the raw sqlite3.Connection; PostgreSQL: the transaction's (`?` placeholders too)."""
        return self.backend.connection

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def close(self) -> None:
        with self._lock:
            self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """BEGIN (IMMEDIATE on SQLite) ... COMMIT; nested calls join the outer transaction.

        Files queued with `remove_after_commit` are unlinked once the outermost commit succeeds.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.backend.connection
                finally:
                    self._depth -= 1
                return
            conn = self.backend.begin()
            self._depth = 1
            try:
                yield conn
            except BaseException:
                self._depth = 0
                self._after_commit.clear()
                self.backend.rollback()
                raise
            self._depth = 0
            try:
                self.backend.commit()
            except BaseException:
                self._after_commit.clear()
                raise
            doomed, self._after_commit = self._after_commit, []
        for p in doomed:
            _unlink_quiet(p)

    def remove_after_commit(self, paths: Iterable[Path]) -> None:
        """Queue files to unlink once the current transaction commits (now, outside one)."""
        with self._lock:
            if self._depth:
                self._after_commit.extend(paths)
                return
        for p in paths:
            _unlink_quiet(p)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self.backend.query(sql, params)

    # --- set-based SQL (task types: record_mover, workflows) -------------------------

    def dialect(self, name: str, **parts: str) -> str:
        """The piece of SQL `name` in this databox's dialect (repository.bulk.STATEMENTS)."""
        return bulk.statement(self.backend.kind, name, **parts)

    def bulk_session(self) -> None:
        """Tune this (fresh) connection for a pass of set-based statements over many records."""
        sql = self.dialect("bulk_session")
        if sql:
            with self._lock:
                self.backend.connection.execute(sql)

    def column(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The first column of `sql` as plain values (100,000s of ids cost no row objects);
        inside `transaction()`, on its connection."""
        with self._lock:
            return self.backend.column(sql, params)

    # --- collections ---------------------------------------------------------------

    def create_collection(self, name: str) -> Collection:
        _check_collection_name(name)
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone():
                raise DuplicateCollection(f"collection {name!r} already exists")
            now = now_iso()
            cur = c.execute("INSERT INTO collections(name, created) VALUES (?, ?) RETURNING id", (name, now))
            return Collection(cur.fetchone()[0], name, now)

    def collections(self) -> list[Collection]:
        return [Collection(r["id"], r["name"], r["created"]) for r in self._query("SELECT * FROM collections ORDER BY id")]

    def collection(self, ref: CollectionRef) -> Collection:
        """By name, id, or digits of an id; UnknownCollection names what was looked for."""
        if isinstance(ref, Collection):
            return ref
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            rows = self._query("SELECT * FROM collections WHERE id = ?", (int(ref),))
        else:
            rows = self._query("SELECT * FROM collections WHERE name = ?", (ref,))
        if not rows:
            known = ", ".join(c.name for c in self.collections()) or "none"
            raise UnknownCollection(f"unknown collection {ref!r} in databox {self.settings.where} (known: {known})")
        r = rows[0]
        return Collection(r["id"], r["name"], r["created"])

    def collection_counts(self) -> dict[int, int]:
        return {r[0]: r[1] for r in self._query("SELECT collection_id, count(*) FROM records GROUP BY collection_id")}

    # --- records: reading ----------------------------------------------------------

    def _record(self, row: Any, fields: Mapping[str, str] | None = None) -> Record:
        doc = row["document"]
        return Record(
            id=row["id"],
            collection_id=row["collection_id"],
            collection=row["collection"],
            type=row["type"],
            original_name=row["original_name"],
            document=doc,
            document_path=self.store.path(doc) if doc else None,
            size=row["size"],
            sha256=row["sha256"],
            mime=row["mime"],
            status=row["status"],
            created=row["created"],
            updated=row["updated"],
            document_changed=row["document_changed"],
            doc_version=row["doc_version"],
            subdefs_version=row["subdefs_version"],
            subdef_error=row["subdef_error"],
            metadata_dirty=row["metadata_dirty"],
            fields=types.MappingProxyType(dict(fields or {})),
        )

    def _fields_of(self, ids: Sequence[int]) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {i: {} for i in ids}
        for k in range(0, len(ids), CHUNK):
            part = ids[k : k + CHUNK]
            q = ",".join("?" * len(part))
            for r in self._query(f"SELECT record_id, name, value FROM fields WHERE record_id IN ({q}) ORDER BY name", part):
                out[r[0]][r[1]] = r[2]
        return out

    def _records(self, where: str, params: Sequence[Any], *, with_fields: bool, tail: str = "ORDER BY r.id") -> list[Record]:
        with self._lock:
            rows = self._query(f"SELECT {RECORD_COLUMNS} FROM {RECORDS_FROM} WHERE {where} {tail}", params)
            fields = self._fields_of([r["id"] for r in rows]) if with_fields else {}
        return [self._record(r, fields.get(r["id"])) for r in rows]

    def get_record(self, record_id: int, *, with_fields: bool = True) -> Record:
        """The record; without its fields (an empty `fields`, one read less) when not `with_fields`."""
        found = self._records("r.id = ?", (int(record_id),), with_fields=with_fields)
        if not found:
            raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
        return found[0]

    def _subdef_path(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.store.path(stored)


def display_name(name: str | None) -> str | None:
    """A file name (or relative path) as shown in records and messages: non-UTF-8 bytes
    (kept as surrogate escapes) appear as `\\xNN` instead of breaking the text."""
    if name is None:
        return None
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
