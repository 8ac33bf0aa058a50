#!/usr/bin/env python3
"""Archive task throughput vs plain `mv` and `cp` of the same files, in the same run.

    .venv/bin/python bench/bench_archive.py            # 10,000 x 1 KB, 20 x 100 MB, RSS with 100,000 files
    .venv/bin/python bench/bench_archive.py --quick    # a smaller run (2,000 x 1 KB, 4 x 20 MB, 20,000 files)

For each set of files: generate them, `sync`, then time
  - `mv` of all files into another folder (one `mv -t DEST FILES...` per 1,000 files),
  - `cp -r` of the folder (no sync: cp never syncs),
  - one pass of the archive task (cold 0) on the same files in a hotfolder: scan, hash,
    journal, documents durable (syncfs), records committed, sources removed (with
    --keep-copies: documents copied, sources moved to <hotfolder>_archived),
and print files/s, MB/s and archive/baseline speed ratios (1.0 = as fast as the baseline).
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
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.databox import DataboxSettings, open_databox  # noqa: E402
from schedulerd.settings import build, byte_size  # noqa: E402
from tasks.archive import ArchiveTask, Settings  # noqa: E402

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


def timed(argv_list: list[list[str]]) -> float:
    t = time.perf_counter()
    for argv in argv_list:
        subprocess.run(argv, check=True)
    return time.perf_counter() - t


def mv_commands(src: Path, dst: Path) -> list[list[str]]:
    names = sorted(os.listdir(src))
    return [["mv", "-t", str(dst), "--", *[str(src / n) for n in names[i : i + 1000]]] for i in range(0, len(names), 1000)]


def task_for(work: Path, hot: Path, cold: float = 0.0, *, move_archived: bool = False) -> tuple[ArchiveTask, TaskContext]:
    box = DataboxSettings(work / "db.sqlite", work / "storage")
    with open_databox(box) as db:
        if not db.collections():
            db.create_collection("bench")
    s = build(Settings, {"databox": "main", "collection": "bench", "hotfolder": str(hot), "cold": cold,
                         "move_archived": move_archived}, "tasks.bench")
    state = work / "state"
    state.mkdir(exist_ok=True)
    ctx = TaskContext("bench", s, logging.getLogger("bench"), types.SimpleNamespace(databoxes={"main": box}), state)
    return ArchiveTask(s), ctx


def run_pass(task: ArchiveTask, ctx: TaskContext) -> tuple[float, str]:
    async def once() -> str:
        try:
            return await task.run_once(ctx)
        finally:
            await task.shutdown(ctx)

    t = time.perf_counter()
    summary = anyio.run(once)
    return time.perf_counter() - t, summary


def scenario(base: Path, label: str, n: int, size: int, *, move_archived: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"archive-{label}-", dir=base))
    try:
        src, moved, copied, hot = work / "src", work / "moved", work / "copied", work / "hot"
        make_files(src, n, size)
        moved.mkdir()
        sync()
        t_mv = timed(mv_commands(src, moved))
        sync()
        t_cp = timed([["cp", "-r", str(moved), str(copied)]])
        sync()
        shutil.rmtree(copied)
        moved.rename(hot)
        (hot / ".phrasea.xml").write_bytes(PX)
        sync()
        task, ctx = task_for(work, hot, move_archived=move_archived)
        t_arch, summary = run_pass(task, ctx)
        with open_databox(DataboxSettings(work / "db.sqlite", work / "storage")) as db:
            count = db.count_records()
        if count != n:
            raise SystemExit(f"{label}: expected {n} records, got {count} ({summary})")
        mb = n * size / 1e6
        res = {
            "files": n, "file_size": size, "mv_s": t_mv, "cp_s": t_cp, "archive_s": t_arch,
            "archive_files_per_s": n / t_arch, "archive_mb_per_s": mb / t_arch,
            "mv_files_per_s": n / t_mv, "cp_files_per_s": n / t_cp, "cp_mb_per_s": mb / t_cp,
            "ratio_vs_mv": t_mv / t_arch, "ratio_vs_cp": t_cp / t_arch,
        }
        print(f"{label}: {n} x {size:,} B")
        print(f"  mv       {t_mv:8.3f} s  {n / t_mv:10.0f} files/s  {mb / t_mv:9.1f} MB/s")
        print(f"  cp -r    {t_cp:8.3f} s  {n / t_cp:10.0f} files/s  {mb / t_cp:9.1f} MB/s")
        print(f"  archive  {t_arch:8.3f} s  {n / t_arch:10.0f} files/s  {mb / t_arch:9.1f} MB/s  ({summary})")
        print(f"  ratio    archive/mv {res['ratio_vs_mv']:.2f}x   archive/cp {res['ratio_vs_cp']:.2f}x", flush=True)
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rss_child(work: Path, n: int) -> None:
    """In a child process: N files wait in the hotfolder (cold 2 s), then are archived."""
    hot = work / "hot"
    task, ctx = task_for(work, hot, cold=2.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, summary = run_pass(task, ctx)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
    p.add_argument("--keep-copies", action="store_true", help="archive with move_archived = true (a copy per file)")
    p.add_argument("--dir", type=Path, default=ROOT / "var" / "bench")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args()
    small = a.small if a.small is not None else (2000 if a.quick else 10000)
    large = a.large if a.large is not None else (4 if a.quick else 20)
    large_size = byte_size(a.large_size or ("20MB" if a.quick else "100MB"), "--large-size")
    rss_files = a.rss_files if a.rss_files is not None else (20000 if a.quick else 100000)
    a.dir.mkdir(parents=True, exist_ok=True)
    results = {}
    if small:
        results["small"] = scenario(a.dir, "small files", small, byte_size(a.small_size, "--small-size"),
                                    move_archived=a.keep_copies)
    if large:
        results["large"] = scenario(a.dir, "large files", large, large_size, move_archived=a.keep_copies)
    if rss_files:
        results["rss"] = rss(a.dir, rss_files)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
