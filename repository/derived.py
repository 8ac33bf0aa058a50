"""What is derived from a record's document and kept up to date with it: its sub-definitions
(built by the `subdefs` task type), its metadata written back into the file, its text."""

from __future__ import annotations

from pathlib import Path

from .core import DataboxCore
from .fields import now_iso
from .model import Record, Subdef, UnknownRecord


class Derived(DataboxCore):
    """Sub-definitions, metadata write-back bookkeeping, document text."""

    # --- sub-definitions -----------------------------------------------------------

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
