"""The contract between the engine and task/job types.

A task type is a class with a frozen `Settings` dataclass and one `run_once(ctx)`;
a job type is the same with `run(ctx, payload)`. The engine never imports a type
by module path it knows: it looks them up by name (see `registry`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

# events the engine itself emits (a `trigger` may name them besides the types' `emits`)
# task.failed: an iteration failed; job.failed: a job failed for good (attempts used up, FailForGood)
ENGINE_EVENTS: tuple[str, ...] = ("task.state", "task.failed", "job.failed")


class ItemKind(enum.Enum):
    FILE = "file"
    RECORD = "record"
    EVENT = "event"


@dataclasses.dataclass(frozen=True)
class Item:
    """What flows between the steps of a pipeline (docs/pipelines.md): a file (path, size, mime),
    a record (databox, id, collection, status, fields) or an event (its data in `fields`)."""

    kind: ItemKind
    path: str | None = None
    size: int | None = None
    mime: str | None = None
    databox: str | None = None
    id: int | None = None
    collection: str | None = None
    status: int | None = None
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind.value}
        for key in _ITEM_VALUE_KEYS:  # (not dataclasses.asdict: a pipeline step dumps thousands)
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.fields:
            d["fields"] = dict(self.fields)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Item:
        """An item from its JSON form; ValueError naming the key for a bad one."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected an object, got {d!r}")
        unknown = sorted(d.keys() - _ITEM_KEYS)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(_ITEM_KEYS)})")
        try:
            kind = ItemKind(d.get("kind", "file"))
        except ValueError:
            raise ValueError(f"kind: expected file, record or event, got {d.get('kind')!r}") from None
        for key, tp in (("path", str), ("mime", str), ("databox", str), ("collection", str),
                        ("size", int), ("id", int), ("status", int)):
            if d.get(key) is not None and (not isinstance(d[key], tp) or isinstance(d[key], bool)):
                raise ValueError(f"{key}: expected {tp.__name__}, got {d[key]!r}")
        fields = d.get("fields") or {}
        if not isinstance(fields, Mapping):
            raise ValueError(f"fields: expected an object, got {fields!r}")
        return cls(kind, d.get("path"), d.get("size"), d.get("mime"), d.get("databox"), d.get("id"),
                   d.get("collection"), d.get("status"), {str(k): str(v) for k, v in fields.items()})

    def as_payload(self) -> dict[str, Any]:
        """The payload keys an item gives a job type that knows nothing of items: a record's
        `databox` and `record`, a file's `path`."""
        if self.kind is ItemKind.RECORD:
            return {"databox": self.databox, "record": self.id}
        if self.kind is ItemKind.FILE:
            return {"path": self.path}
        return {}


_ITEM_KEYS = tuple(f.name for f in dataclasses.fields(Item))
_ITEM_VALUE_KEYS = tuple(k for k in _ITEM_KEYS if k not in ("kind", "fields"))


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """For types that take no settings of their own."""


# A task's or job's logger: a Logger, or the adapter that tags its records with the task (schedulerd.logs)
TaskLog = logging.Logger | logging.LoggerAdapter[logging.Logger]


