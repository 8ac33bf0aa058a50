"""Timing precision: lateness of iteration starts, schedulerd's TaskRunner vs APScheduler 3.x.

Why: a scheduler's one promise is to start work when it said it would, also with many
tasks. Both sides run N tasks/jobs with the same period, one after the other, each in its
own child process on this machine; after a settle delay, every start planned inside the
measurement window is compared with its plan:

- schedulerd: the real `Daemon` (config, stores, control socket, history writer, job queue)
  served in the child with a shutdown trigger, with N tasks of a recording type (registered
  through the `schedulerd.tasks` entry-point group from a temp dir: no engine file touched).
  Its `run_once` takes anyio.current_time() and reads the runner's plan for this iteration
  (`TaskRunner.next_at`, monotonic): lateness = start - plan, exactly what the TaskRunner
  loop promised.
- APScheduler: `AsyncIOScheduler` with N `interval` jobs (coroutines, run on the loop by the
  default AsyncIOExecutor; misfire_grace_time=None so nothing is dropped, coalesce=True).
  A job takes time.time(); its plan is its trigger's grid, start_date + k*period (the latest
  grid point at or before the start: what a coalesced run stands for).

Reported: p50/p99/max lateness over all starts planned in the window, "missed" = planned
ticks that never ran (coalesced), and the CPU the side used. Target: our p99 <= 0.5x APScheduler's.

    .venv/bin/python bench/bench_precision.py [--quick] [--seconds S] [--tasks N] [--period P] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import PY, Reaper, child_env, machine, median, percentile, ratio, tempdir, verdict, write_config

SETTLE = 3.0  # seconds between the scheduler's start and the window (our 1,000 runners need ~1-2 s)

RECORDER = '''"""bench_precision's task type: records how late each iteration starts against the runner's plan."""
from collections import defaultdict

import anyio

from schedulerd.plugin import TaskType

DAEMON = None  # set by the benchmark: the Daemon whose runners hold the plans
LATE = []  # (task, plan, lateness), monotonic seconds


class RecordTask(TaskType):
    type_name = "bench_record"

    async def run_once(self, ctx):
        now = anyio.current_time()
        runner = DAEMON.runners.get(ctx.name) if DAEMON is not None else None
        if runner is not None and runner.next_at is not None:
            LATE.append((ctx.name, runner.next_at, now - runner.next_at))
        return None
'''


def summary(late: list[float], expected: int, cpu: float, seconds: float, ready: float) -> dict[str, Any]:
    return {"ticks": len(late), "missed": max(0, expected - len(late)), "p50": percentile(late, 50),
            "p99": percentile(late, 99), "max": max(late) if late else float("nan"), "cpu": cpu / seconds,
            "ready": ready}


# --- schedulerd (runs in a child: `--side ours`) --------------------------------------
def install_recorder(folder: Path) -> None:
    """A module and a dist-info on sys.path: the registry finds `bench_record` by entry point."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_recorder.py").write_text(RECORDER)
    info = folder / "schedulerd_bench_recorder-0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: schedulerd-bench-recorder\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[schedulerd.tasks]\nbench_record = bench_recorder:RecordTask\n")
    sys.path.insert(0, str(folder))


def ours_side(tmp: Path, tasks: int, seconds: float, period: float) -> dict[str, Any]:
    import anyio

    install_recorder(tmp / "plugin")
    import bench_recorder

    from schedulerd.config import load
    from schedulerd.daemon import Daemon

    body = "".join(f'[tasks.n{i:04d}]\ntype = "bench_record"\nperiod = "{period}s"\n\n' for i in range(tasks))
    t0 = time.monotonic()
    daemon = Daemon(load(write_config(tmp / "sd", body)))
    bench_recorder.DAEMON = daemon
    window: dict[str, float] = {}

    async def trigger() -> None:
        await anyio.sleep(SETTLE)
        window["start"], c0 = anyio.current_time(), time.process_time()
        await anyio.sleep(seconds)
        window["end"], window["cpu"] = anyio.current_time(), time.process_time() - c0

    daemon.shutdown_trigger = trigger
    anyio.run(daemon.serve)
    late = [lt for _, plan, lt in bench_recorder.LATE if window["start"] <= plan < window["end"]]
    first: dict[str, float] = {}
    for name, plan, _ in bench_recorder.LATE:
        first.setdefault(name, plan)
    if len(first) != tasks:
        raise RuntimeError(f"only {len(first)} of {tasks} tasks ran")
    ready = max(first.values()) - t0  # the last runner's first iteration, from the config load on
    return summary(late, tasks * math.floor(seconds / period), window["cpu"], seconds, ready)


