"""Reading the config files, and the [scheduler] section alone.

Split from `config` so that the thin CLI (`scheduler:state`, `task:list` against a running
daemon) finds the daemon's socket and pidfile without importing the task types, the
stores or the plugins: `load_scheduler` validates [scheduler] exactly as `config.load`
does, and this module imports only `settings` and the standard library's light parts.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from . import settings as s
from .configpaths import DEFAULT_PIDFILE, base_dir_for, default_path
from .settings import ConfigError

_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def node_name(value: Any, path: str) -> str:
    """A node id (`[scheduler] node`, a task's `nodes`): letters, digits, '.', '-', '_', 64 at most."""
    if not isinstance(value, str) or not _NODE.fullmatch(value):
        raise ConfigError(path, "expected a node name of letters, digits, '.', '-' and '_' (64 at most), "
                                f"got {value!r}")
    return value


def timezone_name(value: Any, path: str) -> str:
    """`[scheduler] timezone`: an IANA zone name, checked against the zone database."""
    from .schedule import zone  # zoneinfo only when a zone is named

    if not isinstance(value, str):
        raise ConfigError(path, f"expected a time zone name like \"Europe/Paris\", got {value!r}")
    try:
        zone(value)
    except ValueError as e:
        raise ConfigError(path, str(e)) from None
    return value


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    socket: Path = Path("var/run/schedulerd.sock")
    socket_mode: Annotated[int, s.octal_mode] = 0o600
    socket_group: str | None = None
    allowed_uids: tuple[int, ...] = ()
    pidfile: Path = Path(DEFAULT_PIDFILE)
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
    # the zone cron schedules are read in (`schedule = "0 3 * * *"`); none: the system's
    timezone: Annotated[str, timezone_name] | None = None

    def check(self) -> None:
        if self.backoff_initial > self.backoff_max:
            raise ConfigError("backoff_initial", "must not exceed backoff_max")



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


def merge(files: list[Path]) -> tuple[dict[str, Any], dict[str, str]]:
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
                if key in target and _names_entries(section):
                    kind = {"tasks": "task name", "queues": "queue name"}.get(section, f"name in [{section}]")
                    raise ConfigError(where, f"duplicate {kind} (also in {origin[where]})", str(f))
                target[key] = value
                origin[where] = str(f)
    return merged, origin


def _names_entries(section: str) -> bool:
    """Whether the keys of [section] name entries (a task, a queue, a plugin's databox): a second
    definition is an error there, where elsewhere a drop-in's key overrides the main file's. The
    plugins' sections are asked for only on such a collision: the thin CLI imports no plugin."""
    if section in ("tasks", "queues"):
        return True
    from .registry import config_section_names

    return section in config_section_names()


def file_for(path: str, origin: Mapping[str, str], default: str) -> str:
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in origin:
            return origin[key]
    return default



def load_scheduler(file: Path | None = None) -> tuple[Path | None, SchedulerSettings]:
    """Only the [scheduler] section: what the thin CLI needs to find the socket and pidfile,
    without importing any task type."""
    if file is None:
        file = default_path()
    if file is None:
        return None, s.build(SchedulerSettings, {}, "scheduler", base_dir_for(None))
    files = [file, *sorted((file.parent / "schedulerd.d").glob("*.toml"))] if file.is_file() else [file]
    merged, origin = merge(files)
    try:
        return file, s.build(SchedulerSettings, merged.get("scheduler", {}), "scheduler", base_dir_for(file))
    except ConfigError as e:
        raise e.with_file(file_for(e.path, origin, str(file))) from None



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
