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


# --- paired rounds ------------------------------------------------------------------
# Why paired: on a shared machine the load changes from one minute to the next. Each round
# runs our side and the peer back to back (A B A B ...), and the ratio is taken inside the
# round, so a busy spell hits both sides of the ratio alike; the median and the minimum of
# those per-round ratios are reported, not a ratio of medians or of best runs.
def alternate(rounds: int, *sides: Any) -> list[list[Any]]:
    """Call each side once per round, in the order given (A B A B ...); one result list per side."""
    results: list[list[Any]] = [[] for _ in sides]
    for _ in range(rounds):
        for out, side in zip(results, sides, strict=True):
            out.append(side())
    return results


def paired(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """The per-round ratios ours / theirs (rounds paired by position)."""
    if len(ours) != len(theirs):
        raise ValueError(f"paired rounds: {len(ours)} values of ours, {len(theirs)} of the peer's")
    return [ratio(o, t) for o, t in zip(ours, theirs, strict=True)]


def report_paired(what: str, ours: Sequence[float], theirs: Sequence[float], target: str = "",
                  ok: Any = None) -> float:
    """Print `paired ratio WHAT: median X, min Y over N rounds (A B A B): r1 r2 ...`; returns the median.
    `ok(median)` says whether the target is met (printed after `target`)."""
    rs = paired(ours, theirs)
    med = median(rs)
    tail = f"   target {target}: {verdict(ok(med))}" if ok is not None else ""
    print(f"paired ratio {what}: median {med:.2f}x, min {min(rs):.2f}x over {len(rs)} rounds (A B A B): "
          f"{' '.join(f'{r:.2f}' for r in rs)}{tail}", flush=True)
    return med


def print_sides(ours: str, theirs: str, peer: str) -> None:
    """What each side does that the other does not (sync, hashing, ...): a ratio is read with it."""
    print(f"# only schedulerd: {ours}")
    print(f"# only {peer}: {theirs}", flush=True)


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


def require_imagemagick() -> str:
    """ImageMagick's `convert`, or SystemExit: a stand-in peer would make the ratio a lie.
    `convert -version` on PATH must say ImageMagick; the binary returned is the first ELF
    `convert` on PATH that says so (a wrapper script in front of it would add a shell to each
    of the peer's calls)."""
    found = [p for d in os.get_exec_path() if os.access(p := os.path.join(d, "convert"), os.X_OK)]
    if not found:
        raise SystemExit("bench: `convert` not found; install ImageMagick (Debian: apt-get install imagemagick)")
    first = _version(found[0])
    if not first.startswith("Version: ImageMagick"):
        raise SystemExit(f"bench: {found[0]} is not ImageMagick's convert (`convert -version` says {first!r}); "
                         "install ImageMagick (Debian: apt-get install imagemagick)")
    for p in found:
        with open(p, "rb") as fh:
            elf = fh.read(4) == b"\x7fELF"
        if elf and _version(p).startswith("Version: ImageMagick"):
            return os.path.realpath(p)
    return found[0]
