"""Logging: one scheduler log, one log per task, rotation, secret redaction, live tail.

Lines look like `2026-11-23T06:34:47.123+00:00 INFO [photos] message`.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

SCHEDULER_LOGGER = "schedulerd"
TASK_LOGGER = "schedulerd.task"
# A value given to a secret-named key: `password=x`, `--token = x`, `password:x`, `"password": "x"`.
# `password: expected a string` is prose (a colon, a space, a word), not a value: it stays.
_SECRET_ARG = re.compile(r"""((?:--?|\b)[\w.-]*(?:password|secret|passphrase|token)[\w.-]*["']?"""
                         r"""(?:\s*=\s*|:(?=\S)|:\s*(?=["'])))("[^"]*"|'[^']*'|\S+)""", re.I)


class Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        who = getattr(record, "task", None) or "scheduler"
        record.who = who
        return super().format(record)


FORMAT = "%(asctime)s %(levelname)s [%(who)s] %(message)s"


class Redactor(logging.Filter):
    """Replaces every known secret value, and `password=...`-like arguments, with stars."""

    def __init__(self) -> None:
        super().__init__()
        self.values: set[str] = set()
        self._longest_first: list[str] = []  # sorted once per add, not per log record

    def add(self, values: Iterable[str]) -> None:
        self.values.update(v for v in values if v and len(v) >= 3)
        self._longest_first = sorted(self.values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for v in self._longest_first:
            if v in text:
                text = text.replace(v, "********")
        return _SECRET_ARG.sub(_stars, text)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        red = self.redact(msg)
        if red != msg or record.args:
            record.msg, record.args = red, None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def _stars(m: re.Match[str]) -> str:
    value = m.group(2)
    quote = value[0] if value[0] in "\"'" else ""
    return f"{m.group(1)}{quote}********{quote}"


REDACTOR = Redactor()


def display_url(url: str) -> str:
    """A URL as messages show it: `scheme://host[:port]/… #1a2b3c4d`. A webhook's URL may carry a
    token in its user:password, its path (Slack's /services/T/B/TOKEN, Discord's
    /api/webhooks/ID/TOKEN) or its query, so none of them is shown; the first 8 hex digits of the
    whole URL's SHA-256 tell URLs apart (the webhook ledger's key for the URL begins with them)."""
    import hashlib
    from urllib.parse import urlsplit  # here: the thin CLI imports this module

    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<a URL that does not parse>"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    hidden = "/…" if parts.path not in ("", "/") or parts.query or parts.fragment else parts.path
    return f"{parts.scheme}://{netloc}{hidden} #{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be secret, for REDACTOR: the URL itself, with and without its
    user:password; the user:password and the password; the path with its query, the path, the
    query string and each of its `key=value` pairs. Never a bare query value: `?wait=true` would
    star the word 'true' in every log line."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        plain = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        path_query = parts.path + (f"?{parts.query}" if parts.query else "")
        found = [url, plain, parts.netloc.rpartition("@")[0], parts.password or "", path_query, parts.query]
        found += [parts.path if parts.path != "/" else ""]
        found += [pair for pair in re.split(r"[&;]", parts.query) if "=" in pair]
    except ValueError:
        return [url]
    return [v for v in found if v]


class Follow(Enum):
    """What a live follower wants when it is not one task's log."""

    SCHEDULER = "scheduler"  # the scheduler log: the lines of no task, as in scheduler.log
    ALL_TASKS = "all tasks"  # every task's log at once


def wants(want: str | Follow, task: str | None) -> bool:
    """Whether a follower of `want` gets a line of `task` (None: a scheduler line)."""
    if want is Follow.SCHEDULER:
        return task is None
    if want is Follow.ALL_TASKS:
        return task is not None
    return want == task


class Broadcast(logging.Handler):
    """Hands formatted lines to live subscribers (`log -f` over the control socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: dict[Any, str | Follow] = {}  # send stream -> a task's name, or a Follow

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.subscribers:  # nobody follows: skip the redaction filter and formatting
            return False
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        task = getattr(record, "task", None)
        for stream, want in list(self.subscribers.items()):
            if wants(want, task):
                try:
                    stream.send_nowait(line)
                except Exception:  # full or closed: a slow reader loses lines, never blocks us
                    pass


BROADCAST = Broadcast()


class TaskAdapter(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {})["task"] = self.extra["task"] if self.extra else None
        return msg, kwargs


OPEN_TASK_LOGS = 200  # task log files kept open at once; the others are reopened at their next line
FORMATTER = Formatter(FORMAT)  # shared: stateless, and one per handler costs memory per task


def _close_stream(h: logging.FileHandler) -> None:
    """Close a handler's file; FileHandler.emit opens it again, by its path, at the next line
    (as it does for a handler made with delay)."""
    h.acquire()
    try:
        if h.stream is not None:
            h.stream.close()
            h.stream = None
    finally:
        h.release()


class OpenLogs:
    """The task log files open now, least recently written first: past `cap` the oldest is closed,
    so ten thousand tasks do not hold ten thousand files (the daemon's open-file limit).
    Handlers only ever hold one lock at a time here: ours, or one handler's."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: OrderedDict[logging.FileHandler, None] = OrderedDict()
        self._lock = threading.Lock()

    def touch(self, h: logging.FileHandler) -> None:
        with self._lock:
            self._open[h] = None
            self._open.move_to_end(h)
            idle = [self._open.popitem(last=False)[0] for _ in range(len(self._open) - self.cap)]
        for old in idle:
            _close_stream(old)

    def forget(self, h: logging.FileHandler) -> None:
        with self._lock:
            self._open.pop(h, None)

    def __len__(self) -> int:
        return len(self._open)


OPEN_LOGS = OpenLogs(OPEN_TASK_LOGS)


class TaskFileHandler(logging.handlers.RotatingFileHandler):
    """A task's log file: opened at its first line (delay), closed again when it is among the
    least recently written past OPEN_TASK_LOGS (OPEN_LOGS), reopened by its path at the next line."""

    def handle(self, record: logging.LogRecord) -> bool:
        written = bool(super().handle(record))
        if written:  # after our own lock is released: OPEN_LOGS may close another handler's file
            OPEN_LOGS.touch(self)
        return written

    def close(self) -> None:
        super().close()
        OPEN_LOGS.forget(self)


def _handler(path: Path, max_bytes: int, backups: int, *, task: bool = False) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    # delay: a task's log file is opened at its first line, not held open by a thousand idle tasks
    kind = TaskFileHandler if task else logging.handlers.RotatingFileHandler
    h = kind(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
    h.setFormatter(FORMATTER)
    h.addFilter(REDACTOR)
    FILE_HANDLERS.add(h)
    return h


FILE_HANDLERS: weakref.WeakSet[logging.FileHandler] = weakref.WeakSet()  # every log file's handler


OUT_ENV = "SCHEDULERD_OUT"  # set by scheduler:start for its detached daemon: the file its stdout/stderr go to


def reopen_files() -> None:
    """Close every log file; each is opened again, by its path, at its next line (SIGUSR1: after
    an external logrotate moved the files, the lines go to new files, not to the moved ones).
    The daemon's stdout and stderr (`scheduler.out`, when scheduler:start made it) too."""
    for h in list(FILE_HANDLERS):
        _close_stream(h)
    out = os.environ.get(OUT_ENV)
    if out:
        reopen_stdio(Path(out))


def reopen_stdio(path: Path) -> None:
    """Point fds 1 and 2 at a freshly opened `path` (appending): what the process, its libraries and
    children print from now on goes to the new file, not to the one logrotate moved away."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def task_log_path(log_dir: Path, name: str) -> Path:
    return log_dir / f"task-{name}.log"


def scheduler_log_path(log_dir: Path) -> Path:
    return log_dir / "scheduler.log"


def setup_scheduler_log(log_dir: Path, level: str, max_bytes: int, backups: int, *, stderr: bool = False) -> None:
    root = logging.getLogger(SCHEDULER_LOGGER)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(level.upper())
    root.propagate = False
    root.addHandler(_handler(scheduler_log_path(log_dir), max_bytes, backups))
    BROADCAST.setFormatter(Formatter(FORMAT))
    if BROADCAST not in BROADCAST.filters:
        BROADCAST.addFilter(REDACTOR)
    root.addHandler(BROADCAST)
    if stderr:
        sh = logging.StreamHandler()
        sh.setFormatter(Formatter(FORMAT))
        sh.addFilter(REDACTOR)
        root.addHandler(sh)


def task_logger(name: str, log_dir: Path, level: str, max_bytes: int, backups: int,
                *, extra_handlers: Iterable[logging.Handler] = ()) -> logging.LoggerAdapter[logging.Logger]:
    """A logger writing to `task-NAME.log` (and the live tail), not to the scheduler log."""
    logger = logging.getLogger(f"{TASK_LOGGER}.{name}")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    # the level is set once on the parent, which every task logger inherits: Logger.setLevel
    # empties the level cache of every logger in the process, so a call per task made the
    # start of 10,000 tasks quadratic (12 of its 19 s)
    tasks = logging.getLogger(TASK_LOGGER)
    if tasks.level != logging.getLevelName(level.upper()):
        tasks.setLevel(level.upper())
    if logger.level != logging.NOTSET:
        logger.setLevel(logging.NOTSET)
    logger.propagate = False
    logger.addHandler(_handler(task_log_path(log_dir, name), max_bytes, backups, task=True))
    logger.addHandler(BROADCAST)
    for h in extra_handlers:
        logger.addHandler(h)
    return TaskAdapter(logger, {"task": name})


def close_task_logger(name: str) -> None:
    logger = logging.getLogger(f"{TASK_LOGGER}.{name}")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        if h is not BROADCAST:
            h.close()


def tail(path: Path, n: int) -> list[str]:
    """The last `n` lines of a file, read from its end (logs can be large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= n:
                step = min(block, size)
                size -= step
                fh.seek(size)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-n:] if n > 0 else []


def merged_tail(paths: Iterable[Path], n: int) -> list[str]:
    """The last `n` lines of several logs in time order (a traceback stays with its line)."""
    paths = list(paths)
    if len(paths) == 1:
        return tail(paths[0], n)
    entries: list[tuple[str, list[str]]] = []
    for path in paths:
        first = True
        for line in tail(path, n):
            stamped = _STAMP.match(line) is not None
            if stamped or first:  # a file's leading unstamped lines belong to an entry cut off: first
                entries.append((line[:29] if stamped else "", [line]))
            else:
                entries[-1][1].append(line)
            first = False
    entries.sort(key=lambda e: e[0])  # stable: one file's entries keep their order
    lines = [line for _, group in entries for line in group]
    return lines[-n:] if n > 0 else []


_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def now() -> float:
    return time.time()
