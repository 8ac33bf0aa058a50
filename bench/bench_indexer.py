#!/usr/bin/env python3
"""Benchmark: the shipped full-text indexer (`bin/indexer`) on a large databox.

Why: issue 7 asks how fast `bin/indexer` indexes a databox (records per second) and
how long a new record takes to become searchable. On the databox of
bench_record_mover.py (`--records`, default 1,000,000; generated with bulk SQL, not timed):

- first build: `bin/indexer` started with the command line the `indexer` task gives it
  (`-h= -P= -b=main -u= -p= --socket= --default-character-set=utf8 -o --databox-path=`,
  plus `--index=` and the shipped defaults `--interval=0.5 --batch=1000`); the clock runs
  from the process start until its control socket (`S`) reports the full pass done.
  Records/s = records / that time (the indexer's own pass time is printed too);
- created -> searchable: with the indexer running, `--samples` records are created one
  by one through the repository API (`Databox.create_record`, a real small document, a
  unique word in the `Title` field), at random moments; the clock starts when
  `create_record` returns (the commit, where the archive task emits `record.created`) and
  stops when `repository.fulltext.search` (the `record:search` code path, a new read-only
  connection each time, polled every 5 ms) finds the word;
- reindex: the 10 % rule of bench_record_mover (the real `record_mover` task) updates
  records; the time until the indexer's incremental pass has reindexed them all.

    .venv/bin/python bench/bench_indexer.py                        # 1,000,000 records
    .venv/bin/python bench/bench_indexer.py --records 100000 --samples 10   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio  # noqa: E402
from _common import PY, REPO, Reaper, free_port, machine, median, percentile, tempdir, wait_for, write_config
from bench_record_mover import DATABOX_TOML, RULE_TOML, TASK, build_databox  # noqa: E402

from repository import open_databox  # noqa: E402
from repository.fulltext import search  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.registry import task_type  # noqa: E402

INDEXER = REPO / "bin" / "indexer"


def control(port: int, command: str, timeout: float = 5.0) -> str:
    """One line sent to the indexer's control socket, one line back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(command.encode() + b"\r\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def status(port: int) -> dict[str, Any] | None:
    try:
        return json.loads(control(port, "S"))
    except (OSError, ValueError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the databox (default 1,000,000)")
    parser.add_argument("--samples", type=int, default=30, help="records created to time created->searchable (30)")
    parser.add_argument("--interval", type=float, default=0.5, help="indexer --interval (default 0.5, the shipped one)")
    parser.add_argument("--batch", type=int, default=1000, help="indexer --batch (default 1000, the shipped one)")
    parser.add_argument("--no-reindex", action="store_true", help="skip the reindex after the 10%% rule")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.records < 10 or args.samples < 1:
        parser.error("--records must be at least 10, --samples at least 1")
    print(machine(), flush=True)
    rnd = random.Random(args.seed)
    report: dict[str, Any] = {"records": args.records, "interval": args.interval, "batch": args.batch}
    with tempdir("bench-indexer-", keep=args.dir is not None) as tmp, Reaper() as reaper:
        work = args.dir or tmp
        work.mkdir(parents=True, exist_ok=True)
        db_path, storage, index = work / "main.sqlite", work / "main-storage", work / "main.fts"
        for old in [*work.glob("main.sqlite*"), *work.glob("main.fts*")]:
            old.unlink()
        t0 = time.perf_counter()
        _, expect = build_databox(db_path, storage, args.records)
        print(f"databox: {args.records:,} records, {db_path.stat().st_size / 1e6:.0f} MB, generated in "
              f"{time.perf_counter() - t0:.1f}s (not measured)", flush=True)
        config = load(write_config(work, DATABOX_TOML.format(path=db_path, storage=storage) + RULE_TOML))

        # --- first build ---------------------------------------------------------------
        port = free_port()
        argv = [str(INDEXER), "-h=127.0.0.1", "-P=3306", "-b=main", "-u=root", "-p=", f"--socket={port}",
                "--default-character-set=utf8", "-o", f"--databox-path={db_path}", f"--index={index}",
                f"--interval={args.interval}", f"--batch={args.batch}"]
        out = open(work / "indexer.out", "wb")
        os.sync()
        t0 = time.perf_counter()
        with out:
            proc = reaper.popen(argv, stdout=out, stderr=out, env={**os.environ, "PYTHON": PY})

        def built() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"the indexer exited ({proc.returncode}): {(work / 'indexer.out').read_text()[-2000:]}")
            st = status(port)
            return bool(st and st["last_pass"] and st["last_pass"]["full"] and st["indexed"] >= args.records)

        wait_for(built, 3600, "first build", step=0.05)
        build_s = time.perf_counter() - t0
        st = status(port)
        assert st is not None
        pass_s = st["last_pass"]["seconds"]
        report.update(build_seconds=round(build_s, 2), build_pass_seconds=pass_s,
                      build_records_per_second=round(args.records / build_s),
                      index_mb=round(index.stat().st_size / 1e6))
        print(f"first build: {args.records:,} records in {build_s:.1f}s from process start = "
              f"{args.records / build_s:,.0f} records/s (its full pass alone: {pass_s:.1f}s, "
              f"{args.records / pass_s:,.0f} records/s); index {index.stat().st_size / 1e6:.0f} MB", flush=True)

        # --- created -> searchable ---------------------------------------------------------
        db = open_databox(config.databoxes["main"], create=False)
        src = work / "sources"
        src.mkdir()
        latencies: list[float] = []
        try:
            for i in range(args.samples):
                time.sleep(rnd.uniform(0.05, args.interval + 0.3))  # at any phase of the indexer's polling
                word = f"zq{rnd.getrandbits(48):012x}"
                doc = src / f"new{i}.jpg"
                doc.write_bytes(os.urandom(2048))
                rec = db.create_record("incoming", doc, fields={"Title": f"fresh {word}"})
                t0 = time.perf_counter()
                while True:
                    hits = search(index, word)
                    if hits:
                        break
                    if time.perf_counter() - t0 > 60:
                        raise SystemExit(f"record {rec.id} not searchable after 60s")
                    time.sleep(0.005)
                latencies.append(time.perf_counter() - t0)
                if hits[0].record_id != rec.id:
                    raise SystemExit(f"search for {word} found record {hits[0].record_id}, not {rec.id}")
        finally:
            db.close()
        report.update(searchable_median_s=round(median(latencies), 3),
                      searchable_p95_s=round(percentile(latencies, 95), 3), searchable_max_s=round(max(latencies), 3),
                      samples=len(latencies))
        print(f"created -> searchable ({len(latencies)} records, indexer --interval={args.interval:g}): "
              f"median {median(latencies):.3f}s, p95 {percentile(latencies, 95):.3f}s, max {max(latencies):.3f}s",
              flush=True)

        # --- reindex after the 10 % rule -----------------------------------------------------
        if not args.no_reindex:
            tc = config.tasks[TASK]
            task = task_type(tc.type)(tc.settings)
            ctx = TaskContext.for_test(TASK, tc.settings, config=config, tmp_path=work)
            ctx.log.propagate = False
            started = time.perf_counter()
            anyio.run(task.run_once, ctx)
            t0 = time.perf_counter()  # the commit is a little earlier: the times below are a bit low
            changed = sum(len(e[1]["ids"]) for e in ctx.events if e[0] == "record.updated")

            def caught_up() -> bool:
                st = status(port)
                return bool(st and st["last_pass"] and st["last_pass"]["indexed"] >= changed)

            wait_for(caught_up, 3600, "reindex", step=0.05)
            re_s = time.perf_counter() - t0
            st = status(port)
            assert st is not None
            if search(index, "archive", limit=1) == []:
                raise SystemExit("moved records are not found under their new collection")
            report.update(reindexed=changed, reindex_seconds=round(re_s, 2), rule_pass_seconds=round(t0 - started, 2),
                          reindex_pass_seconds=st["last_pass"]["seconds"])
            print(f"reindex after the rule ({changed:,} records moved, its pass {t0 - started:.1f}s): all in their "
                  f"new collection {re_s:.1f}s after the pass returned = {changed / re_s:,.0f} records/s "
                  f"(the indexer's pass alone: {st['last_pass']['seconds']:.1f}s)", flush=True)

        reply = control(port, "Q")
        proc.wait(30)
        report.update(stop_reply=reply, exit_status=proc.returncode, load_average=os.getloadavg()[0])
        if proc.returncode != 0:
            raise SystemExit(f"the indexer did not stop cleanly on Q (exit {proc.returncode})")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
