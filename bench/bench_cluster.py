"""Jobs across nodes on one PostgreSQL: schedulerd against Procrastinate, same server, same workers.

    .venv/bin/python bench/bench_cluster.py [--jobs 2000] [--rounds 2] [--nodes 1,2,3] [--latency 200]
                                            [--failover 3] [--lease 5] [--tasks 12] [--profile JOBS]

One PostgreSQL started for the run (tests/pgserver.py: initdb in a temp folder, fsync off, as the
tests run it). For each node count and round, A then B (A B A B ...), each on a fresh database:

  A  schedulerd: N daemons (`[queues.default] workers = 4`), each a node of the cluster
  B  Procrastinate: N `worker` processes, `concurrency = 4`

Both sides start idle and listening; then one transaction inserts --jobs no-op jobs (schedulerd:
the rows + pg_notify, as add does; Procrastinate: `batch_defer`), and the clock runs until the
database says every job finished. Printed: jobs/s per round, the paired ratio A/B (median, min).
Then, with 3 schedulerd nodes: add-to-start latency of single jobs added by a client that is not a
node (created -> claimed, database clock), p50/p99; and failover after kill -9 (--failover rounds,
each on a fresh cluster of 3 nodes holding --tasks no-op tasks at 1 s with `[store] lease =
--lease`): for every task of the killed node, the database time from the kill to its first start
on another node (task_leases.last_start), in lease periods, p50/max (goal <= 2).

    --profile JOBS   only this: one node on JOBS jobs, with pg_stat_statements loaded: CPU seconds
                     of the daemon's event loop (main thread) and of its other threads (store
                     calls), of the server's backends for the node and its other processes, and
                     the statements by server time (the bench's own count(*) poll included)

What each side does that the other does not (so the ratio is not like for like):
- schedulerd writes a job's log lines and outcome in one settle transaction per batch of ended
  attempts, keeps a heartbeat per node, checks cancels/orphans every 5 s, and wakes only its
  own dispatcher for a freed slot; Procrastinate records an event row per state change
  (procrastinate_events, by trigger) and its workers poll as well as LISTEN.
- schedulerd's no-op job runs as a coroutine; Procrastinate's sync task runs in a thread.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import CLK_TCK, CONSOLE, PY, child_env  # noqa: I001  (bench/ is the script's folder)

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


def node_config(server: PgServer, db: str, etc: Path, node: str, body: str = "", lease: float = 15.0) -> Path:
    """One node's config: its own state, log and socket under `etc`, the shared database."""
    etc.mkdir()
    cfg = etc / "schedulerd.toml"
    cfg.write_text(f"""
[scheduler]
node = "{node}"
state_dir = "{etc / 'state'}"
log_dir = "{etc / 'log'}"
socket = "{etc / 's.sock'}"
pidfile = "{etc / 'schedulerd.pid'}"
log_level = "warning"
[store]
url = "{server.url(db)}"
password = "env:BENCH_PGPASS"
lease = "{lease:g}s"
[queues.default]
workers = {WORKERS}
[jobs]
keep_finished = 10000000
{body}""")
    return cfg


@contextlib.contextmanager
def nodes(server: PgServer, db: str, tmp: Path, count: int, prefix: str, body: str = "",
          lease: float = 15.0) -> Iterator[list[Path]]:
    """`count` daemons on `db` (started by `scheduler:start`, stopped at the end); their configs."""
    env = child_env(BENCH_PGPASS=PASSWORD)
    configs = [node_config(server, db, tmp / f"{db}-{prefix}{i}", f"{prefix}{i}", body, lease)
               for i in range(count)]
    try:
        for cfg in configs:
            subprocess.run([str(CONSOLE), "--config", str(cfg), "scheduler:start"], check=True, env=env,
                           capture_output=True, timeout=60)
        time.sleep(1.0)  # every node listening
        yield configs
    finally:
        for cfg in configs:
            subprocess.run([str(CONSOLE), "--config", str(cfg), "scheduler:stop", "--timeout", "10"], env=env,
                           capture_output=True, timeout=60)


def daemon_pid(cfg: Path) -> int:
    return int((cfg.parent / "schedulerd.pid").read_text().split()[0])


