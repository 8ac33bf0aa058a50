"""Load `etc/schedulerd.toml` and its drop-ins once into a frozen Config tree.

Loading has no side effects: no logging set-up, no exits. Every error is one
ConfigError naming the file and the key path.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from . import settings as s
from .registry import config_section_names, config_sections
from .settings import ConfigError, Secret
from .stores import StoreSettings
from .web.settings import HttpSettings

ENGINE_TASK_KEYS = ("type", "period", "enabled", "timeout", "trigger", "nodes")
ENGINE_SECTIONS = ("scheduler", "store", "tasks", "jobs", "queues", "http")  # the others are plugins' (config_sections)
CONFIG_ENV = "SCHEDULERD_CONFIG"
CHECKOUT = Path(__file__).resolve().parent.parent


_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def node_name(value: Any, path: str) -> str:
    """A node id (`[scheduler] node`, a task's `nodes`): letters, digits, '.', '-', '_', 64 at most."""
    if not isinstance(value, str) or not _NODE.fullmatch(value):
        raise ConfigError(path, "expected a node name of letters, digits, '.', '-' and '_' (64 at most), "
                                f"got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    socket: Path = Path("var/run/schedulerd.sock")
    socket_mode: Annotated[int, s.octal_mode] = 0o600
    socket_group: str | None = None
    allowed_uids: tuple[int, ...] = ()
    pidfile: Path = Path("var/run/schedulerd.pid")
    log_dir: Path = Path("var/log")
    state_dir: Path = Path("var/state")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_max_bytes: Annotated[int, s.byte_size] = 10 * 1024 * 1024
    log_backups: int = 5
    stop_timeout: Annotated[float, s.duration] = 10.0
    max_crashes: Annotated[int, s.int_range(1, 1000)] = 5
    backoff_initial: Annotated[float, s.positive_duration] = 1.0
    backoff_max: Annotated[float, s.positive_duration] = 300.0
    max_connections: Annotated[int, s.int_range(1, 10000)] = 64
    idle_timeout: Annotated[float, s.positive_duration] = 30.0
    history_keep_ok: Annotated[int, s.int_range(0, 10**7)] = 100
    history_keep_failed: Annotated[int, s.int_range(0, 10**7)] = 500
    history_max_age_ok: Annotated[float, s.duration] = 7 * 86400.0
    history_max_age_failed: Annotated[float, s.duration] = 30 * 86400.0
    watchdog: bool = True
    # how long a store write waits for another process's lock on jobs.db / schedulerd.db before it
    # fails; the daemon then logs it once and retries (0.5 s doubling to 30 s) until it is written
    store_busy_timeout: Annotated[float, s.positive_duration] = 30.0
    # this daemon's id in a cluster (docs/cluster.md): unique among the nodes sharing a store
    node: Annotated[str, node_name] = dataclasses.field(default_factory=lambda: socket.gethostname())

    def check(self) -> None:
        if self.backoff_initial > self.backoff_max:
            raise ConfigError("backoff_initial", "must not exceed backoff_max")


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

    def __getattr__(self, name: str) -> Mapping[str, object]:
        """A plugin's section as an attribute: `config.databoxes` is `config.sections["databoxes"]`."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def queue(self, name: str) -> QueueConfig:
        return self.queues.get(name) or QueueConfig()

    def secrets(self) -> list[str]:
        """Every secret value in the config, for log redaction."""
        found: list[Secret | str] = []
        _collect_secrets(self, found)
        return [v for v in (f.reveal() if isinstance(f, Secret) else f for f in found) if v]

    def secret_env_vars(self) -> set[str]:
        """The environment variables the config consumes as secrets (`"env:VAR"`): children
        started by the daemon or `task:run` do not inherit them (schedulerd.process.withhold_env)."""
        found: list[Secret | str] = []
        _collect_secrets(self, found)
        return {f.env_var for f in found if isinstance(f, Secret) and f.env_var}


def _collect_secrets(obj: Any, found: list[Secret | str], key: str = "") -> None:
    if isinstance(obj, Secret):
        found.append(obj)
    elif isinstance(obj, str):
        if s.is_secret_key(key):
            found.append(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _collect_secrets(getattr(obj, f.name), found, f.name)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _collect_secrets(v, found, str(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_secrets(v, found, key)


def default_path() -> Path | None:
    """SCHEDULERD_CONFIG, else ./etc/schedulerd.toml, else the checkout's etc/, else none."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in (Path.cwd() / "etc/schedulerd.toml", CHECKOUT / "etc/schedulerd.toml"):
        if candidate.is_file():
            return candidate
    return None


def base_dir_for(file: Path | None) -> Path:
    """Relative paths resolve against the checkout: the parent of `etc/`, else the file's folder."""
    if file is None:
        return Path.cwd()
    folder = file.resolve().parent
    return folder.parent if folder.name == "etc" else folder


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_bytes().decode()
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError("", "no such file", str(file)) from None
    except OSError as e:
        raise ConfigError("", f"cannot read: {e.strerror}", str(file)) from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"invalid TOML: not UTF-8 ({e.reason} at byte {e.start})", str(file)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"invalid TOML: {e}", str(file)) from None
    _refuse_decimal_modes(data, text, file)
    return data


# An integer mode must be written in octal (`0o600`): tomllib reads `0o600` and `384` as the
# same int, so the spelling is read from the file's own text. `key = <digits>` with the
# value tomllib found is a decimal literal (600 would be 0o1130: the owner loses access).
OCTAL_KEYS = {"scheduler": ("socket_mode",)}


def _refuse_decimal_modes(data: Mapping[str, Any], text: str, file: Path) -> None:
    for section, keys in OCTAL_KEYS.items():
        table = data.get(section)
        for key in keys:
            value = table.get(key) if isinstance(table, Mapping) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 7 \
                    and _spelled_decimal(text, key, value):
                digits = str(value) if set(str(value)) <= set("01234567") else f"{value:o}"
                raise ConfigError(f"{section}.{key}", f"{value} is a decimal number (= 0o{value:o}), not an octal "
                                  f'mode: write {key} = "0{digits}" or {key} = 0o{digits}', str(file))


def _spelled_decimal(text: str, key: str, value: int) -> bool:
    pattern = rf"""(?:^|[\s{{,.])["']?{key}["']?\s*=\s*([+-]?[0-9][0-9_]*)(?![0-9A-Za-z_.:-])"""
    return any(int(m.group(1).replace("_", "")) == value for m in re.finditer(pattern, text, re.M)
               if not re.match(r"[+-]?0[0-9]", m.group(1)))


def _merge(files: list[Path]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge main file and drop-ins; remember which file set each `section.key`."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for f in files:
        data = _read_toml(f)
        for section, table in data.items():
            origin.setdefault(section, str(f))
            if not isinstance(table, dict):
                raise ConfigError(section, f"expected a table, got {table!r}", str(f))
            target = merged.setdefault(section, {})
            for key, value in table.items():
                where = f"{section}.{key}"
                if key in target and section in ("tasks", "queues", *config_section_names()):
                    kind = {"tasks": "task name", "queues": "queue name"}.get(section, f"name in [{section}]")
                    raise ConfigError(where, f"duplicate {kind} (also in {origin[where]})", str(f))
                target[key] = value
                origin[where] = str(f)
    return merged, origin


def _file_for(path: str, origin: Mapping[str, str], default: str) -> str:
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in origin:
            return origin[key]
    return default


def load(file: Path | None = None, *, embedded_defaults: bool = True) -> Config:
    """Load the config at `file` (or the default path) and its `schedulerd.d/*.toml` drop-ins."""
    if file is None:
        file = default_path()
        if file is None and not embedded_defaults:
            raise ConfigError("", "no config file found (use --config or SCHEDULERD_CONFIG)", "schedulerd")
    files: list[Path] = []
    if file is not None:
        if not file.is_file():
            raise ConfigError("", "no such file", str(file))
        files = [file, *sorted((file.parent / "schedulerd.d").glob("*.toml"))]
    merged, origin = _merge(files)
    name = str(file) if file else "<embedded defaults>"
    try:
        return _build(merged, file, base_dir_for(file))
    except ConfigError as e:
        raise e.with_file(_file_for(e.path, origin, name)) from None


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
    for tname, table in raw_tasks.items():
        tasks[tname] = _task(tname, table, base)
    store = s.build(StoreSettings, data.get("store", {}), "store", base)
    http = s.build(HttpSettings, data.get("http", {}), "http", base)
    config = Config(file, base, scheduler, MappingProxyType(tasks), jobs, queues, sections, store, http)
    for tname, tc in tasks.items():
        _cross_check(tc, config)
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


def _task(name: str, table: Any, base: Path) -> TaskConfig:
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
    enabled = s.convert(bool, table.get("enabled", True), f"{path}.enabled")
    timeout = table.get("timeout")
    timeout = None if timeout is None else s.positive_duration(timeout, f"{path}.timeout")
    trigger = _trigger(table.get("trigger", ()), f"{path}.trigger")
    nodes = _nodes(table.get("nodes", ()), f"{path}.nodes")
    rest = {k: v for k, v in table.items() if k not in ENGINE_TASK_KEYS}
    settings = s.build(cls.Settings, rest, path, base, also_known=ENGINE_TASK_KEYS)
    return TaskConfig(name, type_name, period, enabled, timeout, settings, trigger, nodes)


def _nodes(value: Any, path: str) -> tuple[str, ...]:
    """`nodes = ["web1"]`: the task runs only on those nodes; an empty list would run it nowhere."""
    if value == []:
        raise ConfigError(path, "an empty list runs the task nowhere: leave nodes out (any node) or name one")
    names = s.convert(tuple[str, ...], value, path)
    return tuple(node_name(n, f"{path}[{i}]") for i, n in enumerate(names))


def _trigger(value: Any, path: str) -> tuple[str, ...]:
    """Event names, each one the engine or a task or job type emits (a typo would never fire)."""
    from .registry import known_events

    events = s.convert(tuple[str, ...], value, path)
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


def load_scheduler(file: Path | None = None) -> tuple[Path | None, SchedulerSettings]:
    """Only the [scheduler] section: what the thin CLI needs to find the socket and pidfile,
    without importing any task type."""
    if file is None:
        file = default_path()
    if file is None:
        return None, s.build(SchedulerSettings, {}, "scheduler", base_dir_for(None))
    files = [file, *sorted((file.parent / "schedulerd.d").glob("*.toml"))] if file.is_file() else [file]
    merged, origin = _merge(files)
    try:
        return file, s.build(SchedulerSettings, merged.get("scheduler", {}), "scheduler", base_dir_for(file))
    except ConfigError as e:
        raise e.with_file(_file_for(e.path, origin, str(file))) from None


def load_store(file: Path | None) -> StoreSettings:
    """Only [store]: which store the CLI's job and task commands open, without the whole config."""
    if file is None or not file.is_file():
        return StoreSettings()
    merged, origin = _merge([file, *sorted((file.parent / "schedulerd.d").glob("*.toml"))])
    try:
        return s.build(StoreSettings, merged.get("store", {}), "store", base_dir_for(file))
    except ConfigError as e:
        raise e.with_file(_file_for(e.path, origin, str(file))) from None


def scheduler_fallback(file: Path | None) -> SchedulerSettings:
    """[scheduler] as far as a file that does not load allows: its `[scheduler]` section
    alone when that parses, bad keys left out, else the defaults. Only for finding a
    running daemon (its pidfile) while the admin repairs the file."""
    base = base_dir_for(file)
    table: dict[str, Any] = {}
    if file is not None:
        for f in [file, *sorted((file.parent / "schedulerd.d").glob("*.toml"))]:
            table.update(_scheduler_section(f))
    while True:
        try:
            return s.build(SchedulerSettings, table, "scheduler", base)
        except ConfigError as e:
            key = e.path.removeprefix("scheduler.").split(".")[0].split("[")[0]
            if key not in table:
                return s.build(SchedulerSettings, {}, "scheduler", base)
            del table[key]


def _scheduler_section(file: Path) -> dict[str, Any]:
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    section: list[str] = []
    inside = False
    for line in lines:
        if re.match(r"\s*\[", line):
            inside = re.fullmatch(r"\s*\[\s*scheduler\s*\]\s*(#.*)?", line) is not None
        elif inside:
            section.append(line)
    try:
        return tomllib.loads("\n".join(section))
    except tomllib.TOMLDecodeError:
        return {}
