"""`databox:copy`: every row of one databox into another, empty one, ids kept (SQLite <-> PostgreSQL).

Tables are copied a chunk of records at a time (the record rows, then their fields,
sub-definitions, document text and story links) inside one transaction of the target, so a
failed copy leaves the target empty. Documents and sub-definition files are copied too when the
two databoxes have different storage folders (same relative paths).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .databox import Databox
from .model import DataboxError

CHUNK = 1000
RECORD_COLUMNS = ("id, collection_id, type, original_name, document, size, sha256, mime, status, created, updated, "
                  "document_changed, doc_version, subdefs_version, subdef_error, subdef_error_version, "
                  "metadata_dirty, ingest_token")
# (table, columns, the column holding the record id) copied per chunk of records
PER_RECORD = (
    ("fields", "record_id, name, value", "record_id"),
    ("subdefs", "record_id, name, path, width, height, size, created, doc_version", "record_id"),
    ("document_text", "record_id, text", "record_id"),
)
STORY_COLUMNS = "story_id, record_id"  # copied once every record is in (a story may hold a later record)


def copy_databox(src: Databox, dst: Databox) -> dict[str, int]:
    """Copy `src` into `dst` (which must hold nothing); the number of rows per table."""
    counts = {"collections": 0, "records": 0, **{t: 0 for t, _, _ in PER_RECORD}, "story_children": 0}
    same_storage = Path(src.store.root).resolve() == Path(dst.store.root).resolve()
    with dst.transaction() as c:
        held = [c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("collections", "records")]
        if any(held):
            raise DataboxError(f"databox {dst.settings.where} is not empty ({held[0]} collections, {held[1]} records): "
                               "databox:copy only fills a new one")
        rows = src._query("SELECT id, name, created FROM collections ORDER BY id")
        c.executemany("INSERT INTO collections(id, name, created) VALUES (?, ?, ?)", [tuple(r) for r in rows])
        counts["collections"] = len(rows)
        after = 0
        while True:
            recs = src._query(f"SELECT {RECORD_COLUMNS} FROM records WHERE id > ? ORDER BY id LIMIT ?", (after, CHUNK))
            if not recs:
                break
            ids = [r[0] for r in recs]
            after = ids[-1]
            marks = ",".join("?" * len(ids))
            c.executemany(f"INSERT INTO records({RECORD_COLUMNS}) VALUES ({','.join('?' * 18)})", [tuple(r) for r in recs])
            counts["records"] += len(recs)
            for table, cols, key in PER_RECORD:
                part = src._query(f"SELECT {cols} FROM {table} WHERE {key} IN ({marks})", ids)
                if part:
                    c.executemany(f"INSERT INTO {table}({cols}) VALUES ({','.join('?' * len(part[0]))})",
                                  [tuple(r) for r in part])
                counts[table] += len(part)
            if not same_storage:
                _copy_files(src, dst, recs, src._query(f"SELECT path FROM subdefs WHERE record_id IN ({marks})", ids))
        links = src._query(f"SELECT {STORY_COLUMNS} FROM story_children ORDER BY story_id, record_id")
        c.executemany(f"INSERT INTO story_children({STORY_COLUMNS}) VALUES (?, ?)", [tuple(r) for r in links])
        counts["story_children"] = len(links)
        dst.backend.after_copy(c)
    return counts


def _copy_files(src: Databox, dst: Databox, recs: list[Any], subdefs: list[Any]) -> None:
    """Documents and sub-definitions stored under src's storage, to the same place under dst's."""
    rels = [r["document"] for r in recs if r["document"]] + [r[0] for r in subdefs if not os.path.isabs(r[0])]
    for rel in rels:
        source, target = src.store.path(rel), dst.store.path(rel)
        if not source.exists() or (target.exists() and target.stat().st_size == source.stat().st_size):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all: a copy cut short (crash, full disk) leaves a temp name, never a
        # truncated document under the final one that a later run would take as copied
        tmp = target.with_name(f".{target.name}.copying")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