class Context(Protocol):
    """What the engine hands to one iteration of a task or one attempt of a job."""

    name: str  # the task name, or "job-<id>"
    settings: Any  # the type's frozen Settings instance
    log: TaskLog  # writes to the task's own log file (or the job's log lines)
    config: Any  # the whole loaded Config (databoxes, ftp_destinations, ...)
    state_dir: Path  # where a type may keep its own files (ledgers, journals)
    store: Any  # the state store (schedulerd.store.StateStore)

    def progress(self, done: int, total: int | None = None) -> None:
        """Report progress; shown by `state`, `job:list` and the CLI progress bar."""

    def set_info(self, **fields: Any) -> None:
        """Extra facts shown in the task state (pid, last error, ...). None removes a key."""

    def mark_started(self) -> None:
        """A long-running iteration is up and healthy: the crash counter resets."""

    async def sleep(self, seconds: float) -> bool:
        """Sleep, cancel-safe; returns True early when the task was woken (events, watchers)."""

    def emit(self, event: str, **data: Any) -> None:
        """Publish an event (`record.created`, ...) to the task types that listen for it."""

    async def add_job(self, type: str, payload: Mapping[str, Any], **options: Any) -> int:
        """Queue a one-off job; returns its id. The store write runs off the event loop and is
        retried while the store fails (a bad type or payload raises at once)."""

    async def add_jobs(self, type: str, payloads: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        """Queue many jobs of one type in one store write (all or none, every payload checked
        first); returns their ids in order. A pass that made thousands of records queues their
        jobs with this: one commit, not one per job."""

    def wait_for(self, what: str, retry: float = 5.0) -> None:
        """This iteration found nothing to work on because `what` does not exist yet (say, a
        databox another task creates): no failure. The state shows `waiting for WHAT`, the
        change is logged once, and a task runs again after `retry` seconds (its period, if
        shorter) until an iteration ends without calling this."""


class TaskFailed(Exception):
    """An expected failure of an iteration or a job attempt (a busy port, a program that
    will not start): the engine logs its message on one line, without a traceback, and
    counts it like any failure. Any other exception is logged with its traceback."""


class FailForGood(TaskFailed):
    """A job attempt failed in a way no retry can mend (a webhook answered 400): the job fails
    now, with this message, whatever attempts it has left."""


# what a plugin's code (an iteration, a job's attempt, a task's background or shutdown) may raise
# and be recorded as failed: any error, and a sys.exit() in it (which must not end the daemon, nor
# leave its loop stuck; one in an asyncio task the plugin starts itself still reaches the loop); a
# cancellation and Ctrl-C (KeyboardInterrupt) go on up
FAILURES = (Exception, SystemExit)


def error_text(e: BaseException) -> str:
    """`Type: message`, what the history and the logs say of a failure; `Type` and a note when the
    exception cannot make its message (its __str__ fails): the failure is recorded all the same."""
    try:
        return f"{type(e).__name__}: {e}"
    except Exception:
        return f"{type(e).__name__} (its message could not be made)"


def failure_detail(e: BaseException) -> str:
    """What follows a failure's one-line message in a log: nothing for an expected
    TaskFailed, the traceback (on its own lines) for anything else."""
    if isinstance(e, TaskFailed):
        return ""
    return "\n" + "".join(traceback.format_exception(e)).rstrip()


class TaskType:
    """Base of task types. Subclasses set `type_name` and `Settings`."""

    type_name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    # events (see Context.emit) that wake this task before its period ends
    wake_on: ClassVar[tuple[str, ...]] = ()
    # every event its iterations may emit: what a task's `trigger` is checked against
    emits: ClassVar[tuple[str, ...]] = ()
    # default period when the config gives none, in seconds
    default_period: ClassVar[float] = 60.0
    # the iteration is the whole run (a supervised process): a stop cancels it at once
    # instead of waiting stop_timeout; the type ends its work gracefully on cancellation
    long_running: ClassVar[bool] = False

    def __init__(self, settings: Any):
        self.settings = settings

    def check(self, config: Any) -> None:
        """Cross-check settings against the whole config; raise ValueError naming the key."""

    async def run_once(self, ctx: Context) -> str | None:
        """One iteration; the returned text is its summary in the run history."""
        raise NotImplementedError

    async def background(self, ctx: Context) -> None:
        """Optional companion coroutine while the task is started (watchers); default none."""

    async def shutdown(self, ctx: Context) -> None:
        """Called, shielded, when the task stops: end children gracefully."""


class JobType:
    """Base of job types: one-off work from the queue."""

    type_name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    default_queue: ClassVar[str] = "default"
    emits: ClassVar[tuple[str, ...]] = ()  # every event its attempts may emit

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else self.Settings()

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        """Reject a bad payload at `job:add` time: raise ValueError naming the key."""

    def title(self, payload: Mapping[str, Any]) -> str:
        """A short human title for `job:list`."""
        return self.type_name

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        raise NotImplementedError

    # --- as a pipeline step (docs/pipelines.md) ----------------------------------------------
    def check_step(self, payload: Mapping[str, Any], config: Any) -> None:
        """Check a pipeline step's settings (its payload without the items) at load: raise
        ValueError naming the key. Default: nothing to check."""

    async def run_item(self, ctx: Context, payload: Mapping[str, Any], item: Item) -> Item:
        """One item through this type; returns the item with what the type adds (a record id, a
        local path). Default: `run` with the step's payload and the item's keys (`as_payload`),
        the item unchanged."""
        await self.run(ctx, {**payload, **item.as_payload()})
        return item

    async def run_items(self, ctx: Context, payload: Mapping[str, Any], items: Sequence[Item]) -> list[Item]:
        """The items of one part of a step (all of them, or one with `parallel`); returns the
        output items. Default: `run_item` on each in turn. A type that works on the list at once
        (a webhook posting it) overrides this."""
        out = []
        for i, item in enumerate(items):
            out.append(await self.run_item(ctx, payload, item))
            if len(items) > 1:  # (a one-item part's progress would cost a store write per item)
                ctx.progress(i + 1, len(items))
        return out
