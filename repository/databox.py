"""One databox: a SQLite file (WAL, short transactions) or a PostgreSQL database, plus a storage
folder. The statements are written once (`?` placeholders); repository.backend is the seam.

Synchronous on purpose: callers in the daemon run it through
`anyio.to_thread.run_sync`; a lock makes one `Databox` safe to share between
worker threads. Files are removed only after the transaction that forgot them
has committed, so a crash never leaves a record without its document.
"""

from __future__ import annotations

import os
import threading
import types
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import bulk
from .backend import Backend, database_errors, open_backend
from .fields import check_fields, check_name, normalize_value, now_iso
from .model import (
    Collection,
    DataboxError,
    DataboxMissing,
    DuplicateCollection,
    NewRecord,
    Record,
    RecordType,
    Subdef,
    UnknownCollection,
    UnknownRecord,
)
from .settings import DataboxSettings
from .status import StatusMask, parse_mask
from .storage import DocumentStore, SourceError, StorageError, guess_mime

CollectionRef = int | str | Collection

_RECORD_COLUMNS = (
    "r.id, r.collection_id, c.name AS collection, r.type, r.original_name, r.document, r.size, r.sha256, "
    "r.mime, r.status, r.created, r.updated, r.document_changed, r.doc_version, r.subdefs_version, "
    "r.subdef_error, r.metadata_dirty"
)
_FROM = "records r JOIN collections c ON c.id = r.collection_id"
_CHUNK = 500
_NAME_MAX = 200


def awaited(name: str, settings: DataboxSettings) -> str:
    """What a task shows while it waits for a databox that does not exist yet (another task,
    an archive or the indexer, creates it on its first run): `databox main to be created (PATH)`."""
    return f"databox {name} to be created ({settings.where})"


def open_databox(settings: DataboxSettings, *, create: bool = True) -> Databox:
    """Open (and with `create`, make) the databox described by `settings`."""
    try:
        backend = open_backend(settings)
    except database_errors() as e:
        raise DataboxError(f"cannot open databox {settings.where}: {e}") from None
    try:
        if not backend.exists() and not create:
            raise DataboxMissing(f"databox {settings.where} does not exist yet (create it with databox:create)")
        try:
            Path(settings.storage).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        except OSError as e:
            raise DataboxError(f"cannot create storage folder {settings.storage}: {e.strerror}") from None
        try:
            backend.migrate()
        except database_errors() as e:
            raise DataboxError(f"cannot open databox {settings.where}: {str(e).strip()}") from None
    except BaseException:
        backend.close()
        raise
    db = Databox(settings, backend)
    db.store.clean_tmp()
    return db


def _check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_MAX or name != name.strip():
        raise ValueError(f"bad collection name {name!r}: non-empty, no leading/trailing spaces, {_NAME_MAX} characters at most")
    if name.isdigit():
        raise ValueError(f"bad collection name {name!r}: all digits would read as a collection id")
    if any(ord(ch) < 32 for ch in name):
        raise ValueError(f"bad collection name {name!r}: control characters")
    return name


def _as_mask(status: str | StatusMask | None, where: str = "status") -> StatusMask | None:
    if status is None or isinstance(status, StatusMask):
        return status
    return parse_mask(status, where)


