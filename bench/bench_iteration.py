"""Engine CPU per no-op iteration (issue 22: goal <= 30 us), this checkout against another.

Why: the daemon's cost per iteration is what limits how many tasks one core runs, and it is
the one figure a loaded machine hardly moves when taken as CPU time, not wall time. Each side
is the real `Daemon` (config, stores, control socket, history writer, job queue) served in a
child process with N `noop` tasks at one period; once every task has run, the child counts
its own CPU time (time.process_time: user + system of every thread, so the history writer's
SQLite inserts are in) and the iterations (the runners' run counters) over a fixed window.
CPU per iteration = CPU / iterations: everything the engine does per run, the per-task lock,
the state changes, the run in the history, the metrics and the logging call included.

Rounds alternate the two checkouts (A B A B) and the paired ratio is printed:

    git worktree add --detach /tmp/old <commit>
    .venv/bin/python bench/bench_iteration.py --old /tmp/old [--tasks 2000] [--seconds 20] [--rounds 3]
    .venv/bin/python bench/bench_iteration.py --old /tmp/old --history 250   # the store of a daemon that ran a while
    .venv/bin/python bench/bench_iteration.py --old /tmp/old --postgresql    # on a PostgreSQL store (cluster mode)
    .venv/bin/python bench/bench_iteration.py --profile /tmp/new.prof   # cProfile of the loop thread, this checkout only
    .venv/bin/python bench/bench_iteration.py --old /tmp/old --inline --rounds 6   # the runner's own work alone

With --postgresql the daemon runs its tasks under leases in the shared store (docs/cluster.md),
and the CPU of the PostgreSQL server's processes over the same window is printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import PY, REPO, Reaper, cpu_seconds, machine, median, report_paired, tempdir

SETTLE = 2.0  # seconds after every task has run once before the window opens


def child(checkout: Path, tasks: int, period: float, seconds: float, tmp: Path, profile: str | None,
          history: int = 0, store: str = "") -> dict[str, Any]:
    """In the child: the daemon of `checkout`, measured over `seconds` once every task has run;
    `history` runs per task already in its state store (written through the store's own save);
    `store`: the `[store]` table's lines (PostgreSQL), none for SQLite."""
    sys.path.insert(0, str(checkout))  # before the editable install's finder: this checkout's engine
    import anyio

    import schedulerd
    from schedulerd.config import load
    from schedulerd.daemon import Daemon

    assert Path(schedulerd.__file__).resolve().is_relative_to(checkout), schedulerd.__file__
    settings = load(write_config(tmp, tasks, period, history, store))
    if history:
        prefill(settings, tasks, history)
    daemon = Daemon(settings)
    out: dict[str, Any] = {}

    def runs() -> int:
        return sum(r.runs for r in list(daemon.runners.values()))

    async def trigger() -> None:
        while len(daemon.runners) < tasks or any(r.runs == 0 for r in list(daemon.runners.values())):
            await anyio.sleep(0.05)
        await anyio.sleep(SETTLE)
        # the daemon applies the retention at its first write, in the store's one connection: a
        # read waits for it to end (over a pre-filled history it takes seconds, not in the window)
        await anyio.to_thread.run_sync(daemon.store.get_value, "bench")
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        r0, c0, l0, t0, s0 = runs(), time.process_time(), time.thread_time(), time.monotonic(), postgres_cpu()
        await anyio.sleep(seconds)
        out["iterations"], out["cpu"], out["wall"] = runs() - r0, time.process_time() - c0, time.monotonic() - t0
        out["server_cpu"] = postgres_cpu() - s0
        out["loop_cpu"] = time.thread_time() - l0  # this coroutine runs on the event loop's thread
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        if history:  # then the retention the daemon applies every 5 minutes, at its default (100 runs kept)
            c0 = time.process_time()  # every thread: the runners go on meanwhile (~1/20 of a core)
            out["purged"] = await anyio.to_thread.run_sync(daemon.store.purge_history, 100, 100, 7 * 86400.0,
                                                           7 * 86400.0)
            out["purge_cpu"] = time.process_time() - c0

    daemon.shutdown_trigger = trigger
    anyio.run(daemon.serve)
    out["us_per_iteration"] = out["cpu"] / max(1, out["iterations"]) * 1e6
    out["loop_us"] = out["loop_cpu"] / max(1, out["iterations"]) * 1e6
    out["server_us"] = out["server_cpu"] / max(1, out["iterations"]) * 1e6
    out["load"] = os.getloadavg()[0]
    return out


def write_config(tmp: Path, tasks: int, period: float, history: int = 0, store: str = "") -> Path:
    config = tmp / "schedulerd.toml"
    var = tmp / "var"
    config.write_text(f'[scheduler]\nstate_dir = "{var}/state"\nlog_dir = "{var}/log"\nsocket = "{var}/run/s.sock"\n'
                      f'pidfile = "{var}/run/schedulerd.pid"\nlog_level = "info"\n'
                      f'history_keep_ok = {max(100, 2 * history)}\n\n'  # the first purge deletes none of them
                      + (f"[store]\n{store}\n\n" if store else "")
                      + "".join(f'[tasks.n{i:05d}]\ntype = "noop"\nperiod = "{period}s"\n\n' for i in range(tasks)))
    return config


def inline_child(checkout: Path, tasks: int, tmp: Path) -> dict[str, Any]:
    """In the child (`--inline`): the runner's own work per no-op iteration, without the loop's
    wake-up, the history writer or the daemon around it: `TaskRunner._iteration` (lock, state
    change, the task's `run_once`, metrics, the `Run` in the history sink) and the change back to
    waiting, called over N runners in turn, 9 passes of 5 iterations each (median, thread CPU
    time). Their logger is the daemon's task logger; no pipeline or task hears their events, and
    `emit` does nothing (the daemon's does more). Its noise is a few percent, against ~10 % for
    the whole daemon, so a change of a microsecond shows; it leaves out everything around it."""
    sys.path.insert(0, str(checkout))
    import anyio

    import schedulerd
    from schedulerd import logs
    from schedulerd.config import load
    from schedulerd.runner import RunnerEnv, TaskRunner
    from schedulerd.states import TaskState, Wanted
    from schedulerd.store import open_store

    assert Path(schedulerd.__file__).resolve().is_relative_to(checkout), schedulerd.__file__
    settings = load(write_config(tmp, tasks, 1.0))
    sch = settings.scheduler
    store = open_store(sch.state_dir)
    env = RunnerEnv(settings, store, sch.state_dir / "locks", emit=lambda event, data: None,
                    make_logger=lambda name: logs.task_logger(name, sch.log_dir, sch.log_level, sch.log_max_bytes,
                                                              sch.log_backups))
    runners = [TaskRunner(tc, env, Wanted.STARTED) for tc in settings.tasks.values()]
    for r in runners:
        r._change(TaskState.STARTING)
        r._change(TaskState.WAITING)

    async def passes() -> list[float]:
        per: list[float] = []
        for _ in range(9):
            c0 = time.thread_time()
            for _ in range(5):
                for r in runners:
                    await r._iteration()
                    r.ctx.iteration_ended()
                    r._change(TaskState.WAITING)
            per.append((time.thread_time() - c0) / (5 * len(runners)) * 1e6)
            env.history.runs.clear()
        return per

    per = anyio.run(passes)
    store.close()
    return {"us_per_iteration": median(per), "passes": per, "server_us": 0.0, "load": os.getloadavg()[0]}


def postgres_cpu() -> float:
    """CPU seconds (user + system) of every PostgreSQL server process on this machine (the
    bench's own server: nothing else runs one here); a backend that exits within the window is
    not counted (the daemon's pool keeps its connections)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return total


def prefill(settings: Any, tasks: int, history: int) -> None:
    """`history` runs of every task in the state store, saved as the daemon's writer saves them
    (a batch of one run per task, oldest first): the store a daemon that has run for a while keeps.
    With the default retention (history_keep_ok = 100, purged every 5 minutes) a daemon running
    1,000 tasks every second holds 100 to 400 runs per task."""
    from schedulerd.store import Run, open_store

    store = open_store(settings.scheduler.state_dir)
    now = time.time()
    try:
        for k in range(history):
            t = now - (history - k) * 1.0
            store.save([Run(f"n{i:05d}", t, t + 1e-4, "ok") for i in range(tasks)], {}, {})
    finally:
        store.close()


def run_child(checkout: Path, a: argparse.Namespace, profile: str | None = None, pg: Any = None) -> dict[str, Any]:
    """One side's daemon in a child; `pg`: a tests.pgserver.PgServer, a fresh database from it for this run."""
    with tempdir("bench-iteration-") as tmp, Reaper() as reaper:
        argv = [PY, __file__, "--child", str(checkout), "--tasks", str(a.tasks), "--period", str(a.period),
                "--seconds", str(a.seconds), "--dir", str(tmp), "--history", str(a.history)]
        if pg is not None:
            from tests.pgserver import PASSWORD

            argv += ["--store", f'url = "{pg.url(pg.database())}"\npassword = "{PASSWORD}"']
        argv += ["--profile", profile] if profile else []
        argv += ["--inline"] if a.inline else []
        p = reaper.popen(argv, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(checkout)})
        out, _ = p.communicate(timeout=a.seconds + 600)
    if p.returncode != 0:
        raise RuntimeError(f"the {checkout} side failed ({p.returncode})")
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, help="another checkout (a git worktree) to alternate with this one")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--history", type=int, default=0,
                    help="runs per task already in the history when the daemon starts (a daemon that has run a while: "
                         "100 to 400 with the default retention)")
    ap.add_argument("--postgresql", action="store_true",
                    help="both sides on a PostgreSQL store (tests.pgserver: Debian's server in a temp dir, a fresh "
                         "database per run); its server processes' CPU is printed too")
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help="cProfile the loop thread of this checkout's daemon into this file (one run)")
    ap.add_argument("--inline", action="store_true",
                    help="the runner's own work per iteration, called in a loop in one process (no daemon, no "
                         "waits): low noise, a part of the whole")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child and a.inline:
        print(json.dumps(inline_child(a.child.resolve(), a.tasks, a.dir)))
        return 0
    if a.child:
        print(json.dumps(child(a.child.resolve(), a.tasks, a.period, a.seconds, a.dir, a.profile, a.history,
                                a.store or "")))
        return 0
    print(f"# bench_iteration  {machine()}")
    if a.inline:
        print(f"# {a.tasks} noop tasks' runners, each called 45 times in a loop (9 passes of 5): the thread CPU of "
              "their own work per iteration (median pass); no event loop wake-up, history writer or daemon around it")
    else:
        print(f"# {a.tasks} noop tasks every {a.period:g}s, {a.seconds:g}s window, {a.history} runs per task in the "
              "history at start; CPU of the whole daemon process (every thread) / iterations")
    if a.inline and (a.postgresql or a.history or a.profile):
        ap.error("--inline runs the runners alone, on no store's history: leave out --postgresql, --history, --profile")
    if a.postgresql and a.history:
        ap.error("--history pre-fills the SQLite store only: leave it out with --postgresql")
    pg = None
    if a.postgresql:
        sys.path.insert(0, str(REPO))
        from tests.pgserver import start_server

        pg = start_server()
    try:
        if a.profile:
            r = run_child(REPO, a, a.profile, pg)
            print(f"new  {r['us_per_iteration']:6.1f} us/iteration ({r['iterations']} iterations, load {r['load']:.2f}); "
                  f"profile in {a.profile}")
        else:
            compare(a, pg)
    finally:
        if pg is not None:
            from tests.pgserver import remove

            pg.stop()
            remove(pg.root)
    return 0


