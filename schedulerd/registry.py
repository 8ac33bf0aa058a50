"""Find task and job types by name: built-ins in `tasks/`, others by entry points; and the
config sections plugins declare (entry-point group `schedulerd.config`).

Built-in task type `X` lives in module `tasks.X`; a job type may live in any
`tasks` module (a module may provide both), so job lookup scans `tasks/` once.
The engine imports no plugin by an import statement: `tasks` is looked up by name
(importlib), everything else through entry points.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import TypeVar

from .plugin import JobType, TaskType

TASK_GROUP = "schedulerd.tasks"
JOB_GROUP = "schedulerd.jobs"
CONFIG_GROUP = "schedulerd.config"  # NAME = "module:Settings": the [NAME.*] tables, each one a Settings
BUILTIN_PACKAGE = "tasks"


class UnknownType(LookupError):
    pass


def _builtin_modules() -> list[str]:
    tasks = importlib.import_module(BUILTIN_PACKAGE)
    return [m.name for m in pkgutil.iter_modules(tasks.__path__) if not m.name.startswith("_")]


T = TypeVar("T", TaskType, JobType)


def _classes(module: ModuleType, base: type[T]) -> list[type[T]]:
    return [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, base) and v is not base and v.type_name
    ]


def _loaded(ep: EntryPoint, base: type[T]) -> type[T]:
    """The class entry point `ep` names, checked to be a `base` subclass."""
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UnknownType(f"entry point {ep.name} = {ep.value!r} ({ep.group}) is not a {base.__name__} subclass")
    return cls


@cache
def task_type(name: str) -> type[TaskType]:
    for ep in entry_points(group=TASK_GROUP):
        if ep.name == name:
            return _loaded(ep, TaskType)
    if name in _builtin_modules():
        module = importlib.import_module(f"tasks.{name}")
        for cls in _classes(module, TaskType):
            if cls.type_name == name:
                return cls
    raise UnknownType(f"unknown task type {name!r} (known: {', '.join(task_type_names())})")


@cache
def task_type_names() -> tuple[str, ...]:
    names = {ep.name for ep in entry_points(group=TASK_GROUP)}
    for m in _builtin_modules():
        names.add(m)
    return tuple(sorted(n for n in names if n not in _helper_modules()))


def _helper_modules() -> set[str]:
    """Modules of `tasks/` that hold shared code (no TaskType of their own name)."""
    tasks = importlib.import_module(BUILTIN_PACKAGE)
    return set(getattr(tasks, "HELPER_MODULES", ()))


@cache
def job_types() -> dict[str, type[JobType]]:
    found: dict[str, type[JobType]] = {}
    for m in _builtin_modules():
        if m in _helper_modules():
            continue
        try:
            module = importlib.import_module(f"tasks.{m}")
        except ImportError:  # an optional dependency missing: its types are unavailable
            continue
        for cls in _classes(module, JobType):
            found[cls.type_name] = cls
    for ep in entry_points(group=JOB_GROUP):
        found[ep.name] = _loaded(ep, JobType)
    from .pipelinerun import PipelineStep  # the engine's own: one part of a pipeline step

    found[PipelineStep.type_name] = PipelineStep
    return found


def job_type(name: str) -> type[JobType]:
    try:
        return job_types()[name]
    except KeyError:
        raise UnknownType(f"unknown job type {name!r} (known: {', '.join(sorted(job_types()))})") from None


@cache
def known_events() -> tuple[str, ...]:
    """Every event a `trigger` can name: the engine's own and those the task and job types
    declare in `emits` (a type whose module cannot be imported declares none)."""
    from .plugin import ENGINE_EVENTS

    found = set(ENGINE_EVENTS)
    for name in task_type_names():
        try:
            found.update(task_type(name).emits)
        except (ImportError, UnknownType):
            continue
    for cls in job_types().values():
        found.update(cls.emits)
    return tuple(sorted(found))


@cache
def config_section_names() -> tuple[str, ...]:
    """The sections plugins declare, without importing them (the thin CLI reads the file too)."""
    return tuple(sorted({ep.name for ep in entry_points(group=CONFIG_GROUP)}))


@cache
def config_sections() -> dict[str, type]:
    """Section name -> the frozen dataclass of one of its tables (`[databoxes.main]` is one
    `DataboxSettings`): the loader converts and checks them like the engine's own sections."""
    found: dict[str, type] = {}
    for ep in entry_points(group=CONFIG_GROUP):
        entry = ep.load()
        if not isinstance(entry, type):
            raise TypeError(f"entry point {ep.name} = {ep.value} of group {CONFIG_GROUP}: expected a class")
        found[ep.name] = entry
    return found


def rescan() -> None:
    """Forget every type found so far (`scheduler:reload` calls this before reading the config):
    the next lookups scan `tasks/` and the entry points again, so a type module dropped into
    `tasks/`, or a plugin installed since, is found without a restart. A module already imported
    keeps its code: a changed module needs a restart."""
    importlib.invalidate_caches()  # the import system's directory listings, entry points' too
    for value in list(globals().values()):
        if callable(getattr(value, "cache_clear", None)):  # every @cache of this module
            value.cache_clear()
