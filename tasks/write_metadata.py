"""Task type `write_metadata`: put records' fields into their files with exiftool.

A sweeper beside the `writeMetadatas` jobs: runs for records whose fields changed
since the last write (`metadata_dirty`, set by `record:set-field` and workflows) and
that no job wrote (a job failed for good, records older than the configuration). A
pass with work starts one `exiftool -stay_open` child and sends it every file, batch
after batch while full batches are found, so a backlog drains in one pass and costs
one process, not one per file.

- `fields` maps a databox field to one or more tags (`Title = "XMP-dc:Title"`,
  `Caption = ["IPTC:Caption-Abstract", "XMP-dc:Description"]`); a field the record
  lacks removes its tags. `id_tag` receives the record id.
- With `subdefs` (true, or a list of names) the sub-definitions get them too.
- exiftool writes a temporary and renames it over the file; the write is then
  checked: no temporary left behind, and the record id read back from the file.
  The record's size and checksum are updated and its flag cleared, unless a field
  changed meanwhile (then the next pass writes again).
- A file exiftool refuses is logged once and skipped until the record changes again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import anyio

from schedulerd import settings as s
from schedulerd.plugin import Context, TaskType
from tasks.media import MediaError
from tasks.media.exiftool import ExifTool, check_tag

if TYPE_CHECKING:
    from repository import Databox, Record, Subdef

DEFAULT_ID_TAG = "XMP-dc:Identifier"


def _no_fields() -> Mapping[str, str | tuple[str, ...]]:
    return types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Settings:
    databox: str
    fields: Mapping[str, str | tuple[str, ...]] = dataclasses.field(default_factory=_no_fields)
    id_tag: str | None = DEFAULT_ID_TAG  # the record id goes there; "" or none: not written
    subdefs: bool | tuple[str, ...] = False  # also write into sub-definitions (all, or these names)
    separator: str | None = None  # split values into list-type tags (exiftool -sep), e.g. ";"
    batch: Annotated[int, s.int_range(1, 10000)] = 100
    request_timeout: Annotated[float, s.positive_duration] = 60.0  # per exiftool request
    exiftool: str = "exiftool"

    def check(self) -> None:
        if not self.databox:
            raise ValueError("databox: expected a databox name")
        seen: dict[str, str] = {}
        for field, tags in self.fields.items():
            for tag in self.tags_of(field):
                try:
                    check_tag(tag)
                except ValueError as e:
                    raise ValueError(f"fields.{field}: {e}") from None
                if tag.lower() in seen:
                    raise ValueError(f"fields.{field}: tag {tag} is also written by field {seen[tag.lower()]}")
                seen[tag.lower()] = field
            if not tags:
                raise ValueError(f"fields.{field}: expected a tag like \"XMP-dc:Title\" or a list of tags")
        if self.id_tag:
            try:
                check_tag(self.id_tag)
            except ValueError as e:
                raise ValueError(f"id_tag: {e}") from None
            if self.id_tag.lower() in seen:
                raise ValueError(f"id_tag: {self.id_tag} is also written by field {seen[self.id_tag.lower()]}")
        if not self.fields and not self.id_tag:
            raise ValueError("fields: nothing to write (no fields and no id_tag)")
        if self.separator == "":
            raise ValueError("separator: expected a non-empty string like \";\"")

    def tags_of(self, field: str) -> tuple[str, ...]:
        tags = self.fields[field]
        return (tags,) if isinstance(tags, str) else tuple(tags)

    def tags_for(self, record: Record) -> dict[str, str | None]:
        """Tag -> value for one record; None deletes the tag (the record lacks the field)."""
        out: dict[str, str | None] = {}
        for field in self.fields:
            value = record.fields.get(field)
            for tag in self.tags_of(field):
                out[tag] = value if value not in (None, "") else None
        if self.id_tag:
            out[self.id_tag] = str(record.id)
        return out


WriteMetadataSettings = Settings  # (in WriteMetadataTask's body, `Settings` is the ClassVar)


class WriteFailed(MediaError):
    pass


@dataclasses.dataclass
class _Written:
    records: int = 0
    files: int = 0

    def __bool__(self) -> bool:
        return bool(self.records)


def task_settings_for(config: Any, databox: str) -> Settings | None:
    """The settings of the first `write_metadata` task of `databox` (what the writeMetadatas job writes)."""
    for tc in (getattr(config, "tasks", None) or {}).values():
        if tc.type == WriteMetadataTask.type_name and tc.settings.databox == databox:
            settings: Settings = tc.settings
            return settings
    return None


def _sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class WriteMetadataTask(TaskType):
    """Writes changed records' fields into their documents (and sub-definitions)."""

    type_name: ClassVar[str] = "write_metadata"
    Settings: ClassVar[type] = Settings
    default_period: ClassVar[float] = 60.0

    settings: WriteMetadataSettings

    def __init__(self, settings: WriteMetadataSettings):
        super().__init__(settings)
        # record id -> its metadata_dirty when the write failed: skipped until that changes
        self._failed: dict[int, int] = {}

    def check(self, config: Any) -> None:
        st: Settings = self.settings
        boxes = getattr(config, "databoxes", None) or {}
        if st.databox not in boxes:
            raise ValueError(f"databox: unknown databox {st.databox!r} (known: {', '.join(boxes) or 'none'})")
        box = boxes[st.databox]
        declared = getattr(box, "fields", None) or {}
        for field in st.fields:
            if declared and field not in declared:
                raise ValueError(f"fields.{field}: not a field of databox {st.databox} (known: {', '.join(declared)})")
        if isinstance(st.subdefs, tuple):
            for name in st.subdefs:
                if name not in box.subdefs:
                    raise ValueError(f"subdefs: {name!r} is not a sub-definition of databox {st.databox} "
                                     f"(known: {', '.join(box.subdefs)})")

    async def run_once(self, ctx: Context) -> str | None:
        from repository import DataboxMissing, awaited, open_databox

        st: Settings = self.settings
        box = ctx.config.databoxes[st.databox]
        try:
            db = await anyio.to_thread.run_sync(lambda: open_databox(box, create=False))
        except DataboxMissing:  # not created yet (by an archive task, the indexer or databox:create)
            ctx.wait_for(awaited(st.databox, box))
            return f"waiting for {awaited(st.databox, box)}"
        try:
            written, failed = await self._sweep(ctx, db)
        finally:
            await anyio.to_thread.run_sync(db.close)
        if not written and not failed:
            return "nothing to do" + (f" ({len(self._failed)} records failed)" if self._failed else "")
        return f"{written.records} records written ({written.files} files)" + (f", {failed} failed" if failed else "")

    async def _sweep(self, ctx: Context, db: Databox) -> tuple[_Written, int]:
        """Batch after batch while full batches are found (a backlog drains in one pass); a stop
        cancels between or inside records, each record's write being accounted on its own."""
        st: Settings = self.settings
        written, failed = _Written(), 0
        et: ExifTool | None = None
        async with contextlib.AsyncExitStack() as stack:
            while True:
                found = await anyio.to_thread.run_sync(db.records_with_dirty_metadata, st.batch + len(self._failed))
                live = {r.id for r in found}
                self._failed = {rid: seen for rid, seen in self._failed.items() if rid in live}
                records = [r for r in found if self._failed.get(r.id) != r.metadata_dirty][: st.batch]
                if not records:
                    break
                if et is None:  # started once a batch has work, ended with the pass
                    et = await stack.enter_async_context(ExifTool(st.exiftool, timeout=st.request_timeout, log=ctx.log))
                    stack.callback(lambda: ctx.set_info(exiftool_pid=None, failed_records=len(self._failed) or None))
                    ctx.set_info(exiftool_pid=et.pid)
                done = written.records + failed
                for i, record in enumerate(records):
                    try:
                        written.files += await self.write_record(et, db, record)
                        written.records += 1
                        self._failed.pop(record.id, None)
                    except MediaError as e:  # ExifToolError, timeouts, WriteFailed
                        ctx.log.warning("%s: metadata not written: %s", record.label, e)
                        self._failed[record.id] = record.metadata_dirty
                        failed += 1
                    ctx.progress(done + i + 1, done + len(records))
                if len(records) < st.batch:
                    break
        return written, failed

    def _targets(self, db: Databox, record: Record) -> list[tuple[Path, Subdef | None]]:
        """(path, Subdef or None for the document) to write for one record."""
        st: Settings = self.settings
        if record.document_path is None:
            raise WriteFailed("the record has no document")
        out: list[tuple[Path, Subdef | None]] = [(record.document_path, None)]
        subdefs = st.subdefs
        if subdefs:
            for name, sub in db.subdefs(record.id).items():
                if isinstance(subdefs, bool) or name in subdefs:  # (a bool here is true: all of them)
                    out.append((sub.path, sub))
        return out

    async def write_record(self, et: ExifTool, db: Databox, record: Record) -> int:
        """Write, verify, account; the number of files written."""
        st: Settings = self.settings
        tags = st.tags_for(record)
        options = ["-sep", st.separator] if st.separator else []
        targets = await anyio.to_thread.run_sync(self._targets, db, record)
        done = 0
        for path, sub in targets:
            if not path.is_file():
                if sub is None:
                    raise WriteFailed(f"document {path} is missing")
                continue  # a sub-definition being rebuilt: it gets the fields on the next change
            await et.write_tags(path, tags, options)
            done += 1
            if st.id_tag:
                back = await et.read_tags(path, [st.id_tag])
                if str(record.id) not in {str(v) for v in back.values()}:
                    raise WriteFailed(f"{path.name}: {st.id_tag} reads back as {back or 'nothing'}, "
                                      f"not {record.id}")
            size, digest = await anyio.to_thread.run_sync(_sha256, path)

            def account(path: Path = path, sub: Subdef | None = sub, size: int = size, digest: str = digest) -> None:
                if sub is None:
                    db.document_written(record.id, size=size, sha256=digest)
                elif sub.doc_version == record.doc_version:  # a stale one is about to be rebuilt anyway
                    db.set_subdef(record.id, sub.name, path, sub.width, sub.height, size, doc_version=sub.doc_version)

            await anyio.to_thread.run_sync(account)
        # not cleared if a field changed during the write: the next pass writes again
        await anyio.to_thread.run_sync(lambda: db.clear_metadata_dirty(record.id, record.metadata_dirty))
        return done
