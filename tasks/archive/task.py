"""The archive task: each pass archives the hotfolder's cold files (see the package's docstring)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from schedulerd import metrics
from schedulerd.plugin import Context, TaskType
from schedulerd.settings import ConfigError

from .embedded import Embedded
from .plan import Error, Plan, Planner
from .settings import Settings

if TYPE_CHECKING:  # (the repository is imported when a pass first needs it)
    from repository import (
        BatchResult,
        Databox,
        DataboxSettings,
        Ingestor,
        Journal,
        Scan,
        Scanner,
        Tree,
        Unit,
    )

MAX_BATCH_BYTES = 512 * 1024 * 1024
ArchiveSettings = Settings  # (in ArchiveTask's body, `Settings` is the ClassVar)


def sibling(hotfolder: Path, suffix: str) -> Path:
    return hotfolder.parent / f"{hotfolder.name}{suffix}"


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


@dataclasses.dataclass
class _Tally:
    """What archiving the units of one pass did."""

    created: int = 0
    skipped: int = 0  # duplicates
    done: int = 0  # units dealt with (progress)
    changed: list[str] = dataclasses.field(default_factory=list)  # changed under us: left to a next pass
    touched_dirs: set[str] = dataclasses.field(default_factory=set)  # folders files left (delete_empty_folders)


def _collection_names(db: Databox) -> dict[int, str]:
    return {c.id: c.name for c in db.collections()}


@dataclasses.dataclass
class Open:
    """What a configured task keeps open between passes."""

    db: Databox
    journal: Journal
    hot: Tree
    scanner: Scanner
    ingestor: Ingestor


class ArchiveTask(TaskType):
    type_name: ClassVar[str] = "archive"
    Settings: ClassVar[type] = Settings
    emits: ClassVar[tuple[str, ...]] = ("record.created",)
    default_period: ClassVar[float] = 30.0
    settings: ArchiveSettings

    def __init__(self, settings: ArchiveSettings):
        super().__init__(settings)
        self._open: Open | None = None
        self._seen: dict[str, tuple[int, float]] = {}  # path -> (hash of its stat, unchanged since)
        self._said: dict[str, str] = {}  # problem key -> message already logged
        self._archived_total = 0
        self._lock = anyio.Lock()

    # --- configuration -------------------------------------------------------------------

    def check(self, config: Any) -> None:
        s = self.settings
        boxes = getattr(config, "databoxes", None) or {}
        if s.databox not in boxes:
            known = ", ".join(sorted(boxes)) or "none configured"
            raise ConfigError("databox", f"unknown databox {s.databox!r} (known: {known})")
        box = boxes[s.databox]
        for p in (s.hotfolder, sibling(s.hotfolder, "_archived"), sibling(s.hotfolder, "_error")):
            if _inside(p, Path(box.storage)) or _inside(Path(box.storage), p):
                raise ConfigError("hotfolder", f"{p} and the storage of databox {s.databox!r} ({box.storage}) overlap")

    def _databox_settings(self, ctx: Context) -> DataboxSettings:
        boxes = getattr(ctx.config, "databoxes", None) or {}
        try:
            box: DataboxSettings = boxes[self.settings.databox]
            return box
        except KeyError:
            raise RuntimeError(f"databox {self.settings.databox!r} is not configured") from None

    def _ensure_open(self, ctx: Context) -> Open:
        if self._open is not None:
            return self._open
        from repository import Ingestor, Journal, Scanner, Tree, open_databox

        s = self.settings
        db = open_databox(self._databox_settings(ctx))
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", ctx.name)
        try:
            journal = Journal(Path(ctx.state_dir) / f"archive-{name}.journal.sqlite")
        except BaseException:
            db.close()
            raise
        hot = Tree(s.hotfolder)
        ingestor = Ingestor(
            db, hot, journal,
            archived=Tree(sibling(s.hotfolder, "_archived")) if s.move_archived else None,
            error=Tree(sibling(s.hotfolder, "_error")) if s.move_error else None,
            duplicates=s.duplicates,
            log=ctx.log,
            on_failed=lambda rel, why, target: self._failed(ctx, rel, why, target),
        )
        self._open = Open(db, journal, hot, Scanner(hot), ingestor)
        return self._open

    def _close(self) -> None:
        o, self._open = self._open, None
        if o is None:
            return
        o.hot.close()
        for t in (o.ingestor.archived, o.ingestor.error):
            if t is not None:
                t.close()
        o.journal.close()
        o.db.close()

    async def shutdown(self, ctx: Context) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._close)

    # --- reporting -----------------------------------------------------------------------

    def _say(self, ctx: Context, key: str, message: str, level: int = logging.WARNING) -> None:
        """Log a problem once (again only if its text changes)."""
        if self._said.get(key) != message:
            self._said[key] = message
            ctx.log.log(level, "%s", message)

    def _clear(self, key_prefix: str, keep: Iterable[str] = ()) -> None:
        keep = set(keep)
        for k in [k for k in self._said if k.startswith(key_prefix) and k not in keep]:
            del self._said[k]

    def _failed(self, ctx: Context, rel: str, why: str, target: str | None) -> None:
        """One line per rejected file: its name, why, and where it went."""
        from repository import display_name

        if target is None:
            where = "left in place, not retried until it changes"
        else:
            where = f"moved to {display_name(str(sibling(self.settings.hotfolder, '_error') / target))}"
        ctx.log.warning("rejected %s: %s (%s)", display_name(rel), why, where)

    def _archived(self, ctx: Context, rel: str, record_id: int, collection: str) -> None:
        from repository import display_name

        ctx.log.info("archived %s -> record %d, collection %s", display_name(rel), record_id, collection)

    def _skipped(self, ctx: Context, rel: str, twin: int) -> None:
        from repository import display_name

        where = f"moved to {sibling(self.settings.hotfolder, '_archived')}" if self.settings.move_archived else "removed"
        of = f"record {twin}" if twin else "another file of this pass"
        ctx.log.info("skipped %s: duplicate of %s (%s)", display_name(rel), of, where)

    def _exiftool_problem(self, ctx: Context, message: str | None) -> None:
        """Say once why embedded metadata is not read; None: it is read again."""
        if message is None:
            self._said.pop("exiftool", None)
        else:
            self._say(ctx, "exiftool", message)

    # --- one pass ------------------------------------------------------------------------

    async def _queue_jobs(self, ctx: Context, event: str, ids: list[int]) -> None:
        """The jobs `[databoxes.NAME.on]` names for `event` (subdefCreation, deferred, by default).
        Without a job queue (a test context) the sweepers (`subdefs`, ...) take the records."""
        from repository import record_jobs

        for type_name, payloads in record_jobs(self.settings.databox, self._databox_settings(ctx), event, ids):
            try:
                await ctx.add_jobs(type_name, payloads)  # a batch's jobs in one write
            except RuntimeError:  # no job queue in this process
                return

    async def run_once(self, ctx: Context) -> str | None:
        async with self._lock:
            return await self._pass(ctx)

    async def _pass(self, ctx: Context) -> str:
        """One pass: check the root, scan until cold, plan, archive, tidy; returns the summary."""
        o = await anyio.to_thread.run_sync(self._ensure_open, ctx)
        await anyio.to_thread.run_sync(o.ingestor.recover)
        problem = await self._root_problem(ctx, o)
        if problem:
            return problem
        scan, ready, pending = await self._cold_scan(ctx, o)
        plan = await anyio.to_thread.run_sync(self._plan, o, scan, ready)
        blocked = self._report_problems(ctx, scan, plan.problems)
        await self._reject(o, scan, plan.errors)
        tally = await self._archive(ctx, o, plan.units)
        tally.touched_dirs.update(rel.rpartition("/")[0] for rel, _, _ in plan.errors)
        still = await self._finish(ctx, o, scan, plan, tally, pending)
        return blocked or _summary(tally, plan, scan, still)

    async def _root_problem(self, ctx: Context, o: Open) -> str | None:
        """What keeps the hotfolder's root from being used (bootstrapping it when asked),
        logged once and shown in the state; None when it is usable (saying so once it is again)."""
        problem = await anyio.to_thread.run_sync(self._check_root, ctx, o)
        if problem:
            ctx.set_info(error=problem)
            self._say(ctx, "root", problem, logging.ERROR)
            return problem
        if "root" in self._said:
            ctx.log.info("hotfolder %s is usable again", self.settings.hotfolder)
            self._said.pop("root", None)
        ctx.set_info(error=None)
        return None

    async def _cold_scan(self, ctx: Context, o: Open) -> tuple[Scan, list[str], list[str]]:
        """Scan the tree; when only files still warming up (or empty ones) are there, wait until
        the first of them can be cold and scan again. Returns the scan, ready and pending paths."""
        s = self.settings
        scan = await anyio.to_thread.run_sync(o.scanner.scan)
        ready, pending = self._stable(scan)
        if pending and s.cold > 0 and not any(scan.files[rel].size for rel in ready):  # (empty files wait anyway)
            now = time.monotonic()
            wait = max(s.cold - (now - self._seen[rel][1]) for rel in pending)
            del scan, ready, pending  # (100,000 files: free before sleeping and rescanning)
            await self._sleep_full(ctx, min(s.cold, max(wait, 0.0)) + 0.01)
            scan = await anyio.to_thread.run_sync(o.scanner.scan)
            ready, pending = self._stable(scan)
        return scan, ready, pending

    async def _reject(self, o: Open, scan: Scan, errors: list[Error]) -> None:
        """Send the files the plan refused to the error folder (or leave them, remembered)."""
        for rel, why, caption in errors:
            await anyio.to_thread.run_sync(
                functools.partial(o.ingestor.fail, rel, why, caption=caption, stat=scan.files.get(rel))
            )

    async def _archive(self, ctx: Context, o: Open, units: list[Unit]) -> _Tally:
        """Archive the units in journaled batches, with their embedded fields; log, emit and
        queue the jobs of each record made; count what was made, skipped and changed."""
        tally = _Tally()
        ctx.progress(0, len(units))
        names = await anyio.to_thread.run_sync(_collection_names, o.db) if units else {}
        box = self._databox_settings(ctx)
        problem = functools.partial(self._exiftool_problem, ctx)
        async with Embedded(self.settings, ctx, box.field_sources, box.field_types, problem) as embedded:
            for batch in _batches(units, self.settings.batch, MAX_BATCH_BYTES):
                batch = await embedded.units(batch)
                res = await anyio.to_thread.run_sync(o.ingestor.ingest, batch)
                await self._batch_done(ctx, batch, res, names, tally)
                ctx.progress(tally.done, len(units))
        return tally

    async def _batch_done(self, ctx: Context, batch: list[Unit], res: BatchResult,
                          names: dict[int, str], tally: _Tally) -> None:
        """Report one ingested batch: a line per archived or skipped file, `record.created`
        events and jobs, the folders touched; forget the files dealt with; count them."""
        coll_of = {u.rel: u.collection_id for u in batch}
        for rid, rel in res.created:
            self._archived(ctx, rel, rid, names.get(coll_of[rel], str(coll_of[rel])))
            ctx.emit("record.created", databox=self.settings.databox, record_id=rid)
            tally.touched_dirs.add(rel.rpartition("/")[0])
            self._seen.pop(rel, None)
        await self._queue_jobs(ctx, "record.created", [rid for rid, _ in res.created])
        for rel, twin in res.skipped:
            self._skipped(ctx, rel, twin)
        for rel, _ in res.skipped + res.errors:
            tally.touched_dirs.add(rel.rpartition("/")[0])
            self._seen.pop(rel, None)
        tally.created += len(res.created)
        metrics.records_archived(ctx.name, len(res.created))
        tally.skipped += len(res.skipped)
        tally.changed += res.changed
        tally.done += len(batch)

    async def _finish(self, ctx: Context, o: Open, scan: Scan, plan: Plan, tally: _Tally,
                      pending: list[str]) -> set[str]:
        """After archiving: tidy the tree, update the state, and wake the task again when files
        are still warming up. Returns the files left waiting."""
        for rel in tally.changed:
            self._seen.pop(rel, None)
        warming = set(pending) | set(tally.changed) | set(plan.waiting)
        still = warming | set(plan.empty)
        await anyio.to_thread.run_sync(self._tidy, ctx, o, scan, still, tally.touched_dirs)
        self._archived_total += tally.created
        ctx.set_info(waiting=len(still) or None, archived_total=self._archived_total)
        if warming:
            wake = getattr(ctx, "wake", None)
            if wake is not None:
                wake()  # files still warming up: come back as soon as they can be cold
        return still

    async def _sleep_full(self, ctx: Context, seconds: float) -> None:
        """Wait the whole cold time: being woken (new files) does not make files colder."""
        deadline = time.monotonic() + seconds
        woken = False
        while (left := deadline - time.monotonic()) > 0:
            woken |= bool(await ctx.sleep(left))
        wake = getattr(ctx, "wake", None)
        if woken and wake is not None:
            wake()

    def _stable(self, scan: Scan) -> tuple[list[str], list[str]]:
        """Files unchanged for `cold` seconds (ready), and the others (pending)."""
        now = time.monotonic()
        cold = self.settings.cold
        seen = self._seen
        ready: list[str] = []
        pending: list[str] = []
        fresh: dict[str, tuple[int, float]] = {}
        for rel, fs in scan.files.items():
            key = hash(fs.key)  # not the FileStat itself: the previous scan can be freed
            old = seen.get(rel)
            since = old[1] if old is not None and old[0] == key else now
            fresh[rel] = (key, since)
            (ready if cold <= 0 or now - since >= cold else pending).append(rel)
        self._seen = fresh
        return ready, pending

    def _check_root(self, ctx: Context, o: Open) -> str | None:
        from repository import PHRASEA_XML as NAME
        from repository import UnknownCollection, render_phrasea_xml

        s = self.settings
        if s.bootstrap:
            if not s.hotfolder.exists():
                s.hotfolder.mkdir(parents=True)
                o.hot.reset()
                o.hot.write_atomic(NAME, render_phrasea_xml(s.collection))
                ctx.log.info("created hotfolder %s with its %s", s.hotfolder, NAME)
            try:
                o.db.collection(s.collection)
            except UnknownCollection:
                o.db.create_collection(s.collection)
                ctx.log.info("created collection %r in databox %s", s.collection, s.databox)
        if not s.hotfolder.is_dir():
            return f"hotfolder {s.hotfolder} does not exist"
        if not (s.hotfolder / NAME).is_file():
            return f"no {NAME} at {s.hotfolder}"
        return None

    # --- planning: what to archive, what is an error, what waits -------------------------

    def _plan(self, o: Open, scan: Scan, ready: list[str]) -> Plan:
        """Group ready files with their captions, resolve collections and status."""
        return Planner(self.settings, o, scan, ready, self._seen).plan()

    def _report_problems(self, ctx: Context, scan: Scan, problems: dict[str, str]) -> str | None:
        """Log each problem once and show them in the state; returns what keeps the whole
        hotfolder from being archived (its root collection or .phrasea.xml), if anything."""
        from repository import display_name

        keys = []
        for key, msg in problems.items():
            keys.append(f"p:{key}")
            self._say(ctx, f"p:{key}", msg, logging.ERROR)
        for d, why in scan.broken.items():
            keys.append(f"b:{d}")
            self._say(ctx, f"b:{d}", f"{why}: files under {display_name(d) or '.'} are not archived")
        for d, why in scan.skipped.items():
            keys.append(f"s:{d}")
            self._say(ctx, f"s:{d}", f"skipping {display_name(d) or '.'}: {why}", logging.INFO)
        for rel, why in scan.odd.items():
            keys.append(f"o:{rel}")
            self._say(ctx, f"o:{rel}", f"left alone {display_name(rel)}: {why}", logging.INFO)
        self._clear("p:", keys)
        self._clear("b:", keys)
        self._clear("s:", keys)
        self._clear("o:", keys)
        shown = [m for k, m in self._said.items() if k[:2] in ("p:", "b:")]
        ctx.set_info(problems=shown[:20] or None)
        root = problems.get("collection") or (f"{scan.broken['']}: nothing archived" if "" in scan.broken else None)
        if root:
            ctx.set_info(error=root)
        elif shown:
            ctx.set_info(error=shown[0] + (f" (and {len(shown) - 1} more problems)" if len(shown) > 1 else ""))
        return root

    def _tidy(self, ctx: Context, o: Open, scan: Scan, still: set[str], touched_dirs: set[str]) -> None:
        """Remove used UNLOCK files and, when asked, folders emptied by this pass."""
        for d, name in scan.unlock.items():
            prefix = f"{d}/" if d else ""
            if any(r.startswith(prefix) for r in still):
                continue
            rel = f"{prefix}{name}"
            try:
                o.hot.unlink(rel)
            except FileNotFoundError:
                pass
            except OSError as e:
                ctx.log.warning("cannot remove magic file %s: %s", rel, e.strerror)
        if not self.settings.delete_empty_folders:
            return
        todo: set[str] = set()
        for d in touched_dirs:
            while d:
                todo.add(d)
                d = d.rpartition("/")[0]
        for d in sorted(todo, key=lambda x: x.count("/"), reverse=True):
            try:
                o.hot.rmdir(d)
            except OSError:
                pass  # not empty (or gone): fine

    # --- the watcher ---------------------------------------------------------------------

    async def background(self, ctx: Context) -> None:
        """Wake the task when something changes in the hotfolder (inotify, or polling), and once
        the watcher is on (its first second): a file that came after the last pass's scan but
        before the watcher (at start, or when the hotfolder appears) waits no period."""
        from watchfiles import awatch

        s = self.settings
        while True:
            if not s.hotfolder.is_dir():
                await anyio.sleep(5)
                continue
            stop = anyio.Event()
            on = False
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_set_when_cancelled, stop)
                    try:
                        async for changes in awatch(
                            s.hotfolder, stop_event=stop, force_polling=s.force_polling,
                            poll_delay_ms=1000, debounce=400, rust_timeout=1000, yield_on_timeout=True,
                            watch_filter=None, ignore_permission_denied=True,
                        ):
                            waker = getattr(ctx, "wake", None)
                            if waker is not None and (changes or not on):
                                waker()
                            on = True
                    finally:
                        tg.cancel_scope.cancel()
            except (FileNotFoundError, OSError, RuntimeError) as e:
                ctx.log.debug("watcher on %s stopped (%s); polling again soon", s.hotfolder, e)
            await anyio.sleep(1)


def _summary(tally: _Tally, plan: Plan, scan: Scan, still: set[str]) -> str:
    """The pass's outcome on one line: archived, skipped, errors, waiting, problems."""
    parts = [f"archived {tally.created}"]
    if tally.skipped:
        parts.append(f"skipped {tally.skipped} duplicates")
    if plan.errors:
        parts.append(f"errors {len(plan.errors)}")
    if still:
        parts.append(f"waiting {len(still)}")
    if plan.problems or scan.broken:
        parts.append(f"problems {len(plan.problems) + len(scan.broken)}")
    return ", ".join(parts)


async def _set_when_cancelled(event: anyio.Event) -> None:
    """awatch's thread only notices its stop event: set it as soon as we are cancelled."""
    try:
        await anyio.sleep_forever()
    finally:
        event.set()


def _batches(units: list[Unit], count: int, max_bytes: int) -> Iterable[list[Unit]]:
    """The units in batches of at most `count` files and `max_bytes` (a bigger file alone)."""
    batch: list[Unit] = []
    size = 0
    for u in units:
        if batch and (len(batch) >= count or size + u.stat.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(u)
        size += u.stat.size
    if batch:
        yield batch


__all__ = ["ArchiveTask", "Settings"]
