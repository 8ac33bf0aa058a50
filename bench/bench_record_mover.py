#!/usr/bin/env python3
"""Benchmark: one `record_mover` rule pass over a large databox vs a per-record loop.

Why: issue 7 asks that a rule matching 10 % of a 1,000,000-record databox runs as one
set-based pass at least 20x faster than a loop calling the record API per record, and
within 2 s. In one run, on one databox:

- the databox (`--records`, default 1,000,000) is generated with bulk SQL in one
  transaction through `Databox.transaction()` (not timed): collection `incoming`, fields
  `Expiry` (date) and `Title` (text), documents named but not stored (an update rule
  never touches files);
- 10 % of the records have an `Expiry` in the past: with `--layout spread` (default, the
  worst case) every 10th id, so every page of the records table changes; with
  `--layout clustered` the oldest 10 % (how expiry dates usually fall);
- the rule (as configured in a real schedulerd.toml, loaded and checked by the config
  loader): `from = { collection = ["incoming"], date = { field = "Expiry", direction =
  "before" } }`, `to = { collection = "archive", status = "1xxxx" }`;
- the task: `run_once` of the real `record_mover` task through
  `TaskContext.for_test`, its log written to a file (every changed id is logged), events
  collected; the first one is followed by a second pass, which must change nothing;
  records are put back between passes with untimed SQL;
- the loop: the matching ids are selected with the rule's own SQL before anything
  changed (timed; generous to the loop, which would otherwise read records to test them),
  then the same random `--sample` of them (default 20,000) goes through the repository
  API record after record, `set_collection(id, "archive")` then `set_status(id, "1xxxx")`,
  twice: (a) both calls in one transaction per record (the rule's atomicity per record,
  one commit: the fastest honest loop) and (b) each call committing on its own, as plain
  calls do. Each loop's time for all matching records is extrapolated from the sample,
  and the output says so. The ratios use the median of the task passes;
- the preview: `task.preview(config)` (what `task:preview` prints) before each pass, timed;
- interleaved, because a shared host is noisy: each of the `--repeat` rounds (default 5)
  puts the records back, runs one task pass, then a 1/repeat share of the sample through
  each loop (records put back before each).

- `--backend postgresql`: the same on a PostgreSQL databox, on a server this script starts from
  Debian's binaries (tests/pgserver.py: initdb in a temp folder, loopback port) with fsync,
  synchronous_commit and full_page_writes ON (durable at commit, as the SQLite side). The
  records are loaded with generate_series; their full-text rows (`record_search`) start empty
  and each pass rebuilds those of the records it changed, before its commit, as any write does.

    .venv/bin/python bench/bench_record_mover.py                       # 1,000,000 records
    .venv/bin/python bench/bench_record_mover.py --backend postgresql --sample 2000
    .venv/bin/python bench/bench_record_mover.py --records 100000 --sample 2000   # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio  # noqa: E402
from _common import machine, print_sides, report_paired, tempdir, verdict, write_config

from repository import DataboxSettings, now_iso, open_databox  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.registry import task_type  # noqa: E402
from tasks.record_mover import where_clause  # noqa: E402

TARGET_RATIO = 20.0
TARGET_SECONDS = 2.0
TARGET_PREVIEW = 0.5
TASK = "expire"
LOOPS = (("one transaction per record", True), ("each API call commits", False))
FIELDS = {"Expiry": "date", "Title": "text"}
WORDS = ("sunset harbour portrait market festival mountain river studio bridge garden "
         "winter summer city forest beach night street crowd snow desert").split()
DATABOX_TOML = """\
[databoxes.main]
path = "{path}"
storage = "{storage}"
[databoxes.main.fields]
Expiry = "date"
Title = "text"
"""
RULE_TOML = """
[tasks.expire]
type = "record_mover"
[[tasks.expire.rules]]
name = "expired to archive"
databox = "main"
from = { collection = ["incoming"], date = { field = "Expiry", direction = "before", delta_days = 0 } }
to = { collection = "archive", status = "1xxxx" }
"""


# --- the databox -----------------------------------------------------------------------
def build_databox(path: Path, storage: Path, n: int, layout: str = "spread",
                  page_size: int | None = None) -> tuple[DataboxSettings, int]:
    """`n` records in collection `incoming`, bulk-inserted in one transaction; returns the
    settings and how many have an `Expiry` in the past (n // 10). `page_size`: rebuild the
    file with that SQLite page size (a what-if: databoxes are created with 4 KiB pages)."""
    settings = DataboxSettings(path, storage, fields=dict(FIELDS))  # type: ignore[arg-type]
    db = open_databox(settings)
    try:
        incoming = db.create_collection("incoming").id
        db.create_collection("archive")
        now = now_iso()
        expired = ("i % 10 = 0" if layout == "spread" else f"i <= {n // 10}")
        db.connection.execute("PRAGMA cache_size = -524288")  # this connection only: a bulk load
        with db.transaction() as c:
            # indexes are dropped and re-created around the load: faster, and the same in the end
            indexes = c.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                                "AND tbl_name IN ('records', 'fields')").fetchall()
            for name, _ in indexes:
                c.execute(f'DROP INDEX "{name}"')
            c.execute(
                "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?) "
                "INSERT INTO records(id, collection_id, type, original_name, document, size, sha256, mime, status, "
                "created, updated, document_changed, doc_version, subdefs_version) "
                "SELECT i, ?, 'record', printf('IMG_%07d.jpg', i), "
                "printf('docs/%02x/%s-IMG_%07d.jpg', i % 256, lower(hex(randomblob(8))), i), "
                "200000 + (i * 7919) % 9000000, lower(hex(randomblob(32))), 'image/jpeg', i % 16, ?, ?, ?, 1, 1 "
                "FROM seq",
                (n, incoming, now, now, now))
            c.execute(
                "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?), "
                "w(j, word) AS (SELECT key, value FROM json_each(?)), "
                "names(name) AS (VALUES ('Expiry'), ('Title')) "
                "INSERT INTO fields(record_id, name, value) "
                "SELECT i, name, CASE name WHEN 'Expiry' THEN "
                f"  CASE WHEN {expired} THEN date(?, printf('-%d days', 1 + i % 700)) "
                "   ELSE date(?, printf('+%d days', 1 + i % 3000)) END "
                "ELSE (SELECT word FROM w WHERE j = i % 20) || ' ' || (SELECT word FROM w WHERE j = (i / 20) % 20) "
                "     || printf(' number %d', i) END "
                "FROM seq, names",
                (n, json.dumps(WORDS), now[:10], now[:10]))
            for _, sql in indexes:
                c.execute(sql)
        db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if page_size:
            for pragma in ("journal_mode = DELETE", f"page_size = {int(page_size)}", "temp_store = MEMORY"):
                db.connection.execute(f"PRAGMA {pragma}")
            db.connection.execute("VACUUM")
            db.connection.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()
    return settings, n // 10


def put_back(path: Path) -> None:
    """Undo the rule (untimed): the archived records go back to `incoming`, bit 4 cleared."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("UPDATE records SET collection_id = (SELECT id FROM collections WHERE name = 'incoming'), "
                     "status = status & ~16 WHERE collection_id = (SELECT id FROM collections WHERE name = 'archive')")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.sync()  # every timing starts without someone else's dirty pages to flush
    time.sleep(0.5)


