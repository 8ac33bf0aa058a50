"""`record:list`, `record:show`, `record:set-status`, `record:set-field`, `record:replace-document`,
`record:reindex`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schedulerd.commands import CommandError, arg, command, print_json, print_table

from .databox import DATABOX_ARG, JSON_ARG, fail, open_box

if TYPE_CHECKING:
    from ..databox import Databox
    from ..model import Record


def _record_id(text: str) -> int:
    if not str(text).isdigit() or int(text) <= 0:
        raise CommandError(f"ID: expected a record id (a positive integer), got {text!r}", code=2)
    return int(text)


def _short_status(status: int) -> str:
    return format(status, "b")


def _show(rec: Record, db: Databox) -> dict[str, Any]:
    d = rec.to_json()
    d["subdefs"] = {k: v.to_json() for k, v in db.subdefs(rec.id).items()}
    if rec.type == "story":
        d["children"] = db.story_children(rec.id)
    d["stories"] = db.stories_of(rec.id)
    return d


def _print_record(d: dict[str, Any]) -> None:
    keys = ["id", "type", "collection", "original_name", "document_path", "size", "sha256", "mime", "status_bits",
            "created", "updated", "document_changed", "metadata_dirty", "subdef_error"]
    rows = [[k, d[k]] for k in keys if d.get(k) not in (None, "")]
    rows += [[f"field {k}", v] for k, v in d["fields"].items()]
    rows += [[f"subdef {k}", f"{v['path']} ({v['width']}x{v['height']}, {v['size']} bytes)"] for k, v in d["subdefs"].items()]
    if d.get("children"):
        rows.append(["children", " ".join(map(str, d["children"]))])
    if d.get("stories"):
        rows.append(["in stories", " ".join(map(str, d["stories"]))])
    print_table(rows)


@command(
    "record:list", "List records (filters: collection, status mask, fields)",
    DATABOX_ARG,
    arg("--collection", help="collection name or id"),
    arg("--status", help='status mask, rightmost is bit 0, x = any (e.g. "x1x0")'),
    arg("--field", action="append", default=[], metavar="NAME=VALUE", help="field equals value (repeatable)"),
    arg("--type", choices=["record", "story"], help="only records or only stories"),
    arg("--limit", type=int, help="at most this many"),
    JSON_ARG,
)
def record_list(args: argparse.Namespace, env: Any) -> int:
    from .. import DataboxError, parse_mask

    pairs = []
    for item in args.field or []:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise CommandError(f"--field: expected NAME=VALUE, got {item!r}", code=2)
        pairs.append((name, value))
    try:
        mask = parse_mask(args.status, "--status") if args.status else None
    except ValueError as e:
        raise fail(e) from None
    if args.limit is not None and args.limit < 0:
        raise CommandError(f"--limit: expected 0 or more, got {args.limit}", code=2)
    _, db = open_box(args, env)
    with db:
        try:
            records = db.list_records(collection=args.collection, status=mask, fields=pairs, type=args.type,
                                      limit=args.limit)
        except DataboxError as e:
            raise fail(e, "--collection") from None
        except ValueError as e:
            raise fail(e, "--field") from None
    if args.json:
        print_json([r.to_json() for r in records])
    else:
        print_table(
            [[r.id, r.collection, r.type, _short_status(r.status), r.original_name or "", r.size, r.created[:19]]
             for r in records],
            ["ID", "COLLECTION", "TYPE", "STATUS", "NAME", "SIZE", "CREATED"],
        )
    return 0


@command("record:show", "Show one record: document, status bits, fields, sub-definitions",
         arg("id", metavar="ID"), DATABOX_ARG, JSON_ARG)
def record_show(args: argparse.Namespace, env: Any) -> int:
    from .. import UnknownRecord

    rid = _record_id(args.id)
    _, db = open_box(args, env)
    with db:
        try:
            d = _show(db.get_record(rid), db)
        except UnknownRecord as e:
            raise fail(e, "ID") from None
    print_json(d) if args.json else _print_record(d)
    return 0


@command("record:set-status", 'Set status bits of a record with a mask ("1x0": set bit 2, clear bit 0)',
         arg("id", metavar="ID"), arg("mask", metavar="MASK"), DATABOX_ARG, JSON_ARG)
def record_set_status(args: argparse.Namespace, env: Any) -> int:
    from .. import UnknownRecord, parse_mask

    rid = _record_id(args.id)
    try:
        mask = parse_mask(args.mask, "MASK")
    except ValueError as e:
        raise fail(e) from None
    _, db = open_box(args, env)
    with db:
        try:
            rec = db.set_status(rid, mask)
        except UnknownRecord as e:
            raise fail(e, "ID") from None
    if args.json:
        print_json({"id": rec.id, "status": rec.status, "status_bits": rec.status_bits})
    else:
        print(f"record {rec.id}: status {rec.status_bits}")
    return 0


@command("record:set-field", "Set a metadata field of a record (marks its metadata to be written)",
         arg("id", metavar="ID"), arg("name", metavar="NAME"), arg("value", metavar="VALUE"), DATABOX_ARG, JSON_ARG)
def record_set_field(args: argparse.Namespace, env: Any) -> int:
    from .. import UnknownRecord
    from ..events import record_jobs

    rid = _record_id(args.id)
    name, db = open_box(args, env)
    with db:
        try:
            changed = db.set_field(rid, args.name, args.value)
            value = db.fields(rid).get(args.name)
        except UnknownRecord as e:
            raise fail(e, "ID") from None
        except ValueError as e:
            raise fail(e, "NAME/VALUE") from None
    if changed:  # record.fields_changed: writeMetadatas and populateIndex by default ([databoxes.NAME.on])
        for type_name, payloads in record_jobs(name, db.settings, "record.fields_changed", [rid]):
            for payload in payloads:
                env.add_job(type_name, payload)
    if args.json:
        print_json({"id": rid, "field": args.name, "value": value, "changed": changed})
    else:
        print(f"record {rid}: {args.name} = {value}" + ("" if changed else " (unchanged)"))
    return 0


@command("record:replace-document", "Replace a record's document (queues its subdefCreation: record.document_replaced)",
         arg("id", metavar="ID"), arg("file", metavar="FILE", type=Path, help="the new document"), DATABOX_ARG,
         arg("--name", default=None, help="its original name (default: the record's)"), JSON_ARG)
def record_replace_document(args: argparse.Namespace, env: Any) -> int:
    from .. import SourceError, StorageError, UnknownRecord
    from ..events import record_jobs

    rid = _record_id(args.id)
    if not args.file.is_file():
        raise CommandError(f"FILE: {args.file} is not a readable file", 2)
    name, db = open_box(args, env)
    with db:
        try:
            rec = db.replace_document(rid, args.file, original_name=args.name)
        except UnknownRecord as e:
            raise fail(e, "ID") from None
        except SourceError as e:
            raise fail(e, "FILE") from None
        except StorageError as e:
            raise CommandError(str(e), 1) from None
    jobs = [env.add_job(type_name, payload)  # subdefCreation by default ([databoxes.NAME.on])
            for type_name, payloads in record_jobs(name, db.settings, "record.document_replaced", [rid])
            for payload in payloads]
    if args.json:
        print_json({"id": rec.id, "document": rec.document, "doc_version": rec.doc_version, "jobs": jobs})
    else:
        print(f"record {rec.id}: document {rec.document} (version {rec.doc_version})"
              + (f", jobs {', '.join(map(str, jobs))} queued" if jobs else ""))
    return 0


@command("record:reindex", "Queue a populateIndex job: (re)index a databox's records in its full-text index",
         DATABOX_ARG, arg("--record", type=int, action="append", default=[], metavar="ID", help="only these records"))
def record_reindex(args: argparse.Namespace, env: Any) -> int:
    from .databox import pick_databox

    name, _ = pick_databox(args, env)
    payload: dict[str, Any] = {"databox": name}
    if args.record:
        payload["records"] = sorted({_record_id(str(r)) for r in args.record})
    print(env.add_job("populateIndex", payload))
    return 0
