"""Fixtures for the engine: a scratch checkout (etc/ + var/) and the real daemon as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.pgserver`, the real PostgreSQL of the store tests
    sys.path.insert(0, str(ROOT))

from tests.pgserver import pg_database, pg_server  # noqa: E402,F401  (fixtures)

CONSOLE = ROOT / "bin" / "console"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Site:
    """A config in tmp/etc/schedulerd.toml with var/ beside it, and the CLI pointed at it."""

    def __init__(self, root: Path):
        self.root = root
        self.etc = root / "etc"
        self.etc.mkdir(parents=True, exist_ok=True)
        self.config = self.etc / "schedulerd.toml"
        self.var = root / "var"
        self.socket = root / "var" / "run" / "s.sock"

    def write(self, body: str, scheduler: str = "") -> None:
        extra = textwrap.dedent(scheduler)
        given = {line.split("=")[0].strip() for line in extra.splitlines() if "=" in line}
        head = textwrap.dedent(f"""
            [scheduler]
            socket = "{self.socket}"
            stop_timeout = "3s"
            backoff_initial = "50ms"
            backoff_max = "200ms"
            """)
        head = "\n".join(line for line in head.splitlines() if line.split("=")[0].strip() not in given)
        self.config.write_text(head + "\n" + extra + textwrap.dedent(body))

    def console(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
        p = subprocess.run([str(CONSOLE), "--config", str(self.config), *args], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=self.root)
        if check and p.returncode != 0:
            raise AssertionError(f"console {args} exited {p.returncode}: {p.stderr}{p.stdout}")
        return p

    def json(self, *args: str) -> object:
        p = self.console(*args, "--json")
        return json.loads(p.stdout)

    @property
    def pidfile(self) -> Path:
        return self.var / "run" / "schedulerd.pid"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def task(self, name: str) -> dict:
        return self.json("task:state", name)  # type: ignore[return-value]

    def wait_for(self, predicate, timeout: float = 15.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def log(self, name: str | None = None) -> str:
        path = self.var / "log" / (f"task-{name}.log" if name else "scheduler.log")
        return path.read_text() if path.exists() else ""


def running(pid: int) -> bool:
    """Whether `pid` is a live schedulerd process (not gone, not a zombie): the pid of a daemon
    the test killed may be another program's by now."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"schedulerd" in cmdline


def stop_site(s: Site) -> None:
    """A test's daemon stopped at its end as scheduler:stop does (a shutdown on its socket, else
    SIGTERM), from this process: a teardown need not start a console; killed after 10 s."""
    from schedulerd.client import Client

    pid = s.pid()
    if not pid or not running(pid):
        return
    try:
        Client(s.socket, 5).call("shutdown")
    except Exception:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if running(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path / "site")
    yield s
    stop_site(s)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


PY = sys.executable


def plugin_dir(root: Path, module: str, source: str, entry_points: str) -> Path:
    """A third-party plugin, found by its entry points as any installed one: `module`.py and its
    dist-info in root/plugin (the folder to put on PYTHONPATH). `entry_points`: the
    entry_points.txt text (`[schedulerd.tasks]` / `[schedulerd.jobs]` sections)."""
    path = root / "plugin"
    info = path / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    (path / f"{module}.py").write_text(textwrap.dedent(source))
    return path


LOCKER = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
          "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); c.execute('COMMIT')")


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the SQLite write lock of `db` (BEGIN IMMEDIATE) for `seconds`."""
    p = subprocess.Popen([PY, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def ping_seconds(site: Site) -> float:
    """How long the daemon takes to answer a ping on its control socket (its event loop's latency)."""
    from schedulerd.client import Client

    t0 = time.monotonic()
    Client(site.socket, 10).call("ping")
    return time.monotonic() - t0
