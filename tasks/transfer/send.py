"""Upload one local file safely: temp remote name, size check, rename."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from .base import OnBytes, RemoteClient
from .errors import IntegrityError, RemoteError, TransferError
from .names import join, unsafe_reason


def temp_name(name: str) -> str:
    return f".{name}.part"


@dataclasses.dataclass(frozen=True)
class Staged:
    """A file complete and size-checked under its temp name, waiting for its rename."""

    tmp: str
    final: str
    size: int
    src: Path


async def stage(
    client: RemoteClient,
    src: Path,
    remote_dir: str,
    name: str | None = None,
    *,
    on_bytes: OnBytes | None = None,
) -> Staged:
    """Upload `src` under the temp name of `remote_dir/name` and check its remote size."""
    name = name or src.name
    reason = unsafe_reason(name)
    if reason is not None:
        raise RemoteError(f"refusing to upload under the name {name!r}: {reason}")
    await client.mkdir(remote_dir)
    tmp, final = join(remote_dir, temp_name(name)), join(remote_dir, name)
    try:
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            sent = await client.upload(f, tmp, on_bytes)
    except OSError as e:
        raise TransferError(f"cannot read {src}: {e.strerror or e}") from None
    except Exception:
        if not client.broken:
            with contextlib.suppress(TransferError):
                await client.delete(tmp)
        raise
    # FTP: a cut data connection can look like a complete upload to the server, so ask
    # for the size; SFTP acknowledged every write (and the close) already
    st = None if client.acked_writes and sent == size else await client.stat(tmp)
    if sent != size or (st is not None and st.size is not None and st.size != size):
        with contextlib.suppress(TransferError):
            await client.delete(tmp)
        got = st.size if st is not None else sent
        raise IntegrityError(f"{final}: remote size {got}, local size {size}")
    return Staged(tmp, final, size, src)


async def finish(client: RemoteClient, staged: Staged, *, log: logging.Logger) -> str:
    """Give a staged file its final name; returns the final remote path."""
    await client.rename(staged.tmp, staged.final)
    log.debug("sent %s to %s (%d bytes)", staged.src, staged.final, staged.size)
    return staged.final


def finish_later(client: RemoteClient, staged: Staged, *, log: logging.Logger) -> Callable[[], Awaitable[str]]:
    """`finish`, its rename sent with the client's next data command when it pipelines them (FTP)."""
    renamed = client.rename_later(staged.tmp, staged.final)

    async def get() -> str:
        await renamed()
        log.debug("sent %s to %s (%d bytes)", staged.src, staged.final, staged.size)
        return staged.final

    return get


async def send(
    client: RemoteClient,
    src: Path,
    remote_dir: str,
    name: str | None = None,
    *,
    log: logging.Logger,
    on_bytes: OnBytes | None = None,
) -> str:
    """Upload `src` as `remote_dir/name` via a temp name; returns the final remote path."""
    return await finish(client, await stage(client, src, remote_dir, name, on_bytes=on_bytes), log=log)
