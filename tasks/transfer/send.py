"""Upload local files safely: temp remote name, size check, rename.

A batch of files goes up under temp names one after the other; then their stored
sizes are checked together and only the whole ones renamed together (FTP pipelines
both: one round trip each for the batch, not one per file). A temp name is never
the name of a finished file, so a crash anywhere leaves at worst a temp behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import anyio

from schedulerd.plugin import TaskLog

from .base import OnBytes, RemoteClient
from .errors import IntegrityError, LocalError, RemoteError, TransferError
from .names import join, unsafe_reason

PIECE = 1024 * 1024  # bytes read from the local file per worker-thread call


Opened = tuple[BinaryIO | None, int, bytes]  # a local file (open while there is more), its size, its first piece


def _open_all(srcs: list[Path]) -> list[Opened | OSError]:
    """Each file's size and first piece, all in one worker-thread call (one thread hop per batch,
    not per file); a file read whole is closed at once. The piece is the size and a byte more: a
    1 MB read per small file cost ~0.1 ms (a fresh buffer's page faults, then its unmapping)."""
    opened: list[Opened | OSError] = []
    for src in srcs:
        f = None
        try:
            f = open(src, "rb")
            size = os.fstat(f.fileno()).st_size
            first = f.read(want := min(size + 1, PIECE))  # a byte more: a file that grew is not read whole
        except OSError as e:
            if f is not None:
                f.close()
            opened.append(e)
            continue
        if len(first) < want:  # read whole
            f.close()
        opened.append((f if len(first) == want else None, size, first))
    return opened


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A local file to upload as `remote_dir/name`."""

    src: Path
    remote_dir: str
    name: str

    @property
    def temp(self) -> str:
        return join(self.remote_dir, f".{self.name}.part")

    @property
    def final(self) -> str:
        return join(self.remote_dir, self.name)


Outcome = str | TransferError | None  # the final remote path, why it was not sent, or None: not tried


async def send_batch(client: RemoteClient, files: Sequence[Outgoing], *, log: TaskLog,
                     on_bytes: OnBytes | None = None) -> list[Outcome]:
    """Upload `files` (see module doc); per file its Outcome. A file whose stored size is short
    is never renamed (its temp is deleted). A session that breaks during an upload fails that
    file, and the batch's other files are None (none renamed yet: to send on another session);
    one that breaks during the checks fails the uploaded files, during the renames those whose
    rename the server did not answer (the renamed ones are sent: never sent again)."""
    outcomes: list[Outcome] = [None] * len(files)
    uploaded: list[tuple[int, int]] = []  # (index, bytes sent)
    opened = await anyio.to_thread.run_sync(_open_all, [f.src for f in files])
    try:
        for i, f in enumerate(files):
            try:
                uploaded.append((i, await _upload(client, f, opened[i], on_bytes)))
            except TransferError as e:
                outcomes[i] = e
                if client.broken:
                    return outcomes
        short = await client.short_uploads([(files[i].temp, sent) for i, sent in uploaded])
        whole = [i for (i, _), why in zip(uploaded, short, strict=True) if why is None]
        for (i, _), why in zip(uploaded, short, strict=True):
            if why is not None:
                with contextlib.suppress(TransferError):
                    await client.delete(files[i].temp)
                outcomes[i] = IntegrityError(why)
        renamed = await client.renames([(files[i].temp, files[i].final) for i in whole])
        for i, failed in zip(whole, renamed, strict=True):
            outcomes[i] = failed or files[i].final
            if failed is None:
                log.debug("sent %s to %s", files[i].src, files[i].final)
    except TransferError as e:  # the session broke during the size checks
        for i, _ in uploaded:
            outcomes[i] = outcomes[i] or e
    finally:
        for o in opened:
            if isinstance(o, tuple) and o[0] is not None:
                o[0].close()
    return outcomes


async def send(client: RemoteClient, src: Path, remote_dir: str, name: str | None = None, *,
               log: TaskLog, on_bytes: OnBytes | None = None) -> str:
    """Upload one file (a batch of one); returns its final remote path."""
    [outcome] = await send_batch(client, [Outgoing(src, remote_dir, name or src.name)], log=log, on_bytes=on_bytes)
    if isinstance(outcome, TransferError):
        raise outcome
    assert outcome is not None
    return outcome


async def _upload(client: RemoteClient, item: Outgoing, opened: Opened | OSError, on_bytes: OnBytes | None) -> int:
    """`item.src` uploaded as `item.temp` (the rest of a big file read in worker threads); the bytes
    sent. A failed upload leaves no temp behind when it can."""
    if (reason := unsafe_reason(item.name)) is not None:
        raise RemoteError(f"refusing to upload under the name {item.name!r}: {reason}")
    await client.mkdir(item.remote_dir)
    src, tmp = item.src, item.temp
    if isinstance(opened, OSError):
        raise LocalError(f"cannot read {src}: {opened.strerror or opened}")
    f, size, first = opened
    pieces = [first] if f is not None else [b"", first]  # read whole: the file, then the end

    async def source() -> bytes:
        if pieces:
            return pieces.pop()
        try:
            return await anyio.to_thread.run_sync(f.read, PIECE) if f else b""
        except OSError as e:
            raise LocalError(f"cannot read {src}: {e.strerror or e}") from None

    try:
        sent = await client.put(source, tmp, on_bytes)
        if sent != size:
            raise IntegrityError(f"{item.final}: sent {sent} bytes, local size {size}")
        return sent
    except Exception:
        if not client.broken:
            with contextlib.suppress(TransferError):
                await client.delete(tmp)
        raise
