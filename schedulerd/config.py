"""Load `etc/schedulerd.toml` and its drop-ins once into a frozen Config tree.

Loading has no side effects: no logging set-up, no exits. Every error is one
ConfigError naming the file and the key path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from datetime import tzinfo
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from . import settings as s
from .configfiles import SchedulerSettings, file_for, merge, node_name
from .configpaths import base_dir_for, default_path
from .pipeline import QUEUE_PREFIX, PipelineConfig, pipelines
from .registry import config_sections
from .schedule import Schedule, parse_schedule, zone
from .settings import ConfigError, Secret
from .stores import StoreSettings
from .web.settings import HttpSettings

ENGINE_TASK_KEYS = ("type", "period", "schedule", "catch_up", "enabled", "timeout", "trigger", "nodes")
# the others are plugins' (config_sections)
ENGINE_SECTIONS = ("scheduler", "store", "tasks", "jobs", "queues", "http", "pipelines")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str
    type: str
    period: float
    enabled: bool
    timeout: float | None
    settings: Any
    trigger: tuple[str, ...] = ()  # events that start an iteration early (record.created, ...)
    nodes: tuple[str, ...] = ()  # the only nodes that may run it (a cluster); empty: any node
    schedule: Schedule | None = None  # `schedule = "0 3 * * *"` instead of a period (schedulerd.schedule)
    catch_up: bool = False  # a scheduled start missed while the daemon was down runs once at its start


@dataclasses.dataclass(frozen=True)
class JobTypeConfig:
    max_attempts: Annotated[int, s.int_range(1, 1000)] = 3
    retry_delay: Annotated[float, s.duration] = 30.0
    retry_backoff: bool = True  # the delay doubles at each attempt
    retry_max_delay: Annotated[float, s.duration] = 3600.0
    queue: str | None = None
    timeout: Annotated[float, s.positive_duration] | None = None
    # a job added from then on waits this long before its first attempt (the Worker Manager's
    # deferred messages); adding one identical to a job still waiting for it adds nothing
    defer: Annotated[float, s.duration] = 0.0
    # the type's own settings (its `Settings`, from the other keys of [jobs.types.NAME]); None: defaults
    settings: Any = None


JOB_TYPE_KEYS = tuple(s.toml_key(f) for f in dataclasses.fields(JobTypeConfig) if f.name != "settings")


@dataclasses.dataclass(frozen=True)
class QueueConfig:
    workers: Annotated[int, s.int_range(0, 1000)] = 1  # 0: this host claims none (other hosts work it)
    paused: bool = False  # initial state only; queue:pause/resume persist in the store
    # after this many jobs the queue's workers on this node are recycled: no more claims until
    # its running jobs ended, then its dispatcher starts afresh (JobService._dispatch)
    max_jobs: Annotated[int, s.int_range(1, 10**9)] | None = None


@dataclasses.dataclass(frozen=True)
class JobsSettings:
    keep_finished: Annotated[int, s.int_range(0, 10**8)] = 1000
    finished_max_age: Annotated[float, s.duration] = 7 * 86400.0
    keep_failed: Annotated[int, s.int_range(0, 10**8)] = 1000
    failed_max_age: Annotated[float, s.duration] = 96 * 3600.0
    types: Mapping[str, JobTypeConfig] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def type_config(self, name: str) -> JobTypeConfig:
        return self.types.get(name) or JobTypeConfig()


@dataclasses.dataclass(frozen=True)
class Config:
    file: Path | None
    base_dir: Path
    scheduler: SchedulerSettings
    tasks: Mapping[str, TaskConfig]
    jobs: JobsSettings
    queues: Mapping[str, QueueConfig]
    # the plugins' sections (`[databoxes.NAME]`, ...), one mapping of name -> frozen settings each:
    # every section a plugin declares (registry.config_sections) is here, empty when not in the file
    sections: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    store: StoreSettings = StoreSettings()  # [store]: SQLite files under state_dir, or PostgreSQL (url)
    http: HttpSettings = HttpSettings()  # [http]: the operator's console (schedulerd.web), off by default
    # [pipelines.NAME]: triggers and steps (schedulerd.pipeline, docs/pipelines.md)
    pipelines: Mapping[str, PipelineConfig] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def __getattr__(self, name: str) -> Mapping[str, object]:
        """A plugin's section as an attribute: `config.databoxes` is `config.sections["databoxes"]`."""
        sections: Mapping[str, Mapping[str, object]] = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def queue(self, name: str) -> QueueConfig:
        if name.startswith(QUEUE_PREFIX) and name not in self.queues:  # a pipeline step's: `parallel` workers
            pipeline, _, step = name[len(QUEUE_PREFIX):].rpartition(".")
            pc = self.pipelines.get(pipeline)
            if pc is not None and step.isdigit() and int(step) < len(pc.steps):
                return QueueConfig(workers=pc.steps[int(step)].parallel or 1)
        return self.queues.get(name) or QueueConfig()

    def secrets(self) -> list[str]:
        """Every secret value in the config, for log redaction."""
        return [v for v in (f.reveal() if isinstance(f, Secret) else f for f in self._secret_fields) if v]

    def secret_env_vars(self) -> set[str]:
        """The environment variables the config consumes as secrets (`"env:VAR"`): children
        started by the daemon or `task:run` do not inherit them (schedulerd.process.withhold_env)."""
        return {f.env_var for f in self._secret_fields if isinstance(f, Secret) and f.env_var}

    @functools.cached_property
    def _secret_fields(self) -> list[Secret | str]:
        """The secrets found in one walk of the whole tree (10,000 tasks: a tenth of a second a walk)."""
        found: list[Secret | str] = []
        _collect_secrets(self, found)
        return found