# --- APScheduler (runs in a child: `--side aps`) ------------------------------------
async def aps_side(tasks: int, seconds: float, period: float) -> dict[str, Any]:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    starts: dict[str, list[float]] = {f"j{i}": [] for i in range(tasks)}

    async def job(name: str) -> None:
        starts[name].append(time.time())

    sched = AsyncIOScheduler(job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1})
    t0 = time.monotonic()
    sched.start()
    jobs = [sched.add_job(job, "interval", seconds=period, args=(f"j{i}",), id=f"j{i}") for i in range(tasks)]
    ready = time.monotonic() - t0
    anchors = {j.id: j.trigger.start_date.timestamp() for j in jobs}
    await asyncio.sleep(SETTLE)
    w0, c0 = time.time(), time.process_time()
    await asyncio.sleep(seconds)
    w1, cpu = time.time(), time.process_time() - c0
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)  # jobs cancelled at shutdown are not errors
    sched.shutdown(wait=False)
    await asyncio.sleep(0.2)
    late = []
    for name, anchor in anchors.items():
        for t in starts[name]:
            plan = anchor + math.floor((t - anchor) / period + 1e-9) * period
            if w0 <= plan < w1:
                late.append(t - plan)
    return summary(late, tasks * math.floor(seconds / period), cpu, seconds, ready)


def run_side(side: str, tasks: int, seconds: float, period: float, keep: bool) -> dict[str, Any]:
    with tempdir(f"bench-precision-{side}-", keep) as tmp, Reaper() as reaper:
        p = reaper.popen([PY, __file__, "--side", side, "--tasks", str(tasks), "--seconds", str(seconds),
                          "--period", str(period), "--dir", str(tmp)], stdout=subprocess.PIPE, env=child_env())
        out, _ = p.communicate(timeout=seconds + SETTLE + 180)
    if p.returncode != 0:
        raise RuntimeError(f"the {side} side failed ({p.returncode})")
    return json.loads(out)


def show(name: str, r: dict[str, Any]) -> None:
    print(f"{name:12} ticks {r['ticks']:7d}  missed {r['missed']:5d}  lateness p50 {r['p50'] * 1000:8.2f} ms  "
          f"p99 {r['p99'] * 1000:8.2f} ms  max {r['max'] * 1000:8.2f} ms  cpu {r['cpu'] * 100:5.1f}% of a core  "
          f"(start-up {r['ready']:.2f}s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15 s instead of 60 s")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the two sides this many times (median)")
    ap.add_argument("--side", choices=["ours", "aps"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    seconds = a.seconds or (15.0 if a.quick else 60.0)
    if a.side == "aps":
        print(json.dumps(asyncio.run(aps_side(a.tasks, seconds, a.period))))
        return 0
    if a.side == "ours":
        print(json.dumps(ours_side(a.dir, a.tasks, seconds, a.period)))
        return 0
    print(f"# bench_precision  {machine()}")
    print(f"# {a.tasks} tasks, period {a.period:g}s, {seconds:g}s each side, one after the other, {a.rounds} round(s)")
    ours_all, theirs_all = [], []
    for n in range(a.rounds):
        ours = run_side("ours", a.tasks, seconds, a.period, a.keep)
        theirs = run_side("aps", a.tasks, seconds, a.period, a.keep)
        if a.rounds > 1:
            print(f"-- round {n + 1}")
        show("schedulerd", ours)
        show("APScheduler", theirs)
        ours_all.append(ours)
        theirs_all.append(theirs)
    o99, t99 = median([r["p99"] for r in ours_all]), median([r["p99"] for r in theirs_all])
    o50, t50 = median([r["p50"] for r in ours_all]), median([r["p50"] for r in theirs_all])
    r99, r50 = ratio(o99, t99), ratio(o50, t50)
    what = "medians over rounds" if a.rounds > 1 else "one round"
    print(f"ratio (ours / APScheduler, {what}): p50 {r50:.2f}x  p99 {r99:.2f}x   target p99 <= 0.5x: "
          f"{verdict(r99 <= 0.5)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
