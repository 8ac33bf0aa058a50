"""Pipelines at run time (docs/pipelines.md): the driver that moves runs from step to step, the
`pipelineStep` job type that runs one part of a step, and the triggers (watched folders,
engine events, schedules).

The driver never works an item itself: it starts a step by inserting its parts as jobs
(pipelinestore.start_step, one transaction), and moves on once every part's job finished. So a
step's items are retried, recovered after a kill -9 and shown by job:list like any job, and a
step that finished is never run again: the run's row says which step is current.
"""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import anyio
from anyio.abc import TaskGroup

from .config import Config
from .context import Waker
from .iteration import within
from .pipeline import FILE_EVENTS, PipelineConfig
from .pipelinestore import PartJob, PipelineStore, RunRow, RunState, StepState, open_pipeline_store
from .plugin import Context, FailForGood, Item, ItemKind, JobType
from .store import STORE_ERRORS, store_call

log = logging.getLogger("schedulerd.pipelines")
STEP_TYPE = "pipelineStep"
DRIVE_BUSY = 0.2  # seconds between looks at the running runs while some run
DRIVE_IDLE = 5.0  # with none (another node or the CLI may add one: pipeline:run)


# --- items ---------------------------------------------------------------------------------------
def file_item(path: Path) -> Item | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return Item(ItemKind.FILE, str(path), st.st_size, mimetypes.guess_type(path.name)[0])


def event_item(event: str, data: Mapping[str, Any]) -> Item:
    """A record event's record (databox, record_id), else the event with its data as fields."""
    rid = data.get("record_id", data.get("record"))
    if isinstance(data.get("databox"), str) and isinstance(rid, int):
        return Item(ItemKind.RECORD, databox=data["databox"], id=rid,
                    collection=data.get("collection") if isinstance(data.get("collection"), str) else None,
                    fields={"event": event})
    return Item(ItemKind.EVENT, fields={"event": event, **{str(k): str(v) for k, v in data.items()}})


# --- the step job --------------------------------------------------------------------------------
_OUTPUT_STORES: dict[tuple[Path, str | None], PipelineStore] = {}
_OUTPUT_LOCK = threading.Lock()


def _output_store(config: Config) -> PipelineStore:
    key = (config.scheduler.state_dir, config.store.url)
    with _OUTPUT_LOCK:
        if key not in _OUTPUT_STORES:
            _OUTPUT_STORES[key] = open_pipeline_store(config.scheduler.state_dir, config.store,
                                                      config.scheduler.store_busy_timeout)
        return _OUTPUT_STORES[key]


class PipelineStep(JobType):
    """One part of a pipeline step: its job type's `run_items` on the part's items."""

    type_name: ClassVar[str] = STEP_TYPE
    PAYLOAD_KEYS: ClassVar[tuple[str, ...]] = ("pipeline", "run", "step", "part", "items")

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        unknown = sorted(set(payload) - set(self.PAYLOAD_KEYS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(self.PAYLOAD_KEYS)})")
        pc = config.pipelines.get(payload.get("pipeline"))
        if pc is None:
            raise ValueError(f"pipeline: expected one of {', '.join(sorted(config.pipelines)) or 'none'}")
        step = payload.get("step")
        if not isinstance(step, int) or not 0 <= step < len(pc.steps) or pc.steps[step].type is None:
            raise ValueError(f"step: expected the index of a job step of pipeline {pc.name}, got {step!r}")
        if not isinstance(payload.get("items"), list):
            raise ValueError("items: expected a list of items")

    def title(self, payload: Mapping[str, Any]) -> str:
        return f"pipeline {payload.get('pipeline')} run {payload.get('run')} step {payload.get('step')}"

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        from .registry import job_type

        pc = ctx.config.pipelines.get(payload["pipeline"])
        step = pc.steps[payload["step"]] if pc is not None and payload["step"] < len(pc.steps) else None
        if step is None or step.type is None:
            raise FailForGood(f"pipeline {payload['pipeline']} has no such step now (the configuration changed)")
        tc = ctx.config.jobs.type_config(step.type)
        handler = job_type(step.type)(tc.settings)
        try:
            items = [Item.from_json(d) for d in payload["items"]]
        except ValueError as e:
            raise FailForGood(f"items: {e}") from None
        out = await within(tc.timeout, lambda: handler.run_items(ctx, step.payload, items))
        if out != items:
            await anyio.to_thread.run_sync(_output_store(ctx.config).set_part_output, payload["run"],
                                           payload["step"], payload["part"], out)
        return f"{step.name}: {len(items)} item(s) in, {len(out)} out"


