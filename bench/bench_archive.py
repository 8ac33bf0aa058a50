#!/usr/bin/env python3
"""Archive task throughput vs plain `mv` and `cp` of the same files, in the same run.

    .venv/bin/python bench/bench_archive.py            # 10,000 x 1 KB, 20 x 100 MB, RSS with 100,000 files
    .venv/bin/python bench/bench_archive.py --quick    # a smaller run (2,000 x 1 KB, 4 x 20 MB, 20,000 files)

For each set of files: generate them, `sync`, then time
  - `mv` of all files into the hotfolder (one `mv -t DEST FILES...` per 1,000 files), and
    the `sync -f` that would make that durable (printed as mv+sync, for reference),
  - `cp -r` of the folder (no sync: cp never syncs),
  - one pass of the archive task (cold 0) on the same files in the hotfolder: scan, hash,
    journal, documents durable (syncfs), records committed, each record's subdefCreation
    job queued (a JobService on jobs.db, as in the daemon), sources removed (with
    --keep-copies: documents copied, sources moved to <hotfolder>_archived),
and print files/s, MB/s and archive/baseline speed ratios (1.0 = as fast as the baseline).
Not the same work: `mv` and `cp` never sync, the archive pass makes every document and
record durable before a source leaves the hotfolder (one syncfs and three SQLite syncs per
batch), and also hashes, journals, scans and queues a job per record. On a shared machine `mv` alone varies 2x from
one run to the next, so the small-file scenario is repeated (--rounds, fresh files each
round, mv and archive back to back) and the median ratio is the headline.
The task is warm, as in the running daemon: a first pass on the empty hotfolder, in the
same event loop, has opened the databox and the journal and imported what a pass needs.
Then the peak RSS of a process running the archive task with N files waiting in its
hotfolder (scanned while they warm up, then archived) is measured in a child process.
Work files go to --dir (default var/bench, same filesystem as the checkout) and are removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

from repository import DataboxSettings, open_databox  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.jobs import JobService  # noqa: E402
from schedulerd.settings import build, byte_size  # noqa: E402
from tasks.archive import ArchiveTask, Settings  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _common import machine, print_sides, report_paired  # noqa: E402

PX = b'<?xml version="1.0" encoding="UTF-8"?>\n<record/>\n'


def make_files(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(min(size, 1 << 20))
    for i in range(n):
        with open(folder / f"f{i:06d}.bin", "wb") as fh:
            head = i.to_bytes(8, "big")  # every file unique (no accidental duplicates)
            left = size
            first = True
            while left > 0:
                chunk = (head + block[8:])[:left] if first else block[:left]
                fh.write(chunk)
                left -= len(chunk)
                first = False


def sync() -> None:
    subprocess.run(["sync"], check=True)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv_list: list[list[str]], cpu: list[float] | None = None) -> float:
    """Wall seconds of the commands, one after the other; their CPU seconds appended to `cpu`."""
    c, t = children_cpu(), time.perf_counter()
    for argv in argv_list:
        subprocess.run(argv, check=True)
    wall = time.perf_counter() - t
    if cpu is not None:
        cpu.append(children_cpu() - c)
    return wall


def mv_commands(src: Path, dst: Path) -> list[list[str]]:
    names = sorted(os.listdir(src))
    return [["mv", "-t", str(dst), "--", *[str(src / n) for n in names[i : i + 1000]]] for i in range(0, len(names), 1000)]


def task_for(work: Path, hot: Path, cold: float = 0.0, *,
             move_archived: bool = False) -> tuple[ArchiveTask, TaskContext, JobService]:
    """The archive task with a context as the daemon gives it: the databox `main`, and a job queue
    (a JobService on the embedded jobs.db, its store to close) taking each new record's subdefCreation job."""
    box = DataboxSettings(work / "db.sqlite", work / "storage")
    with open_databox(box) as db:
        if not db.collections():
            db.create_collection("bench")
    s = build(Settings, {"databox": "main", "collection": "bench", "hotfolder": str(hot), "cold": cold,
                         "move_archived": move_archived}, "tasks.bench")
    state = work / "state"
    state.mkdir(exist_ok=True)
    conf = work / "schedulerd.toml"
    conf.write_text(f'[scheduler]\nstate_dir = "{state}"\nlog_dir = "{work}/log"\n\n'
                    f'[databoxes.main]\npath = "{box.path}"\nstorage = "{box.storage}"\n')
    config = load(conf)
    jobs = JobService(config, state, lambda name: logging.getLogger("bench.jobs"))
    ctx = TaskContext("bench", s, logging.getLogger("bench"), config, state / "tasks" / "bench",
                      job_adder=jobs.add_many)
    return ArchiveTask(s), ctx, jobs


