"""Pipelines: event-to-first-step latency and per-item overhead (bench/README.md).

1. Latency: N files (default 1,000) dropped one by one into a watched folder (cold = 0.2s); for
   each, the time from the moment it was stable (its last write + cold) to the start of the first
   job step's attempt (the pipelineStep job's `started`). p50/p99.
2. Overhead: M items (default 10,000) through a pipeline of one `noop` step with parallel = 8,
   against M `noop` jobs queued directly on a queue of 8 workers, same daemon (added one by one as
   job:add does, and in one transaction as the driver adds a step's parts); wall time per item
   from the first add (the run's start) to the last end, and the ratios.

    .venv/bin/python bench/bench_pipeline.py [--files 1000] [--items 10000] [--rounds 1]

`--rounds R` repeats the overhead part R times (the load average printed with each round: the
machine may be shared) and prints the median ratios; `--files 0` skips the latency part.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSOLE = ROOT / "bin" / "console"


def console(cfg: Path, *args: str) -> str:
    return subprocess.run([str(CONSOLE), "--config", str(cfg), *args], check=True, capture_output=True,
                          text=True).stdout


def site(tmp: Path, inbox: Path) -> Path:
    cfg = tmp / "etc" / "schedulerd.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(textwrap.dedent(f"""
        [scheduler]
        socket = "{tmp}/s.sock"
        state_dir = "{tmp}/state"
        log_dir = "{tmp}/log"
        pidfile = "{tmp}/schedulerd.pid"
        [jobs]
        keep_finished = 100000000  # the rounds count finished jobs: no retention purge meanwhile
        [queues.direct]
        workers = 8
        [pipelines.watch]
        trigger = {{ event = "file.created", folder = "{inbox}", cold = "200ms", max_items = 1 }}
        steps = [{{ type = "noop", parallel = 1 }}]
        [pipelines.many]
        steps = [{{ type = "noop", parallel = 8 }}]
        """))
    return cfg


def daemon_cpu(tmp: Path) -> float:
    """The daemon's CPU seconds so far (user + system, every thread): less moved by other
    processes on a shared machine than the wall time."""
    pid = (tmp / "schedulerd.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jobs_db(tmp: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp / "state" / "jobs.db")


def wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)


def latency(tmp: Path, cfg: Path, inbox: Path, n: int) -> list[float]:
    stable_at: dict[str, float] = {}
    for i in range(n):
        p = inbox / f"f{i:05d}.bin"
        p.write_bytes(b"x" * 100)
        stable_at[str(p)] = p.stat().st_mtime + 0.2
        time.sleep(0.01)
    db = jobs_db(tmp)
    wait(lambda: db.execute("SELECT count(*) FROM jobs WHERE queue='pipeline.watch.0' AND started IS NOT NULL")
         .fetchone()[0] >= n, 120 + n * 0.05)
    out = []
    for payload, started in db.execute("SELECT payload, started FROM jobs WHERE queue='pipeline.watch.0'"):
        path = json.loads(payload)["items"][0]["path"]
        out.append(started - stable_at[path])
    return sorted(out)


def overhead(tmp: Path, cfg: Path, m: int) -> tuple[float, float, float, float, float]:
    db = jobs_db(tmp)
    items = json.dumps([{"kind": "event", "fields": {"i": str(i)}} for i in range(m)])
    t0, c0 = time.time(), daemon_cpu(tmp)
    (tmp / "items.json").write_text(items)
    rid = console(cfg, "pipeline:run", "many", "--input", f"@{tmp / 'items.json'}").strip()
    wait(lambda: db.execute("SELECT state FROM pipeline_runs WHERE id=?", (int(rid),)).fetchone()[0] != "running",
         600)
    piped, piped_cpu = time.time() - t0, daemon_cpu(tmp) - c0
    from schedulerd.config import load
    from schedulerd.jobadd import add_job
    from schedulerd.stores import open_job_store

    config = load(cfg)
    store = open_job_store(config.scheduler, config.store)
    before = db.execute("SELECT count(*) FROM jobs WHERE queue='direct' AND state='finished'").fetchone()[0]
    t0 = time.time()
    for _ in range(m):  # as the driver does not: one transaction per job (job:add's way)
        add_job(store, config, "noop", {}, queue="direct")
    console(cfg, "job:list", "--limit", "1")  # (a wake goes with the next poll)
    wait(lambda: db.execute("SELECT count(*) FROM jobs WHERE queue='direct' AND state='finished'")
         .fetchone()[0] >= before + m, 600)
    direct = time.time() - t0
    t0, c0 = time.time(), daemon_cpu(tmp)  # the same, queued in one transaction (as the driver queues a step's parts)
    store.add_many([("noop", "direct", {}, "noop")] * m)
    console(cfg, "job:list", "--limit", "1")
    wait(lambda: db.execute("SELECT count(*) FROM jobs WHERE queue='direct' AND state='finished'")
         .fetchone()[0] >= before + 2 * m, 600)
    bulk, bulk_cpu = time.time() - t0, daemon_cpu(tmp) - c0
    store.close()
    return piped / m, direct / m, bulk / m, piped_cpu / m, bulk_cpu / m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        inbox = tmp / "inbox"
        inbox.mkdir()
        cfg = site(tmp, inbox)
        console(cfg, "scheduler:start")
        try:
            time.sleep(1.5)
            if a.files:
                lat = latency(tmp, cfg, inbox, a.files)
                q = statistics.quantiles(lat, n=100)
                print(f"event-to-first-step latency, {a.files} files: p50 {q[49] * 1000:.0f} ms, "
                      f"p99 {q[98] * 1000:.0f} ms (load {os.getloadavg()[0]:.1f})")
            ratios: list[tuple[float, float]] = []
            for r in range(a.rounds):
                piped, direct, bulk, piped_cpu, bulk_cpu = overhead(tmp, cfg, a.items)
                ratios.append((piped / direct, piped / bulk, piped_cpu / bulk_cpu))
                print(f"round {r + 1}, {a.items} items: pipeline {piped * 1e3:.2f} ms/item; direct noop jobs added "
                      f"one by one {direct * 1e3:.2f} ms/item (ratio {piped / direct:.2f}x), added in one "
                      f"transaction {bulk * 1e3:.2f} ms/item (ratio {piped / bulk:.2f}x); daemon CPU "
                      f"{piped_cpu * 1e3:.3f} vs {bulk_cpu * 1e3:.3f} ms/item (ratio {piped_cpu / bulk_cpu:.2f}x); "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            if a.rounds > 1:
                print(f"median ratio: vs one by one {statistics.median(r[0] for r in ratios):.2f}x, "
                      f"vs one transaction {statistics.median(r[1] for r in ratios):.2f}x, "
                      f"daemon CPU vs one transaction {statistics.median(r[2] for r in ratios):.2f}x")
        finally:
            console(cfg, "scheduler:stop")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    main()
