"""Job types of one record or one databox, named as the Worker Manager names its queues; each
has its own queue of the same name by default (`[queues.NAME] workers`, 0 leaves it to other hosts).

- `subdefCreation` `{"databox": D, "record": ID}`: all the record's sub-definitions (the `subdefs`
  task's settings of that databox: status bit, tool timeout). A missing tool fails the attempt
  (retried); a broken document marks the record in error and the job finishes.
- `writeMetadatas` `{"databox": D, "record": ID}`: its fields into its files, as the databox's
  `write_metadata` task writes them (none configured: nothing to write).
- `populateIndex` `{"databox": D}` or `{"databox": D, "records": [ID, ...]}`: (re)index the
  whole databox or these records in its full-text index (`record:reindex`).
- `deleteRecord` `{"databox": D, "record": ID}`: delete the record with its document and
  sub-definitions if it still exists, and drop it from the full-text index.

`record.*` events queue them (repository.record_jobs, `[databoxes.NAME.on]`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from schedulerd.plugin import Context, FailForGood, Item, ItemKind, JobType, TaskFailed

if TYPE_CHECKING:
    from repository import Databox, Record


def _databox(payload: Mapping[str, Any], config: Any) -> str:
    name = payload.get("databox")
    boxes = getattr(config, "databoxes", None) or {}
    if not isinstance(name, str) or name not in boxes:
        raise ValueError(f"databox: expected one of {', '.join(sorted(boxes)) or 'none (see [databoxes])'}, got {name!r}")
    return name


def _record(payload: Mapping[str, Any]) -> int:
    rid = payload.get("record")
    if not isinstance(rid, int) or isinstance(rid, bool) or rid <= 0:
        raise ValueError(f"record: expected a record id (a positive integer), got {rid!r}")
    return rid


def _check_keys(payload: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(payload) - set(known))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(known)})")


@asynccontextmanager
async def _kept(ctx: Context, databox: str) -> AsyncIterator[Databox]:
    """The databox, kept open by this process between jobs (repository.kept): the job has it to
    itself; after an error it is closed, so the next job opens it afresh."""
    from repository import KEPT, DataboxMissing, awaited

    box = ctx.config.databoxes[databox]
    try:
        db = await anyio.to_thread.run_sync(KEPT.take, box)
    except DataboxMissing:
        raise TaskFailed(f"{awaited(databox, box)} does not exist yet") from None
    broken = True
    try:
        yield db
        broken = False
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: KEPT.give_back(db, broken=broken))


async def _get(db: Databox, rid: int, *, with_fields: bool = True) -> Record | None:
    from repository import UnknownRecord

    try:
        return await anyio.to_thread.run_sync(lambda: db.get_record(rid, with_fields=with_fields))
    except UnknownRecord:
        return None


class RecordJob(JobType):
    """A job about one record of one databox."""

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        _check_keys(payload, ("databox", "record"))
        _databox(payload, config)
        _record(payload)

    def title(self, payload: Mapping[str, Any]) -> str:
        return f"{self.type_name} {payload.get('databox')} #{payload.get('record')}"

    def check_step(self, payload: Mapping[str, Any], config: Any) -> None:
        """In a pipeline the records come from the items: the step itself takes no keys."""
        _check_keys(payload, ())

    async def run_item(self, ctx: Context, payload: Mapping[str, Any], item: Item) -> Item:
        if item.kind is not ItemKind.RECORD or item.databox is None or item.id is None:
            raise FailForGood(f"{self.type_name} takes records, got a {item.kind.value} item ({item.path or item})")
        summary = await self.run(ctx, {"databox": item.databox, "record": item.id})
        if summary:
            ctx.log.info("%s", summary)
        return item


class SubdefCreation(RecordJob):
    type_name: ClassVar[str] = "subdefCreation"
    default_queue: ClassVar[str] = "subdefCreation"

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        from tasks.media import as_specs
        from tasks.subdefs import Settings as SubdefsSettings
        from tasks.subdefs import build_record, task_settings_for

        databox, rid = payload["databox"], payload["record"]
        st = task_settings_for(ctx.config, databox) or SubdefsSettings(databox=databox)
        async with _kept(ctx, databox) as db:
            record = await _get(db, rid, with_fields=False)  # sub-definitions need no fields
            if record is None:
                return f"record {rid} no longer exists"
            if record.subdefs_version is not None and record.subdefs_version >= record.doc_version:
                return f"{record.label}: already built (by the subdefs sweeper or another job)"
            ctx.progress(0, 1)
            outcome = await build_record(db, record, as_specs(ctx.config.databoxes[databox].subdefs),
                                         timeout=st.tool_timeout, status_bit=st.status_bit, log=ctx.log)
        if outcome.waiting:
            raise TaskFailed(f"{record.label}: {outcome.waiting}")
        ctx.progress(1, 1)
        if outcome.error:
            return f"{record.label}: in error: {outcome.error}"
        return outcome.nothing or f"{record.label}: {', '.join(name for name, _ in outcome.built)} built"


class WriteMetadatas(RecordJob):
    type_name: ClassVar[str] = "writeMetadatas"
    default_queue: ClassVar[str] = "writeMetadatas"

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        from tasks.media.exiftool import ExifTool
        from tasks.write_metadata import WriteMetadataTask, task_settings_for

        databox, rid = payload["databox"], payload["record"]
        st = task_settings_for(ctx.config, databox)
        if st is None:
            return f"nothing to write: no write_metadata task is configured for databox {databox}"
        async with _kept(ctx, databox) as db:
            record = await _get(db, rid)
            if record is None:
                return f"record {rid} no longer exists"
            async with ExifTool(st.exiftool, timeout=st.request_timeout, log=ctx.log) as et:
                files = await WriteMetadataTask(st).write_record(et, db, record)
        return f"{record.label}: {files} file{'s' if files != 1 else ''} written"


class PopulateIndex(JobType):
    type_name: ClassVar[str] = "populateIndex"
    default_queue: ClassVar[str] = "populateIndex"

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        _check_keys(payload, ("databox", "records", "event"))
        _databox(payload, config)
        ids = payload.get("records")
        if ids is not None and (not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)):
            raise ValueError(f"records: expected a list of record ids, got {ids!r}")

    def title(self, payload: Mapping[str, Any]) -> str:
        ids = payload.get("records")
        return f"index {payload.get('databox')}" + (f": {len(ids)} records" if ids is not None else " (all)")

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        from repository import open_index

        box = ctx.config.databoxes[payload["databox"]]
        ids = payload.get("records")

        def work() -> str:
            index = open_index(box)
            try:
                if ids is None:
                    res = index.run_pass(full=True)
                    return f"{res.indexed} records indexed, {res.removed} removed"
                removed = index.reindex(ids)
                return f"{len(ids) - removed} records indexed, {removed} removed"
            finally:
                index.close()

        return await anyio.to_thread.run_sync(work)


class DeleteRecord(RecordJob):
    type_name: ClassVar[str] = "deleteRecord"
    default_queue: ClassVar[str] = "deleteRecord"

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        from repository import open_index

        databox, rid = payload["databox"], payload["record"]
        box = ctx.config.databoxes[databox]
        async with _kept(ctx, databox) as db:
            deleted = await anyio.to_thread.run_sync(lambda: db.delete_records([rid]))

        def unindex() -> int:
            if box.url is None and not box.path.is_file():
                return 0
            index = open_index(box)
            try:
                return index.forget_missing([rid])
            finally:
                index.close()

        dropped = await anyio.to_thread.run_sync(unindex)
        what = "deleted" if deleted else "already deleted"
        return f"record {rid} {what}" + (", dropped from the full-text index" if dropped else "")
