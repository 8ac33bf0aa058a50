"""Benchmark: ftp_pull / ftp_push beside `lftp mirror` / `lftp mirror -R`, same servers, same run.

    .venv/bin/python bench/bench_ftp.py [--files 1000] [--size 100KB] [--big-mb 512]
                                        [--parallel 4] [--protocols ftp,ftps,sftp] [--repeat 1] [--warmup 1]
                                        [--protocol-log]

Servers are started on 127.0.0.1 (vsftpd plain and explicit FTPS at its defaults,
OpenSSH sshd for SFTP: root is needed). vsftpd's protocol log (every command and
reply, which the tests read) is off as by default: on, it costs the server two log
writes per command (`--protocol-log` turns it on). Each row times our task and lftp with
the same parallelism on the same data; `ratio` is lftp seconds / our seconds
(>= 1.0: we are as fast or faster). Like for like: each side's clock stops
only after a `sync` that follows its run, so the files either side wrote (pulls: the
local copies; pushes: the server's) are on disk when it stops; lftp never fsyncs by
itself. Both sides write each file under a temporary name and rename it when complete, so
a receiver never sees a half-written file (lftp: `set xfer:use-temp-file yes`, off by
default), and both are given the drop-box push: `mirror -R --Remove-source-files` for
lftp. Our side does more per file on purpose and keeps doing it here: pull = size check,
data durable (syncfs) before the rename; push = size check (FTP). Every
timed run starts after a `sync`, so neither side flushes what the other (or the
previous row) wrote. Before
a server's rows, one untimed pull of a few small files warms our side (imports,
thread pool), as in the long-running daemon; lftp is a new process for every run.
Each row then runs `--warmup` untimed rounds of both sides before its timed ones
(the first round of a row ran slower whichever side went first, and the timed
alternation always opens with ours).

Per row: each side's best run and median, and `paired`: the median over rounds of
lftp's seconds / ours in that round (the two runs of a round are next to each other
in time, so a slow stretch of the host counts against both), with `won` the rounds
where that ratio is >= 1. The best run alone rewards the side whose times spread
more: lftp, a new process per run, had one 0.53 s run and a median of 0.72 s in a row
where ours ran 0.61-0.65 s.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import functools
import itertools
import logging
import mmap
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

# the daemon imports its protocol modules once; the first timed row must not pay for it
import tasks.transfer.ftp  # noqa: E402,F401
import tasks.transfer.sftp  # noqa: E402,F401
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.settings import build  # noqa: E402
from tasks.ftp_pull import FtpPull, PullSettings  # noqa: E402
from tasks.ftp_push import FtpPush, PushSettings  # noqa: E402
from tests.transfer import servers  # noqa: E402


def parse_size(text: str) -> int:
    from schedulerd.settings import byte_size

    return byte_size(text, "--size")


def make_files(folder: Path, count: int, size: int) -> None:
    """Random bytes; every 1 MB chunk starts with its file and chunk number, so a chunk
    written at the wrong place shows in `check_same`."""
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(min(size, 1 << 20))
    for i in range(count):
        with open(folder / f"file{i:05}.bin", "wb") as f:
            left, chunk = size, 0
            while left:
                n = min(left, len(block))
                f.write((struct.pack("<II", i, chunk) + block[8:n])[:n])
                left -= n
                chunk += 1


def link_tree(src: Path, dst: Path) -> None:
    """Hard links: the push task removes what it sent, the source stays for the next row."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        os.link(p, dst / p.name)


TRASH: list[Path] = []  # where `clear` moves what it clears; emptied after the last row
_trashed = itertools.count()


FEW_FILES = 64  # a folder with at most this many entries is deleted at once by `clear`


