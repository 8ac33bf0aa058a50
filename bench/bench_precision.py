"""Timing precision: lateness of iteration starts, schedulerd's TaskRunner vs APScheduler 3.x.

Why: a scheduler's one promise is to start work when it said it would, also with many
tasks. Both sides run N tasks/jobs with the same period, one after the other, each in its
own child process on this machine. Both put every task on the same grid: all N fall due at
the same instant, T0 = the side's start + the settle delay, then every period (same first
run time, same period, on both sides). Every start planned inside the measurement window
[T0, T0 + seconds) is compared with its plan:

- schedulerd: the real `Daemon` (config, stores, control socket, history writer, job queue)
  served in the child with a shutdown trigger, with N tasks of a recording type (registered
  through the `schedulerd.tasks` entry-point group from a temp dir: no engine file touched).
  Its `run_once` takes time.monotonic() (the runners' clock; APScheduler's job takes
  time.time(), the same cost) and reads the runner's plan for this iteration
  (`TaskRunner.next_at`, monotonic): lateness = start - plan, exactly what the TaskRunner
  loop promised. A runner's ticks start when the runner starts (spread over the start-up);
  the task puts itself on the grid with the public `ctx.wait_for(..., retry=)` (the next
  start is then `retry` seconds after the iteration: T0, within microseconds, once T0 is
  nearer than the next tick), and from T0 on the runner's own period keeps it there. It asks
  at every iteration, so its wait never ends and begins again (each is an INFO line).
- APScheduler: `AsyncIOScheduler` with N `interval` jobs, `start_date` = T0 for every one
  (coroutines, run on the loop by the default AsyncIOExecutor; misfire_grace_time=None so
  nothing is dropped, coalesce=True). A job takes time.time(); its plan is the grid
  T0 + k*period (the latest grid point at or before the start: what a coalesced run stands for).

Reported per side: p50/p99/max lateness over all starts planned in the window, "missed" =
planned ticks that never ran (coalesced), and the CPU the side used over the window; then the
paired ratios (ours / APScheduler per round, rounds A B A B: median and min). Target (issue
22): p99 <= 1.0x and CPU <= 1.0x APScheduler's.

    .venv/bin/python bench/bench_precision.py [--quick] [--seconds S] [--tasks N] [--period P] [--rounds R] [--settle S]
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

from _common import PY, Reaper, child_env, machine, percentile, print_sides, report_paired, tempdir, write_config

SETTLE = 3.0  # default seconds from a side's start to T0 (our 1,000 runners need ~1-2 s to start)

RECORDER = '''"""bench_precision's task type: records how late each iteration starts against the runner's plan."""
import math
import time

from schedulerd.plugin import TaskType

DAEMON = None  # set by the benchmark: the Daemon whose runners hold the plans
T0 = 0.0  # the common first due time (monotonic), set by the benchmark
PERIOD = 1.0
LATE = []  # (task, plan, lateness), monotonic seconds


def on_grid(t):
    k = round((t - T0) / PERIOD)
    return k >= 0 and abs(t - (T0 + k * PERIOD)) < 1e-3


class RecordTask(TaskType):
    type_name = "bench_record"

    async def run_once(self, ctx):
        now = time.monotonic()  # not anyio.current_time(): it finds the running backend first
        runner = DAEMON.runners.get(ctx.name) if DAEMON is not None else None
        if runner is None or runner.next_at is None:
            return None
        if on_grid(runner.next_at):
            LATE.append((ctx.name, runner.next_at, now - runner.next_at))
        # the next start at the next grid point: taken by the engine only when it comes before the
        # runner's own next tick (off the grid: the runner's ticks began at its own start). Asked at
        # every iteration, on the grid too, so the task never leaves its wait: a wait that ends and
        # begins again is two INFO lines in the task's log, which at 10,000 tasks were most of the CPU
        k = max(0, math.floor((now - T0) / PERIOD) + 1)
        ctx.wait_for("the common grid", retry=T0 + k * PERIOD - now)
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


def ours_side(tmp: Path, tasks: int, seconds: float, period: float, settle: float) -> dict[str, Any]:
    import anyio

    t0 = time.monotonic()  # the side's start: T0 = t0 + settle (anyio's clock on asyncio is time.monotonic)
    install_recorder(tmp / "plugin")
    import bench_recorder

    from schedulerd.config import load
    from schedulerd.daemon import Daemon

    body = "".join(f'[tasks.n{i:04d}]\ntype = "bench_record"\nperiod = "{period}s"\n\n' for i in range(tasks))
    daemon = Daemon(load(write_config(tmp / "sd", body)))
    bench_recorder.DAEMON, bench_recorder.T0, bench_recorder.PERIOD = daemon, t0 + settle, period
    window: dict[str, float] = {}

    async def trigger() -> None:
        await anyio.sleep_until(t0 + settle)
        window["start"], c0 = anyio.current_time(), time.process_time()
        await anyio.sleep_until(t0 + settle + seconds)
        window["end"], window["cpu"] = anyio.current_time(), time.process_time() - c0

    daemon.shutdown_trigger = trigger
    anyio.run(daemon.serve)
    w0 = t0 + settle - 1e-3  # the grid's plans are T0 + k*period + microseconds
    late = [lt for _, plan, lt in bench_recorder.LATE if w0 <= plan < w0 + seconds]
    first: dict[str, float] = {}
    for name, plan, _ in bench_recorder.LATE:
        first.setdefault(name, plan)
    if len(first) != tasks:
        print(f"only {len(first)} of {tasks} tasks reached the common grid", file=sys.stderr)
    ready = max(first.values()) - t0  # the last task's first start on the grid, from the side's start
    return summary(late, tasks * math.ceil(seconds / period), window["cpu"], seconds, ready)


# --- APScheduler (runs in a child: `--side aps`) ------------------------------------
async def aps_side(tasks: int, seconds: float, period: float, settle: float) -> dict[str, Any]:
    import datetime

    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    t0 = time.time()
    anchor = t0 + settle  # T0: every job's start_date
    starts: dict[str, list[float]] = {f"j{i}": [] for i in range(tasks)}

    async def job(name: str) -> None:
        starts[name].append(time.time())

    sched = AsyncIOScheduler(job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1})
    sched.start()
    start_date = datetime.datetime.fromtimestamp(anchor, datetime.UTC)
    for i in range(tasks):
        sched.add_job(job, "interval", seconds=period, start_date=start_date, args=(f"j{i}",), id=f"j{i}")
    ready = time.time() - t0
    if ready > settle:
        raise RuntimeError(f"APScheduler took {ready:.1f}s to add the jobs, more than --settle {settle:g}s")
    await asyncio.sleep(anchor - time.time())
    c0 = time.process_time()
    await asyncio.sleep(anchor + seconds - time.time())
    cpu = time.process_time() - c0
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)  # jobs cancelled at shutdown are not errors
    sched.shutdown(wait=False)
    await asyncio.sleep(0.2)
    late = []
    for times in starts.values():
        for t in times:
            plan = anchor + math.floor((t - anchor) / period + 1e-9) * period
            if anchor <= plan < anchor + seconds:
                late.append(t - plan)
    return summary(late, tasks * math.ceil(seconds / period), cpu, seconds, ready)


def run_side(side: str, tasks: int, seconds: float, period: float, settle: float, keep: bool) -> dict[str, Any]:
    with tempdir(f"bench-precision-{side}-", keep) as tmp, Reaper() as reaper:
        p = reaper.popen([PY, __file__, "--side", side, "--tasks", str(tasks), "--seconds", str(seconds),
                          "--period", str(period), "--settle", str(settle), "--dir", str(tmp)], stdout=subprocess.PIPE,
                         env=child_env())
        out, _ = p.communicate(timeout=seconds + settle + 180)
    if p.returncode != 0:
        raise RuntimeError(f"the {side} side failed ({p.returncode})")
    return json.loads(out)


def show(name: str, r: dict[str, Any]) -> None:
    print(f"{name:12} ticks {r['ticks']:7d}  missed {r['missed']:5d}  lateness p50 {r['p50'] * 1000:8.2f} ms  "
          f"p99 {r['p99'] * 1000:8.2f} ms  max {r['max'] * 1000:8.2f} ms  cpu {r['cpu'] * 100:5.1f}% of a core  "
          f"(on the grid after {r['ready']:.2f}s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15 s instead of 60 s")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=None,
                    help=f"seconds from a side's start to the common first due time (default {SETTLE:g} + 1 per 1,000 tasks)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, each ours then APScheduler's (paired ratios)")
    ap.add_argument("--side", choices=["ours", "aps"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    seconds = a.seconds or (15.0 if a.quick else 60.0)
    settle = a.settle if a.settle is not None else SETTLE + a.tasks / 1000
    if a.side == "aps":
        print(json.dumps(asyncio.run(aps_side(a.tasks, seconds, a.period, settle))))
        return 0
    if a.side == "ours":
        print(json.dumps(ours_side(a.dir, a.tasks, seconds, a.period, settle)))
        return 0
    print(f"# bench_precision  {machine()}")
    print(f"# {a.tasks} tasks, every one due at T0 = start + {settle:g}s, then every {a.period:g}s (both sides); "
          f"{seconds:g}s window from T0; {a.rounds} round(s) A B A B")
    print_sides("the real daemon: per iteration the per-task lock, a state change, a run in the history (SQLite, "
                "batched), logging; control socket and job queue idle", "a job call on the loop, nothing kept",
                "APScheduler")
    ours_all, theirs_all = [], []
    for n in range(a.rounds):
        ours_all.append(run_side("ours", a.tasks, seconds, a.period, settle, a.keep))
        theirs_all.append(run_side("aps", a.tasks, seconds, a.period, settle, a.keep))
        print(f"-- round {n + 1}")
        show("schedulerd", ours_all[-1])
        show("APScheduler", theirs_all[-1])
    for key, what in (("p50", "p50 lateness"), ("p99", "p99 lateness"), ("cpu", "CPU")):
        target = ("<= 1.0x", lambda m: m <= 1.0) if key != "p50" else ("", None)
        report_paired(f"{what} (ours / APScheduler)", [r[key] for r in ours_all], [r[key] for r in theirs_all],
                      *target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
