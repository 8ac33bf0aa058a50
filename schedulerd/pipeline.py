"""`[pipelines.NAME]`: a trigger and steps (docs/pipelines.md), validated once at load.

A step is a job type with its settings (the step's payload, without the items) or a filter;
`parallel = N` runs the step once per input item, N at once (the step's own queue has N workers).
The run itself (store, driver, triggers) is schedulerd.pipelinerun.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from datetime import UTC
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from . import settings as s
from .plugin import Item, ItemKind
from .settings import ConfigError

FILE_EVENTS = ("file.created", "file.modified")
STEP_KEYS = ("type", "filter", "parallel", "name")
QUEUE_PREFIX = "pipeline."


def status_mask(value: Any, path: str) -> tuple[int, int]:
    """`"x1x0"` (rightmost: bit 0; x: any) as (mask, value), refused naming `path`."""
    if not isinstance(value, str) or len(value) > 32 or set(value) - set("01x"):
        raise ConfigError(path, f'expected a status mask of 0, 1 and x like "x1x0", got {value!r}')
    mask = bits = 0
    for i, ch in enumerate(reversed(value)):
        if ch != "x":
            mask |= 1 << i
            bits |= (ch == "1") << i
    return mask, bits


@dataclasses.dataclass(frozen=True)
class FilterSettings:
    """Keeps the items matching every key given (a list: any of its values)."""

    glob: tuple[str, ...] = ()  # file-name patterns, case-insensitive ("*.jpg")
    mime: tuple[str, ...] = ()  # "image/*"
    kind: tuple[str, ...] = ()  # file, record, event
    min_size: Annotated[int, s.byte_size] | None = None
    max_size: Annotated[int, s.byte_size] | None = None
    status: Annotated[tuple[int, int], status_mask] | None = None  # "x1x0"
    collection: tuple[str, ...] = ()
    databox: tuple[str, ...] = ()
    fields: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))  # name = pattern

    def check(self) -> None:
        for i, k in enumerate(self.kind):
            if k not in {e.value for e in ItemKind}:
                raise ConfigError(f"kind[{i}]", f"expected file, record or event, got {k!r}")

    def keeps(self, item: Item) -> bool:
        name = (item.path or "").rsplit("/", 1)[-1].lower()
        checks = (
            not self.glob or any(fnmatch.fnmatchcase(name, g.lower()) for g in self.glob),
            not self.mime or any(fnmatch.fnmatchcase(item.mime or "", m) for m in self.mime),
            not self.kind or item.kind.value in self.kind,
            self.min_size is None or (item.size or 0) >= self.min_size,
            self.max_size is None or (item.size or 0) <= self.max_size,
            self.status is None or (item.status is not None and item.status & self.status[0] == self.status[1]),
            not self.collection or item.collection in self.collection,
            not self.databox or item.databox in self.databox,
            all(fnmatch.fnmatchcase(item.fields.get(k, ""), v) for k, v in self.fields.items()),
        )
        return all(checks)

    def apply(self, items: Sequence[Item]) -> list[Item]:
        return [i for i in items if self.keeps(i)]


@dataclasses.dataclass(frozen=True)
class TriggerSettings:
    """What starts a run: `manual` (pipeline:run only, the default), `schedule`, or `event`."""

    manual: bool = False
    schedule: str | None = None  # cron ("0 3 * * *") or ISO-8601 repeating interval
    event: str | None = None  # file.created | file.modified (with folder) or an engine/type event
    folder: Path | None = None
    cold: Annotated[float, s.duration] = 5.0  # a file fires once unchanged this long (the hotfolder rule)
    recursive: bool = True
    force_polling: bool = False  # network shares: poll instead of inotify
    max_items: Annotated[int, s.int_range(1, 100000)] = 1000  # a run takes at most this many files
    filter: FilterSettings | None = None  # events: the items (the event's record or data) to keep

    def check(self) -> None:
        given = [k for k in ("manual", "schedule", "event") if getattr(self, k)]
        if len(given) > 1:
            raise ConfigError(given[1], f"a trigger is one of manual, schedule, event; {given[0]} is given too")
        if self.event in FILE_EVENTS and self.folder is None:
            raise ConfigError("folder", f"missing required setting (the folder {self.event} watches)")
        if self.folder is not None and self.event not in FILE_EVENTS:
            raise ConfigError("folder", f"only with event = {' or '.join(FILE_EVENTS)}")
        if self.event is not None and self.event not in FILE_EVENTS:
            from .registry import known_events

            if self.event not in known_events():
                raise s.unknown_key("event", self.event, (*FILE_EVENTS, *known_events()), f"event {self.event!r}")
        if self.schedule is not None:
            _check_schedule(self.schedule)


def _check_schedule(text: str) -> None:

    try:
        from .schedule import parse_schedule
    except ImportError:  # pragma: no cover - schedule.py ships with this module
        raise ConfigError("schedule", "schedules are not available in this version") from None
    try:
        parse_schedule(text, UTC)  # the zone moves the instants, not what is valid
    except ValueError as e:
        raise ConfigError("schedule", str(e)) from None


@dataclasses.dataclass(frozen=True)
class StepConfig:
    name: str
    type: str | None  # a job type, or None for a filter
    filter: FilterSettings | None
    parallel: int | None  # None: one part holding every item
    payload: Mapping[str, Any]  # the job type's settings for this step (JSON-able)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str
    trigger: TriggerSettings
    steps: tuple[StepConfig, ...]
    enabled: bool = True

    def queue(self, step: int) -> str:
        return f"{QUEUE_PREFIX}{self.name}.{step}"


def pipelines(data: Any, config: Any, base: Path) -> Mapping[str, PipelineConfig]:
    """Every `[pipelines.NAME]`, each checked against the whole config (`config`: databoxes, ...)."""
    if not isinstance(data, Mapping):
        raise ConfigError("pipelines", f"expected a table, got {data!r}")
    return MappingProxyType({name: _pipeline(name, t, config, base) for name, t in data.items()})


def _pipeline(name: str, table: Any, config: Any, base: Path) -> PipelineConfig:
    path = f"pipelines.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(path, f"expected a table, got {table!r}")
    if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
        raise ConfigError(path, "a pipeline name may hold letters, digits, '-' and '_' (64 at most)")
    for key in table:
        if key not in ("trigger", "steps", "enabled"):
            raise s.unknown_key(f"{path}.{key}", key, ("enabled", "steps", "trigger"))
    trigger = table.get("trigger", {"manual": True})
    if trigger == "manual":
        trigger = {"manual": True}
    built = s.convert(TriggerSettings, trigger, f"{path}.trigger", base)
    steps = table.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{path}.steps", "expected a list of steps (tables with type or filter)")
    enabled = s.convert(bool, table.get("enabled", True), f"{path}.enabled")
    return PipelineConfig(name, built, tuple(_step(i, st, config, f"{path}.steps[{i}]", base)
                                             for i, st in enumerate(steps)), enabled)


def _step(i: int, table: Any, config: Any, path: str, base: Path) -> StepConfig:
    from .registry import UnknownType, job_type

    if not isinstance(table, Mapping):
        raise ConfigError(path, f"expected a table with type or filter, got {table!r}")
    if ("type" in table) == ("filter" in table):
        raise ConfigError(path, "a step has either type (a job type) or filter")
    parallel = table.get("parallel")
    if parallel is not None:
        parallel = s.int_range(1, 1000)(parallel, f"{path}.parallel")
    if "filter" in table:
        for key in table:
            if key not in ("filter", "name"):
                raise s.unknown_key(f"{path}.{key}", key, ("filter", "name"))
        flt = s.convert(FilterSettings, table["filter"], f"{path}.filter", base)
        return StepConfig(s.convert(str, table.get("name", f"{i}:filter"), f"{path}.name"), None, flt, None,
                          MappingProxyType({}))
    type_name = s.convert(str, table["type"], f"{path}.type")
    try:
        cls = job_type(type_name)
    except UnknownType as e:
        raise ConfigError(f"{path}.type", str(e)) from None
    payload = {k: v for k, v in table.items() if k not in STEP_KEYS}
    try:
        cls(config.jobs.type_config(type_name).settings).check_step(payload, config)
    except (ValueError, KeyError) as e:
        key, sep, message = str(e).strip("'\"").partition(": ")
        if sep and key.replace("_", "").replace("[", "").replace("]", "").replace(".", "").isalnum():
            raise ConfigError(f"{path}.{key}", message) from None
        raise ConfigError(path, str(e)) from None
    return StepConfig(s.convert(str, table.get("name", f"{i}:{type_name}"), f"{path}.name"), type_name, None,
                      parallel, MappingProxyType(payload))