class Databox:
    """Collections, records, fields, status bits and sub-definitions of one databox."""

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

    def __enter__(self) -> Databox:
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
        for k in range(0, len(ids), _CHUNK):
            part = ids[k : k + _CHUNK]
            q = ",".join("?" * len(part))
            for r in self._query(f"SELECT record_id, name, value FROM fields WHERE record_id IN ({q}) ORDER BY name", part):
                out[r[0]][r[1]] = r[2]
        return out

    def _records(self, where: str, params: Sequence[Any], *, with_fields: bool, tail: str = "ORDER BY r.id") -> list[Record]:
        with self._lock:
            rows = self._query(f"SELECT {_RECORD_COLUMNS} FROM {_FROM} WHERE {where} {tail}", params)
            fields = self._fields_of([r["id"] for r in rows]) if with_fields else {}
        return [self._record(r, fields.get(r["id"])) for r in rows]

    def get_record(self, record_id: int, *, with_fields: bool = True) -> Record:
        """The record; without its fields (an empty `fields`, one read less) when not `with_fields`."""
        found = self._records("r.id = ?", (int(record_id),), with_fields=with_fields)
        if not found:
            raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
        return found[0]

    def _filters(
        self,
        collection: CollectionRef | None,
        status: str | StatusMask | None,
        fields: Mapping[str, str] | Iterable[tuple[str, str]] | None,
        type: RecordType | None,
    ) -> tuple[str, list[object]]:
        where: list[str] = ["TRUE"]
        params: list[object] = []
        if collection is not None:
            where.append("r.collection_id = ?")
            params.append(self.collection(collection).id)
        mask = _as_mask(status)
        if mask is not None and not mask.empty:
            frag, p = mask.sql("r.status")
            where.append(frag)
            params.extend(p)
        pairs = fields.items() if isinstance(fields, Mapping) else (fields or ())
        for name, value in pairs:
            check_name(name)
            where.append("EXISTS (SELECT 1 FROM fields f WHERE f.record_id = r.id AND f.name = ? AND f.value = ?)")
            params.extend((name, normalize_value(name, value, self.settings.field_types)))
        if type is not None:
            if type not in ("record", "story"):
                raise ValueError(f"record type: expected 'record' or 'story', got {type!r}")
            where.append("r.type = ?")
            params.append(type)
        return " AND ".join(where), params

    def list_records(
        self,
        *,
        collection: CollectionRef | None = None,
        status: str | StatusMask | None = None,
        fields: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        type: RecordType | None = None,
        limit: int | None = None,
        after: int = 0,
        with_fields: bool = True,
    ) -> list[Record]:
        """Records matching every filter, by id; page with `after` (last id seen) and `limit`."""
        where, params = self._filters(collection, status, fields, type)
        tail = "ORDER BY r.id" + (" LIMIT ?" if limit is not None else "")
        return self._records(f"{where} AND r.id > ?", [*params, after, *([limit] if limit is not None else [])],
                             with_fields=with_fields, tail=tail)

    def count_records(
        self,
        *,
        collection: CollectionRef | None = None,
        status: str | StatusMask | None = None,
        fields: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        type: RecordType | None = None,
    ) -> int:
        where, params = self._filters(collection, status, fields, type)
        count: int = self._query(f"SELECT count(*) FROM {_FROM} WHERE {where}", params)[0][0]
        return count

    def fields(self, record_id: int) -> dict[str, str]:
        return self._fields_of([int(record_id)])[int(record_id)]

    # --- records: writing ----------------------------------------------------------

    def _initial_status(self, status: int | str | StatusMask) -> int:
        if isinstance(status, bool):
            raise ValueError(f"status: expected 0 to 2**32-1 or a mask like \"x1x0\", got {status!r}")
        if isinstance(status, int):
            if not 0 <= status <= 0xFFFFFFFF:
                raise ValueError(f"status: expected 0 to 2**32-1, got {status}")
            return status
        return (status if isinstance(status, StatusMask) else parse_mask(status, "status")).apply(0)

    def create_record(
        self,
        collection: CollectionRef,
        source: Path | str | None = None,
        *,
        type: RecordType = "record",
        status: int | str | StatusMask = 0,
        fields: Mapping[str, object] | None = None,
        original_name: str | None = None,
        story: int | None = None,
    ) -> Record:
        """Store `source` (copied atomically, hashed) and create its record in one step.

        A crash between the copy and the commit can leave an unreferenced document in
        storage, never a record without one. `story` adds the new record to that story.
        """
        if type not in ("record", "story"):
            raise ValueError(f"record type: expected 'record' or 'story', got {type!r}")
        if type == "record" and source is None:
            raise ValueError("a record needs a source document (only a story may have none)")
        coll = self.collection(collection)
        checked = check_fields(fields or {}, self.settings.field_types)
        st = self._initial_status(status)
        doc = digest = mime = None
        name = original_name
        if source is not None:
            source = Path(source)
            name = original_name or source.name
            doc, digest = self._store_document(source, name)
            mime = guess_mime(name, digest.head)
        try:
            with self.transaction() as c:
                rid = self._insert(c, NewRecord(coll.id, display_name(name), doc or "", digest.size if digest else 0,
                                                digest.sha256 if digest else "", mime or "", st, checked), type=type)
                if story is not None:
                    self._link_story(c, story, rid)
        except BaseException:
            if doc:
                self.store.remove(doc)
            raise
        return self.get_record(rid)

    def create_story(self, collection: CollectionRef, *, fields: Mapping[str, object] | None = None,
                     status: int | str | StatusMask = 0, source: Path | str | None = None) -> Record:
        return self.create_record(collection, source, type="story", status=status, fields=fields)

    def _insert(self, c: Any, r: NewRecord, *, type: RecordType = "record") -> int:
        now = now_iso()
        cur = c.execute(
            "INSERT INTO records(collection_id, type, original_name, document, size, sha256, mime, status, "
            "created, updated, document_changed, ingest_token) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (r.collection_id, type, r.original_name, r.document or None, r.size if r.document else None,
             r.sha256 or None, r.mime or None, r.status, now, now, now, r.token),
        )
        rid: int = cur.fetchone()[0]
        if r.fields:
            c.executemany("INSERT INTO fields(record_id, name, value) VALUES (?,?,?)",
                          [(rid, k, v) for k, v in r.fields.items()])
        return rid

    def insert_ingested(self, rows: Sequence[NewRecord]) -> list[int]:
        """Create records whose documents are already in storage, all in one transaction.

        Ids are reserved first (SQLite: under the write lock; PostgreSQL: from the sequence), so
        one executemany inserts the whole batch."""
        if not rows:
            return []
        with self.transaction() as c:
            ids = self.backend.reserve_ids(c, len(rows))
            now = now_iso()
            c.executemany(
                "INSERT INTO records(id, collection_id, type, original_name, document, size, sha256, mime, status, "
                "created, updated, document_changed, ingest_token) VALUES (?,?,'record',?,?,?,?,?,?,?,?,?,?)",
                [(i, r.collection_id, r.original_name, r.document, r.size, r.sha256, r.mime, r.status, now, now, now,
                  r.token) for i, r in zip(ids, rows, strict=True)],
            )
            c.executemany(
                "INSERT INTO fields(record_id, name, value) VALUES (?,?,?)",
                [(i, k, v) for i, r in zip(ids, rows, strict=True) for k, v in r.fields.items()],
            )
            return ids

    def committed_tokens(self, tokens: Sequence[str]) -> dict[str, int]:
        """Which ingest tokens made it into a committed record (token -> record id)."""
        out: dict[str, int] = {}
        for k in range(0, len(tokens), _CHUNK):
            part = list(tokens[k : k + _CHUNK])
            q = ",".join("?" * len(part))
            for r in self._query(f"SELECT ingest_token, id FROM records WHERE ingest_token IN ({q})", part):
                out[r[0]] = r[1]
        return out

    def find_by_sha256(self, collection: CollectionRef, sha256s: Iterable[str]) -> dict[str, int]:
        """Existing records (sha256 -> lowest id) with these checksums in `collection`."""
        cid = self.collection(collection).id
        shas = list(set(sha256s))
        out: dict[str, int] = {}
        for k in range(0, len(shas), _CHUNK):
            part = shas[k : k + _CHUNK]
            q = ",".join("?" * len(part))
            for r in self._query(
                f"SELECT sha256, min(id) FROM records WHERE collection_id = ? AND sha256 IN ({q}) GROUP BY sha256",
                [cid, *part],
            ):
                out[r[0]] = r[1]
        return out

    def find_twin(self, collection: CollectionRef, sha256: str, original_name: str) -> int | None:
        """The record (lowest id) in `collection` with this checksum and this original name, if any:
        the one an archiving of that very file made (a record of the same content under another
        name is not it)."""
        cid = self.collection(collection).id
        rows = self._query("SELECT min(id) FROM records WHERE collection_id = ? AND sha256 = ? AND original_name = ?",
                           [cid, sha256, original_name])
        return rows[0][0] if rows else None

    def set_status(self, record_id: int, mask: str | StatusMask) -> Record:
        """Force the bits named by `mask` (`"1x0"`: set bit 2, clear bit 0), keep the others."""
        m = _as_mask(mask)
        with self.transaction() as c:
            row = c.execute("SELECT status FROM records WHERE id = ?" + self.backend.for_update,
                            (int(record_id),)).fetchone()
            if row is None:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
            new = m.apply(row[0])  # type: ignore[union-attr]
            if new != row[0]:
                c.execute("UPDATE records SET status = ?, updated = ? WHERE id = ?", (new, now_iso(), int(record_id)))
        return self.get_record(record_id)

    def set_field(self, record_id: int, name: str, value: object | None) -> bool:
        """Set (None: remove) one field; marks the record's metadata dirty when it changed."""
        return self.set_fields(record_id, {name: value})

    def set_fields(self, record_id: int, values: Mapping[str, object | None]) -> bool:
        declared = self.settings.field_types
        clean = {check_name(k, declared): (None if v is None else normalize_value(k, v, declared)) for k, v in values.items()}
        rid = int(record_id)
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM records WHERE id = ?" + self.backend.for_update, (rid,)).fetchone() is None:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
            changed = False
            for name, value in clean.items():
                old = c.execute("SELECT value FROM fields WHERE record_id = ? AND name = ?", (rid, name)).fetchone()
                if value is None:
                    if old is not None:
                        c.execute("DELETE FROM fields WHERE record_id = ? AND name = ?", (rid, name))
                        changed = True
                elif old is None or old[0] != value:
                    c.execute(
                        "INSERT INTO fields(record_id, name, value) VALUES (?,?,?) "
                        "ON CONFLICT(record_id, name) DO UPDATE SET value = excluded.value",
                        (rid, name, value),
                    )
                    changed = True
            if changed:
                c.execute("UPDATE records SET metadata_dirty = metadata_dirty + 1, updated = ? WHERE id = ?",
                          (now_iso(), rid))
        return changed

    def set_collection(self, record_id: int, collection: CollectionRef) -> Record:
        cid = self.collection(collection).id
        with self.transaction() as c:
            cur = c.execute("UPDATE records SET collection_id = ?, updated = ? WHERE id = ? AND collection_id != ?",
                            (cid, now_iso(), int(record_id), cid))
            if cur.rowcount == 0 and c.execute("SELECT 1 FROM records WHERE id = ?", (int(record_id),)).fetchone() is None:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
        return self.get_record(record_id)

    def _store_document(self, source: Path, name: str) -> tuple[str, Any]:
        """Copy a source into storage under a new name (atomic, durable); (relative path, digest)."""
        token = uuid.uuid4().hex
        doc = self.store.new_name(name, token)
        try:
            fd = os.open(source, os.O_RDONLY)
        except OSError as e:
            raise SourceError(e.errno, f"cannot read {source}: {e.strerror}") from None
        try:
            return doc, self.store.copy_in(fd, doc, token)
        finally:
            os.close(fd)

    def replace_document(self, record_id: int, source: Path | str, *, original_name: str | None = None) -> Record:
        """Store a new document for a record; its sub-definitions become out of date."""
        old = self.get_record(record_id)
        source = Path(source)
        name = original_name or old.original_name or source.name
        doc, digest = self._store_document(source, name)
        try:
            with self.transaction() as c:
                now = now_iso()
                c.execute(
                    "UPDATE records SET document = ?, size = ?, sha256 = ?, mime = ?, document_changed = ?, "
                    "updated = ?, doc_version = doc_version + 1 WHERE id = ?",
                    (doc, digest.size, digest.sha256, guess_mime(name, digest.head), now, now, old.id),
                )
                if old.document_path:
                    self.remove_after_commit([old.document_path])
        except BaseException:
            self.store.remove(doc)
            raise
        return self.get_record(record_id)

    # --- stories -------------------------------------------------------------------

    def _link_story(self, c: Any, story_id: int, record_id: int) -> None:
        row = c.execute("SELECT type FROM records WHERE id = ?", (int(story_id),)).fetchone()
        if row is None or row[0] != "story":
            raise UnknownRecord(f"no story {story_id} in databox {self.settings.where}")
        if int(story_id) == int(record_id):
            raise ValueError("a story cannot contain itself")
        c.execute("INSERT INTO story_children(story_id, record_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                  (int(story_id), int(record_id)))

    def add_to_story(self, story_id: int, record_id: int) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM records WHERE id = ?", (int(record_id),)).fetchone() is None:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
            self._link_story(c, story_id, record_id)

    def remove_from_story(self, story_id: int, record_id: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM story_children WHERE story_id = ? AND record_id = ?", (int(story_id), int(record_id)))

    def story_children(self, story_id: int) -> list[int]:
        return [r[0] for r in self._query("SELECT record_id FROM story_children WHERE story_id = ? ORDER BY record_id",
                                          (int(story_id),))]

    def stories_of(self, record_id: int) -> list[int]:
        return [r[0] for r in self._query("SELECT story_id FROM story_children WHERE record_id = ? ORDER BY story_id",
                                          (int(record_id),))]

    # --- deleting ------------------------------------------------------------------

    def delete_record(self, record_id: int, *, delete_children: bool = False) -> list[int]:
        deleted = self.delete_records([record_id], delete_children=delete_children)
        if not deleted:
            raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
        return deleted

    def delete_records(self, ids: Iterable[int], *, delete_children: bool = False) -> list[int]:
        """Delete records (and with `delete_children`, the records of those stories) in one
        transaction; their documents and sub-definition files go once it has committed."""
        ids = sorted({int(i) for i in ids})
        with self.transaction() as c:
            doomed = set(self._in(c, "SELECT id FROM records WHERE id IN ({})", ids))
            if delete_children:
                doomed.update(self._in(c, "SELECT record_id FROM story_children WHERE story_id IN ({})", sorted(doomed)))
            deleted = sorted(doomed)
            files = [self.store.path(d) for d in self._in(
                c, "SELECT document FROM records WHERE id IN ({}) AND document IS NOT NULL", deleted)]
            files += [self._subdef_path(p) for p in self._in(c, "SELECT path FROM subdefs WHERE record_id IN ({})", deleted)]
            for k in range(0, len(deleted), _CHUNK):
                part = deleted[k : k + _CHUNK]
                c.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(part))})", part)
            self.remove_after_commit(files)
        return deleted

    @staticmethod
    def _in(c: Any, sql: str, ids: Sequence[int]) -> list[Any]:
        """The first column of `sql` (its `{}` an IN list) over `ids`, a chunk at a time."""
        out: list[Any] = []
        for k in range(0, len(ids), _CHUNK):
            part = list(ids[k : k + _CHUNK])
            out += [r[0] for r in c.execute(sql.format(",".join("?" * len(part))), part)]
        return out

    # --- sub-definitions -----------------------------------------------------------

    def _subdef_path(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.store.path(stored)

    def records_needing_subdefs(self, limit: int = 100) -> list[Record]:
        """Records with no sub-definitions, or whose document changed since they were built,
        skipping those marked in error for their current document."""
        return self._records(
            "r.type = 'record' AND r.document IS NOT NULL "
            "AND (r.subdefs_version IS NULL OR r.subdefs_version < r.doc_version) "
            "AND (r.subdef_error_version IS NULL OR r.subdef_error_version < r.doc_version)",
            (int(limit),), with_fields=False, tail="ORDER BY r.id LIMIT ?",
        )

    def set_subdef(self, record_id: int, name: str, path: Path | str, width: int | None = None,
                   height: int | None = None, size: int | None = None, *, doc_version: int | None = None) -> Subdef:
        """Record a built sub-definition. Pass the `doc_version` of the Record it was built
        from, so a document replaced meanwhile still counts as needing new ones."""
        if not name or not isinstance(name, str):
            raise ValueError(f"bad sub-definition name {name!r}")
        rel = self.store.relative(path)
        stored = rel if rel is not None else str(Path(path).resolve())
        with self.transaction() as c:
            row = c.execute("SELECT doc_version FROM records WHERE id = ?", (int(record_id),)).fetchone()
            if row is None:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
            version = row[0] if doc_version is None else int(doc_version)
            old = c.execute("SELECT path FROM subdefs WHERE record_id = ? AND name = ?", (int(record_id), name)).fetchone()
            now = now_iso()
            c.execute(
                "INSERT INTO subdefs(record_id, name, path, width, height, size, created, doc_version) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(record_id, name) DO UPDATE SET path = excluded.path, "
                "width = excluded.width, height = excluded.height, size = excluded.size, "
                "created = excluded.created, doc_version = excluded.doc_version",
                (int(record_id), name, stored, width, height, size, now, version),
            )
            c.execute(
                f"UPDATE records SET subdefs_version = {self.backend.greatest}(coalesce(subdefs_version, 0), ?), "
                "subdef_error = NULL, "
                "subdef_error_version = NULL WHERE id = ?",
                (version, int(record_id)),
            )
            if old is not None and old[0] != stored:
                self.remove_after_commit([self._subdef_path(old[0])])
        return Subdef(int(record_id), name, self._subdef_path(stored), width, height, size, now, version)

    def subdefs(self, record_id: int) -> dict[str, Subdef]:
        return {
            r["name"]: Subdef(r["record_id"], r["name"], self._subdef_path(r["path"]), r["width"], r["height"],
                              r["size"], r["created"], r["doc_version"])
            for r in self._query("SELECT * FROM subdefs WHERE record_id = ? ORDER BY name", (int(record_id),))
        }

    def mark_subdef_error(self, record_id: int, message: str, *, doc_version: int | None = None) -> None:
        """A document that cannot be rendered: skipped until it changes (marked once)."""
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE records SET subdef_error = ?, subdef_error_version = coalesce(?, doc_version) WHERE id = ?",
                (str(message)[:2000], doc_version, int(record_id)),
            )
            if cur.rowcount == 0:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")

    def mark_subdefs_built(self, record_id: int, *, doc_version: int | None = None) -> None:
        """Nothing (more) to build for this document version: no sub-definition is declared for
        its type. The record stops needing sub-definitions until its document changes."""
        with self.transaction() as c:
            cur = c.execute(
                f"UPDATE records SET subdefs_version = {self.backend.greatest}(coalesce(subdefs_version, 0), "
                "coalesce(?, doc_version)), "
                "subdef_error = NULL, subdef_error_version = NULL WHERE id = ?",
                (doc_version, int(record_id)),
            )
            if cur.rowcount == 0:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")

    def invalidate_subdefs(self, record_id: int) -> None:
        """Make a record need its sub-definitions again (`record:subdefs --rebuild`)."""
        with self.transaction() as c:
            cur = c.execute("UPDATE records SET subdefs_version = NULL, subdef_error = NULL, "
                            "subdef_error_version = NULL WHERE id = ?", (int(record_id),))
            if cur.rowcount == 0:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")

    # --- metadata writing bookkeeping ----------------------------------------------

    def records_with_dirty_metadata(self, limit: int = 100) -> list[Record]:
        """Records whose fields changed since last written into their document (with fields)."""
        return self._records("r.metadata_dirty > 0 AND r.document IS NOT NULL", (int(limit),), with_fields=True,
                             tail="ORDER BY r.id LIMIT ?")

    def clear_metadata_dirty(self, record_id: int, seen: int | None = None) -> bool:
        """Clear the flag; with `seen` (the Record's metadata_dirty when read), only if no
        field changed meanwhile. Returns whether it was cleared."""
        with self.transaction() as c:
            if seen is None:
                cur = c.execute("UPDATE records SET metadata_dirty = 0 WHERE id = ?", (int(record_id),))
            else:
                cur = c.execute("UPDATE records SET metadata_dirty = 0 WHERE id = ? AND metadata_dirty = ?",
                                (int(record_id), int(seen)))
            cleared: int = cur.rowcount
            return cleared > 0

    def set_document_text(self, record_id: int, text: str | None) -> None:
        """The document's own text, searchable with the fields (None or "" removes it); the
        record's `updated` moves, so the indexer takes it again."""
        with self.transaction() as c:
            if text:
                c.execute("INSERT INTO document_text(record_id, text) VALUES (?, ?) "
                          "ON CONFLICT(record_id) DO UPDATE SET text = excluded.text", (int(record_id), text))
            else:
                c.execute("DELETE FROM document_text WHERE record_id = ?", (int(record_id),))
            c.execute("UPDATE records SET updated = ? WHERE id = ?", (now_iso(), int(record_id)))

    def document_written(self, record_id: int, *, size: int, sha256: str) -> None:
        """The document was rewritten in place (metadata written): new size and checksum."""
        with self.transaction() as c:
            c.execute("UPDATE records SET size = ?, sha256 = ?, updated = ? WHERE id = ?",
                      (size, sha256, now_iso(), int(record_id)))


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


__all__ = [
    "Databox",
    "DataboxError",
    "StorageError",
    "awaited",
    "display_name",
    "open_databox",
]
