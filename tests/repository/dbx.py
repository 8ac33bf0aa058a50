"""Test helpers shared by the full-text tests (tests/repository) and the indexer/record_mover/workflow01 task tests:
a real databox in a tmp dir, a config-like object, a log collector, free ports."""

from __future__ import annotations

import logging
import socket
import sqlite3
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repository import DataboxSettings, open_databox  # noqa: E402

CONSOLE = ROOT / "bin" / "console"
INDEXER = ROOT / "bin" / "indexer"


def make_databox(tmp: Path, name: str = "main", fields: Mapping[str, str] | None = None,
                 collections: tuple[str, ...] = ("incoming", "archive", "trash")) -> tuple[DataboxSettings, Any]:
    settings = DataboxSettings(tmp / f"{name}.sqlite", tmp / f"{name}-storage",
                               fields=MappingProxyType(dict(fields or {})))
    db = open_databox(settings)
    for c in collections:
        db.create_collection(c)
    return settings, db


def add(db: Any, collection: str, name: str, *, status: int = 0, fields: Mapping[str, object] | None = None,
        type: str = "record", story: int | None = None) -> int:
    """A record whose document is a small real file."""
    src = Path(db.settings.storage).parent / "sources" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(name.encode() * 10)
    if type == "story":
        return db.create_story(collection, fields=fields, status=status).id
    return db.create_record(collection, src, status=status, fields=fields, original_name=name, story=story).id


def dump_box(settings: DataboxSettings) -> list[tuple]:
    """Every row of every table of the databox, SQLite or PostgreSQL: to prove that something changed nothing."""
    if settings.url is None:
        return dump(settings.path)
    db = open_databox(settings, create=False)
    try:
        c = db.connection
        out: list[tuple] = []
        for (t,) in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"):
            out += [(t, *r) for r in c.execute(f'SELECT * FROM "{t}" ORDER BY 1, 2')]
        return out
    finally:
        db.close()


def dump(path: Path) -> list[tuple]:
    """Every row of every databox table: to prove that something changed nothing."""
    conn = sqlite3.connect(path)
    try:
        out: list[tuple] = []
        for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            out += [(t, *r) for r in conn.execute(f'SELECT * FROM "{t}" ORDER BY 1, 2')]
        return out
    finally:
        conn.close()


@dataclass
class FakeConfig:
    """What task types read from a Config: databoxes, tasks, base_dir."""

    databoxes: Mapping[str, Any] = field(default_factory=dict)
    tasks: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path = ROOT
    file: Path | None = None


class Lines(logging.Handler):
    """Collects the formatted messages of one logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def collect(logger_name: str) -> tuple[Lines, Callable[[], None]]:
    log = logging.getLogger(logger_name)
    h = Lines()
    log.addHandler(h)
    old = log.level
    log.setLevel(logging.DEBUG)

    def done() -> None:
        log.removeHandler(h)
        log.setLevel(old)

    return h, done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def send(port: int, line: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.03)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    """Running (a zombie, unreaped by its new parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_with(arg: str) -> list[int]:
    """Live processes whose command line holds `arg`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in cmd and alive(int(p.name)):
            found.append(int(p.name))
    return found


def site_config(root: Path, body: str, databox: DataboxSettings | None = None) -> Path:
    """etc/schedulerd.toml under `root` with var/ beside it; optionally [databoxes.main]."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    head = textwrap.dedent(f"""
        [scheduler]
        socket = "{root}/var/run/s.sock"
        stop_timeout = "300ms"
        backoff_initial = "50ms"
        backoff_max = "200ms"
        max_crashes = 3
        """)
    if databox is not None:
        where = f'path = "{databox.path}"' if databox.url is None else (
            f'url = "{databox.url}"\npassword = "{databox.password.reveal()}"')  # type: ignore[union-attr]
        head += f'\n[databoxes.main]\n{where}\nstorage = "{databox.storage}"\n'

        if databox.fields:
            head += "[databoxes.main.fields]\n" + "".join(f'{k} = "{v}"\n' for k, v in databox.fields.items())
    cfg = etc / "schedulerd.toml"
    cfg.write_text(head + textwrap.dedent(body))
    return cfg