def _collect_secrets(obj: Any, found: list[Secret | str], key: str = "") -> None:
    if isinstance(obj, Secret):
        found.append(obj)
    elif isinstance(obj, str):
        if s.is_secret_key(key):
            found.append(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        more = getattr(obj, "log_secrets", None)  # settings whose secrets hide in other values (a URL's token)
        if callable(more):
            found.extend(more())
        for f in dataclasses.fields(obj):
            _collect_secrets(getattr(obj, f.name), found, f.name)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _collect_secrets(v, found, str(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_secrets(v, found, key)


def load(file: Path | None = None, *, embedded_defaults: bool = True, extra: tuple[Path, ...] = ()) -> Config:
    """Load the config at `file` (or the default path) and its `schedulerd.d/*.toml` drop-ins;
    `extra`: a drop-in not yet in place, checked with the rest (task:create)."""
    if file is None:
        file = default_path()
        if file is None and not embedded_defaults:
            raise ConfigError("", "no config file found (use --config or SCHEDULERD_CONFIG)", "schedulerd")
    files: list[Path] = []
    if file is not None:
        if not file.is_file():
            raise ConfigError("", "no such file", str(file))
        files = [file, *sorted((file.parent / "schedulerd.d").glob("*.toml")), *extra]
    merged, origin = merge(files)
    name = str(file) if file else "<embedded defaults>"
    try:
        return _build(merged, file, base_dir_for(file))
    except ConfigError as e:
        raise e.with_file(file_for(e.path, origin, name)) from None


def _build(data: dict[str, Any], file: Path | None, base: Path) -> Config:
    plugin_sections = config_sections()
    known = (*ENGINE_SECTIONS, *plugin_sections)
    for section in data:
        if section not in known:
            raise s.unknown_key(section, section, known, "section")
    scheduler = s.build(SchedulerSettings, data.get("scheduler", {}), "scheduler", base)
    jobs = _jobs(data.get("jobs", {}), base)
    queues = s.convert(Mapping[str, QueueConfig], data.get("queues", {}), "queues", base)
    sections = MappingProxyType({
        name: s.convert(Mapping[str, entry], data.get(name, {}), name, base)  # type: ignore[valid-type]
        for name, entry in plugin_sections.items()
    })
    tasks = {}
    raw_tasks = data.get("tasks", {})
    tz = zone(scheduler.timezone)
    for tname, table in raw_tasks.items():
        tasks[tname] = _task(tname, table, base, tz)
    store = s.build(StoreSettings, data.get("store", {}), "store", base)
    http = s.build(HttpSettings, data.get("http", {}), "http", base)
    config = Config(file, base, scheduler, MappingProxyType(tasks), jobs, queues, sections, store, http)
    for tc in tasks.values():
        _cross_check(tc, config)
    if "pipelines" in data:
        config = dataclasses.replace(config, pipelines=pipelines(data["pipelines"], config, base))
    return config


def _jobs(table: Any, base: Path) -> JobsSettings:
    """[jobs] and each [jobs.types.NAME]: the engine's keys, the rest the type's own `Settings`."""
    if not isinstance(table, Mapping):
        raise ConfigError("jobs", f"expected a table, got {table!r}")
    types = table.get("types", {})
    if not isinstance(types, Mapping):
        raise ConfigError("jobs.types", f"expected a table, got {types!r}")
    jobs = s.build(JobsSettings, {k: v for k, v in table.items() if k != "types"}, "jobs", base)
    built = {name: _job_type_config(name, t, base) for name, t in types.items()}
    return dataclasses.replace(jobs, types=MappingProxyType(built))


def _job_type_config(name: str, table: Any, base: Path) -> JobTypeConfig:
    from .registry import UnknownType, job_type

    path = f"jobs.types.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(path, f"expected a table, got {table!r}")
    try:
        cls = job_type(name)
    except UnknownType as e:
        raise ConfigError(path, str(e)) from None
    jc = s.build(JobTypeConfig, {k: v for k, v in table.items() if k in JOB_TYPE_KEYS}, path, base)
    rest = {k: v for k, v in table.items() if k not in JOB_TYPE_KEYS}
    return dataclasses.replace(jc, settings=s.build(cls.Settings, rest, path, base, also_known=JOB_TYPE_KEYS))


def _task(name: str, table: Any, base: Path, tz: tzinfo) -> TaskConfig:
    from .registry import UnknownType, task_type

    path = f"tasks.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(path, f"expected a table, got {table!r}")
    if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
        raise ConfigError(path, "a task name may hold letters, digits, '-' and '_' (64 at most)")
    if "type" not in table:
        raise ConfigError(f"{path}.type", "missing required setting")
    type_name = table["type"]
    if not isinstance(type_name, str):
        raise ConfigError(f"{path}.type", f"expected a string, got {type_name!r}")
    try:
        cls = task_type(type_name)
    except UnknownType as e:
        raise ConfigError(f"{path}.type", str(e)) from None
    period = s.positive_duration(table.get("period", cls.default_period), f"{path}.period")
    schedule, catch_up = _schedule(table, path, tz)
    enabled = s.convert(bool, table.get("enabled", True), f"{path}.enabled")
    timeout = table.get("timeout")
    timeout = None if timeout is None else s.positive_duration(timeout, f"{path}.timeout")
    trigger = _trigger(table.get("trigger", ()), f"{path}.trigger")
    nodes = _nodes(table.get("nodes", ()), f"{path}.nodes")
    rest = {k: v for k, v in table.items() if k not in ENGINE_TASK_KEYS}
    settings: object = s.build(cls.Settings, rest, path, base, also_known=ENGINE_TASK_KEYS)
    return TaskConfig(name, type_name, period, enabled, timeout, settings, trigger, nodes, schedule, catch_up)


def _schedule(table: Mapping[str, Any], path: str, tz: tzinfo) -> tuple[Schedule | None, bool]:
    """`schedule` (cron or ISO interval) instead of `period`, and `catch_up` that only it takes."""
    catch_up = s.convert(bool, table.get("catch_up", False), f"{path}.catch_up")
    if "schedule" not in table:
        if "catch_up" in table:
            raise ConfigError(f"{path}.catch_up", "only a task with a schedule catches up (it has a period)")
        return None, False
    if "period" in table:
        raise ConfigError(path, "period and schedule are both given: keep one (a period, or a cron "
                                "expression / ISO interval)")
    text = s.convert(str, table["schedule"], f"{path}.schedule")
    try:
        return parse_schedule(text, tz), catch_up
    except ValueError as e:
        raise ConfigError(f"{path}.schedule", str(e)) from None


def _nodes(value: Any, path: str) -> tuple[str, ...]:
    """`nodes = ["web1"]`: the task runs only on those nodes; an empty list would run it nowhere."""
    if value == []:
        raise ConfigError(path, "an empty list runs the task nowhere: leave nodes out (any node) or name one")
    names = s.convert(tuple[str, ...], value, path)
    return tuple(node_name(n, f"{path}[{i}]") for i, n in enumerate(names))


def _trigger(value: Any, path: str) -> tuple[str, ...]:
    """Event names, each one the engine or a task or job type emits (a typo would never fire)."""
    from .registry import known_events

    events: tuple[str, ...] = s.convert(tuple[str, ...], value, path)
    for i, event in enumerate(events):
        if event not in known_events():
            raise s.unknown_key(f"{path}[{i}]", event, known_events(), f"event {event!r}")
    return events


def _cross_check(tc: TaskConfig, config: Config) -> None:
    from .registry import task_type

    try:
        task_type(tc.type)(tc.settings).check(config)
    except ValueError as e:
        keys = [s.toml_key(f) for f in dataclasses.fields(tc.settings)] if dataclasses.is_dataclass(tc.settings) else []
        raise s.key_error(f"tasks.{tc.name}", e, keys) from None
    except ConfigError as e:
        raise ConfigError(f"tasks.{tc.name}.{e.path}".rstrip("."), e.message) from None


def load_store(file: Path | None) -> StoreSettings:
    """Only [store]: which store the CLI's job and task commands open, without the whole config."""
    if file is None or not file.is_file():
        return StoreSettings()
    merged, origin = merge([file, *sorted((file.parent / "schedulerd.d").glob("*.toml"))])
    try:
        return s.build(StoreSettings, merged.get("store", {}), "store", base_dir_for(file))
    except ConfigError as e:
        raise e.with_file(file_for(e.path, origin, str(file))) from None
