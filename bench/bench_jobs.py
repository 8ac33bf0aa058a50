"""Job queue throughput: 10,000 no-op jobs through schedulerd's queue vs huey's SqliteHuey.

Why: the queue carries every one-off job of the repository (exports, re-indexing); it must
not be the bottleneck next to a well-known SQLite-backed queue. Both sides, one after the
other, on this machine:

- the consumer runs from the start: schedulerd's daemon (queue `default`, `workers = W`,
  job type `noop`) / `huey_consumer -w W -k thread` (task returns time.time());
- this process adds N jobs as fast as it can, the way each product's producer does it:
  schedulerd like `bin/console job:add` (write the job to the store, then `job.wake` on the
  control socket) / huey `task()` (one INSERT);
- also "drain": the N jobs are added first, then the consumer starts (clock from the
  first job start): the consumer's own rate, without the producer in the way;
- the end is when a reader (polling every 20 ms on both) sees all N finished (our `jobs`
  rows in state finished / huey's N results).
Durability matched: SQLite WAL with synchronous=NORMAL on both (huey's default would be FULL),
both log two INFO lines per job to a file, both keep a finished record per job.

stream jobs/s = N / (last finished seen - first add) (the headline); add->start latency: ours `started - created`
of each job (claim time), huey (task start - time taken before enqueue). Target: our
throughput >= 1.0x huey's.

    .venv/bin/python bench/bench_jobs.py [--quick] [--jobs N] [--workers W] [--rounds R]

With --rounds R each round runs ours then huey's (stream, then drain); the paired ratio is
taken per round (median and min printed).

Queue depth (issue 22, "cost grows linearly"): with --depths 1000,10000,100000 each side first
gets D no-op jobs queued (ours: `add_many` in transactions of 10,000; huey: `task()` D times),
then its consumer starts and the rate is read over a window of --window jobs finished (from the
--skip-th finished job to the skip+window-th, seen by the same 20 ms poller on both sides): the
consumer's jobs/s with D jobs behind it. The rest of the backlog is left when the consumer stops.

    .venv/bin/python bench/bench_jobs.py --depths 1000,10000,100000 --rounds 2    # --window 800 --skip 100

`--store postgresql` (depth mode): our queue on PostgreSQL instead, on a server this script starts
from Debian's binaries (tests/pgserver.py: initdb in a temp folder, loopback port, fsync and
synchronous_commit off), a database per depth and round, the D jobs inserted by one INSERT ...
SELECT; huey stays on SQLite (it has no PostgreSQL storage).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import (
    PY,
    Reaper,
    child_env,
    machine,
    median,
    percentile,
    print_sides,
    report_paired,
    start_daemon,
    tempdir,
    wait_for,
    write_config,
)

HUEY_APP = '''\
"""The huey side of bench_jobs: a SqliteHuey with schedulerd's durability (WAL + synchronous=NORMAL)."""
import os
import time

from huey import SqliteHuey
from huey.storage import SqliteStorage


class MatchedStorage(SqliteStorage):
    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=1")  # NORMAL, like schedulerd's store
        return conn


huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"], storage_class=MatchedStorage)


@huey.task()
def noop():
    return time.time()