def archived(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM records r JOIN collections c ON c.id = r.collection_id "
                            "WHERE c.name = 'archive' AND r.status & 16").fetchone()[0]
    finally:
        conn.close()


# --- the databox on PostgreSQL (--backend postgresql) ------------------------------------
DURABLE = ("-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=256MB "
           "-c max_wal_size=4GB -c max_connections=50")


class PgSide:
    """A PostgreSQL server of this run (durable settings) and one databox database on it."""

    def __init__(self, work: Path):
        from schedulerd.settings import Secret
        from tests.pgserver import PASSWORD, start_server

        self.server = start_server()  # the tests' fixture server: fsync off; restarted durable below
        self.server.stop()
        self.server.pg_ctl("start", "-w", "-l", str(self.server.root / "server.log"), "-o",
                           f"-p {self.server.port} -k {self.server.root} -c listen_addresses=127.0.0.1 {DURABLE}")
        self.name = self.server.database(template="template0")
        self.settings = DataboxSettings(url=self.server.url(self.name), password=Secret(PASSWORD),
                                        storage=work / "main-storage", fields=dict(FIELDS))  # type: ignore[arg-type]

    def toml(self) -> str:
        return (f'[databoxes.main]\nurl = "{self.settings.url}"\npassword = "{self.settings.password.reveal()}"\n'
                f'storage = "{self.settings.storage}"\n[databoxes.main.fields]\nExpiry = "date"\nTitle = "text"\n')

    def sql(self, statement: str) -> list[tuple]:
        return self.server.sql(statement, db=self.name)

    def build(self, n: int, layout: str) -> int:
        db = open_databox(self.settings)
        try:
            db.create_collection("incoming")
            db.create_collection("archive")
        finally:
            db.close()
        now = now_iso()
        expired = "i % 10 = 0" if layout == "spread" else f"i <= {n // 10}"
        words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
        self.sql(
            "INSERT INTO records(id, collection_id, type, original_name, document, size, sha256, mime, status, "
            "created, updated, document_changed, doc_version, subdefs_version) "
            "SELECT i, (SELECT id FROM collections WHERE name = 'incoming'), 'record', "
            "format('IMG_%s.jpg', lpad(i::text, 7, '0')), "
            "format('docs/%s/%s-IMG_%s.jpg', lpad(to_hex(i % 256), 2, '0'), md5(random()::text), lpad(i::text, 7, '0')), "
            f"200000 + (i::bigint * 7919) % 9000000, md5(random()::text) || md5(random()::text), 'image/jpeg', i % 16, "
            f"'{now}', '{now}', '{now}', 1, 1 FROM generate_series(1, {n}) i")
        self.sql(
            "INSERT INTO fields(record_id, name, value) SELECT i, 'Expiry', "
            f"to_char(CASE WHEN {expired} THEN '{now[:10]}'::date - (1 + i % 700) "
            f"ELSE '{now[:10]}'::date + (1 + i % 3000) END, 'YYYY-MM-DD') FROM generate_series(1, {n}) i "
            f"UNION ALL SELECT i, 'Title', ({words})[1 + i % 20] || ' ' || ({words})[1 + (i / 20) % 20] "
            f"|| ' number ' || i FROM generate_series(1, {n}) i")
        self.sql("SELECT setval(pg_get_serial_sequence('records', 'id'), (SELECT max(id) FROM records))")
        self.sql("VACUUM ANALYZE")
        self.sql("CHECKPOINT")
        return n // 10

    def put_back(self) -> None:
        self.sql("UPDATE records SET collection_id = (SELECT id FROM collections WHERE name = 'incoming'), "
                 "status = status & ~16 WHERE collection_id = (SELECT id FROM collections WHERE name = 'archive')")
        self.sql("VACUUM ANALYZE records")
        self.sql("CHECKPOINT")
        time.sleep(0.5)

    def archived(self) -> int:
        return self.sql("SELECT count(*) FROM records r JOIN collections c ON c.id = r.collection_id "
                        "WHERE c.name = 'archive' AND r.status & 16 <> 0")[0][0]

    def size(self) -> int:
        return self.sql(f"SELECT pg_database_size('{self.name}')")[0][0]

    def close(self) -> None:
        from tests.pgserver import remove

        try:
            self.server.stop()
        finally:
            remove(self.server.root)