def insert_jobs(server: PgServer, db: str, jobs: int) -> None:
    """`jobs` no-op jobs in one transaction, and the notification add sends."""
    server.sql(f"""INSERT INTO jobs (type, queue, payload) SELECT 'noop', 'default', '{{}}'
                   FROM generate_series(1, {jobs});
                   SELECT pg_notify('schedulerd_jobs', 'default');""", db)


def schedulerd_round(server: PgServer, count: int, jobs: int, tmp: Path) -> float:
    db = server.database()
    try:
        with nodes(server, db, tmp, count, "n"):
            t0 = time.monotonic()
            insert_jobs(server, db, jobs)
            t1 = wait_count(server, db, "SELECT count(*) FROM jobs WHERE state = 'finished'", jobs)
            return jobs / (t1 - t0)
    finally:
        server.drop(db)


def failover(server: PgServer, count: int, tasks: int, lease: float, tmp: Path) -> list[float]:
    """`count` nodes hold `tasks` no-op tasks (1 s period); kill -9 the node holding the most; for
    each of its tasks, the database time from the kill to its first start on another node (the
    lease table's last_start), in lease periods."""
    db = server.database()
    body = "".join(f'[tasks.f{i}]\ntype = "noop"\nperiod = "1s"\n' for i in range(tasks))
    try:
        with nodes(server, db, tmp, count, "f", body, lease) as configs:
            held = "SELECT count(*) FROM task_leases WHERE node IS NOT NULL AND expires > clock_timestamp()"
            wait_count(server, db, held, tasks, timeout=10 * lease + 60)
            victim = server.sql("SELECT node FROM task_leases GROUP BY node ORDER BY count(*) DESC LIMIT 1", db)[0][0]
            lost = [r[0] for r in server.sql(f"SELECT task FROM task_leases WHERE node = '{victim}'", db)]
            os.kill(daemon_pid(next(c for c in configs if c.parent.name == f"{db}-{victim}")), signal.SIGKILL)
            killed = server.sql("SELECT extract(epoch FROM clock_timestamp())::float8", db)[0][0]
            names = ", ".join(f"'{t}'" for t in lost)
            moved = (f"SELECT count(*) FROM task_leases WHERE task IN ({names}) AND node <> '{victim}' "
                     f"AND last_start > to_timestamp({killed})")
            wait_count(server, db, moved, len(lost), timeout=10 * lease + 60)
            starts = server.sql(f"SELECT extract(epoch FROM last_start)::float8 FROM task_leases "
                                f"WHERE task IN ({names})", db)
            return sorted((r[0] - killed) / lease for r in starts)
    finally:
        server.drop(db)


def thread_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the main thread: the event loop, of every other thread: store calls)."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        spent = _stat_cpu(task / "stat")
        if task.name == str(pid):
            main += spent
        else:
            other += spent
    return main, other


def _stat_cpu(path: Path, children: bool = False) -> float:
    fields = path.read_text()
    fields = fields[fields.rindex(")") + 2:].split()
    own = int(fields[11]) + int(fields[12])
    return (own + (int(fields[13]) + int(fields[14]) if children else 0)) / CLK_TCK