def clear(folder: Path) -> None:
    """Move `folder` aside; it is deleted after the last row (see `settle_deletions`).

    Deleting thousands of files between timed runs made the next run's file creations
    slow on this VM's journal-less ext4 (perf: `recently_deleted`, a scan past every
    inode freed in the last half minute), charging the harness's cleanup to whichever
    side ran next. A folder of a few files (the 512 MB rows) frees a few inodes and is
    deleted now: kept, every such run's output stayed on disk until the end (~40 GB a run).
    """
    if not TRASH or _few(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    moved = TRASH[0] / f"{next(_trashed)}-{folder.name}"
    try:
        os.rename(folder, moved)
    except FileNotFoundError:
        return
    forget(moved)


def _few(folder: Path) -> bool:
    try:
        return next(itertools.islice(folder.rglob("*"), FEW_FILES, None), None) is None
    except OSError:
        return False


def forget(folder: Path) -> None:
    """Drop the page cache of what a run wrote (files of one link only: the data sets stay cached).

    On this VM a page the guest never used before costs ~10 us to write the first
    time (512 MB into fresh pages: 1.3 s of system time; into recycled pages: 0.1 s).
    Kept in the trash, each run's output would push the next run onto fresh pages, a
    cost of the VM that landed on whichever side ran later. Once written back, the
    dropped pages return to the free list, touched, for the next run.
    """
    os.sync()
    for p in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and p.lstat().st_nlink == 1:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def warm_memory(mb: int) -> None:
    """Touch `mb` MB once and free them: pages the first timed runs find already used (see `forget`)."""
    block = b"\1" * (1 << 20)
    with mmap.mmap(-1, mb << 20) as m:
        for off in range(0, mb << 20, 1 << 20):
            m[off:off + (1 << 20)] = block


CREATE_CLEAN_US = 60.0  # median µs per file creation below which a folder counts as settled
SETTLE_MAX = 305.0  # ext4 (no journal) skips inodes freed < 60 s ago, < 300 s while their table block is dirty


def create_cost(folder: Path, count: int = 200) -> float:
    """Median µs to create an empty file in `folder` (a new subfolder; the files are kept).

    On ext4 without a journal, a new inode is searched for past every inode of the
    group freed within the last 60 s (300 s while its inode table block is dirty):
    after a large deletion (a test run, the previous bench's clean-up) each creation
    in that group took 250-480 µs on this VM instead of ~16 µs, a cost of the machine
    added to both sides alike that hides how they differ.
    """
    folder.mkdir(parents=True)
    took = []
    for i in range(count):
        t = time.perf_counter()
        os.close(os.open(folder / f"p{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        took.append(time.perf_counter() - t)
    return statistics.median(took) * 1e6


def settle_deletions(work: Path, limit: float) -> float:
    """Wait (at most `limit` s) until creating files in `work` costs what it costs on a quiet disk.

    Returns the last measured cost (µs per file), printed in the header."""
    os.sync()
    deadline = time.monotonic() + limit
    probes = itertools.count()
    while True:
        cost = create_cost(work / "trash" / f"probe-{next(probes)}")
        if cost <= CREATE_CLEAN_US or time.monotonic() >= deadline:
            return cost
        print(f"# creating a file here costs {cost:.0f} us (recently deleted inodes, ext4): waiting", flush=True)
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))


def check_same(a: Path, b: Path) -> None:
    left = {p.name: p.stat().st_size for p in a.iterdir() if not p.name.startswith(".")}
    right = {p.name: p.stat().st_size for p in b.iterdir() if not p.name.startswith(".")}
    if left != right:
        raise SystemExit(f"bench: {a} and {b} differ ({len(left)} vs {len(right)} files)")
    for name in left:  # the bytes too, not only the sizes
        if not filecmp.cmp(a / name, b / name, shallow=False):
            raise SystemExit(f"bench: {a / name} and {b / name} differ")


class Target:
    """One server + how both clients reach it."""

    def __init__(self, protocol: str, server: Any, certs: servers.Certs | None, remote_root: str, local_root: Path):
        self.protocol = protocol
        self.server = server
        self.certs = certs
        self.remote_root = remote_root  # remote path of local_root
        self.local_root = local_root  # the server-side folder on disk

    def settings(self) -> dict[str, Any]:
        s = self.server
        d: dict[str, Any] = {"host": s.host, "port": s.port, "user": s.user, "timeout": 30, "retries": 0}
        if self.protocol == "sftp":
            d.update(protocol="sftp", key_file=str(s.key_file), known_hosts=str(s.known_hosts))
        else:
            d["password"] = s.password
        if self.protocol == "ftps":
            d.update(protocol="ftps", ca_file=str(self.certs.ca_file))  # type: ignore[union-attr]
        return d

    def lftp(self, parallel: int, commands: str) -> list[str]:
        s = self.server
        # xfer:use-temp-file: lftp writes each file under a temporary name and renames it once
        # complete, as our tasks do (a receiver never sees a half-written file): the same job
        sets = [f"set mirror:parallel-transfer-count {parallel}", "set net:max-retries 1", "set cmd:fail-exit yes",
                "set xfer:use-temp-file yes"]
        if self.protocol == "sftp":
            ssh = (f"ssh -a -x -i {s.key_file} -o UserKnownHostsFile={s.known_hosts} "
                   "-o StrictHostKeyChecking=yes -o BatchMode=yes")
            sets.append(f"set sftp:connect-program \"{ssh}\"")
            opener = f"open -u {s.user}, -p {s.port} sftp://{s.host}"
        else:
            sets.append("set ftp:passive-mode yes")
            if self.protocol == "ftps":
                sets += ["set ftp:ssl-force yes", "set ftp:ssl-protect-data yes", f"set ssl:ca-file {self.certs.ca_file}"]  # type: ignore[union-attr]
            else:
                sets.append("set ftp:ssl-allow no")
            opener = f"open -u {s.user},{s.password} -p {s.port} ftp://{s.host}"
        return ["lftp", "-c", "; ".join([*sets, opener, commands])]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of `fn` and the `sync` after it: the clock stops once what it wrote is on disk."""
    t = time.perf_counter()
    fn()
    os.sync()
    return time.perf_counter() - t


def run_ours_pull(t: Target, remote_dir: str, local: Path, parallel: int, state: Path) -> None:
    data = {**t.settings(), "remote_dir": remote_dir, "local_dir": str(local), "stable": 0,
            "delete_remote": False, "on_exists": "overwrite", "parallel": parallel, "block_size": "1MB"}
    task = FtpPull(build(PullSettings, data, "bench"))
    clear(state)
    ctx = TaskContext.for_test("bench", task.settings, tmp_path=state)
    anyio.run(task.run_once, ctx)


def run_ours_push(t: Target, local: Path, remote_dir: str, parallel: int, state: Path) -> None:
    data = {**t.settings(), "remote_dir": remote_dir, "local_dir": str(local), "stable": 0,
            "parallel": parallel, "block_size": "1MB"}
    task = FtpPush(build(PushSettings, data, "bench"))
    clear(state)
    ctx = TaskContext.for_test("bench", task.settings, tmp_path=state)
    anyio.run(task.run_once, ctx)


def run_lftp(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"bench: lftp failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def all_sent(outbox: Path, side: str) -> None:
    """Both sides are given the drop-box job: every source file removed once sent."""
    left = [p for p in outbox.rglob("*") if p.is_file()]
    if left:
        raise SystemExit(f"bench: {side} left {len(left)} source files in {outbox}")


def owned_by_server(t: Target, path: Path) -> None:
    owner = getattr(t.server, "owner", -1)
    if owner >= 0:
        for p in [path, *path.rglob("*")]:
            os.chown(p, owner, -1)


def warm_up(t: Target, work: Path, parallel: int) -> None:
    """One untimed pull of a few small files: the daemon is long-running, its thread pool and
    first connections warm; only lftp (a new process each row) should pay a cold start."""
    src = t.local_root / "warm-up"
    make_files(src, parallel, 1024)
    owned_by_server(t, src)
    run_ours_pull(t, f"{t.remote_root}/warm-up", work / "warm-up", parallel, work / "state")
    clear(work / "warm-up"), clear(src)


Row = tuple[str, str, str, list[float], list[float]]


def bench_rows(t: Target, datasets: dict[str, Path], parallel: int, repeat: int, work: Path,
               directions: list[str], warmup: int = 1) -> Iterator[Row]:
    """Each row: `warmup` untimed rounds of both sides, then `repeat` timed ones (each with its `sync`, see `timed`).

    A row's first round ran slower than its later ones whichever side went first
    (a fresh data set on the server, pages and inodes not yet recycled); timed, it
    always fell on the side that opens the alternation.
    """
    warm_up(t, work, parallel)
    for label, src in datasets.items():
        if "pull" in directions:
            remote_src = t.local_root / f"src-{label}"
            if not remote_src.exists():
                shutil.copytree(src, remote_src, copy_function=os.link)  # type: ignore[arg-type]
                owned_by_server(t, remote_src)
                os.sync()
            remote_path = f"{t.remote_root}/src-{label}"
            ours, theirs = [], []
            for i in range(-warmup, repeat):  # i < 0: untimed
                a, b = work / "pull-ours", work / "pull-lftp"
                clear(a), clear(b)
                os.sync()  # our syncfs must not flush what an earlier run wrote
                # alternate who goes first: the side right after the clear pays for the inodes
                # and blocks just freed (ext4 inode reuse checks, discard on this VM's disk)
                sides = [(ours, functools.partial(run_ours_pull, t, remote_path, a, parallel, work / "state")),
                         (theirs, functools.partial(run_lftp, t.lftp(parallel, f"mirror {remote_path} {b}")))]
                for times, run in (sides if i % 2 == 0 else sides[::-1]):
                    took = timed(run)
                    if i >= 0:
                        times.append(took)
                check_same(a, src), check_same(b, src)
                clear(a), clear(b)
            yield t.protocol, "pull", label, ours, theirs
        if "push" in directions:
            ours, theirs = [], []
            outbox = work / "outbox"
            for i in range(-warmup, repeat):  # i < 0: untimed
                dst_a, dst_b = f"dst-ours-{label}-{i}", f"dst-lftp-{label}-{i}"
                push_sides = [
                    (ours, "ours", functools.partial(
                        run_ours_push, t, outbox, f"{t.remote_root}/{dst_a}", parallel, work / "state")),
                    (theirs, "lftp", functools.partial(
                        run_lftp, t.lftp(parallel, f"mirror -R --Remove-source-files {outbox} {t.remote_root}/{dst_b}"))),
                ]
                # alternate who goes first, as for pulls: the first side pays for the files the
                # previous row or round just deleted (ext4 frees their blocks and inodes lazily)
                for times, side, run in (push_sides if i % 2 == 0 else push_sides[::-1]):
                    clear(outbox)
                    link_tree(src, outbox)
                    os.sync()
                    took = timed(run)
                    if i >= 0:
                        times.append(took)
                    all_sent(outbox, side)
                check_same(t.local_root / dst_a, src), check_same(t.local_root / dst_b, src)
                clear(t.local_root / dst_a), clear(t.local_root / dst_b), clear(outbox)
            yield t.protocol, "push", label, ours, theirs


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--size", type=parse_size, default=100 * 1024)
    p.add_argument("--big-mb", type=int, default=512, help="size of the one-big-file row (0: skip)")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--protocols", default="ftp,ftps,sftp")
    p.add_argument("--directions", default="pull,push")
    p.add_argument("--repeat", type=int, default=1, help="timed rounds per row (best, median and paired ratio of them)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds of both sides before each row's timed ones")
    p.add_argument("--protocol-log", action="store_true",
                   help="vsftpd logs every command and reply (log_ftp_protocol=YES, as the tests' servers; "
                        "vsftpd's default and this bench's is off)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temp folder, removed at the end")
    p.add_argument("--settle", type=float, default=SETTLE_MAX,
                   help="at most this many seconds to wait before the first timed run until creating a file in "
                        f"the work folder costs <= {CREATE_CLEAN_US:.0f} us (files deleted shortly before the "
                        f"bench make it cost far more on ext4; default {SETTLE_MAX:.0f}; 0: measure, no wait)")
    opts = p.parse_args()
    if shutil.which("lftp") is None:
        print("bench: lftp is not installed", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    protocols = [x for x in opts.protocols.split(",") if x]
    directions = [x for x in opts.directions.split(",") if x]
    with contextlib.ExitStack() as stack:
        work = opts.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ftp-")))
        work.mkdir(parents=True, exist_ok=True)
        datasets: dict[str, Path] = {}
        if opts.files:
            datasets[f"{opts.files}x{opts.size // 1024}KB"] = work / "data-many"
            make_files(work / "data-many", opts.files, opts.size)
        if opts.big_mb:
            datasets[f"1x{opts.big_mb}MB"] = work / "data-big"
            make_files(work / "data-big", 1, opts.big_mb * 1024 * 1024)
        os.sync()  # the data sets' own writeback must not be charged to the first row
        certs = servers.make_certs(work / "certs")
        targets: list[Target] = []
        try:
            if "ftp" in protocols:
                s = stack.enter_context(servers.vsftpd(work / "vsftpd", protocol_log=opts.protocol_log))
                targets.append(Target("ftp", s, None, s.remote, s.pub))
            if "ftps" in protocols:
                s = stack.enter_context(servers.vsftpd(work / "vsftpd-tls", "explicit", certs, protocol_log=opts.protocol_log))
                targets.append(Target("ftps", s, certs, s.remote, s.pub))
            if "sftp" in protocols:
                ssh = stack.enter_context(servers.sshd(work / "sshd"))
                targets.append(Target("sftp", ssh, None, str(ssh.root), ssh.root))
        except servers.Missing as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        trash = work / "trash"
        trash.mkdir(exist_ok=True)
        TRASH.append(trash)
        warm_memory(2 * max(opts.big_mb, opts.files * opts.size >> 20) + 256)
        cost = settle_deletions(work, opts.settle)
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, load {_load()} at start, "
              f"file creation {cost:.0f} us (median)")
        print("# both sides: the clock stops after a sync of what the run wrote (like for like); neither hashes (sizes "
              "are compared); ours: temp names, pull: size check, syncfs per batch of 64 files before the renames, "
              "push: sizes checked and renames per batch of 32 files; lftp: temp names too (xfer:use-temp-file), one "
              "rename per file, no size check, no fsync of its own")
        print(f"{'protocol':8} {'dir':5} {'data':14} {'ours s':>8} {'lftp s':>8} {'ratio':>6}   "
              f"{'median: ours':>12} {'lftp':>6} {'ratio':>6}   {'paired':>6} {'won':>5}   "
              f"(parallel {opts.parallel}, best of {opts.repeat}{f' after {opts.warmup} untimed' if opts.warmup else ''})")
        worst: dict[str, float] = {}
        for t in targets:
            rows = bench_rows(t, datasets, opts.parallel, opts.repeat, work, directions, opts.warmup)
            for proto, direction, label, ours, theirs in rows:
                ratio = min(theirs) / min(ours)
                paired = [b / a for a, b in zip(ours, theirs, strict=True)]  # each round's two runs, side by side in time
                pm = statistics.median(paired)
                won = sum(r >= 1.0 for r in paired)
                for key, value in (("best", ratio), ("paired", pm)):
                    worst[key] = min(worst.get(key, value), value)
                mo, mt = statistics.median(ours), statistics.median(theirs)
                print(f"{proto:8} {direction:5} {label:14} {min(ours):8.3f} {min(theirs):8.3f} {ratio:6.3f}x   "
                      f"{mo:12.2f} {mt:6.2f} {mt / mo:6.2f}x   {pm:6.3f}x {won:>2}/{len(paired):<2}", flush=True)
        if worst:
            print(f"worst ratio {worst['best']:.3f}x of the best runs, {worst['paired']:.3f}x paired (the median of each "
                  f"round's lftp seconds / ours); target: paired >= 0.9 (ftps pull of small files >= 3); "
                  f"load {_load()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
