"""Jobs across nodes on one PostgreSQL: schedulerd against Procrastinate, same server, same workers.

    .venv/bin/python bench/bench_cluster.py [--jobs 2000] [--rounds 2] [--nodes 1,2,3] [--latency 200]

One PostgreSQL started for the run (tests/pgserver.py: initdb in a temp folder, fsync off, as the
tests run it). For each node count and round, A then B (A B A B ...), each on a fresh database:

  A  schedulerd: N daemons (`[queues.default] workers = 4`), each a node of the cluster
  B  Procrastinate: N `worker` processes, `concurrency = 4`

Both sides start idle and listening; then one transaction inserts --jobs no-op jobs (schedulerd:
the rows + pg_notify, as add does; Procrastinate: `batch_defer`), and the clock runs until the
database says every job finished. Printed: jobs/s per round, the paired ratio A/B (median, min).
Then, with 3 schedulerd nodes: add-to-start latency of single jobs added by a client that is not a
node (created -> claimed, database clock), p50/p99.

What each side does that the other does not (so the ratio is not like for like):
- schedulerd writes a job's log lines and outcome in one settle transaction per batch of ended
  attempts, keeps a heartbeat per node, checks cancels/orphans every 5 s, and wakes only its
  own dispatcher for a freed slot; Procrastinate records an event row per state change
  (procrastinate_events, by trigger) and its workers poll as well as LISTEN.
- schedulerd's no-op job runs as a coroutine; Procrastinate's sync task runs in a thread.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CONSOLE, PY, child_env  # noqa: I001  (bench/ is the script's folder)

from tests.pgserver import PASSWORD, PgServer, remove, start_server, store_settings

WORKERS = 4
PROCRASTINATE_WORKER = """
import sys, procrastinate
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=sys.argv[1]))

@app.task(name="noop", queue="default")
def noop():
    return None

with app.open():
    app.run_worker(queues=["default"], concurrency=int(sys.argv[2]), wait=True, install_signal_handlers=True)
"""


def conninfo(server: PgServer, db: str) -> str:
    return f"postgresql://schedulerd:{PASSWORD}@127.0.0.1:{server.port}/{db}"


def wait_count(server: PgServer, db: str, sql: str, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.sql(sql, db)[0][0] >= n:
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"{sql}: not {n} within {timeout}s")


def schedulerd_round(server: PgServer, nodes: int, jobs: int, tmp: Path) -> float:
    db = server.database()
    configs = []
    for i in range(nodes):
        etc = tmp / f"{db}-n{i}"
        etc.mkdir()
        cfg = etc / "schedulerd.toml"
        cfg.write_text(f"""
[scheduler]
node = "n{i}"
state_dir = "{etc / 'state'}"
log_dir = "{etc / 'log'}"
socket = "{etc / 's.sock'}"
log_level = "warning"
[store]
url = "{server.url(db)}"
password = "env:BENCH_PGPASS"
[queues.default]
workers = {WORKERS}
[jobs]
keep_finished = 10000000
""")
        configs.append(cfg)
    env = child_env(BENCH_PGPASS=PASSWORD)
    try:
        for cfg in configs:
            subprocess.run([str(CONSOLE), "--config", str(cfg), "scheduler:start"], check=True, env=env,
                           capture_output=True, timeout=60)
        time.sleep(1.0)  # every node listening
        t0 = time.monotonic()
        server.sql(f"""INSERT INTO jobs (type, queue, payload) SELECT 'noop', 'default', '{{}}'
                       FROM generate_series(1, {jobs});
                       SELECT pg_notify('schedulerd_jobs', 'default');""", db)
        t1 = wait_count(server, db, "SELECT count(*) FROM jobs WHERE state = 'finished'", jobs)
        return jobs / (t1 - t0)
    finally:
        for cfg in configs:
            subprocess.run([str(CONSOLE), "--config", str(cfg), "scheduler:stop", "--timeout", "10"], env=env,
                           capture_output=True, timeout=60)
        server.drop(db)


def procrastinate_round(server: PgServer, nodes: int, jobs: int) -> float:
    import procrastinate

    db = server.database(template="template0")
    url = conninfo(server, db)
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))
    task = app.task(name="noop", queue="default")(lambda: None)
    with app.open():
        app.schema_manager.apply_schema()
    procs = [subprocess.Popen([PY, "-c", PROCRASTINATE_WORKER, url, str(WORKERS)], env=child_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(nodes)]
    try:
        time.sleep(2.0)  # every worker listening
        t0 = time.monotonic()
        with app.open():
            task.batch_defer(*({} for _ in range(jobs)))
        t1 = wait_count(server, db, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'", jobs)
        return jobs / (t1 - t0)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        server.drop(db)


def latency(server: PgServer, count: int, tmp: Path) -> tuple[float, float]:
    """3 schedulerd nodes idle; a client adds one job every 20 ms: created -> started (database clock)."""
    from schedulerd.pgstore.jobstore import PgJobStore

    db = server.database()
    env = child_env(BENCH_PGPASS=PASSWORD)
    configs = []
    for i in range(3):
        etc = tmp / f"{db}-lat{i}"
        etc.mkdir()
        cfg = etc / "schedulerd.toml"
        cfg.write_text(f"""
[scheduler]
node = "l{i}"
state_dir = "{etc / 'state'}"
log_dir = "{etc / 'log'}"
socket = "{etc / 's.sock'}"
[store]
url = "{server.url(db)}"
password = "env:BENCH_PGPASS"
[queues.default]
workers = {WORKERS}
""")
        configs.append(cfg)
        subprocess.run([str(CONSOLE), "--config", str(cfg), "scheduler:start"], check=True, env=env,
                       capture_output=True, timeout=60)
    store = PgJobStore(store_settings(server, db))
    try:
        time.sleep(1.0)
        for _ in range(count):
            store.add("noop", "default", {})
            time.sleep(0.02)
        wait_count(server, db, "SELECT count(*) FROM jobs WHERE state = 'finished'", count)
        lat = sorted(r[0] * 1000 for r in server.sql(
            "SELECT extract(epoch FROM started - created)::float8 FROM jobs", db))
        return statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    finally:
        store.close()
        for cfg in configs:
            subprocess.run([str(CONSOLE), "--config", str(cfg), "scheduler:stop", "--timeout", "10"], env=env,
                           capture_output=True, timeout=60)
        server.drop(db)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--latency", type=int, default=200, help="single jobs for the latency (0: skip)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; {args.jobs} no-op jobs, {WORKERS} workers per node")
    server = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as t:
            tmp = Path(t)
            for nodes in (int(n) for n in args.nodes.split(",")):
                a, b = [], []
                for _ in range(args.rounds):
                    a.append(schedulerd_round(server, nodes, args.jobs, tmp))
                    b.append(procrastinate_round(server, nodes, args.jobs))
                ratios = [x / y for x, y in zip(a, b, strict=True)]
                print(f"{nodes} node(s): schedulerd {' '.join(f'{x:.0f}' for x in a)} jobs/s, "
                      f"procrastinate {' '.join(f'{y:.0f}' for y in b)} jobs/s; "
                      f"ratio median {statistics.median(ratios):.2f}, min {min(ratios):.2f}", flush=True)
            if args.latency:
                p50, p99 = latency(server, args.latency, tmp)
                print(f"add-to-start across nodes (3 nodes, client not a node): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    finally:
        server.stop()
        remove(server.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