def run_pass(task: ArchiveTask, ctx: TaskContext) -> tuple[float, str]:
    async def once() -> str:
        try:
            return await task.run_once(ctx)
        finally:
            await task.shutdown(ctx)

    t = time.perf_counter()
    summary = anyio.run(once)
    return time.perf_counter() - t, summary


def warm_session(task: ArchiveTask, ctx: TaskContext, between) -> tuple[float, float, str, object]:
    """One event loop, as in the daemon: a first pass on the still empty hotfolder (opens the
    databox and the journal, imports what a pass needs: once per daemon life), then
    `between()` (fills the hotfolder, times the baselines), then the timed pass: its wall and
    CPU seconds (this process, all threads: the rest of the wall is waiting, for syncs or a core)."""
    async def session() -> tuple[float, float, str, object]:
        try:
            await task.run_once(ctx)
            extra = between()
            c, t = time.process_time(), time.perf_counter()
            summary = await task.run_once(ctx)
            return time.perf_counter() - t, time.process_time() - c, summary, extra
        finally:
            await task.shutdown(ctx)

    return anyio.run(session)


def scenario(base: Path, label: str, n: int, size: int, *, move_archived: bool = False, rounds: int = 1) -> dict:
    """`rounds` times (fresh files each): mv, cp, archive; the median round is the result."""
    runs = [one_round(base, label, n, size, move_archived=move_archived, tag=f" (round {r + 1}/{rounds})" if rounds > 1 else "")
            for r in range(rounds)]
    # each round: mv, then the archive pass, back to back (paired); ratio = archive files/s / mv files/s
    mid = report_paired(f"{label}: files/s (archive / mv)", [r["archive_files_per_s"] for r in runs],
                        [r["mv_files_per_s"] for r in runs], ">= 0.6x" if size < 1 << 20 else "",
                        (lambda m: m >= 0.6) if size < 1 << 20 else None)
    report_paired(f"{label}: files/s (archive / mv+sync)", [r["archive_files_per_s"] for r in runs],
                  [r["files"] / r["mv_sync_s"] for r in runs])
    report_paired(f"{label}: files/s (archive / cp -r)", [r["archive_files_per_s"] for r in runs],
                  [r["cp_files_per_s"] for r in runs])
    if rounds == 1:
        return runs[0]
    med = min(runs, key=lambda r: abs(r["ratio_vs_mv"] - mid))
    return {**med, "ratio_vs_mv": mid, "rounds": runs}


def one_round(base: Path, label: str, n: int, size: int, *, move_archived: bool = False, tag: str = "") -> dict:
    work = Path(tempfile.mkdtemp(prefix="archive-", dir=base))
    jobs: JobService | None = None
    try:
        src, copied, hot = work / "src", work / "copied", work / "hot"
        make_files(src, n, size)
        hot.mkdir()
        (hot / ".phrasea.xml").write_bytes(PX)
        task, ctx, jobs = task_for(work, hot, move_archived=move_archived)

        mv_cpu: list[float] = []

        def baselines() -> tuple[float, float, float]:
            sync()
            t_mv = timed(mv_commands(src, hot), mv_cpu)  # the mv fills the hotfolder
            t_sync = timed([["sync", "-f", str(hot)]])  # what mv would need to be durable
            t_cp = timed([["cp", "-r", str(hot), str(copied)]])
            sync()
            shutil.rmtree(copied)
            sync()
            return t_mv, t_sync, t_cp

        t_arch, cpu_arch, summary, (t_mv, t_sync, t_cp) = warm_session(task, ctx, baselines)
        with open_databox(DataboxSettings(work / "db.sqlite", work / "storage")) as db:
            count = db.count_records()
        if count != n:
            raise SystemExit(f"{label}: expected {n} records, got {count} ({summary})")
        queued = jobs.store.count_by_queue_state().get(("subdefCreation", "waiting"), 0)
        if queued != n:
            raise SystemExit(f"{label}: expected {n} subdefCreation jobs queued, got {queued}")
        mb = n * size / 1e6
        res = {
            "files": n, "file_size": size, "mv_s": t_mv, "cp_s": t_cp, "archive_s": t_arch,
            "archive_files_per_s": n / t_arch, "archive_mb_per_s": mb / t_arch,
            "mv_files_per_s": n / t_mv, "cp_files_per_s": n / t_cp, "cp_mb_per_s": mb / t_cp,
            "ratio_vs_mv": t_mv / t_arch, "ratio_vs_cp": t_cp / t_arch,
            "mv_sync_s": t_mv + t_sync, "ratio_vs_mv_sync": (t_mv + t_sync) / t_arch,
            "mv_cpu_s": mv_cpu[0], "archive_cpu_s": cpu_arch,
        }
        print(f"{label}: {n} x {size:,} B{tag}")
        print(f"  mv       {t_mv:8.3f} s  {n / t_mv:10.0f} files/s  {mb / t_mv:9.1f} MB/s  (CPU {mv_cpu[0]:.3f} s)")
        print(f"  mv+sync  {t_mv + t_sync:8.3f} s  {n / (t_mv + t_sync):10.0f} files/s  "
              "(mv, then sync -f: durable like the archive)")
        print(f"  cp -r    {t_cp:8.3f} s  {n / t_cp:10.0f} files/s  {mb / t_cp:9.1f} MB/s")
        print(f"  archive  {t_arch:8.3f} s  {n / t_arch:10.0f} files/s  {mb / t_arch:9.1f} MB/s  ({summary})")
        print(f"           CPU {cpu_arch:.3f} s (all threads), waiting {max(0.0, t_arch - cpu_arch):.3f} s "
              "(syncs, disk, or a core on a loaded machine)")
        print(f"  ratio    archive/mv {res['ratio_vs_mv']:.2f}x   archive/(mv+sync) {res['ratio_vs_mv_sync']:.2f}x   "
              f"archive/cp {res['ratio_vs_cp']:.2f}x", flush=True)
        return res
    finally:
        if jobs is not None:
            jobs.store.close()
        shutil.rmtree(work, ignore_errors=True)


