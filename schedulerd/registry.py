"""Find task and job types by name: built-ins in `tasks/`, others by entry points.

Built-in task type `X` lives in module `tasks.X`; a job type may live in any
`tasks` module (a module may provide both), so job lookup scans `tasks/` once.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points

from .plugin import JobType, TaskType

TASK_GROUP = "schedulerd.tasks"
JOB_GROUP = "schedulerd.jobs"


class UnknownType(LookupError):
    pass


def _builtin_modules() -> list[str]:
    import tasks

    return [m.name for m in pkgutil.iter_modules(tasks.__path__) if not m.name.startswith("_")]


def _classes(module, base):
    return [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, base) and v is not base and v.type_name
    ]


@cache
def task_type(name: str) -> type[TaskType]:
    for ep in entry_points(group=TASK_GROUP):
        if ep.name == name:
            return ep.load()
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
    import tasks

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
        found[ep.name] = ep.load()
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


def rescan() -> None:
    """Forget every type found so far (`scheduler:reload` calls this before reading the config):
    the next lookups scan `tasks/` and the entry points again, so a type module dropped into
    `tasks/`, or a plugin installed since, is found without a restart. A module already imported
    keeps its code: a changed module needs a restart."""
    importlib.invalidate_caches()  # the import system's directory listings, entry points' too
    for value in list(globals().values()):
        if callable(getattr(value, "cache_clear", None)):  # every @cache of this module
            value.cache_clear()
