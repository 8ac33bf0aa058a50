"""Start-up and memory of the daemon with N no-op tasks (issue 22).

The real Daemon (config, stores, control socket, history writer, job queue) served in this
process with a shutdown trigger: start-up = from loading the config file (TOML parse, settings
of each `[tasks.X]`) to every task `waiting` (period 60 s, so each ran its first iteration),
as wall time and as this process's CPU time (user + system); RSS = VmRSS one second later.
Run it once with --tasks 0 for the empty daemon: per-task memory = (RSS at N - RSS at 0) / N.
`--checkout DIR`: the daemon of another checkout (a `git worktree` of an older commit), to
alternate old and new in one shell loop on a loaded machine (CPU time, paired).

    .venv/bin/python bench/bench_startup.py --tasks 10000     # then --tasks 0
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import anyio


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1])
    a = p.parse_args()
    n = a.tasks
    sys.path.insert(0, str(a.checkout.resolve()))
    from schedulerd.config import load
    from schedulerd.daemon import Daemon
    from schedulerd.states import TaskState

    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    var = root / "var"
    config_file = root / "schedulerd.toml"
    config_file.write_text(f'[scheduler]\nstate_dir = "{var}/state"\nlog_dir = "{var}/log"\n'
                           f'socket = "{var}/run/s.sock"\npidfile = "{var}/run/schedulerd.pid"\n\n'
                           + "".join(f'[tasks.n{i:05d}]\ntype = "noop"\nperiod = "60s"\n\n' for i in range(n)))
    out: dict[str, float] = {}
    t0, c0, r0 = time.monotonic(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    daemon = Daemon(load(config_file))

    async def trigger() -> None:
        while len(daemon.runners) < n or any(r.state is not TaskState.WAITING for r in daemon.runners.values()):
            await anyio.sleep(0.01)
        out["wall"], out["cpu"] = time.monotonic() - t0, time.process_time() - c0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["user"], out["sys"] = ru.ru_utime - r0.ru_utime, ru.ru_stime - r0.ru_stime
        await anyio.sleep(1)
        out["rss"] = rss_kb()

    daemon.shutdown_trigger = trigger
    anyio.run(daemon.serve)
    print(f"# bench_startup  {a.checkout}  load {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cpus")
    print(f"tasks {n}  start-up wall {out['wall']:.2f} s  cpu {out['cpu']:.2f} s (user {out['user']:.2f}, "
          f"system {out['sys']:.2f})  RSS {out['rss'] / 1024:.1f} MB")


if __name__ == "__main__":
    main()