def round_line(r: dict[str, Any], pg: Any) -> str:
    if "passes" in r:  # --inline
        return (f"{r['us_per_iteration']:6.2f} us/iteration of the runner's own work (passes "
                f"{min(r['passes']):.2f}-{max(r['passes']):.2f}, load {r['load']:.2f})")
    purge = (f"; purge of {r['purged']} runs {r['purge_cpu']:.2f} s CPU, "
             f"{r['purge_cpu'] / max(1, r['purged']) * 1e6:.1f} us a run") if "purged" in r else ""
    on_pg = f", PostgreSQL server {r['server_us']:.1f} us/iteration" if pg is not None else ""
    return (f"{r['us_per_iteration']:6.1f} us/iteration, {r['loop_us']:.1f} on the loop's thread  ({r['iterations']} "
            f"iterations, {r['cpu'] / r['wall'] * 100:5.1f}% of a core, load {r['load']:.2f}){on_pg}{purge}")


def compare(a: argparse.Namespace, pg: Any) -> None:
    sides = [("new", REPO)] + ([("old", a.old.resolve())] if a.old else [])
    results: dict[str, list[float]] = {name: [] for name, _ in sides}
    server: dict[str, list[float]] = {name: [] for name, _ in sides}
    for n in range(a.rounds):
        for name, checkout in (sides if n % 2 == 0 else sides[::-1]):
            r = run_child(checkout, a, None, pg)
            results[name].append(r["us_per_iteration"])
            server[name].append(r["server_us"])
            print(f"round {n + 1} {name:3}  {round_line(r, pg)}", flush=True)
    for name, values in results.items():
        on_pg = f"; PostgreSQL server median {median(server[name]):.1f} us/iteration" if pg is not None else ""
        print(f"{name:3} median {median(values):6.1f} us/iteration  (min {min(values):.1f}){on_pg}")
    if a.old:
        report_paired("the runner's own CPU per iteration (new / old)" if a.inline
                      else "CPU per iteration (new / old; goal: <= 30 us)", results["new"], results["old"])
        if pg is not None:
            report_paired("PostgreSQL server CPU per iteration (new / old)", server["new"], server["old"])


if __name__ == "__main__":
    sys.exit(main())