# --- the driver ----------------------------------------------------------------------------------
def part_jobs(config: Config, pc: PipelineConfig, run: RunRow, items: Sequence[Item]) -> list[PartJob]:
    step = pc.steps[run.step]
    assert step.type is not None
    tc = config.jobs.type_config(step.type)
    groups = [[i] for i in items] if step.parallel else [list(items)]
    title = f"{pc.name} run {run.id} {step.name}"
    return [PartJob(STEP_TYPE, pc.queue(run.step),
                    {"pipeline": pc.name, "run": run.id, "step": run.step, "part": k,
                     "items": [i.to_json() for i in group]},
                    (f"{title}: {group[0].path or group[0].id}" if step.parallel else title)[:200], tc.max_attempts)
            for k, group in enumerate(groups)]


def advance(store: PipelineStore, config: Config, run: RunRow) -> set[str]:
    """Move one run as far as it can go now (blocking: in a worker thread); the queues to wake."""
    pc = config.pipelines.get(run.pipeline)
    if pc is None or tuple(s.name for s in pc.steps) != run.steps:
        store.end_run(run.id, RunState.FAILED, f"pipeline {run.pipeline} is no longer configured with these steps")
        return set()
    while run.step < len(pc.steps):
        step = pc.steps[run.step]
        row = next((s for s in store.steps(run.id) if s.step == run.step), None)
        if row is None:
            items = store.step_input(run)
            if step.filter is not None or (step.parallel and not items):
                out = step.filter.apply(items) if step.filter is not None else []
                if not store.finish_step(run, step.name, len(items), out, started=False):
                    return set()
            elif store.start_step(run, step.name, len(items), part_jobs(config, pc, run, items),
                                  1 if step.parallel else None):
                return {pc.queue(run.step)}
            else:  # a lost race, no error: another node started the step (or moved the run) first
                log.debug("pipeline %s run %d: step %s was started by another node", run.pipeline, run.id, step.name)
                return set()
        elif row.state is StepState.RUNNING:
            counts, error = store.part_states(run)
            if error is not None:
                store.fail_step(run, error)
                log.warning("pipeline %s run %d failed at step %s: %s", run.pipeline, run.id, step.name, error)
                return set()
            if counts.get("finished", 0) < row.parts:
                return set()
            if not store.finish_step(run, step.name, row.items_in, store.step_output(run), started=True):
                return set()
        else:
            return set()
        run = dataclasses.replace(run, step=run.step + 1)
    store.end_run(run.id, RunState.FINISHED)
    log.info("pipeline %s run %d finished", run.pipeline, run.id)
    return set()


