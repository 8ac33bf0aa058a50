#!/usr/bin/env python3
"""Benchmark: thumbnails per second through the job queue, 1 worker process against 2, and
against ImageMagick on the same files (issue 21).

Ours: `--count` (default 500) records of a real SQLite databox whose only sub-definition is a
240 px JPEG thumbnail (quality 80); each round queues one `subdefCreation` job per record in the
job store (records reset to "not built" first, untimed), then starts `bin/console worker:execute
--queue-name subdefCreation -m 1` processes (1, then 2 in the other side of the round) and waits
until every job finished. Throughput: jobs / (last finish - first start), from the job store's own
timestamps (the processes' start-up is excluded, and printed apart).

Peer: ImageMagick's `convert -define jpeg:size=WxH SRC -quality 80 -thumbnail 240x240 OUT`, one
process per file (`MAGICK_THREAD_LIMIT=1`), 1 at a time and 2 at a time; `jpeg:size` is the
thumbnail's size, so libjpeg decodes at the same 1/n scale as Pillow's draft mode does for us:
the fair peer. The bench refuses a `convert` that is not ImageMagick (`convert -version`; Debian:
`apt-get install imagemagick`).

Rounds A B A B: each round runs ours with 1 process, convert 1 at a time, ours with 2, convert 2
at a time; ratios are taken inside the round (median and minimum reported).

Sources: `--distinct` synthetic photos (bench_subdefs.camera_jpeg: gradients plus noise,
`--size`, default 4000x3000), hard-linked up to `--count` names.

    .venv/bin/python bench/bench_thumbnails.py                 # 500 photos, 3 rounds
    .venv/bin/python bench/bench_thumbnails.py --count 60 --rounds 2   # quick
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import machine, print_sides, report_paired, require_imagemagick, tempdir, write_config
from bench_subdefs import make_sources, run_commands
from PIL import Image  # noqa: E402

from repository import DataboxSettings, NewRecord, open_databox  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.stores import open_job_store  # noqa: E402
from tests.pgserver import PASSWORD, remove, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONSOLE = ROOT / "bin" / "console"
SIZE, QUALITY = 240, 80
TARGET_SCALING, TARGET_PEER = 1.7, 1.5
BODY = """
[databoxes.main]
{where}
storage = "var/storage"
[databoxes.main.subdefs.thumbnail]
media_class = "image"
size = {size}
format = "jpeg"
quality = {quality}
[queues.subdefCreation]
workers = 0
"""


class Queue:
    """The site: its databox (records of the sources) and job store, and worker:execute processes."""

    def __init__(self, work: Path, sources: list[Path], pg: Any = None):
        self.root = work / "site"
        where, store = 'path = "var/main.sqlite"', ""
        if pg is not None:  # tests/pgserver.PgServer: the databox and [store] on it, one database each
            box_db, store_db = pg.database(template="template0"), pg.database()
            where = f'url = "{pg.url(box_db)}"\npassword = "{PASSWORD}"'
            store = f'[store]\nurl = "{pg.url(store_db)}"\npassword = "{PASSWORD}"\n'
            self.store_sql = lambda sql: pg.sql(sql, store_db)
        self.cfg = write_config(self.root, store + BODY.format(where=where, size=SIZE, quality=QUALITY),
                                log_level="warning")
        self.config = load(self.cfg)
        box: DataboxSettings = self.config.databoxes["main"]
        self.box = box
        db = open_databox(box)
        try:
            coll = db.create_collection("bench")
            (Path(box.storage) / "docs").mkdir(parents=True, exist_ok=True)
            rows = []
            for i, src in enumerate(sources):
                rel = f"docs/{src.name}"
                os.link(src, Path(box.storage) / rel)
                rows.append(NewRecord(coll.id, src.name, rel, src.stat().st_size, f"{i:064x}", "image/jpeg"))
            self.ids = db.insert_ingested(rows)
            self.per_job: list[float] = []
        finally:
            db.close()

    def queue(self) -> int:
        """Every record back to "not built", one job each; the first new job's id."""
        db = open_databox(self.box, create=False)
        try:
            with db.transaction() as c:
                c.execute("UPDATE records SET subdefs_version = NULL")
                c.execute("DELETE FROM subdefs")
        finally:
            db.close()
        store = open_job_store(self.config.scheduler, self.config.store)
        try:
            first = None
            for rid in self.ids:
                jid = store.add("subdefCreation", "subdefCreation", {"databox": "main", "record": rid})
                first = jid if first is None else first
            return int(first)  # type: ignore[arg-type]
        finally:
            store.close()

    def _jobs(self, sql: str, first: int) -> list[tuple]:
        """`sql` (times as epoch seconds, `{first}` the first job's id) on the job store."""
        if self.config.store.url is not None:
            sql = (sql.replace("created", "extract(epoch FROM created)::float8")
                   .replace("started", "extract(epoch FROM started)::float8")
                   .replace("finished", "extract(epoch FROM finished)::float8")
                   .replace("state = 'extract(epoch FROM finished)::float8'", "state = 'finished'"))
            return self.store_sql(sql.format(first=int(first)))
        conn = sqlite3.connect(self.root / "var" / "state" / "jobs.db", timeout=30)
        try:
            return conn.execute(sql.format(first=int(first))).fetchall()
        finally:
            conn.close()

    def _done(self, first: int) -> tuple[int, float, float, float]:
        """(finished, min created, min started, max finished) of the jobs from `first` on."""
        return self._jobs("SELECT count(*) FILTER (WHERE state = 'finished'), min(created), min(started), "
                          "max(finished) FROM jobs WHERE id >= {first}", first)[0]

    def run(self, processes: int) -> tuple[float, float]:
        """Thumbnails per second with `processes` worker:execute processes; and their start-up seconds."""
        first = self.queue()
        env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
        t0 = time.time()
        procs = [subprocess.Popen([str(CONSOLE), "--config", str(self.cfg), "worker:execute", "--queue-name",
                                   "subdefCreation", "-m", "1", "--node", f"w{k}"], env=env, cwd=self.root,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for k in range(processes)]
        try:
            while True:
                done, _, started, finished = self._done(first)
                if done == len(self.ids):
                    break
                if any(p.poll() is not None for p in procs):
                    raise SystemExit(f"a worker ended: {procs[0].stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                time.sleep(0.05)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
        self.check()
        self.per_job.append(self._per_job(first))
        return len(self.ids) / (finished - started), started - t0

    def _per_job(self, first: int) -> float:
        """The median seconds from a job's start to its finish (its attempt, as the store saw it)."""
        runs = sorted(r[0] for r in self._jobs("SELECT finished - started FROM jobs WHERE id >= {first}", first))
        return runs[len(runs) // 2]

    def check(self) -> None:
        db = open_databox(self.box, create=False)
        try:
            sd = db.subdefs(self.ids[-1])["thumbnail"]
            if max(sd.width, sd.height) != SIZE or not sd.path.exists():
                raise SystemExit(f"bad thumbnail {sd}")
            if db.count_records() != len(self.ids) or len(db.records_needing_subdefs(1)):
                raise SystemExit("not every record got its thumbnail")
        finally:
            db.close()


def start_durable_server() -> Any:
    """tests/pgserver's server, restarted with fsync, synchronous_commit and full_page_writes on."""
    server = start_server()
    server.stop()
    server.pg_ctl("start", "-w", "-l", str(server.root / "server.log"), "-o",
                  f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1 -c fsync=on "
                  "-c synchronous_commit=on -c full_page_writes=on -c max_connections=100")
    return server


def imagemagick(binary: str, out: Path, sources: list[Path], workers: int) -> float:
    """Thumbnails per second with `workers` convert processes at a time."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with Image.open(sources[0]) as im:
        w, h = im.size
    scale = SIZE / max(w, h)
    define = ["-define", f"jpeg:size={math.ceil(w * scale)}x{math.ceil(h * scale)}"]
    commands = [[binary, *define, str(s), "-quality", str(QUALITY), "-thumbnail", f"{SIZE}x{SIZE}",
                 str(out / f"{s.stem}-t.jpg")] for s in sources]
    env = {**os.environ, "MAGICK_THREAD_LIMIT": "1", "OMP_NUM_THREADS": "1"}
    return len(sources) / run_commands(commands, workers, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="photos (default 500)")
    parser.add_argument("--distinct", type=int, default=8, help="distinct photos among them (default 8)")
    parser.add_argument("--size", default="4000x3000", help="photo size WxH (default 4000x3000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the databox and the job store: SQLite files, or a PostgreSQL server started for the "
                             "run (Debian's binaries, fsync on)")
    args = parser.parse_args()
    binary = require_imagemagick()
    w, h = (int(v) for v in args.size.split("x"))
    print(machine(), flush=True)
    print(f"peer: {binary} ({subprocess.run([binary, '-version'], capture_output=True, text=True).stdout.splitlines()[0]})")
    print_sides(f"a job per photo claimed from and settled in the job store ({args.backend}), the record read "
                "from and the thumbnail recorded in the databox, EXIF orientation and colour profile handled, "
                "the file written to a temp name then renamed into storage",
                "a process started per photo (exec, library loading), nothing recorded", "ImageMagick")
    with tempdir("bench-thumbnails-") as work:
        sources = make_sources(work / "src", args.count, args.distinct, (w, h), os.cpu_count() or 2)
        pg = start_durable_server() if args.backend == "postgresql" else None
        q = Queue(work, sources, pg)
        rates: dict[str, list[float]] = {"q1": [], "im1": [], "q2": [], "im2": []}
        startup: list[float] = []
        for r in range(args.rounds):
            for side in ("q1", "im1", "q2", "im2"):
                n = int(side[-1])
                if side.startswith("q"):
                    rate, up = q.run(n)
                    startup.append(up)
                else:
                    rate = imagemagick(binary, work / "im", sources, n)
                rates[side].append(rate)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()), flush=True)
        if pg is not None:
            pg.stop()
            remove(pg.root)
    print(f"worker:execute start-up (excluded above): {min(startup):.2f}-{max(startup):.2f}s; "
          f"a job's attempt (start to finish, median per run): "
          f"{', '.join(f'{x * 1000:.0f}' for x in q.per_job)} ms")
    report_paired("thumbnails/s, queue with 2 worker processes / 1", rates["q2"], rates["q1"],
                  f">= {TARGET_SCALING}x", lambda m: m >= TARGET_SCALING)
    report_paired("thumbnails/s, queue 1 process / convert 1 at a time", rates["q1"], rates["im1"],
                  f">= {TARGET_PEER}x", lambda m: m >= TARGET_PEER)
    report_paired("thumbnails/s, queue 2 processes / convert 2 at a time", rates["q2"], rates["im2"],
                  f">= {TARGET_PEER}x", lambda m: m >= TARGET_PEER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
