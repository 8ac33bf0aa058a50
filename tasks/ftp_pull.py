"""`ftp_pull`: fetch what agencies drop on an FTP/FTPS/SFTP server into a local folder.

As Phraseanet: list, wait `stable`, list again, and fetch only files whose size
and time did not change (an upload in progress is left for the next pass). A
file is visible locally only once complete (see `transfer.fetch`); the remote
copy is deleted only after that. With `delete_remote = false` a ledger of
(path, size, mtime) keeps anything from being pulled twice. `local_dir` is
often an archive task's hotfolder: temp files are hidden, which hotfolders skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TextIO

import anyio

from schedulerd.durable import write_atomic
from schedulerd.plugin import Context, TaskLog, TaskType
from schedulerd.settings import duration, int_range
from tasks.ftp_common import Progress, check_remote_dir
from tasks.transfer import ConnectError, RemoteClient, RemoteEntry, TransferError, close, connect, extra_session
from tasks.transfer.errors import LocalError
from tasks.transfer.fetch import PART_RE, Downloaded, commit, download, inside, part_name
from tasks.transfer.names import printable
from tasks.transfer.settings import ConnectionSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class PullSettings(ConnectionSettings):
    """The connection fields (flattened) plus what to pull and where."""

    local_dir: Path
    remote_dir: str = "/"
    recursive: bool = False
    masks: tuple[str, ...] = ()  # e.g. ["*.jpg", "*.tif"], case-insensitive; none: every file
    include_hidden: bool = False  # dot files are usually uploads in progress
    stable: Annotated[float, duration] = 25.0
    delete_remote: bool = True
    on_exists: Literal["skip", "overwrite", "rename"] = "rename"
    parallel: Annotated[int, int_range(1, 32)] = 1
    max_depth: Annotated[int, int_range(1, 100)] = 20

    def check(self) -> None:
        super().check()
        check_remote_dir(self.remote_dir)
        for i, m in enumerate(self.masks):
            if not m or "/" in m:
                raise ValueError(f"masks[{i}]: a file name pattern like \"*.jpg\", got {m!r}")


async def walk(client: RemoteClient, s: PullSettings, log: TaskLog) -> dict[str, RemoteEntry]:
    """Files under `remote_dir` by relative path (safe names only, masks applied)."""
    found: dict[str, RemoteEntry] = {}
    todo: list[tuple[str, str, int]] = [("", s.remote_dir, 0)]
    masks = [m.lower() for m in s.masks]
    while todo:
        rel_dir, remote, depth = todo.pop(0)
        for e in await client.list(remote):
            if e.name.startswith(".") and not s.include_hidden:
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            if e.type == "dir":
                if s.recursive and depth + 1 < s.max_depth:
                    todo.append((rel, e.path, depth + 1))
                continue
            if e.type != "file":
                log.debug("skipping %s: a %s", printable(e.path), e.type)
                continue
            if masks and not any(fnmatch.fnmatchcase(e.name.lower(), m) for m in masks):
                continue
            found[rel] = e
    return found


@dataclasses.dataclass
class Plan:
    """Where each wanted file goes: its target and hidden temp (by relative path), and
    which files have a temp there to be resumed (relative paths: a str hashes once,
    a Path at every lookup)."""

    places: dict[str, tuple[Path, Path]]
    resumable: set[str]


def plan(local_dir: Path, todo: dict[str, RemoteEntry], log: TaskLog) -> Plan:
    """Targets and temp files, worked out folder by folder: one symlink check and one
    listing per folder, not a path parse and a lookup per file (this runs before the
    first download). Our temp files for these targets whose remote file changed since
    are removed; a target whose folder leads outside `local_dir` (a local symlink) is left out.
    """
    by_folder: dict[str, list[str]] = {}
    for rel in todo:
        folder_rel, _, name = rel.rpartition("/")
        by_folder.setdefault(folder_rel, []).append(name)
    places: dict[str, tuple[Path, Path]] = {}
    resumable: set[str] = set()
    for folder_rel, names in by_folder.items():
        folder = local_dir.joinpath(*folder_rel.split("/")) if folder_rel else local_dir
        prefix = f"{folder_rel}/" if folder_rel else ""
        if not inside(local_dir, folder / names[0]):
            for name in names:
                log.warning("refusing %s: %s is outside %s", printable(prefix + name), folder, local_dir)
            continue
        wanted: dict[str, str] = {}  # temp name -> relative path
        for name in names:
            rel = prefix + name
            temp = part_name(name, todo[rel])
            wanted[temp] = rel
            places[rel] = (folder / name, folder / temp)
        stems = set(names)
        with contextlib.suppress(OSError):
            for e in os.scandir(folder):
                m = PART_RE.match(e.name)
                if m is None:
                    continue
                if e.name in wanted:
                    resumable.add(wanted[e.name])
                elif m.group(1) in stems:  # the temp of a remote file that changed since
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
    return Plan(places, resumable)


def _plan_in(local_dir: Path, todo: dict[str, RemoteEntry], log: TaskLog) -> Plan:
    """`plan` after making `local_dir` (blocking: run in a worker thread)."""
    local_dir.mkdir(parents=True, exist_ok=True)
    return plan(local_dir, todo, log)


Key = tuple[int | None, float | None]


class Ledger:
    """What was already pulled (path, size, mtime), so that nothing is pulled twice.

    A snapshot written atomically plus an append-only journal of one JSON line per
    pulled file, handed to the kernel by `flush()` after each group of settled files:
    a crash mid-pass loses nothing flushed (a file not yet flushed is pulled again, as
    if the crash came a moment earlier); the next `compact()` folds the journal in.
    `add` and `seen` only touch memory; loading, `flush` and `compact` do file I/O: the task
    runs them in worker threads.
    """

    def __init__(self, path: Path):
        self.path = path
        self.journal = path.with_suffix(path.suffix + ".journal")
        self.items: dict[str, Key] = {}
        self._fh: TextIO | None = None
        self._lines: list[str] = []  # journal lines added since the last flush
        self._lock = threading.Lock()  # the lines and items: add (the loop) against flush (a worker thread)
        self._io = threading.Lock()  # the journal file: two workers' flushes
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.items = {k: (v[0], v[1]) for k, v in data.get("files", {}).items()}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"ledger {self.path} is damaged ({e}); move it away to pull everything again") from None
        with contextlib.suppress(FileNotFoundError):
            for line in self.journal.read_text().splitlines():
                try:
                    k, size, mtime = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a torn last line after a crash
                self.items[k] = (size, mtime)

    def seen(self, rel: str, size: int | None, mtime: float | None) -> bool:
        return self.items.get(rel) == (size, mtime)

    def add(self, rel: str, size: int | None, mtime: float | None) -> None:
        with self._lock:
            self.items[rel] = (size, mtime)
            self._lines.append(json.dumps([rel, size, mtime]) + "\n")

    def flush(self) -> None:
        """The lines added since the last flush, appended to the journal and handed to the kernel."""
        with self._lock:
            lines, self._lines = self._lines, []
        if not lines:
            return
        with self._io:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.journal, "a", encoding="utf-8")
            self._fh.write("".join(lines))
            self._fh.flush()

    def compact(self, keep: Iterable[str] | None = None) -> None:
        """Fold the journal into the snapshot; with `keep`, forget files no longer on the server."""
        with self._lock:
            if keep is not None:
                wanted = set(keep)
                self.items = {k: v for k, v in self.items.items() if k in wanted}
            items, self._lines = dict(self.items), []  # all in the snapshot: the journal goes
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files = {k: list(v) for k, v in sorted(items.items())}
        write_atomic(self.path, json.dumps({"version": 1, "files": files}, separators=(",", ":")).encode())
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()

    def close(self) -> None:
        with self._io:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


async def _commit(batch: list[tuple[str, RemoteEntry, Downloaded]], done: anyio.Event) -> None:
    try:
        await commit([d for _, _, d in batch])
    finally:
        done.set()


BATCH_FILES = 64  # downloaded files made durable together (one syncfs) before their remote copies go
BATCH_BYTES = 16 * 1024 * 1024


class FtpPull(TaskType):
    type_name: ClassVar[str] = "ftp_pull"
    Settings: ClassVar[type] = PullSettings
    emits: ClassVar[tuple[str, ...]] = ("ftp.pulled",)
    default_period: ClassVar[float] = 900.0

    settings: PullSettings

    def ledger_path(self, ctx: Context) -> Path:
        return ctx.state_dir / f"{ctx.name}.pulled.json"

    async def _stable_wait(self, ctx: Context, seconds: float) -> None:
        """Wait the whole `stable` time: a wake-up must not shorten it."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await ctx.sleep(left)

    async def run_once(self, ctx: Context) -> str | None:
        s = self.settings
        ledger = await anyio.to_thread.run_sync(Ledger, self.ledger_path(ctx))
        listed: dict[str, RemoteEntry] | None = None
        try:
            client = await connect(s, ctx.log)
            try:
                listed = await walk(client, s, ctx.log)
                todo = {rel: e for rel, e in listed.items() if not ledger.seen(rel, e.size, e.mtime)}
                if not todo:
                    return f"nothing new in {s.remote_dir} ({len(listed)} files listed)"
                waiting = 0
                if s.stable > 0:
                    ctx.log.debug("%d new files; waiting %.0fs to see they are stable", len(todo), s.stable)
                    await self._stable_wait(ctx, s.stable)
                    try:
                        again = await walk(client, s, ctx.log)
                    except ConnectError:  # the idle session may have been dropped meanwhile
                        await close(client)
                        client = await connect(s, ctx.log)
                        again = await walk(client, s, ctx.log)
                    listed = again
                    stable = {rel: e for rel, e in todo.items()
                              if (n := again.get(rel)) is not None and (n.size, n.mtime) == (e.size, e.mtime)}
                    waiting = len(todo) - len(stable)
                    todo = stable
                    if waiting:
                        ctx.log.info("%d files still changing: left for the next pass", waiting)
                return await self._pull(ctx, client, todo, ledger, waiting)
            finally:
                await close(client)
        finally:
            with anyio.CancelScope(shield=True):  # a stopped pass keeps what it pulled (one file write)
                await anyio.to_thread.run_sync(ledger.compact, list(listed) if listed is not None else None)

    async def _pull(self, ctx: Context, client: RemoteClient, todo: dict[str, RemoteEntry], ledger: Ledger,
                    waiting: int) -> str:
        s = self.settings
        p = await anyio.to_thread.run_sync(_plan_in, s.local_dir, todo, ctx.log)
        progress = Progress(ctx, len(p.places), sum(todo[r].size or 0 for r in p.places))
        work = iter(sorted(p.places.items()))
        errors: list[str] = []
        fatal: list[BaseException] = []

        async def worker(first: RemoteClient | None) -> None:
            c = first or await extra_session(s, ctx.log, s.parallel)
            if c is None:
                return
            batch: list[tuple[str, RemoteEntry, Downloaded]] = []
            committing: list[tuple[list[tuple[str, RemoteEntry, Downloaded]], anyio.Event]] = []

            async def hand_over(tg: anyio.abc.TaskGroup) -> None:
                """Settle the batch committed meanwhile; the current one is committed in the background."""
                if committing:
                    done, event = committing.pop()
                    await event.wait()
                    await self._settle(ctx, c, done, ledger, progress, fatal)
                if batch:
                    committing.append((batch[:], anyio.Event()))
                    tg.start_soon(_commit, *committing[0])
                    batch.clear()

            try:
                async with anyio.create_task_group() as tg:
                    for rel, (target, part) in work:
                        c = await self._usable(ctx, c, first, fatal)
                        if c is None or fatal:
                            break
                        d = await self._download(ctx, c, todo[rel], target, part, rel in p.resumable, progress, errors, fatal)
                        if d is not None:
                            batch.append((rel, todo[rel], d))
                        if len(batch) >= BATCH_FILES or sum(x[2].size for x in batch) >= BATCH_BYTES:
                            await hand_over(tg)
                    await hand_over(tg)
                    await hand_over(tg)  # the last batch
            finally:
                if c is not None and c is not first:
                    await close(c)

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, client)
            for _ in range(min(s.parallel, len(todo)) - 1):
                tg.start_soon(worker, None)
        progress.clear()
        summary = progress.summary("pulled")
        if waiting:
            summary += f", {waiting} still changing"
        pulled = progress.files_done - progress.failed - progress.skipped
        if pulled > 0:
            ctx.emit("ftp.pulled", local_dir=str(s.local_dir), files=pulled)
        if fatal:
            raise fatal[0] if isinstance(fatal[0], TransferError) else TransferError(str(fatal[0]))
        if errors:
            raise TransferError(f"{summary}; first error: {errors[0]}")
        return summary

    async def _usable(self, ctx: Context, c: RemoteClient | None, first: RemoteClient | None,
                      fatal: list[BaseException]) -> RemoteClient | None:
        """This worker's session, reconnected when it broke; None (and `fatal`) when that fails."""
        if c is not None and not c.broken:
            return c
        if c is not None and c is not first:
            await close(c)
        try:
            return await connect(self.settings, ctx.log)
        except TransferError as e:
            fatal.append(e)
            return None

    async def _download(self, ctx: Context, c: RemoteClient, e: RemoteEntry, target: Path, part: Path,
                        part_exists: bool, progress: Progress, errors: list[str],
                        fatal: list[BaseException]) -> Downloaded | None:
        try:
            d = await download(c, e, target, on_exists=self.settings.on_exists, log=ctx.log, on_bytes=progress.on_bytes,
                               part=part, part_exists=part_exists)
        except LocalError as err:  # disk full...: stop the pass, delete nothing
            ctx.log.error("cannot store %s: %s; stopping this pass", printable(e.path), err)
            fatal.append(err)
            progress.file_done(failed=True)
            return None
        except TransferError as err:
            ctx.log.warning("cannot pull %s: %s", printable(e.path), err)
            errors.append(str(err))
            progress.file_done(failed=True)
            return None
        if d is None:
            ctx.log.info("%s exists locally (on_exists = \"skip\"): left on the server", target)
            progress.file_done(skipped=True)
        return d

    async def _settle(self, ctx: Context, c: RemoteClient | None, batch: list[tuple[str, RemoteEntry, Downloaded]],
                      ledger: Ledger, progress: Progress, fatal: list[BaseException]) -> None:
        """For a batch durable under its names (see `commit`): delete each remote copy, or remember it."""
        s = self.settings
        for rel, e, d in batch:
            if d.error is not None:
                ctx.log.error("cannot store %s: %s; stopping this pass", printable(e.path), d.error)
                fatal.append(d.error)
                progress.file_done(failed=True)
                continue
            if d.result is None:
                ctx.log.info("%s exists locally (on_exists = \"skip\"): left on the server", d.target)
                progress.file_done(skipped=True)
                continue
            ctx.log.info("pulled %s -> %s (%s bytes)", printable(e.path), d.result, d.size)
            if s.delete_remote and c is not None and not c.broken:
                try:
                    await c.delete(e.path)
                except TransferError as err:
                    ctx.log.warning("pulled %s but cannot delete it on the server (%s): remembered, not pulled again",
                                    printable(e.path), err)
                    ledger.add(rel, e.size, e.mtime)
            else:
                if s.delete_remote:
                    ctx.log.warning("pulled %s; the session broke before it was deleted: remembered, not pulled again",
                                    printable(e.path))
                ledger.add(rel, e.size, e.mtime)
            progress.file_done()
        await anyio.to_thread.run_sync(ledger.flush)
