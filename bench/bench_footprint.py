"""Idle footprint: CPU and memory of the daemon with 100 idle tasks, beside an idle supervisord.

Why: the daemon runs forever on every repository server; when there is nothing to do it
must cost next to nothing. Both run at the same time for the same window:

- schedulerd: the real daemon with N `command` tasks (argv ["true"], period 1h: each runs
  once at start, then waits), the job queue idle;
- supervisord: N programs (`/bin/sleep`), nothing happening.
After a settle delay, CPU of the server process itself over the window (all its threads,
not its children) is read two ways: utime + stime from /proc/PID/stat (10 ms ticks) and the
sum of its live threads' schedstat (ns); ratio and verdict use the higher of the two. RSS is
sampled every second (max shown), VmHWM read at the end. Target: ours <= 0.1 % of a core
and <= 60 MB.

    .venv/bin/python bench/bench_footprint.py [--quick] [--seconds S] [--tasks N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import Reaper, cpu_seconds, machine, ratio, rss_bytes, start_daemon, status_kb, tempdir, verdict, write_config
from bench_control import start_supervisord

MB = 1024 * 1024


def run_ns(pid: int) -> int:
    """CPU time of the live threads in ns (/proc/PID/task/*/schedstat): precise, but blind to threads that ended."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15 s window instead of 60 s")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--tasks", type=int, default=100, help="tasks / programs on each side (default 100)")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds before the window (start-up work done)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    seconds = a.seconds or (15.0 if a.quick else 60.0)
    print(f"# bench_footprint  {machine()}")
    print(f"# {a.tasks} tasks / programs, {a.settle:g}s settle, {seconds:g}s window, both at the same time")
    with tempdir("bench-footprint-", a.keep) as tmp, Reaper() as reaper:
        body = "".join(f'[tasks.t{i:03d}]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n\n' for i in range(a.tasks))
        daemon = start_daemon(reaper, write_config(tmp / "sd", body))
        sup, _ = start_supervisord(reaper, tmp / "sv", a.tasks)
        time.sleep(a.settle)
        pids = {"schedulerd": daemon.pid, "supervisord": sup.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        ns0 = {k: run_ns(p) for k, p in pids.items()}
        rss = {k: [rss_bytes(p)] for k, p in pids.items()}
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            for k, p in pids.items():
                rss[k].append(rss_bytes(p))
        elapsed = time.monotonic() - t0
        res = {}
        for k, p in pids.items():
            res[k] = {"cpu": (cpu_seconds(p) - cpu0[k]) / elapsed, "cpu_ns": (run_ns(p) - ns0[k]) / 1e9 / elapsed,
                      "rss": max(rss[k]), "hwm": status_kb(p, "VmHWM") * 1024,
                      "threads": threads(p), "fds": fds(p)}
    for k, r in res.items():
        print(f"{k:12} cpu {r['cpu'] * 100:6.3f}% of a core (schedstat {r['cpu_ns'] * 100:6.3f}%)   "
              f"RSS max {r['rss'] / MB:6.1f} MB   "
              f"(VmHWM {r['hwm'] / MB:5.1f} MB, {r['threads']} threads, {r['fds']} fds)")
    o, t = res["schedulerd"], res["supervisord"]
    cpu_o, cpu_t = max(o["cpu"], o["cpu_ns"]), max(t["cpu"], t["cpu_ns"])  # the worse of the two measures
    print(f"ratio (ours / supervisord): cpu {ratio(cpu_o, cpu_t):.2f}x  RSS {ratio(o['rss'], t['rss']):.2f}x   "
          f"target <= 0.1% and <= 60 MB: {verdict(cpu_o <= 0.001 and o['rss'] <= 60 * MB)}")
    print(f"(CPU from /proc/PID/stat ticks: resolution {1 / seconds:.3f}% over the window; schedstat: ns, live threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
