"""Upload one local file safely: temp remote name, size check, rename."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

import anyio

from .base import OnBytes, RemoteClient
from .errors import IntegrityError, LocalError, RemoteError, TransferError
from .names import join, unsafe_reason

PIECE = 1024 * 1024  # bytes read from the local file per worker-thread call


def temp_name(name: str) -> str:
    return f".{name}.part"


def _open(src: Path) -> tuple[BinaryIO, int, bytes]:
    """`src` opened, its size and its first piece: a small file costs one thread hop."""
    f = open(src, "rb")
    try:
        return f, os.fstat(f.fileno()).st_size, f.read(PIECE)
    except BaseException:
        f.close()
        raise


async def send(
    client: RemoteClient,
    src: Path,
    remote_dir: str,
    name: str | None = None,
    *,
    log: logging.Logger,
    on_bytes: OnBytes | None = None,
) -> str:
    """Upload `src` as `remote_dir/name` under a temp name (`put` checks the stored size), rename
    it; returns the final remote path. A failed upload leaves no temp behind when it can."""
    name = name or src.name
    reason = unsafe_reason(name)
    if reason is not None:
        raise RemoteError(f"refusing to upload under the name {name!r}: {reason}")
    await client.mkdir(remote_dir)
    tmp, final = join(remote_dir, temp_name(name)), join(remote_dir, name)
    size, sent = await _upload(client, src, tmp, on_bytes)
    if sent != size:
        await _discard(client, tmp)
        raise IntegrityError(f"{final}: sent {sent} bytes, local size {size}")
    await client.rename(tmp, final)
    log.debug("sent %s to %s (%d bytes)", src, final, size)
    return final


async def _upload(client: RemoteClient, src: Path, tmp: str, on_bytes: OnBytes | None) -> tuple[int, int]:
    """(local size, bytes sent) of `src` uploaded as `tmp`; the file is read in a worker thread."""
    try:
        f, size, first = await anyio.to_thread.run_sync(_open, src)
    except OSError as e:
        raise LocalError(f"cannot read {src}: {e.strerror or e}") from None
    pieces = [first] if len(first) == PIECE else [b"", first]  # short: the whole file, then the end

    async def source() -> bytes:
        if pieces:
            return pieces.pop()
        try:
            return await anyio.to_thread.run_sync(f.read, PIECE)
        except OSError as e:
            raise LocalError(f"cannot read {src}: {e.strerror or e}") from None

    try:
        return size, await client.put(source, tmp, on_bytes)
    except Exception:
        if not client.broken:
            with contextlib.suppress(TransferError):
                await client.delete(tmp)
        raise
    finally:
        f.close()


async def _discard(client: RemoteClient, tmp: str) -> None:
    with contextlib.suppress(TransferError):
        await client.delete(tmp)
