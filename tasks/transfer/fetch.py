"""Download remote files safely: `download` each to a hidden temp beside its target (resumed, size
checked), then `commit` the batch (one syncfs, then the names). A half file is never visible under
its final name; an interrupted download resumes from the temp file when the remote file is
unchanged (the temp name carries a digest of its path, size, time)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO, Literal

import anyio

from schedulerd.durable import fsync_dir, syncfs
from schedulerd.plugin import TaskLog

from .base import OnBytes, RemoteClient, RemoteEntry
from .errors import IntegrityError, LocalError, ResumeUnsupported

OnExists = Literal["skip", "overwrite", "rename"]
PART_RE = re.compile(r"^\.(.+)\.[0-9a-f]{12}\.part$", re.S)  # group 1: the stem `part_name` kept


def part_name(name: str, entry: RemoteEntry) -> str:
    """The hidden temp name for `name`, keyed by the remote file's identity: a resume only
    ever continues the same remote file."""
    key = hashlib.sha1(f"{entry.path}\0{entry.size}\0{entry.mtime}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem = name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")
    return f".{stem}.{key}.part"


def part_path(target: Path, entry: RemoteEntry) -> Path:
    return target.with_name(part_name(target.name, entry))


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
    """Move the finished temp to its final name without clobbering unless asked (a hard link
    fails on an existing name, where a rename would replace it)."""
    if on_exists == "overwrite":
        os.replace(part, target)
        return target
    candidate = target
    while True:
        try:
            os.link(part, candidate)
            part.unlink()
            return candidate
        except FileExistsError:
            if on_exists == "skip":
                part.unlink()
                return None
            candidate = free_name(target)


@dataclasses.dataclass
class Downloaded:
    """A complete, size-checked temp file waiting to be made durable and given its name."""

    part: Path
    target: Path
    on_exists: OnExists
    mtime: float | None  # the remote time, still to be set (None: unknown)
    size: int
    result: Path | None = None  # the final path (None: skipped because it exists)
    error: LocalError | None = None
    data: bytearray | None = None  # a small file still in memory: written to `part` before the sync


SMALL_FILE = 512 * 1024  # at most this is downloaded to memory, written with its batch by `commit`


async def download(client: RemoteClient, entry: RemoteEntry, target: Path, *,
                   on_exists: OnExists = "rename", log: TaskLog, on_bytes: OnBytes | None = None,
                   part: Path | None = None, part_exists: bool | None = None) -> Downloaded | None:
    """Download `entry` to its hidden temp beside `target` (resuming), check its size; None when skipped.
    `part` and `part_exists` (whether it is there): given when the caller listed the folder already."""
    if on_exists == "skip" and target.exists():
        return None
    part = part or part_path(target, entry)
    if part_exists is None:
        part_exists = os.path.lexists(part)
    if entry.size is not None and entry.size <= SMALL_FILE and not part_exists:
        data = bytearray()

        async def keep(piece: memoryview) -> None:
            data.extend(piece)
            if len(data) > entry.size:  # type: ignore[operator]
                raise IntegrityError(f"{entry.path}: more than the {entry.size} bytes listed")

        await client.get(entry.path, keep, 0, entry.size, on_bytes)
        if len(data) != entry.size:
            raise IntegrityError(f"{entry.path}: got {len(data)} bytes, expected {entry.size}")
        return Downloaded(part, target, on_exists, entry.mtime, len(data), data=data)
    try:
        f, offset = await anyio.to_thread.run_sync(_open_part, part, entry.size)
    except OSError as e:
        raise LocalError(f"cannot write {part}: {e.strerror or e}") from None
    try:
        if entry.size is None or offset < entry.size:
            await _receive(client, entry, f, offset, log, on_bytes)
        size = await anyio.to_thread.run_sync(_flushed_size, f)
    except OSError as e:
        raise LocalError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        f.close()
    if entry.size is not None and size != entry.size:
        if size > entry.size:
            part.unlink(missing_ok=True)
        raise IntegrityError(f"{entry.path}: got {size} bytes, expected {entry.size}")
    return Downloaded(part, target, on_exists, entry.mtime, size)


async def _receive(client: RemoteClient, entry: RemoteEntry, f: BinaryIO, offset: int,
                   log: TaskLog, on_bytes: OnBytes | None) -> None:
    """The remote bytes from `offset` on into `f`, written in a worker thread."""

    async def write(piece: memoryview) -> None:
        try:
            await anyio.to_thread.run_sync(f.write, piece)
        except OSError as e:  # the local side: not the session's fault
            raise LocalError(f"cannot write {f.name}: {e.strerror or e}") from None

    if offset:
        log.info("resuming %s at %d of %s bytes", entry.path, offset, entry.size)
    try:
        await client.get(entry.path, write, offset, entry.size, on_bytes)
    except ResumeUnsupported as e:
        log.info("%s; downloading %s from the start", e, entry.path)
        await anyio.to_thread.run_sync(_restart, f)
        await client.get(entry.path, write, 0, entry.size, on_bytes)


def _restart(f: BinaryIO) -> None:
    f.seek(0)
    f.truncate()


def _flushed_size(f: BinaryIO) -> int:
    f.flush()
    return os.fstat(f.fileno()).st_size


def _open_part(part: Path, size: int | None) -> tuple[BinaryIO, int]:
    """The temp file (and its folder), positioned where a resumed download continues."""
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with contextlib.suppress(FileNotFoundError):
        have = part.stat().st_size
        if size is not None and have <= size:
            offset = have
    f = open(part, "r+b" if offset else "wb")
    f.seek(offset)
    return f, offset


def _write_part(d: Downloaded) -> bool:
    """A small file kept in memory written to its temp name; False (and `error`) on failure."""
    data, d.data = d.data, None
    try:
        d.part.parent.mkdir(parents=True, exist_ok=True)
        d.part.write_bytes(data)  # type: ignore[arg-type]
    except OSError as e:
        d.error = LocalError(f"cannot write {d.part}: {e.strerror or e}")
        with contextlib.suppress(OSError):  # a half temp would only be resumed: the file is small
            d.part.unlink(missing_ok=True)
        return False
    return True


def _commit(batch: list[Downloaded]) -> None:
    """Make the temp files durable (one syncfs per filesystem), then give them their time and name."""
    batch = [d for d in batch if d.error is None and (d.data is None or _write_part(d))]
    try:
        for folder in {os.stat(p).st_dev: p for p in {d.part.parent for d in batch}}.values():
            syncfs(folder)
    except OSError as e:
        for d in batch:
            d.error = LocalError(f"cannot make {d.part} durable: {e.strerror or e}")
        return
    for d in batch:
        try:
            if d.mtime is not None:
                os.utime(d.part, (d.mtime, d.mtime))
            d.result = _place(d.part, d.target, d.on_exists)
        except OSError as e:
            d.error = LocalError(f"cannot move {d.part.name} to {d.target}: {e.strerror or e}")
        except LocalError as e:
            d.error = e
    for folder in {d.target.parent for d in batch}:
        with contextlib.suppress(OSError):
            fsync_dir(folder)


async def commit(batch: list[Downloaded]) -> None:
    """Make a batch durable with one syncfs (per filesystem), then name its files: each gets
    `result` or `error`. Shielded: a batch is named as a whole, even when cancelled."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(_commit, batch)
