"""The event loop's longest stall with the embedded SQLite store, under many tasks and jobs.

    .venv/bin/python bench/bench_loop_stall.py [--tasks 500] [--jobs 5000] [--seconds 20] [--lock 5] [--debug]

Why (issue 20): no store call may block the event loop; the SQLite store's calls run in worker
threads (store.store_call), and this measures that none still runs on the loop. The real `Daemon`
runs in this process on the default SQLite store (schedulerd.db, jobs.db under state_dir) with
--tasks no-op tasks at a 1 s period (a run in the history each, batched) and `[queues.default]
workers = 8`; inside its loop, a ticker sleeps 5 ms at a time and records how late it wakes
(the loop's lag: a callback that kept the loop, or the machine not giving the process a CPU).
Meanwhile --jobs no-op jobs are added through the control socket (`job.add`, from a thread), half
as fast as the window allows, and another process holds a write lock on jobs.db, then on
schedulerd.db, for --lock seconds each (BEGIN IMMEDIATE: what a backup or a CLI write does).

A second process runs the same ticker on a bare asyncio loop at the same time: its lag is the
machine's (load from others), the floor under ours. Printed: max, p99.9, p99 of both, and the
count of lags over 50 ms. With --debug the loop runs in asyncio's debug mode with
slow_callback_duration 50 ms: every callback that held the loop longer is logged by asyncio,
naming the coroutine (debug mode costs CPU itself: use it to find a culprit, not for the figure).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import PY, machine, percentile, tempdir, write_config  # noqa: I001  (bench/ is the script's folder)

TICK = 0.005
BARE_TICKER = """
import asyncio, sys, time
async def main(seconds, tick):
    lags, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        await asyncio.sleep(tick)
        lags.append(time.monotonic() - t - tick)
    print(" ".join(f"{x:.6f}" for x in lags))
asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])))
"""

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def summary(name: str, lags: list[float]) -> str:
    ms = [x * 1000 for x in lags]
    over = sum(1 for x in ms if x > 50)
    return (f"{name:28} ticks {len(ms):6d}  max {max(ms):7.1f} ms  p99.9 {percentile(ms, 99.9):6.1f} ms  "
            f"p99 {percentile(ms, 99):6.1f} ms  over 50 ms: {over}")


def add_jobs(sock: Path, count: int, seconds: float, stop: threading.Event) -> None:
    """`count` jobs through the control socket, spread over `seconds`."""
    from schedulerd.client import Client

    client = Client(sock, 60.0)
    gap = seconds / max(count, 1)
    for _ in range(count):
        if stop.is_set():
            return
        client.call("job.add", type="noop", payload={})
        time.sleep(gap)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    ap.add_argument("--lock", type=float, default=5.0, help="seconds another process write-locks each file (0: no lock)")
    ap.add_argument("--debug", action="store_true", help="asyncio debug mode: log callbacks over 50 ms")
    args = ap.parse_args()
    print(machine())
    print(f"{args.tasks} no-op tasks at 1 s, {args.jobs} no-op jobs added over the window through the control "
          f"socket, 8 workers, SQLite store; jobs.db then schedulerd.db write-locked {args.lock:g} s each by "
          f"another process; window {args.seconds:g} s after a 3 s settle")
    import anyio

    from schedulerd.config import load
    from schedulerd.daemon import Daemon

    with tempdir("bench-stall-") as tmp:
        body = "[queues.default]\nworkers = 8\n\n" + "".join(
            f'[tasks.n{i:04d}]\ntype = "noop"\nperiod = "1s"\n\n' for i in range(args.tasks))
        cfg = write_config(tmp, body, log_level="warning")
        config = load(cfg)
        daemon = Daemon(config)
        state = config.scheduler.state_dir
        lags: list[float] = []
        bare: list[str] = []

        async def ticker(seconds: float) -> None:
            end = anyio.current_time() + seconds
            while anyio.current_time() < end:
                t = anyio.current_time()
                await anyio.sleep(TICK)
                lags.append(anyio.current_time() - t - TICK)

        def lock_files() -> None:
            third = args.seconds / 3
            time.sleep(third)
            for name in ("jobs.db", "schedulerd.db"):
                subprocess.run([PY, "-c", LOCKER, str(state / name), str(args.lock)], check=True, timeout=120)

        def run_bare() -> None:
            out = subprocess.run([PY, "-c", BARE_TICKER, str(args.seconds), str(TICK)], capture_output=True, text=True,
                                 check=True, timeout=args.seconds + 60)
            bare.extend(out.stdout.split())

        async def trigger() -> None:
            if args.debug:
                loop = asyncio.get_running_loop()
                loop.set_debug(True)
                loop.slow_callback_duration = 0.05
                logging.getLogger("asyncio").addHandler(logging.StreamHandler(sys.stderr))
            await anyio.sleep(3.0)  # every runner started
            stop = threading.Event()
            threads = [threading.Thread(target=add_jobs, args=(config.scheduler.socket, args.jobs,
                                                               args.seconds / 2, stop), daemon=True),
                       threading.Thread(target=run_bare, daemon=True)]
            if args.lock > 0:
                threads.append(threading.Thread(target=lock_files, daemon=True))
            for t in threads:
                t.start()
            try:
                await ticker(args.seconds)
            finally:
                stop.set()
                for t in threads:
                    await anyio.to_thread.run_sync(t.join, 120.0)

        daemon.shutdown_trigger = trigger
        anyio.run(daemon.serve)
        done = sqlite3.connect(state / "jobs.db").execute(
            "SELECT count(*) FROM jobs WHERE state = 'finished'").fetchone()[0]
        runs = sqlite3.connect(state / "schedulerd.db").execute("SELECT count(*) FROM runs").fetchone()[0]
    print(f"load at the end {os.getloadavg()[0]:.1f}; {done} jobs finished, {runs} task runs in the history")
    print(summary("schedulerd loop (SQLite)", lags))
    print(summary("bare asyncio loop (machine)", [float(x) for x in bare]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
