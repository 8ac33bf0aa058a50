"""Job type `archive`: one file into a collection of a databox, as a record (the step that turns a
pipeline's files into records; docs/pipelines.md).

Payload `{"databox": D, "collection": C, "path": P}` (and `status`, a mask such as "x1x0"); in a
pipeline the step gives `databox`, `collection` (and `status`), each file item its `path`, and the
output item is the record (id, collection, status), its path, size and mime kept. Archiving is
idempotent: a file whose content (sha256) already has a record of that name in the collection gets
that record back, so an attempt run again after a crash archives nothing twice. The same content
under another name is a record of its own (the job has no `duplicates` setting; the archive task's
`duplicates` decides for hotfolders).

A new record gets the fields its file embeds (EXIF, IPTC, XMP), read by exiftool as the archive
task reads them: the databox's fields with a `src` tag, and the step's `fields = { Make = "EXIF:Make" }`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from schedulerd import metrics
from schedulerd.plugin import Context, FailForGood, Item, ItemKind, JobType, TaskFailed

if TYPE_CHECKING:
    from repository import DataboxSettings, Record

STEP_KEYS = ("databox", "collection", "status", "fields")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def archive(box: DataboxSettings, collection: str, path: Path, status: str,
            fields: Mapping[str, str] | None = None) -> tuple[Record, bool]:
    """(the record, whether it is new; a new one with `fields`); blocking: run it in a worker thread."""
    from repository import open_databox

    db = open_databox(box, create=False)
    try:
        twin = db.find_twin(collection, _sha256(path), path.name)
        if twin is not None:
            return db.get_record(twin), False
        return db.create_record(collection, path, status=status or 0, fields=fields), True
    finally:
        db.close()


def _check_sources(fields: object, box: DataboxSettings) -> None:
    """A step's `fields = { Make = "EXIF:Make" }`: field name -> the embedded tag read into it, as
    a databox field's `src` says (the databox's own `src` fields are read too)."""
    from repository import FIELD_NAME_RE, FieldSettings

    if not isinstance(fields, Mapping):
        raise ValueError(f'fields: expected a table like {{ Make = "EXIF:Make" }}, got {fields!r}')
    declared = box.field_types
    for name, tag in fields.items():
        if not FIELD_NAME_RE.match(name) or (declared and name not in declared):
            known = f" (declared: {', '.join(sorted(declared))})" if declared else ""
            raise ValueError(f"fields.{name}: not a field of the databox{known}")
        try:
            FieldSettings(src=tag if isinstance(tag, str) else repr(tag)).check()
        except ValueError as e:
            raise ValueError(f"fields.{name}: {str(e).removeprefix('src: ')}") from None


async def embedded(ctx: Context, box: DataboxSettings, sources: Mapping[str, str], path: Path) -> dict[str, str]:
    """The fields `path` embeds (field -> tag: `sources`), read by exiftool; none (a warning
    logged) when exiftool is missing or cannot read the file: the file is archived without them."""
    from repository import embedded_fields
    from tasks.media import MediaError
    from tasks.media.exiftool import ExifTool

    if not sources:
        return {}
    try:
        async with ExifTool(log=ctx.log) as et:
            read = await et.read_values(path, sorted(set(sources.values())))
    except MediaError as e:
        ctx.log.warning("%s: embedded metadata not read: %s", path.name, e)
        return {}
    fields, problems = embedded_fields(sources, box.field_types, read)
    for problem in problems:
        ctx.log.warning("%s: embedded %s (field left empty)", path.name, problem)
    return fields


class ArchiveFile(JobType):
    type_name: ClassVar[str] = "archive"
    default_queue: ClassVar[str] = "archive"
    emits: ClassVar[tuple[str, ...]] = ("record.created",)

    def check_step(self, payload: Mapping[str, Any], config: Any) -> None:
        from repository import parse_mask

        unknown = sorted(set(payload) - set(STEP_KEYS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(STEP_KEYS)})")
        boxes = getattr(config, "databoxes", None) or {}
        if payload.get("databox") not in boxes:
            raise ValueError(f"databox: expected one of {', '.join(sorted(boxes)) or 'none (see [databoxes])'}, "
                             f"got {payload.get('databox')!r}")
        if not isinstance(payload.get("collection"), str) or not payload["collection"]:
            raise ValueError("collection: expected a collection name")
        if not isinstance(payload.get("status", ""), str):
            raise ValueError(f"status: expected a mask like \"x1x0\", got {payload['status']!r}")
        parse_mask(payload.get("status", ""), "status")
        _check_sources(payload.get("fields", {}), boxes[payload["databox"]])

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        self.check_step({k: v for k, v in payload.items() if k != "path"}, config)
        if not isinstance(payload.get("path"), str) or not payload["path"]:
            raise ValueError("path: expected the file to archive")

    def title(self, payload: Mapping[str, Any]) -> str:
        return f"archive {payload.get('path')} into {payload.get('databox')}/{payload.get('collection')}"

    async def _archive(self, ctx: Context, payload: Mapping[str, Any], path: Path) -> Any:
        from repository import DataboxError, SourceError, StorageError, awaited

        databox = str(payload["databox"])
        box = ctx.config.databoxes[databox]
        if not path.is_file():
            raise FailForGood(f"{path}: no such file")
        fields = await embedded(ctx, box, {**box.field_sources, **payload.get("fields", {})}, path)
        try:
            record, new = await anyio.to_thread.run_sync(archive, box, str(payload["collection"]), path,
                                                         str(payload.get("status", "")), fields)
        except (SourceError, StorageError) as e:
            raise TaskFailed(f"{path}: {e}") from None
        except DataboxError as e:
            raise TaskFailed(f"{awaited(databox, box)}: {e}") from None
        if new:
            metrics.records_archived(ctx.name, 1)
            ctx.emit("record.created", databox=databox, record_id=record.id)
            ctx.log.info("%s archived as %s", path, record.label)
        return record

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        record = await self._archive(ctx, payload, Path(str(payload["path"])))
        return f"{payload['path']}: {record.label}"

    async def run_item(self, ctx: Context, payload: Mapping[str, Any], item: Item) -> Item:
        if item.kind is not ItemKind.FILE or not item.path:
            raise FailForGood(f"archive takes files, got a {item.kind.value} item")
        record = await self._archive(ctx, payload, Path(item.path))
        return Item(ItemKind.RECORD, item.path, record.size, record.mime, str(payload["databox"]), record.id,
                    record.collection, record.status, dict(record.fields))
