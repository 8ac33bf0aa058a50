"""Records: finding them (filters on collection, status bits, fields, type), creating them with
their documents (one at a time, or a batch already stored by the hotfolder ingest), changing
their status, fields, collection and document, deleting them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .core import CHUNK, RECORDS_FROM, CollectionRef, display_name
from .fields import check_fields, check_name, normalize_value, now_iso
from .model import NewRecord, Record, RecordType, UnknownRecord
from .status import StatusMask, parse_mask
from .storage import SourceError, guess_mime
from .stories import Stories


def _as_mask(status: str | StatusMask | None, where: str = "status") -> StatusMask | None:
    if status is None or isinstance(status, StatusMask):
        return status
    return parse_mask(status, where)


class Records(Stories):
    """Reading, writing and deleting records and their fields."""

    # --- records: finding ----------------------------------------------------------

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
        count: int = self._query(f"SELECT count(*) FROM {RECORDS_FROM} WHERE {where}", params)[0][0]
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
        for k in range(0, len(tokens), CHUNK):
            part = list(tokens[k : k + CHUNK])
            q = ",".join("?" * len(part))
            for r in self._query(f"SELECT ingest_token, id FROM records WHERE ingest_token IN ({q})", part):
                out[r[0]] = r[1]
        return out

    def find_by_sha256(self, collection: CollectionRef, sha256s: Iterable[str]) -> dict[str, int]:
        """Existing records (sha256 -> lowest id) with these checksums in `collection`."""
        cid = self.collection(collection).id
        shas = list(set(sha256s))
        out: dict[str, int] = {}
        for k in range(0, len(shas), CHUNK):
            part = shas[k : k + CHUNK]
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
            for k in range(0, len(deleted), CHUNK):
                part = deleted[k : k + CHUNK]
                c.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(part))})", part)
            self.remove_after_commit(files)
        return deleted

    @staticmethod
    def _in(c: Any, sql: str, ids: Sequence[int]) -> list[Any]:
        """The first column of `sql` (its `{}` an IN list) over `ids`, a chunk at a time."""
        out: list[Any] = []
        for k in range(0, len(ids), CHUNK):
            part = list(ids[k : k + CHUNK])
            out += [r[0] for r in c.execute(sql.format(",".join("?" * len(part))), part)]
        return out
