"""Download one remote file safely: hidden temp beside the target, resume, size check, fsync, rename.

A half file is never visible under its final name; an interrupted download
resumes from the temp file when the remote file is unchanged (the temp name
carries a digest of the remote path, size and time).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio

from .base import OnBytes, RemoteClient, RemoteEntry
from .errors import IntegrityError, TransferError

OnExists = Literal["skip", "overwrite", "rename"]
PART_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.part$", re.S)


class LocalError(TransferError):
    """The local side failed (disk full, permission): the remote file is left alone."""


def part_path(target: Path, entry: RemoteEntry) -> Path:
    key = hashlib.sha1(f"{entry.path}\0{entry.size}\0{entry.mtime}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem = target.name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")
    return target.with_name(f".{stem}.{key}.part")


def stale_parts(folder: Path, keep: set[Path]) -> list[Path]:
    """Our temp files in `folder` that belong to no file being fetched now."""
    try:
        return [p for p in folder.iterdir() if PART_RE.match(p.name) and p not in keep and p.is_file()]
    except OSError:
        return []


def inside(folder: Path, target: Path) -> bool:
    """`target`'s folder, symlinks resolved, is within `folder`."""
    try:
        return target.parent.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def free_name(target: Path) -> Path:
    """`name (1).ext`, `name (2).ext`...: the first that does not exist."""
    stem, suffix = target.stem, target.suffix
    for i in range(1, 10000):
        candidate = target.with_name(f"{stem} ({i}){suffix}")
        if not candidate.exists():
            return candidate
    raise LocalError(f"no free name for {target}")


def _place(part: Path, target: Path, on_exists: OnExists) -> Path | None:
    """Move the finished temp to its final name without clobbering unless asked."""
    if on_exists == "overwrite":
        os.replace(part, target)
        return target
    candidate = target
    for _ in range(10000):
        try:
            os.link(part, candidate)
        except FileExistsError:
            if on_exists == "skip":
                part.unlink()
                return None
            candidate = free_name(target)
            continue
        except OSError:  # no hard links here: a (tiny) race is the price
            if candidate.exists():
                if on_exists == "skip":
                    part.unlink()
                    return None
                candidate = free_name(target)
                continue
            os.rename(part, candidate)
            return candidate
        part.unlink()
        return candidate
    raise LocalError(f"no free name for {target}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclasses.dataclass
class Downloaded:
    """A complete, size-checked temp file waiting to be made durable and given its name."""

    part: Path
    target: Path
    on_exists: OnExists
    mtime: float | None
    size: int
    done: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    result: Path | None = None  # the final path (None: skipped because it exists)
    error: LocalError | None = None


async def download(
    client: RemoteClient,
    entry: RemoteEntry,
    target: Path,
    *,
    on_exists: OnExists = "rename",
    log: logging.Logger,
    on_bytes: OnBytes | None = None,
) -> Downloaded | None:
    """Download `entry` to its hidden temp beside `target` (resuming), check its size; None when skipped."""
    from .ftp import ResumeUnsupported

    if on_exists == "skip" and target.exists():
        return None
    mtime = entry.mtime
    if not entry.precise:  # LIST times are to the minute at best: ask (MDTM) for the exact one
        mtime = await client.mtime(entry.path) or mtime
    part = part_path(target, entry)
    # blocking file calls run in a worker thread: an open() waiting on the journal
    # must not stall the other transfers of the event loop
    try:
        f, offset = await anyio.to_thread.run_sync(_open_part, part, entry.size)
    except OSError as e:
        raise LocalError(f"cannot write {part}: {e.strerror or e}") from None
    try:
        if offset:
            log.info("resuming %s at %d of %s bytes", entry.path, offset, entry.size)
        if entry.size is None or offset < entry.size:
            try:
                await client.download(entry.path, f, offset, on_bytes, size=entry.size)
            except ResumeUnsupported as e:
                log.info("%s; downloading %s from the start", e, entry.path)
                f.seek(0)
                f.truncate()
                await client.download(entry.path, f, 0, on_bytes, size=entry.size)
        f.flush()
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise LocalError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        f.close()
    if entry.size is not None and size != entry.size:
        if size > entry.size:
            part.unlink(missing_ok=True)
        raise IntegrityError(f"{entry.path}: got {size} bytes, expected {entry.size}")
    return Downloaded(part, target, on_exists, mtime, size)


async def fetch(
    client: RemoteClient,
    entry: RemoteEntry,
    target: Path,
    *,
    on_exists: OnExists = "rename",
    log: logging.Logger,
    on_bytes: OnBytes | None = None,
) -> Path | None:
    """Download `entry` to `target` (see module doc): fsync, then rename. None when skipped."""
    d = await download(client, entry, target, on_exists=on_exists, log=log, on_bytes=on_bytes)
    if d is None:
        return None
    await anyio.to_thread.run_sync(_commit, [d], False)
    if d.error is not None:
        raise d.error
    return d.result


def _open_part(part: Path, size: int | None) -> tuple[BinaryIO, int]:
    """The temp file (and its folder), positioned where a resumed download continues."""
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with contextlib.suppress(FileNotFoundError):
        have = part.stat().st_size
        if size is not None and have <= size:
            offset = have
    f = open(part, "r+b" if offset else "wb")
    if offset:
        f.seek(offset)
        f.truncate()
    return f, offset


def _load_syncfs() -> Any:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


def _commit(batch: list[Downloaded], whole_fs: bool) -> None:
    """Make the temp files durable (one syncfs for a batch, or one fsync each), then name them."""
    try:
        if whole_fs and _syncfs is not None:
            folders = {os.stat(d.part.parent).st_dev: d.part.parent for d in batch}
            for folder in folders.values():  # one syncfs per filesystem involved
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if _syncfs(fd) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                finally:
                    os.close(fd)
        else:
            for d in batch:
                fd = os.open(d.part, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except OSError as e:
        for d in batch:
            d.error = LocalError(f"cannot make {d.part} durable: {e.strerror or e}")
        return
    folders = set()
    for d in batch:
        try:
            if d.mtime is not None:
                os.utime(d.part, (d.mtime, d.mtime))
            d.result = _place(d.part, d.target, d.on_exists)
            folders.add(d.target.parent)
        except (OSError, LocalError) as e:
            d.error = e if isinstance(e, LocalError) else LocalError(f"cannot move {d.part.name} to {d.target}: {e.strerror or e}")
    for folder in folders:
        _fsync_dir(folder)


class Committer:
    """Durability in groups: downloads finish without fsync; one syncfs covers many files.

    A file gets its final name only after its data is durable (as with fetch); the
    caller deletes the remote copy only once `done` is set without error. The
    other workers keep downloading while a batch is synced.
    """

    def __init__(self, max_batch: int = 64, max_age: float = 0.2):
        self.max_batch = max_batch
        self.max_age = max_age
        self._pending: list[Downloaded] = []
        self._since = 0.0
        self._lock = anyio.Lock()

    def submit(self, d: Downloaded) -> Downloaded:
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(d)
        return d

    async def maybe_flush(self) -> None:
        if len(self._pending) >= self.max_batch or (self._pending and time.monotonic() - self._since >= self.max_age):
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                with anyio.CancelScope(shield=True):  # a batch is named as a whole, even when cancelled
                    await anyio.to_thread.run_sync(_commit, batch, True)
            finally:
                for d in batch:
                    d.done.set()
