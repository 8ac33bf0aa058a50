#!/usr/bin/env python3
"""How long the run history's retention holds up other writers of the SQLite state file, this
checkout against another.

Why: the retention runs every 5 minutes in the daemon and deletes as many runs as the tasks wrote
meanwhile (1.5 million at 10,000 tasks every second). While it holds the file's write lock, the
history writer, a scheduled task's cursor (written before each start) and another process's write
(`task:stop`, `task:run`) wait; one waiting longer than `busy_timeout` fails.

Each side runs in a child process with the checkout's own `schedulerd.store`: a state store is
filled with T tasks x R runs through `save` (as the daemon writes them, one batch per round of
runs), then one `purge_history(100, 500, 7 days, 30 days)` is timed while another thread calls
`set_value` every 10 ms (a cursor's write). Printed: the pass's wall and CPU time, the runs
deleted, and the longest wait of that writer. Rounds alternate the checkouts (A B A B). The
peer is another checkout, as in bench_iteration.py: APScheduler and supervisord keep no history.

    git worktree add --detach /tmp/old <commit>
    .venv/bin/python bench/bench_retention.py --old /tmp/old [--tasks 1000] [--runs 500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import PY, REPO, machine, report_paired

KEEP_OK, KEEP_FAILED, MAX_AGE_OK, MAX_AGE_FAILED = 100, 500, 7 * 86400.0, 30 * 86400.0


def child(checkout: Path, tasks: int, runs: int, work: Path) -> dict[str, Any]:
    """In the child: fill a store with this checkout's code, purge it beside a writer thread."""
    sys.path.insert(0, str(checkout))  # before the editable install's finder: this checkout's store
    from schedulerd.store import Run, SqliteStateStore

    store = SqliteStateStore(work / "schedulerd.db")
    try:
        now = time.time()
        for r in range(runs):  # all younger than the max ages: the count decides
            store.save([Run(f"t{i:05d}", now - runs + r, now - runs + r + 0.001, "ok", None, None, "daemon")
                        for i in range(tasks)], {}, {})
        waits: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                store.set_value("cursor", str(t))
                waits.append(time.perf_counter() - t)
                time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.2)
        t, cpu = time.perf_counter(), time.thread_time()
        deleted = store.purge_history(KEEP_OK, KEEP_FAILED, MAX_AGE_OK, MAX_AGE_FAILED)
        wall, cpu = time.perf_counter() - t, time.thread_time() - cpu
        time.sleep(0.2)
        stop.set()
        thread.join()
        return {"deleted": deleted, "wall": wall, "cpu": cpu, "longest_wait": max(waits)}
    finally:
        store.close()


def side(checkout: Path, tasks: int, runs: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="retention-", dir=REPO / "var"))  # the checkout's disk, not a tmpfs
    try:
        out = subprocess.run([PY, __file__, "--child", str(checkout), "--tasks", str(tasks), "--runs", str(runs),
                              "--dir", str(work)], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=False, help="another checkout (a git worktree) to alternate with")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=500, help="runs per task in the store before the pass")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.tasks, a.runs, a.dir)))
        return
    print(f"# bench_retention  {machine()}")
    print(f"# {a.tasks} tasks x {a.runs} runs, keep {KEEP_OK} ok runs a task; a writer thread calls "
          "set_value every 10 ms during the pass")
    sides = {"new": REPO, **({"old": a.old.resolve()} if a.old else {})}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(a.rounds):
        for name, checkout in sides.items():
            r = side(checkout, a.tasks, a.runs)
            results[name].append(r)
            print(f"{name:4s} deleted {r['deleted']:,} runs: pass {r['wall']:.2f} s (CPU {r['cpu']:.2f} s), "
                  f"the writer waited at most {r['longest_wait'] * 1e3:.0f} ms", flush=True)
    if a.old:
        report_paired("longest wait of a writer during the pass (new / old)",
                      [r["longest_wait"] for r in results["new"]], [r["longest_wait"] for r in results["old"]])
        report_paired("pass CPU (new / old)", [r["cpu"] for r in results["new"]], [r["cpu"] for r in results["old"]])


if __name__ == "__main__":
    main()