'''

POLL = 0.02
OUR_STORE = {
    "sqlite": "a job row per job in SQLite (WAL, synchronous=NORMAL) with its attempts and states",
    "postgresql": "a job row per job in PostgreSQL 'jobs' (fsync and synchronous_commit off) with its attempts "
                  "and states, claimed FOR UPDATE SKIP LOCKED",
}


def summary(n: int, t_first_add: float, t_last_add: float, t_done: float, lat: list[float]) -> dict[str, Any]:
    return {"jobs": n, "seconds": t_done - t_first_add, "rate": n / (t_done - t_first_add),
            "add_rate": n / (t_last_add - t_first_add) if t_last_add > t_first_add else float("inf"),
            "lat_p50": percentile(lat, 50), "lat_p99": percentile(lat, 99)}


def wait_all(count: Any, n: int, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count() >= n:
            return time.time()
        time.sleep(POLL)
    raise TimeoutError(f"{what}: only {count()} of {n} jobs finished within {timeout:g}s")


# --- schedulerd ----------------------------------------------------------------
ROUND = [0]  # the current round: each side's files go to a folder of their own per round


def run_ours(tmp: Path, n: int, workers: int, timeout: float, drain: bool) -> dict[str, Any]:
    """stream: the daemon runs while we add (and wake it after each add with the datagram `job:add` sends);
    drain: the N jobs wait in the store before the daemon starts."""
    from schedulerd.config import load
    from schedulerd.jobadd import add_job
    from schedulerd.jobstore import open_job_store
    from schedulerd.wake import send_wake

    body = f"[jobs]\nkeep_finished = {n * 2}\n\n[jobs.types.noop]\nmax_attempts = 1\n\n[queues.default]\nworkers = {workers}\n"
    path = write_config(tmp / f"sd{'-drain' if drain else ''}-{ROUND[0]}", body)
    config = load(path)
    with Reaper() as reaper:
        store = open_job_store(config.scheduler.state_dir)
        db = sqlite3.connect(config.scheduler.state_dir / "jobs.db", timeout=30)
        try:
            if drain:
                t0 = time.time()
                for _ in range(n):
                    add_job(store, config, "noop", {})
                t1 = time.time()
                daemon = start_daemon(reaper, path)
            else:
                daemon = start_daemon(reaper, path)
                t0 = time.time()
                for _ in range(n):
                    add_job(store, config, "noop", {})
                    send_wake(config.scheduler.state_dir, "default")
                t1 = time.time()
            t_done = wait_all(lambda: db.execute("SELECT COUNT(*) FROM jobs WHERE state='finished'").fetchone()[0],
                              n, timeout, "schedulerd")
            rows = db.execute("SELECT created, started, finished FROM jobs").fetchall()
        finally:
            db.close()
            store.close()
        code = reaper.stop(daemon, 60)
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code}; see {tmp}/sd/var/log")
    if drain:  # the clock starts when the first job starts
        t0 = t1 = min(s for _, s, _ in rows)
    return summary(n, t0, t1, t_done, [s - c for c, s, _ in rows])


# --- huey ------------------------------------------------------------------------
def huey_app(app_dir: Path) -> tuple[Path, Any, dict[str, str]]:
    """The huey app module written to `app_dir` and imported (app_dir is put first on sys.path:
    the caller removes it), and the consumer's environment."""
    app_dir.mkdir(parents=True)
    (app_dir / "bench_huey_app.py").write_text(HUEY_APP)
    db_path = app_dir / "huey.db"
    os.environ["BENCH_HUEY_DB"] = str(db_path)
    sys.path.insert(0, str(app_dir))
    sys.modules.pop("bench_huey_app", None)
    import bench_huey_app  # noqa: E402  (written just above)

    env = child_env(BENCH_HUEY_DB=str(db_path))
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir), env["PYTHONPATH"]])
    return app_dir, bench_huey_app, env


def start_consumer(reaper: Reaper, app_dir: Path, env: dict[str, str], workers: int) -> subprocess.Popen:
    consumer = reaper.popen([str(Path(PY).parent / "huey_consumer"), "bench_huey_app.huey", "-w", str(workers),
                             "-k", "thread", "-l", str(app_dir / "consumer.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=app_dir)
    wait_for(lambda: _dead(consumer) or "consumer started" in _read(app_dir / "consumer.log").lower(),
             30, "huey_consumer")
    if consumer.poll() is not None:
        raise RuntimeError(f"huey_consumer exited ({consumer.returncode}); see {app_dir}/consumer.log")
    return consumer


def run_huey(tmp: Path, n: int, workers: int, timeout: float, drain: bool) -> dict[str, Any]:
    app_dir, bench_huey_app, env = huey_app(tmp / f"huey{'-drain' if drain else ''}-{ROUND[0]}")
    db_path = app_dir / "huey.db"
    handles = []

    def add_all() -> None:
        for _ in range(n):
            t = time.time()
            handles.append((t, bench_huey_app.noop()))

    with Reaper() as reaper:
        t0 = time.time()
        if drain:
            add_all()
        t1 = time.time()
        consumer = start_consumer(reaper, app_dir, env, workers)
        db = sqlite3.connect(db_path, timeout=30)
        try:
            if not drain:
                t0 = time.time()
                add_all()
                t1 = time.time()
            t_done = wait_all(lambda: db.execute("SELECT COUNT(*) FROM kv WHERE queue='bench'").fetchone()[0],
                              n, timeout, "huey")
        finally:
            db.close()
        starts = [(t, r.get(blocking=False)) for t, r in handles]
        reaper.stop(consumer, 30)
    sys.path.remove(str(app_dir))
    if drain:
        t0 = t1 = min(s for _, s in starts)
    return summary(n, t0, t1, t_done, [s - t for t, s in starts])


# --- queue depth -------------------------------------------------------------------
def window_rate(count: Any, skip: int, window: int, timeout: float, what: str) -> float:
    """Jobs/s between the skip-th and the (skip+window)-th finished job, both seen by the 20 ms poller."""
    t_from = wait_all(count, skip, timeout, what)
    t_to = wait_all(count, skip + window, timeout, what)
    return window / (t_to - t_from)


FINISHED = "SELECT COUNT(*) FROM jobs WHERE state='finished'"


class SqliteQueue:
    """Our queue in the daemon's jobs.db (the default store)."""

    def section(self, depth: int) -> str:
        return ""

    def fill(self, path: Path, depth: int) -> None:
        from schedulerd.config import load
        from schedulerd.jobstore import open_job_store

        store = open_job_store(load(path).scheduler.state_dir)
        try:
            for start in range(0, depth, 10_000):
                store.add_many([("noop", "default", {}, "")] * min(10_000, depth - start))
        finally:
            store.close()

    @contextlib.contextmanager
    def finished(self, path: Path, depth: int) -> Iterator[Callable[[], int]]:
        from schedulerd.config import load

        db = sqlite3.connect(load(path).scheduler.state_dir / "jobs.db", timeout=30)
        try:
            yield lambda: db.execute(FINISHED).fetchone()[0]
        finally:
            db.close()


class PgQueue:
    """--store postgresql: one server for the run (tests/pgserver.py), a database per depth and round."""

    def __init__(self) -> None:
        from tests.pgserver import PASSWORD, start_server

        os.environ["BENCH_PGPASS"] = PASSWORD  # the daemons' [store] password (child_env passes it on)
        self.server = start_server()
        self.dbs: dict[int, str] = {}

    def section(self, depth: int) -> str:
        self.dbs[depth] = self.server.database()
        return f'[store]\nurl = "{self.server.url(self.dbs[depth])}"\npassword = "env:BENCH_PGPASS"\n\n'

    def fill(self, path: Path, depth: int) -> None:
        self.server.sql("INSERT INTO jobs (type, queue, payload) SELECT 'noop', 'default', '{}' "
                        f"FROM generate_series(1, {depth})", self.dbs[depth])

    @contextlib.contextmanager
    def finished(self, path: Path, depth: int) -> Iterator[Callable[[], int]]:
        import psycopg

        s = self.server
        with psycopg.connect(host=str(s.root), port=s.port, user="postgres", dbname=self.dbs[depth],
                             autocommit=True) as conn:
            yield lambda: conn.execute(FINISHED).fetchone()[0]  # type: ignore[index]
        s.drop(self.dbs.pop(depth))

    def close(self) -> None:
        from tests.pgserver import remove

        self.server.stop()
        remove(self.server.root)


def depth_ours(tmp: Path, queue: SqliteQueue | PgQueue, depth: int, window: int, skip: int, workers: int,
               timeout: float) -> float:
    body = f"{queue.section(depth)}[jobs]\nkeep_finished = {depth}\n\n[jobs.types.noop]\nmax_attempts = 1\n\n" \
           f"[queues.default]\nworkers = {workers}\n"
    path = write_config(tmp / f"sd-depth{depth}-{ROUND[0]}", body)
    queue.fill(path, depth)
    with Reaper() as reaper, queue.finished(path, depth) as finished:
        daemon = start_daemon(reaper, path)
        rate = window_rate(finished, skip, window, timeout, f"schedulerd at depth {depth}")
        code = reaper.stop(daemon, 60)
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code}; see {tmp}/sd-depth{depth}-{ROUND[0]}/var/log")
    return rate


def depth_huey(tmp: Path, depth: int, window: int, skip: int, workers: int, timeout: float) -> float:
    app_dir, app, env = huey_app(tmp / f"huey-depth{depth}-{ROUND[0]}")
    try:
        for _ in range(depth):
            app.noop()
        with Reaper() as reaper:
            consumer = start_consumer(reaper, app_dir, env, workers)
            db = sqlite3.connect(app_dir / "huey.db", timeout=30)
            try:
                rate = window_rate(lambda: db.execute("SELECT COUNT(*) FROM kv WHERE queue='bench'").fetchone()[0],
                                   skip, window, timeout, f"huey at depth {depth}")
            finally:
                db.close()
            reaper.stop(consumer, 30)
    finally:
        sys.path.remove(str(app_dir))
    return rate


def run_depths(tmp: Path, a: argparse.Namespace, queue: SqliteQueue | PgQueue) -> None:
    depths = [int(d) for d in a.depths.split(",")]
    if min(depths) < a.skip + a.window:
        raise SystemExit(f"bench_jobs: --depths {a.depths}: each depth must hold --skip + --window = "
                         f"{a.skip + a.window} jobs (the window is read on the queued jobs)")
    print(f"# queue depth: D no-op jobs queued before the consumer starts; jobs/s over finished jobs "
          f"{a.skip}..{a.skip + a.window}, {a.workers} workers each side, {a.rounds} round(s) A B A B per depth")
    ours: dict[int, list[float]] = {d: [] for d in depths}
    theirs: dict[int, list[float]] = {d: [] for d in depths}
    for r in range(a.rounds):
        ROUND[0] = r
        for d in depths:
            ours[d].append(depth_ours(tmp, queue, d, a.window, a.skip, a.workers, a.timeout))
            theirs[d].append(depth_huey(tmp, d, a.window, a.skip, a.workers, a.timeout))
            print(f"round {r + 1} depth {d:>7}: schedulerd {ours[d][-1]:7.0f} jobs/s   huey {theirs[d][-1]:7.0f} jobs/s",
                  flush=True)
    first = depths[0]
    for d in depths:
        print(f"depth {d:>7}: schedulerd median {median(ours[d]):7.0f} jobs/s ({median(ours[d]) / median(ours[first]):.2f}x "
              f"its rate at {first}), huey {median(theirs[d]):7.0f} jobs/s "
              f"({median(theirs[d]) / median(theirs[first]):.2f}x)")
        report_paired(f"jobs/s at depth {d} (ours / huey)", ours[d], theirs[d])


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _dead(p: subprocess.Popen) -> bool:
    return p.poll() is not None


def show(name: str, r: dict[str, Any], drain: bool) -> None:
    line = f"{name:11} {r['jobs']} jobs in {r['seconds']:6.2f}s = {r['rate']:7.0f} jobs/s"
    if not drain:  # in drain mode every job waits for the whole backlog: no latency worth showing
        line += (f"  (adds {r['add_rate']:6.0f}/s)   add->start p50 {r['lat_p50'] * 1000:8.1f} ms  "
                 f"p99 {r['lat_p99'] * 1000:8.1f} ms")
    print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 jobs instead of 10,000")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--workers", type=int, default=4, help="workers on each side (default 4)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, each ours then huey's, stream then drain")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up on a side after this long")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--depths", default="", help="queue depth mode: comma-separated numbers of jobs queued first")
    ap.add_argument("--window", type=int, default=800, help="depth mode: jobs/s over this many finished jobs")
    ap.add_argument("--skip", type=int, default=100, help="depth mode: finished jobs before the window starts")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="depth mode: our queue's store (postgresql: a server started for the run)")
    a = ap.parse_args()
    if a.store != "sqlite" and not a.depths:
        ap.error(f"--store {a.store}: only with --depths (queue depth mode)")
    if a.depths:
        print(f"# bench_jobs  {machine()}")
        print_sides(OUR_STORE[a.store], "a queue row and a result row in SQLite (WAL, synchronous=NORMAL)", "huey")
        queue = PgQueue() if a.store == "postgresql" else SqliteQueue()
        try:
            with tempdir("bench-jobs-", a.keep) as tmp:
                run_depths(tmp, a, queue)
        finally:
            if isinstance(queue, PgQueue):
                queue.close()
        return 0
    n = a.jobs or (2000 if a.quick else 10_000)
    print(f"# bench_jobs  {machine()}")
    print(f"# {n} no-op jobs, {a.workers} workers each side, {a.rounds} round(s) A B A B")
    print_sides("a job row per job in SQLite (WAL, synchronous=NORMAL) with its attempts and states; the producer "
                "also sends a wake datagram", "a queue row and a result row in SQLite (WAL, synchronous=NORMAL)", "huey")
    results: dict[bool, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {False: ([], []), True: ([], [])}
    with tempdir("bench-jobs-", a.keep) as tmp:
        for r in range(a.rounds):
            ROUND[0] = r
            for drain in (False, True):
                results[drain][0].append(run_ours(tmp, n, a.workers, a.timeout, drain))
                results[drain][1].append(run_huey(tmp, n, a.workers, a.timeout, drain))
    for drain, (ours, theirs) in results.items():
        print("drain: the jobs wait in the store, then the consumer starts (clock from the first job start)" if drain
              else "stream: the consumer runs, this process adds the jobs one by one (clock from the first add)")
        for o, h in zip(ours, theirs, strict=True):
            show("schedulerd", o, drain)
            show("huey", h, drain)
        report_paired(f"{'drain' if drain else 'stream'} jobs/s (ours / huey)", [o["rate"] for o in ours],
                      [h["rate"] for h in theirs], *(() if drain else (">= 1.0x", lambda m: m >= 1.0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
