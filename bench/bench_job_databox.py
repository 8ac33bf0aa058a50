#!/usr/bin/env python3
"""Benchmark: the databox work of one `subdefCreation` job, without the image, kept open between
jobs (repository.kept, what the job does) against opened and closed per job (what it did before).

Both sides do a job's databox work on their own records of one databox (`--records`, default 400,
split in rounds A B A B): read the record, then `set_subdef` in one transaction (a commit). Only the
per-job side: `open_databox` (the schema check in a write transaction; on PostgreSQL a new pool, its
connection, and the schema script under an advisory lock), the record's fields read, `close` (on
SQLite a WAL checkpoint). `--backend postgresql` starts a server from Debian's binaries with fsync,
synchronous_commit and full_page_writes on (tests/pgserver.py).

    .venv/bin/python bench/bench_job_databox.py                        # SQLite
    .venv/bin/python bench/bench_job_databox.py --backend postgresql
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import machine, print_sides, report_paired, tempdir

from repository import KEPT, DataboxSettings, NewRecord, open_databox  # noqa: E402

ROUNDS = 4


def job(db: Any, rid: int, with_fields: bool) -> None:
    record = db.get_record(rid, with_fields=with_fields)
    with db.transaction():
        db.set_subdef(rid, "thumbnail", f"subdefs/{rid}.jpg", 240, 180, 5000, doc_version=record.doc_version)


def per_job(box: DataboxSettings) -> Callable[[int], None]:
    def run(rid: int) -> None:
        db = open_databox(box, create=False)
        try:
            job(db, rid, True)
        finally:
            db.close()
    return run


def kept(box: DataboxSettings) -> Callable[[int], None]:
    def run(rid: int) -> None:
        db = KEPT.take(box)
        broken = True
        try:
            job(db, rid, False)
            broken = False
        finally:
            KEPT.give_back(db, broken=broken)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400, help="jobs in all (default 400)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    print(machine(), flush=True)
    print_sides("nothing", "open_databox and close per job, the record's fields read", "per-job open")
    with tempdir("bench-job-databox-") as work:
        pg = None
        if args.backend == "postgresql":
            from bench_thumbnails import start_durable_server

            from schedulerd.settings import Secret
            from tests.pgserver import PASSWORD

            pg = start_durable_server()
            box = DataboxSettings(url=pg.url(pg.database(template="template0")), password=Secret(PASSWORD),
                                  storage=work / "storage")
        else:
            box = DataboxSettings(work / "main.sqlite", work / "storage")
        with open_databox(box) as db:
            coll = db.create_collection("bench").id
            ids = db.insert_ingested([NewRecord(coll, f"{i}.jpg", f"docs/{i}.jpg", 1, f"{i:064x}", "image/jpeg")
                                      for i in range(args.records)])
        sides = {"kept": kept(box), "per job": per_job(box)}
        ms: dict[str, list[float]] = {name: [] for name in sides}
        share = len(ids) // (2 * ROUNDS)
        for r in range(ROUNDS):
            for k, (name, run) in enumerate(sides.items()):
                part = ids[(2 * r + k) * share:(2 * r + k + 1) * share]
                t0 = time.perf_counter()
                for rid in part:
                    run(rid)
                ms[name].append((time.perf_counter() - t0) / len(part) * 1000)
            print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} ms/job" for n, v in ms.items()), flush=True)
        KEPT.close_all()
        if pg is not None:
            from tests.pgserver import remove

            pg.stop()
            remove(pg.root)
    report_paired("jobs/s, databox kept / opened per job", [1 / x for x in ms["kept"]],
                  [1 / x for x in ms["per job"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
