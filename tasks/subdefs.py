"""Task type `subdefs`: thumbnails and previews for the records of one databox.

A sweeper beside the `subdefCreation` jobs: each pass takes `batch` records that have
no sub-definitions yet, or whose document changed since (a job failed for good, records
older than the configuration), builds the sub-definitions declared for their media
class (`[databoxes.NAME.subdefs.*]`), and takes the next batch at once while full
batches are found, so a backlog drains in one pass. It also runs on `record.created`.

- A video or PDF record with no declarations of its own class gets the image
  class's still-format ones (a video's thumbnail is a frame, a PDF's is page 1).
- A document of a type with no declarations at all (a text file, an audio file)
  has nothing to build: its record is done, not in error.
- Files go to `<storage>/subdefs/<name>/<document path>.<ext>`, written atomically;
  the record gets them, their sizes and `status_bit` in one transaction.
- A broken document marks its record in error once (until the document changes).
- A PDF's or plain-text document's own text goes into the full-text index with the
  record's fields (`Databox.set_document_text`), unless the databox's
  `index_document_text` is false: here, not in the archive, so archiving stays fast.
- A missing tool (ffmpeg, pdftoppm) is a state of the host: the record is left
  for later, reported in the task info, and does not hold up the others.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import anyio

from schedulerd import metrics
from schedulerd import settings as s
from schedulerd.plugin import Context, TaskLog, TaskType
from tasks.media import Made, MediaError, Spec, ToolNotFound, as_specs, classify, make_subdefs
from tasks.media.maker import check_spec, extension
from tasks.media.text import document_text, has_text
from tasks.media.tools import PACKAGES

if TYPE_CHECKING:
    from repository import Databox, Record

SUBDEF_DIR = "subdefs"


@dataclasses.dataclass(frozen=True)
class Settings:
    databox: str
    batch: Annotated[int, s.int_range(1, 10000)] = 50
    status_bit: Annotated[int, s.int_range(0, 31)] | None = None  # set once a record's sub-definitions are built
    workers: Annotated[int, s.int_range(0, 256)] = 0  # records built at once; 0: one per CPU
    tool_timeout: Annotated[float, s.positive_duration] = 300.0  # per ffmpeg / pdftoppm run

    def check(self) -> None:
        if not self.databox:
            raise ValueError("databox: expected a databox name")

    @property
    def concurrency(self) -> int:
        return self.workers or os.cpu_count() or 1


SubdefsSettings = Settings  # (in SubdefsTask's body, `Settings` is the ClassVar)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one record."""

    record_id: int
    built: tuple[tuple[str, Made], ...] = ()
    nothing: str | None = None  # no sub-definition is declared for its type: done, nothing built
    error: str | None = None  # the document is broken or unsupported: record marked
    waiting: str | None = None  # a tool is missing: record left for later


def specs_for(specs: Sequence[Spec], media_class: str | None) -> list[Spec]:
    """The declarations a record of `media_class` gets (see the module docstring)."""
    own = [sp for sp in specs if sp.media_class == media_class]
    if own or media_class not in ("video", "document"):
        return own
    return [dataclasses.replace(sp, media_class=media_class) for sp in specs
            if sp.media_class == "image" and sp.format != "mp4"]


def subdef_path(storage: Path, document: str, spec: Spec) -> Path:
    """`storage/subdefs/thumbnail/2024/05/01/<token>.jpg` for document `2024/05/01/<token>.tif`."""
    rel = Path(document)
    return storage / SUBDEF_DIR / spec.name / rel.parent / (rel.stem + extension(spec))


def task_settings_for(config: Any, databox: str) -> Settings | None:
    """The settings of the first `subdefs` task of `databox` (for the CLI's one-off builds)."""
    for tc in (getattr(config, "tasks", None) or {}).values():
        if tc.type == SubdefsTask.type_name and tc.settings.databox == databox:
            settings: Settings = tc.settings
            return settings
    return None


async def build_record(db: Databox, record: Record, specs: Sequence[Spec], *, timeout: float,
                       status_bit: int | None = None, log: TaskLog | None = None) -> Outcome:
    """Build one record's sub-definitions and register them (or its error) in the databox."""
    from repository import StatusMask

    path, document = record.document_path, record.document
    if path is None or document is None:
        return Outcome(record.id, error="record has no document")
    media_class = classify(path, record.mime)
    chosen = specs_for(specs, media_class)
    made: list[tuple[Spec, Made]] = []
    if chosen:
        jobs = [(sp, subdef_path(db.store.root, document, sp)) for sp in chosen]
        try:
            made = await make_subdefs(path, media_class or "", jobs, timeout=timeout)
        except ToolNotFound as e:
            return Outcome(record.id, waiting=str(e))
        except MediaError as e:
            return await _mark(db, record, str(e), log)
    store_text, text = await _document_text(db, record, path, timeout, log)

    def register() -> None:
        with db.transaction():
            if store_text:
                db.set_document_text(record.id, text)
            for spec, m in made:
                db.set_subdef(record.id, spec.name, m.path, m.width, m.height, m.bytes, doc_version=record.doc_version)
            if not made:
                db.mark_subdefs_built(record.id, doc_version=record.doc_version)
            if status_bit is not None:
                db.set_status(record.id, StatusMask(1 << status_bit, 1 << status_bit))

    await anyio.to_thread.run_sync(register)
    if not chosen:
        what = f"{media_class} documents" if media_class else f"documents of type {record.mime or 'unknown'}"
        note = f"nothing to build: no sub-definitions are declared for {what}"
        if log is not None:
            log.info("%s: %s", record.label, note)
        return Outcome(record.id, nothing=note)
    return Outcome(record.id, built=tuple((spec.name, m) for spec, m in made))