def rss_child(work: Path, n: int) -> None:
    """In a child process: N files wait in the hotfolder (cold 2 s), then are archived (their
    jobs queued, as in the daemon)."""
    hot = work / "hot"
    task, ctx, jobs = task_for(work, hot, cold=2.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, summary = run_pass(task, ctx)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    jobs.store.close()
    print(json.dumps({"files": n, "rss_before_kb": before, "rss_peak_kb": peak, "pass_s": t, "summary": summary}))


def rss(base: Path, n: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="archive-rss-", dir=base))
    try:
        hot = work / "hot"
        for d in range(n // 1000 + 1):
            folder = hot / f"d{d:03d}"
            folder.mkdir(parents=True)
            for i in range(min(1000, n - d * 1000)):
                (folder / f"file-{d:03d}-{i:04d}.jpg").write_bytes(b"x" * 64)
        (hot / ".phrasea.xml").write_bytes(PX)
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(work), str(n)], check=True,
                             capture_output=True, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        print(f"RSS with {n} files waiting then archived: peak {res['rss_peak_kb'] / 1024:.1f} MB "
              f"(after imports {res['rss_before_kb'] / 1024:.1f} MB; pass {res['pass_s']:.1f} s: {res['summary']})",
              flush=True)
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["--rss-child"]:
        rss_child(Path(sys.argv[2]), int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--small", type=int, default=None, help="number of small files (10000)")
    p.add_argument("--small-size", default="1KB")
    p.add_argument("--large", type=int, default=None, help="number of large files (20)")
    p.add_argument("--large-size", default=None, help="size of a large file (100MB)")
    p.add_argument("--rss-files", type=int, default=None, help="files waiting for the RSS measure (100000)")
    p.add_argument("--rounds", type=int, default=None, help="small-file rounds, median reported (5; --quick 1)")
    p.add_argument("--keep-copies", action="store_true", help="archive with move_archived = true (a copy per file)")
    p.add_argument("--dir", type=Path, default=ROOT / "var" / "bench")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args()
    small = a.small if a.small is not None else (2000 if a.quick else 10000)
    large = a.large if a.large is not None else (4 if a.quick else 20)
    large_size = byte_size(a.large_size or ("20MB" if a.quick else "100MB"), "--large-size")
    rss_files = a.rss_files if a.rss_files is not None else (20000 if a.quick else 100000)
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 5)
    a.dir.mkdir(parents=True, exist_ok=True)
    print(machine())
    print_sides("scans the hotfolder, hashes every file (SHA-256), writes a durable journal entry per batch, makes the "
                "documents durable (one syncfs per batch), commits the records (SQLite synchronous = FULL), queues "
                "each record's subdefCreation job (jobs.db, one write per batch), then lets the sources go",
                "nothing of that: mv renames, cp copies; neither syncs (mv+sync adds one sync -f)",
                "mv / cp")
    results = {}
    if small:
        results["small"] = scenario(a.dir, "small files", small, byte_size(a.small_size, "--small-size"),
                                    move_archived=a.keep_copies, rounds=max(1, rounds))
    if large:
        results["large"] = scenario(a.dir, "large files", large, large_size, move_archived=a.keep_copies)
    if rss_files:
        results["rss"] = rss(a.dir, rss_files)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