class SqliteSide:
    def __init__(self, work: Path, page_size: int | None):
        self.path, self.storage, self.page_size = work / "main.sqlite", work / "main-storage", page_size
        for old in work.glob("main.sqlite*"):
            old.unlink()
        self.settings = DataboxSettings(self.path, self.storage, fields=dict(FIELDS))  # type: ignore[arg-type]

    def toml(self) -> str:
        return DATABOX_TOML.format(path=self.path, storage=self.storage)

    def build(self, n: int, layout: str) -> int:
        return build_databox(self.path, self.storage, n, layout, self.page_size)[1]

    def put_back(self) -> None:
        put_back(self.path)

    def archived(self) -> int:
        return archived(self.path)

    def size(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        pass


# --- the two sides ----------------------------------------------------------------------
def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


def task_pass(task: Any, ctx: Any, expect: int, cpu: list[float] | None = None) -> float:
    """One `run_once`: wall seconds (its CPU seconds appended to `cpu`: steadier on a busy host)."""
    ctx.events.clear()
    c0, t0 = cpu_now(), time.perf_counter()
    summary = anyio.run(task.run_once, ctx)
    seconds = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(cpu_now() - c0)
    changed = sum(len(e[1]["ids"]) for e in ctx.events if e[0] == "record.updated")
    if changed != expect:
        raise SystemExit(f"the pass changed {changed} records, expected {expect} ({summary})")
    return seconds


def preview(task: Any, config: Any, expect: int) -> float:
    """`task:preview` of the rule (what `bin/console task:preview` prints): wall seconds."""
    t0 = time.perf_counter()
    shown = task.preview(config)
    seconds = time.perf_counter() - t0
    if shown[0]["count"] != expect:
        raise SystemExit(f"the preview counts {shown[0]['count']} records, expected {expect}")
    return seconds


def select_ids(settings: DataboxSettings, config: Any) -> tuple[float, list[int]]:
    """The loop's first step: the matching ids, with the rule's own SQL (timed, cheap)."""
    rule = config.tasks[TASK].settings.rules[0]
    db = open_databox(settings, create=False)
    try:
        t0 = time.perf_counter()
        with db.transaction():
            where, params = where_clause(db, rule, datetime.now(UTC))
            ids = db.column(f"SELECT r.id FROM records r WHERE {where} ORDER BY r.id", params)
        return time.perf_counter() - t0, ids
    finally:
        db.close()


def loop(settings: DataboxSettings, ids: list[int], per_record_transaction: bool) -> float:
    """The records API, record after record: seconds for `ids`.

    `per_record_transaction`: both calls of a record in one transaction (the rule's
    atomicity per record, one commit); else each call commits on its own, as plain
    `set_collection` / `set_status` calls do."""
    db = open_databox(settings, create=False)
    try:
        t0 = time.perf_counter()
        for rid in ids:
            if per_record_transaction:
                with db.transaction():  # the API's own transactions join this one
                    db.set_collection(rid, "archive")
                    db.set_status(rid, "1xxxx")
            else:
                db.set_collection(rid, "archive")
                db.set_status(rid, "1xxxx")
        return time.perf_counter() - t0
    finally:
        db.close()


# --- main -------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the databox (default 1,000,000)")
    parser.add_argument("--layout", choices=("spread", "clustered"), default="spread",
                        help="which 10%% match: every 10th id (default) or the oldest 10%%")
    parser.add_argument("--sample", type=int, default=20_000, help="records the per-record loop changes (default 20,000)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds: task passes, the loop sample split among them (default 5)")
    parser.add_argument("--page-size", type=int, choices=(4096, 8192, 16384, 32768, 65536),
                        help="what-if: rebuild the databox with this SQLite page size (databoxes use 4096)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the databox's back-end (postgresql: a server started for the run)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.records < 10 or args.repeat < 1 or args.sample < args.repeat:
        parser.error("--records must be at least 10, --repeat at least 1, --sample at least --repeat")
    print(machine(), flush=True)
    print_sides("one set-based SQL pass in one transaction (rule's SQL, UPDATE ... RETURNING, ids logged, events "
                "emitted), durable at commit", "the repository API per record: one or two transactions each",
                "per-record loop")
    with tempdir("bench-record-mover-", keep=args.dir is not None) as tmp:
        work = args.dir or tmp
        work.mkdir(parents=True, exist_ok=True)
        side: SqliteSide | PgSide = (PgSide(work) if args.backend == "postgresql"
                                     else SqliteSide(work, args.page_size))
        t0 = time.perf_counter()
        expect = side.build(args.records, args.layout)
        settings, size = side.settings, side.size()
        page = (sqlite3.connect(side.path).execute("PRAGMA page_size").fetchone()[0]
                if isinstance(side, SqliteSide) else 8192)
        print(f"databox: {args.backend}, {args.records:,} records, {expect:,} expired ({args.layout}), "
              f"{size / 1e6:.0f} MB, {page}-byte pages, "
              f"generated in {time.perf_counter() - t0:.1f}s (not measured)", flush=True)

        config = load(write_config(work, side.toml() + RULE_TOML))
        tc = config.tasks[TASK]
        task = task_type(tc.type)(tc.settings)
        ctx = TaskContext.for_test(TASK, tc.settings, config=config, tmp_path=work)
        log_file = work / "task.log"
        handler = logging.FileHandler(log_file)
        ctx.log.addHandler(handler)
        ctx.log.setLevel(logging.INFO)
        ctx.log.propagate = False
        select, ids = select_ids(settings, config)  # the loop's first step, before anything changed
        if len(ids) != expect:
            raise SystemExit(f"the loop's query found {len(ids)} matching records, expected {expect}")
        chosen = sorted(random.Random(args.seed).sample(ids, min(args.sample, len(ids))))
        chunks = [chosen[i::args.repeat] for i in range(args.repeat)]
        passes: list[float] = []
        previews: list[float] = []
        cpu: list[float] = []
        loop_rounds: dict[str, list[float]] = {name: [] for name, _ in LOOPS}  # seconds per round's chunk
        os.sync()
        try:
            for i, chunk in enumerate(chunks):  # interleaved: a busy spell of the host hits both sides
                if i:
                    side.put_back()
                previews.append(preview(task, config, expect))
                passes.append(task_pass(task, ctx, expect, cpu))
                if i == 0:
                    handler.flush()
                    logged = sum(1 for line in log_file.read_text().splitlines() if "updated ids" in line)
                    again = task_pass(task, ctx, 0)
                    if side.archived() != expect:
                        raise SystemExit("the records are not where the rule puts them")
                for name, per_record_transaction in LOOPS:
                    side.put_back()
                    loop_rounds[name].append(loop(settings, chunk, per_record_transaction))
                    if side.archived() != len(chunk):
                        raise SystemExit(f"the {name} loop archived {side.archived()} records, expected {len(chunk)}")
        finally:
            ctx.log.removeHandler(handler)
            handler.close()
            side.close()
        loop_s = {name: sum(v) for name, v in loop_rounds.items()}
        loops = {name: {"sample": len(chosen), "sample_seconds": round(sec, 3),
                        "ms_per_record": round(sec / len(chosen) * 1000, 3),
                        "total_seconds": round(select + sec / len(chosen) * len(ids), 1),
                        "extrapolated": len(chosen) < len(ids)} for name, sec in loop_s.items()}

    med = statistics.median(passes)
    for v in loops.values():
        v["ratio"] = round(v["total_seconds"] / med, 1)
        v["target_ratio_met"] = v["ratio"] >= TARGET_RATIO
    report = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "backend": args.backend, "records": args.records, "matching": expect, "layout": args.layout, "db_mb": round(size / 1e6),
        "page_size": page, "task_pass_seconds": [round(p, 3) for p in passes], "task_pass_median": round(med, 3),
        "task_pass_cpu_seconds": [round(c, 3) for c in cpu],
        "target_seconds_met": med <= TARGET_SECONDS, "second_pass_seconds": round(again, 3),
        "preview_seconds": [round(p, 3) for p in previews], "preview_median": round(statistics.median(previews), 3),
        "log_lines_of_ids": logged, "loop_select_seconds": round(select, 3), "loops": loops,
        "load_average": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"task pass ({expect:,} of {args.records:,} records changed, ids logged on {logged} lines): "
          f"{', '.join(f'{p:.2f}s' for p in passes)} -> median {med:.2f}s "
          f"(CPU of this process: {', '.join(f'{c:.2f}s' for c in cpu)})")
    print(f"second pass (changes nothing): {again:.2f}s")
    pmed = statistics.median(previews)
    print(f"preview (task:preview, before each pass): {', '.join(f'{p:.2f}s' for p in previews)} -> median "
          f"{pmed:.2f}s   target <= {TARGET_PREVIEW:g}s: {verdict(pmed <= TARGET_PREVIEW)}")
    for name, v in loops.items():
        how = (f"extrapolated from {v['sample']:,} sampled records" if v["extrapolated"] else "all records, measured")
        print(f"per-record loop, {name}: select {select:.2f}s + {v['ms_per_record']:.2f} ms/record x {len(ids):,} = "
              f"{v['total_seconds']:.1f}s ({how})")
        print(f"  ratio: the task pass is {v['ratio']:.1f}x faster   target >= {TARGET_RATIO:g}x: "
              f"{verdict(v['target_ratio_met'])}")
    print(f"time: median pass {med:.2f}s   target <= {TARGET_SECONDS:g}s: {verdict(med <= TARGET_SECONDS)}")
    for name, per_round in loop_rounds.items():  # round i: pass i, then chunk i through the loop (paired)
        totals = [select + sec / len(chunk) * len(ids) for sec, chunk in zip(per_round, chunks, strict=True)]
        report_paired(f"speed, task pass / per-record loop ({name}, extrapolated)", [1 / s for s in passes],
                      [1 / s for s in totals], f">= {TARGET_RATIO:g}x", lambda m: m >= TARGET_RATIO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