async def _document_text(db: Databox, record: Record, path: Path, timeout: float,
                         log: TaskLog | None) -> tuple[bool, str | None]:
    """(whether to store it, the document's text) for the full-text index, when the databox's
    `index_document_text` is on: a PDF's or a text file's; none for other documents (stored as
    none only for a replaced document, whose predecessor may have had some)."""
    if not db.settings.index_document_text:
        return False, None
    if not has_text(path, record.mime):
        return record.doc_version > 1, None
    try:
        return True, await document_text(path, record.mime, timeout=timeout)
    except (MediaError, OSError) as e:  # pdftotext missing or failing, an unreadable file
        if log is not None:
            log.warning("%s: its text is not indexed: %s", record.label, e)
        return False, None


async def _mark(db: Databox, record: Record, message: str, log: TaskLog | None) -> Outcome:
    if log is not None:
        log.warning("%s: %s", record.label, message)
    await anyio.to_thread.run_sync(lambda: db.mark_subdef_error(record.id, message, doc_version=record.doc_version))
    return Outcome(record.id, error=message)


class SubdefsTask(TaskType):
    """Builds sub-definitions of new and changed records of one databox."""

    type_name: ClassVar[str] = "subdefs"
    Settings: ClassVar[type] = Settings
    wake_on: ClassVar[tuple[str, ...]] = ("record.created",)
    default_period: ClassVar[float] = 30.0

    settings: SubdefsSettings

    def __init__(self, settings: SubdefsSettings):
        super().__init__(settings)
        # record id -> the missing tool's message; such records are skipped until the tool appears
        self._waiting: dict[int, str] = {}

    def check(self, config: Any) -> None:
        boxes = getattr(config, "databoxes", None) or {}
        if self.settings.databox not in boxes:
            raise ValueError(f"databox: unknown databox {self.settings.databox!r} (known: {', '.join(boxes) or 'none'})")
        for spec in as_specs(boxes[self.settings.databox].subdefs):
            try:
                check_spec(spec)
            except ValueError as e:
                raise ValueError(f"databoxes.{self.settings.databox}.subdefs.{e}") from None

    def _tools_back(self) -> None:
        """Forget waiting records whose tool is now installed."""
        missing = {tool for tool in PACKAGES if shutil.which(tool) is None}
        self._waiting = {rid: msg for rid, msg in self._waiting.items() if msg.split(" ", 1)[0] in missing}

    async def run_once(self, ctx: Context) -> str | None:
        """Sweep: build what no subdefCreation job did (a job failed for good, records older than
        the configuration), batch after batch while full batches are found; a stop cancels
        between or inside records, each record's sub-definitions being committed on its own."""
        from repository import DataboxMissing, awaited, open_databox

        st: Settings = self.settings
        box = ctx.config.databoxes[st.databox]
        specs = as_specs(box.subdefs)
        try:
            db = await anyio.to_thread.run_sync(lambda: open_databox(box, create=False))
        except DataboxMissing:  # not created yet (by an archive task, the indexer or databox:create)
            ctx.wait_for(awaited(st.databox, box))
            return f"waiting for {awaited(st.databox, box)}"
        outcomes: list[Outcome] = []
        try:
            self._tools_back()
            while True:
                found = await anyio.to_thread.run_sync(db.records_needing_subdefs, st.batch + len(self._waiting))
                records = [r for r in found if r.id not in self._waiting][: st.batch]
                built = await self._batch(ctx, db, records, specs, outcomes)
                if len(records) < st.batch or not built:
                    break  # the backlog is drained (or only records waiting for a tool are left)
        finally:
            await anyio.to_thread.run_sync(db.close)
        return self._summarise(ctx, outcomes)

    async def _batch(self, ctx: Context, db: Databox, records: list[Record], specs: Sequence[Spec],
                     outcomes: list[Outcome]) -> int:
        """Build one batch; the number of records that no longer need anything."""
        st: Settings = self.settings
        before = len(outcomes)
        total = before + len(records)
        ctx.progress(before, total)
        limiter = anyio.CapacityLimiter(st.concurrency)

        async def one(record: Record) -> None:
            async with limiter:
                outcome = await build_record(db, record, specs, timeout=st.tool_timeout,
                                             status_bit=st.status_bit, log=ctx.log)
            outcomes.append(outcome)
            if outcome.built:
                metrics.subdefs_built(ctx.name, len(outcome.built))
            if outcome.waiting:
                ctx.log.warning("%s left for later: %s", record.label, outcome.waiting)
                self._waiting[record.id] = outcome.waiting
            ctx.progress(len(outcomes), total)

        async with anyio.create_task_group() as tg:
            for record in records:
                tg.start_soon(one, record)
        return sum(1 for o in outcomes[before:] if not o.waiting)

    def _summarise(self, ctx: Context, outcomes: list[Outcome]) -> str:
        tools = sorted({m.split(" ", 1)[0] for m in self._waiting.values()})
        ctx.set_info(missing_tools=", ".join(f"{t} not found" for t in tools) or None,
                     waiting_records=len(self._waiting) or None)
        if not outcomes:
            return "nothing to do" + (f" ({len(self._waiting)} records wait for {', '.join(tools)})" if tools else "")
        built = sum(len(o.built) for o in outcomes)
        done = sum(1 for o in outcomes if o.built)
        errors = sum(1 for o in outcomes if o.error)
        nothing = sum(1 for o in outcomes if o.nothing)
        text = f"{done} records: {built} sub-definitions built"
        if nothing:
            text += f", {nothing} with nothing to build"
        if errors:
            text += f", {errors} in error"
        if self._waiting:
            text += f", {len(self._waiting)} waiting for {', '.join(tools)}"
        return text