class PipelineService:
    """In the daemon's task group: the driver and the triggers of the configured pipelines."""

    def __init__(self, config: Config, wake_queue: Callable[[str], None]):
        self.config = config
        self.wake_queue = wake_queue
        self.store: PipelineStore | None = None
        self.waker = Waker()
        self._tg: TaskGroup | None = None
        self._triggers: anyio.CancelScope | None = None
        self._triggers_lock = anyio.Lock()  # one set of triggers at a time: a reload's waits for the last's end
        self._folders: dict[str, FolderState] = {}  # pipeline name -> what its folder trigger knows

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        sch = self.config.scheduler
        self.store = await store_call("opening the pipeline runs", open_pipeline_store, sch.state_dir,
                                      self.config.store, sch.store_busy_timeout)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._drive, name="pipelines:driver")
                self._start_triggers()
                task_status.started()
        finally:
            self.store.close()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._start_triggers()
        self.waker.wake()

    def _start_triggers(self) -> None:
        if self._tg is None:
            return
        if self._triggers is not None:
            self._triggers.cancel()
        scope = self._triggers = anyio.CancelScope()
        self._tg.start_soon(self._run_triggers, scope, name="pipelines:triggers")

    async def _run_triggers(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with self._triggers_lock, anyio.create_task_group() as tg:
                self._folders = {pc.name: self._folder_state(pc) for pc in self.config.pipelines.values()
                                 if pc.enabled and pc.trigger.event in FILE_EVENTS}
                for pc in self.config.pipelines.values():
                    if pc.name in self._folders:
                        trigger = FolderTrigger(pc, self._folders[pc.name], self.start_run)
                        tg.start_soon(trigger.serve, name=f"pipeline:{pc.name}:watch")
                    elif pc.enabled and pc.trigger.schedule is not None:
                        tg.start_soon(self._schedule, pc, name=f"pipeline:{pc.name}:schedule")

    def _folder_state(self, pc: PipelineConfig) -> FolderState:
        """What the pipeline's trigger knew before the reload, while it watches the same files: a
        file changing during the reload still fires, one fired before does not fire again."""
        old = self._folders.get(pc.name)
        if old is not None and (old.folder, old.recursive) == (pc.trigger.folder, pc.trigger.recursive):
            return old
        assert pc.trigger.folder is not None
        return FolderState(pc.trigger.folder, pc.trigger.recursive)

    async def _schedule(self, pc: PipelineConfig) -> None:
        """A run at each due time of the schedule, its item saying which (`due`, UTC ISO-8601). The
        first due time comes after the last one a run was made for, and after now (none is caught
        up); a wake-up a little early does not make the same due time again. The due time is the
        run's key with the pipeline: every node of a cluster runs this, and the first to insert a
        due time's run makes it (a daemon restarted within a period, or with its clock set back,
        does not run one due time twice either)."""
        from .schedule import parse_schedule, zone

        spec = pc.trigger.schedule
        assert spec is not None and self.store is not None
        sched = parse_schedule(spec, zone(getattr(self.config.scheduler, "timezone", None)))
        last = await store_call(f"reading the last scheduled run of pipeline {pc.name}", self.store.last_due, pc.name)
        after = max(time.time(), last or 0.0)
        while True:
            due = sched.next_after(after)
            if due is None:
                return
            await anyio.sleep(max(0.0, due - time.time()))
            await self._start_scheduled(pc, spec, due)
            after = max(due, time.time())

    async def _start_scheduled(self, pc: PipelineConfig, spec: str, due: float) -> None:
        assert self.store is not None
        when = datetime.fromtimestamp(due, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        item = Item(ItemKind.EVENT, fields={"schedule": spec, "due": when})
        rid = await store_call(f"starting a run of pipeline {pc.name}", self.store.create_scheduled_run, pc.name,
                               [s.name for s in pc.steps], [item], due)
        if rid is None:
            log.debug("pipeline %s: the run due at %s was made already (by another node)", pc.name, when)
            return
        self._started(pc.name, rid, "schedule", 1)

    async def start_run(self, name: str, trigger: str, items: Sequence[Item]) -> int:
        pc = self.config.pipelines[name]
        assert self.store is not None
        rid = await store_call(f"starting a run of pipeline {name}", self.store.create_run, name, trigger,
                               [s.name for s in pc.steps], items)
        self._started(name, rid, trigger, len(items))
        return rid

    def _started(self, name: str, rid: int, trigger: str, items: int) -> None:
        log.info("pipeline %s run %d started (%s, %d item(s))", name, rid, trigger, items)
        self.waker.wake()

    def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        """An event emitted in the daemon: a run of each pipeline it triggers, its item kept by the filter."""
        if self._tg is None:
            return
        for pc in self.config.pipelines.values():
            if not pc.enabled or pc.trigger.event != event:
                continue
            item = event_item(event, data)
            if pc.trigger.filter is None or pc.trigger.filter.keeps(item):
                self._tg.start_soon(self.start_run, pc.name, event, [item])

    async def _drive(self) -> None:
        assert self.store is not None
        while True:
            runs = await store_call("reading the running pipeline runs", self.store.runs, RunState.RUNNING, 100000)
            for run in reversed(runs):  # oldest first
                try:
                    wake = await anyio.to_thread.run_sync(advance, self.store, self.config, run)
                except STORE_ERRORS as e:
                    log.warning("pipeline %s run %d: the store failed (%s); trying again", run.pipeline, run.id, e)
                    break
                except Exception:
                    log.exception("pipeline %s run %d could not advance", run.pipeline, run.id)
                    continue
                for queue in wake:
                    self.wake_queue(queue)
            await self.waker.wait(DRIVE_BUSY if runs else DRIVE_IDLE)


Key = tuple[int, int, int, int]  # a file's inode, size, mtime and ctime (_key)


@dataclasses.dataclass
class FolderState:
    """What a folder trigger knows of its folder, kept across reloads (PipelineService._folder_state)."""

    folder: Path
    recursive: bool
    seen: dict[str, Key] | None = None  # stat keys of files present or fired, until gone; None: no baseline yet
    pending: dict[str, tuple[Key | None, float]] = dataclasses.field(default_factory=dict)  # changing since


class FolderTrigger:
    """`event = "file.created" | "file.modified"` on `folder`: a file fires once it stopped changing
    for `cold` (the hotfolders' rule: size, mtime, ctime and inode unchanged). The files that became
    stable together start one run, once no other file is still changing (or `max_items` are).

    The files there at the first start are the baseline: they do not fire. The watcher starts
    after it, so once the watcher is on the folder is scanned again, and what appeared or changed
    meanwhile is pending as if the watcher had seen it (a file seen twice is one pending entry,
    fired once); a reload keeps the state and does the same. A file is known (`seen`) until it is
    gone (deleted or moved away, or missing from that scan): a file appearing under its name later
    is a new one."""

    def __init__(self, pc: PipelineConfig, state: FolderState, start_run: Callable[[str, str, Sequence[Item]], Any]):
        self.pc = pc
        self.state = state
        self.start_run = start_run

    @property
    def pending(self) -> dict[str, tuple[Key | None, float]]:
        return self.state.pending

    @property
    def seen(self) -> dict[str, Key]:
        assert self.state.seen is not None
        return self.state.seen

    async def serve(self) -> None:
        folder = self.state.folder
        while not folder.is_dir():
            await anyio.sleep(5)
        if self.state.seen is None:
            self.state.seen = await anyio.to_thread.run_sync(self._scan, folder)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, folder)
            while True:
                await anyio.sleep(min(0.25, max(self.pc.trigger.cold / 4, 0.02)))
                await self._check()

    def _scan(self, folder: Path) -> dict[str, Key]:
        found = {}
        walk = folder.rglob("*") if self.state.recursive else folder.glob("*")
        for p in walk:
            key = _key(p)
            if key is not None and not p.name.startswith("."):
                found[str(p)] = key
        return found

    async def _catch_up(self, folder: Path) -> int:
        """The watcher is on: the files that appeared or changed before are pending, those gone
        are forgotten. Returns how many files are there that do not fire (the baseline's, or those
        that fired)."""
        before = dict(self.seen)
        found = await anyio.to_thread.run_sync(self._scan, folder)
        for path, key in before.items():
            if path not in found and self.seen.get(path) == key:  # (not fired again meanwhile)
                del self.seen[path]
        return self._add_found(found)

    def _add_found(self, found: Mapping[str, Key]) -> int:
        """Files found by a scan are pending unless known as they are; returns how many are known."""
        now, known = time.monotonic(), 0
        for path, key in found.items():
            if self.seen.get(path) == key:
                known += 1
            elif path not in self.pending:  # (a file the watcher saw too: one entry, one run)
                self.pending[path] = (None, now)
        return known

    async def _watch(self, folder: Path) -> None:
        """The folder's changes into `pending`. Once the watcher is on (its first batch of changes,
        or its first second without any), catches up and says so: a file appearing from then on fires."""
        from watchfiles import Change, awatch

        stop = anyio.Event()
        watching = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_when_cancelled, stop)
            async for changes in awatch(folder, stop_event=stop, force_polling=self.pc.trigger.force_polling,
                                        recursive=self.state.recursive, debounce=50, step=20,
                                        rust_timeout=1000, yield_on_timeout=True, watch_filter=None,
                                        ignore_permission_denied=True):
                now = time.monotonic()
                for _change, path in changes:
                    if not path.rsplit("/", 1)[-1].startswith("."):
                        self.pending[path] = (None, now)
                self._forget([path for change, path in changes if change == Change.deleted])
                if not watching:
                    watching = True
                    known = await self._catch_up(folder)
                    log.info("pipeline %s: watching %s (%d file(s) there before)", self.pc.name, folder, known)
            tg.cancel_scope.cancel()

    async def _check(self) -> None:
        """Fire the files that stopped changing. A file leaves `pending` once its run is in the
        store: a trigger cancelled (a reload) before that leaves it to the next one."""
        if not self.pending:
            return
        now, entries = time.monotonic(), dict(self.pending)
        keys, found = await anyio.to_thread.run_sync(self._look, list(entries))
        stable: list[tuple[str, Key]] = []
        for path, key in keys.items():
            old, since = entries[path]
            if key is None:  # gone (or not a file): forgotten, unless the watcher saw it again meanwhile
                self.seen.pop(path, None)
                if self.pending.get(path) == entries[path]:
                    del self.pending[path]
            elif key != old:
                self.pending[path] = (key, now)
            elif now - since >= self.pc.trigger.cold:
                stable.append((path, key))
        self._add_found(found)
        if not stable or (len(stable) < len(self.pending) and len(stable) < self.pc.trigger.max_items):
            return
        fire: list[tuple[str, Key, tuple[Key | None, float], Item]] = []
        for path, key in sorted(stable):
            item = file_item(Path(path)) if self._fires(self.seen.get(path), key) else None
            if item is None:
                self._done(path, key, self.pending[path])
            else:
                fire.append((path, key, self.pending[path], item))
        size = self.pc.trigger.max_items
        for start in range(0, len(fire), size):  # a run takes max_items at most
            chunk = fire[start:start + size]
            await self.start_run(self.pc.name, str(self.pc.trigger.event), [item for *_, item in chunk])
            for path, key, entry, _ in chunk:
                self._done(path, key, entry)

    def _look(self, paths: Sequence[str]) -> tuple[dict[str, Key | None], dict[str, Key]]:
        """(In a worker thread.) The pending paths' keys, and the files in those that are folders
        (recursive): a new folder's files written before its watch was added, or those of a folder
        moved in whole, make no event."""
        keys = {p: _key(Path(p)) for p in paths}
        found: dict[str, Key] = {}
        if self.state.recursive:
            for path in (p for p, key in keys.items() if key is None and Path(p).is_dir()):
                found.update(self._scan(Path(path)))
        return keys, found

    def _fires(self, before: Key | None, key: Key) -> bool:
        """file.created: a file not known under its name (none, or another inode: a file renamed
        over the one known, which went without a deleted event); file.modified: one known with
        another key."""
        if self.pc.trigger.event == "file.created":
            return before is None or before[0] != key[0]
        return before is not None and before != key

    def _forget(self, gone: Sequence[str]) -> None:
        """Paths deleted or moved away: a file appearing under their names is a new one. A gone
        path that was no file may be a folder (recursive): the files known under it go too."""
        folders = tuple(f"{path}/" for path in gone if self.seen.pop(path, None) is None)
        if folders and self.state.recursive:
            for path in [p for p in self.seen if p.startswith(folders)]:
                del self.seen[path]

    def _done(self, path: str, key: Key, entry: tuple[Key | None, float]) -> None:
        """The file is dealt with at `key`; still pending if the watcher saw it change meanwhile
        (its entry is no longer the one `_check` found stable)."""
        self.seen[path] = key
        if self.pending.get(path) == entry:
            del self.pending[path]


async def _set_when_cancelled(event: anyio.Event) -> None:
    """awatch's thread only notices its stop event: set it as soon as we are cancelled."""
    try:
        await anyio.sleep_forever()
    finally:
        event.set()


def _key(path: Path) -> Key | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    if not path.is_file() or path.is_symlink():
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
