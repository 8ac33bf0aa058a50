"""Shared pieces of the benchmarks: paths, the real daemon as a child, /proc sampling, cleanup.

Why one module: every benchmark must start real processes on this machine, stop them
whatever happens (Ctrl-C, an exception, a timeout), and report numbers the same way.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PY = sys.executable
CONSOLE = REPO / "bin" / "console"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: the checkout first on PYTHONPATH, no user site noise."""
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), old])), **extra}


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    """One line naming the machine, so numbers in bench/README.md can be compared."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  {model}, "
            f"{os.cpu_count()} cpus, load {' '.join(load)}, Python {platform.python_version()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes ----------------------------------------------------------------
class Reaper:
    """Owns every child a benchmark starts; `close()` ends them (TERM, then KILL), group and all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        kw.setdefault("start_new_session", True)
        kw.setdefault("env", child_env())
        p = subprocess.Popen(list(argv), **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 30.0) -> int | None:
        """SIGTERM the process (its own group), wait, then SIGKILL the group."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # leftovers in its group (children of a supervisor)
        return p.returncode

    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, 15.0)
        self.procs.clear()

    def __enter__(self) -> Reaper:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wait_for(pred: Any, timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise TimeoutError(f"{what}: not ready within {timeout:g}s")


# --- schedulerd ---------------------------------------------------------------
def write_config(root: Path, body: str, **scheduler: Any) -> Path:
    """`root/etc/schedulerd.toml` with runtime files under `root/var` (relative paths resolve there)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    sch = {"socket": "var/run/schedulerd.sock", "pidfile": "var/run/schedulerd.pid", "log_dir": "var/log",
           "state_dir": "var/state", "log_level": "info", "stop_timeout": "10s", **scheduler}
    head = "[scheduler]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in sch.items())
    path = root / "etc" / "schedulerd.toml"
    path.write_text(head + "\n" + body)
    return path


def ping(sock: Path) -> dict[str, Any] | None:
    from schedulerd.client import Client

    try:
        return Client(sock, 2.0).call("ping")
    except Exception:
        return None


def start_daemon(reaper: Reaper, config: Path, timeout: float = 60.0) -> subprocess.Popen:
    """The real daemon (`python -m schedulerd.daemon`) as our child; returns once `ping` answers."""
    root = config.parent.parent
    (root / "var" / "log").mkdir(parents=True, exist_ok=True)
    out = open(root / "var" / "log" / "daemon.out", "ab")
    with out:
        p = reaper.popen([PY, "-m", "schedulerd.daemon", "--config", str(config)], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=out, cwd=root)
    sock = root / "var" / "run" / "schedulerd.sock"

    def up() -> bool:
        if p.poll() is not None:
            raise RuntimeError(f"the daemon exited at start ({p.returncode}); see {root}/var/log/daemon.out")
        return ping(sock) is not None

    wait_for(up, timeout, "schedulerd")
    return p


# --- /proc ----------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def tempdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        if not keep:
            import shutil

            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"(kept {d})", file=sys.stderr)


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else float("inf")


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"