def pg_cpu(server: PgServer, db: str) -> tuple[float, float]:
    """(CPU seconds of the server processes connected to `db`, of all its other processes, ended ones too)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    ours = {r[0] for r in server.sql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}'")}
    mine = rest = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (proc / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == postmaster:
                    spent = _stat_cpu(proc / "stat")
                    if int(proc.name) in ours:
                        mine += spent
                    else:
                        rest += spent
    return mine, rest + _stat_cpu(Path(f"/proc/{postmaster}/stat"), children=True)


def enable_statements(server: PgServer) -> None:
    server.sql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server.stop()
    server.start()


def profile(server: PgServer, jobs: int, tmp: Path) -> None:
    """One node, `jobs` no-op jobs: where the time goes (CPU per process and thread, statements)."""
    db = server.database()
    try:
        server.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", db)
        with nodes(server, db, tmp, 1, "p") as configs:
            pid = daemon_pid(configs[0])
            server.sql("SELECT pg_stat_statements_reset()", db)
            loop0, threads0 = thread_cpu(pid)
            pg0 = pg_cpu(server, db)
            t0 = time.monotonic()
            insert_jobs(server, db, jobs)
            wall = wait_count(server, db, "SELECT count(*) FROM jobs WHERE state = 'finished'", jobs) - t0
            loop1, threads1 = thread_cpu(pid)
            pg1 = pg_cpu(server, db)
            stats = server.sql(f"""SELECT calls, total_exec_time, regexp_replace(left(query, 70), '\\s+', ' ', 'g')
                FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                WHERE d.datname = '{db}' ORDER BY total_exec_time DESC LIMIT 12""", db)
    finally:
        server.drop(db)
    print(f"profile: 1 node, {jobs} jobs in {wall:.2f} s = {jobs / wall:.0f} jobs/s; CPU seconds (% of wall):")
    for what, spent in (("daemon event loop (main thread)", loop1 - loop0),
                        ("daemon other threads (store calls)", threads1 - threads0),
                        ("PostgreSQL backends of the node", pg1[0] - pg0[0]),
                        ("PostgreSQL other processes", pg1[1] - pg0[1])):
        print(f"  {what:38} {spent:6.2f} s  {100 * spent / wall:5.1f} %")
    total = sum(r[1] for r in stats)
    print(f"statements (server execution time {total:.0f} ms = {100 * total / 1000 / wall:.1f} % of wall):")
    for calls, ms, query in stats:
        print(f"  {calls:7d} calls {calls / jobs:6.3f}/job {ms:8.1f} ms {ms * 1000 / max(calls, 1):7.1f} us/call  {query}")


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
    try:
        with nodes(server, db, tmp, 3, "l"):
            store = PgJobStore(store_settings(server, db))
            try:
                for _ in range(count):
                    store.add("noop", "default", {})
                    time.sleep(0.02)
            finally:
                store.close()
            wait_count(server, db, "SELECT count(*) FROM jobs WHERE state = 'finished'", count)
            lat = sorted(r[0] * 1000 for r in server.sql(
                "SELECT extract(epoch FROM started - created)::float8 FROM jobs", db))
            return statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    finally:
        server.drop(db)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--latency", type=int, default=200, help="single jobs for the latency (0: skip)")
    ap.add_argument("--failover", type=int, default=3, metavar="KILLS",
                    help="kill -9 rounds for the failover time (0: skip)")
    ap.add_argument("--lease", type=float, default=5.0, help="[store] lease in seconds for the failover rounds")
    ap.add_argument("--tasks", type=int, default=12, help="tasks held by the failover rounds' nodes")
    ap.add_argument("--profile", type=int, default=0, metavar="JOBS",
                    help="only profile one node on JOBS jobs: CPU per process and thread, pg_stat_statements")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; {args.jobs} no-op jobs, {WORKERS} workers per node")
    server = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as t:
            tmp = Path(t)
            if args.profile:
                enable_statements(server)
                profile(server, args.profile, tmp)
                return 0
            for count in (int(n) for n in args.nodes.split(",") if n):
                a, b = [], []
                for _ in range(args.rounds):
                    a.append(schedulerd_round(server, count, args.jobs, tmp))
                    b.append(procrastinate_round(server, count, args.jobs))
                ratios = [x / y for x, y in zip(a, b, strict=True)]
                print(f"{count} node(s): schedulerd {' '.join(f'{x:.0f}' for x in a)} jobs/s, "
                      f"procrastinate {' '.join(f'{y:.0f}' for y in b)} jobs/s; "
                      f"ratio median {statistics.median(ratios):.2f}, min {min(ratios):.2f}", flush=True)
            if args.latency:
                p50, p99 = latency(server, args.latency, tmp)
                print(f"add-to-start across nodes (3 nodes, client not a node): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            if args.failover:
                times: list[float] = []
                for _ in range(args.failover):
                    times += failover(server, 3, args.tasks, args.lease, tmp)
                print(f"failover after kill -9 (3 nodes, {args.tasks} tasks at 1 s, lease {args.lease:g} s; "
                      f"{len(times)} tasks moved in {args.failover} kills): p50 {statistics.median(times):.2f}, "
                      f"max {max(times):.2f} lease periods (goal <= 2)")
    finally:
        server.stop()
        remove(server.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
