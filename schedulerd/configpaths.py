"""Where the config file is, and the running daemon it names, without validating the file.

The thin CLI's fast path (issue 22): `scheduler:state` and `task:list` against a running daemon
need its socket. A daemon validates the whole config when it starts, then records its socket
beside its pidfile (`pidfile.DaemonRecord`). While no config file changed since that record was
written, the [scheduler] the CLI would validate is the one the daemon validated: the CLI reads
the recorded socket and skips building the settings class (`dataclasses` and `inspect` are a
quarter of its start). Any file newer than the record, no record, or no live daemon: None, and
the caller loads [scheduler] in full (`configfiles.load_scheduler`), with the same errors.
This module imports neither `settings` nor `dataclasses`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

CONFIG_ENV = "SCHEDULERD_CONFIG"
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_PIDFILE = "var/run/schedulerd.pid"  # configfiles.SchedulerSettings.pidfile's default


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


def dropins(file: Path) -> list[Path]:
    """The drop-ins read after `file`, in order."""
    return sorted((file.parent / "schedulerd.d").glob("*.toml"))


def recorded_daemon(file: Path | None) -> tuple[Path, Path] | None:
    """(socket, pidfile) of the live daemon named by `file`'s [scheduler] pidfile, as it recorded
    them at its start, when neither `file`, its drop-ins nor their folder changed since; else None."""
    from .pidfile import read_record, record_path, running_pid

    file = file or default_path()
    if file is None or not file.is_file():
        return None
    folder = file.parent / "schedulerd.d"
    files = [file, *dropins(file)]
    pidfile = _raw_pidfile(files, base_dir_for(file))
    if pidfile is None:
        return None
    try:
        recorded = record_path(pidfile).stat().st_mtime_ns
        newest = max(p.stat().st_mtime_ns for p in [*files, *([folder] if folder.is_dir() else [])])
    except OSError:
        return None
    record = read_record(pidfile)
    if newest >= recorded or record is None or running_pid(pidfile) != record.pid:
        return None
    return record.socket, pidfile


def _raw_pidfile(files: list[Path], base: Path) -> Path | None:
    """[scheduler] pidfile as the files set it (the last one wins), unchecked; None when it is
    not a plain path (the full load then says what is wrong)."""
    value: object = DEFAULT_PIDFILE
    for f in files:
        try:
            table = tomllib.loads(f.read_bytes().decode()).get("scheduler", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None
        if not isinstance(table, dict):
            return None
        value = table.get("pidfile", value)
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path
