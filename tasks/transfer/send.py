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
    """A file complete under its temp name, waiting for its rename (and, with `remote_size`, its size check)."""

    tmp: str
    final: str
    size: int
    src: Path
    remote_size: Callable[[], Awaitable[int | None]] | None = None  # a check still to await (`checked`)


async def stage(
    client: RemoteClient,
    src: Path,
    remote_dir: str,
    name: str | None = None,
    *,
    on_bytes: OnBytes | None = None,
    check_later: bool = False,
) -> Staged:
    """Upload `src` under the temp name of `remote_dir/name` and check its remote size.

    `check_later`: the size is asked when cheapest (FTP: with the next upload's EPSV);
    pass the result through `checked` before renaming it.
    """
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
    if sent != size:
        await _discard(client, tmp)
        raise IntegrityError(f"{final}: sent {sent} bytes, local size {size}")
    staged = Staged(tmp, final, size, src)
    if client.acked_writes:  # SFTP acknowledged every write (and the close) already
        return staged
    # FTP: a cut data connection can look like a complete upload to the server: ask its size
    staged = dataclasses.replace(staged, remote_size=client.size_later(tmp))
    return staged if check_later else await checked(client, staged)


async def checked(client: RemoteClient, staged: Staged) -> Staged:
    """The staged file once its remote size matched (IntegrityError, temp deleted, otherwise)."""
    if staged.remote_size is None:
        return staged
    got = await staged.remote_size()
    if got is not None and got != staged.size:  # None: the server cannot tell; the rename will
        await _discard(client, staged.tmp)
        raise IntegrityError(f"{staged.final}: remote size {got}, local size {staged.size}")
    return dataclasses.replace(staged, remote_size=None)


async def _discard(client: RemoteClient, tmp: str) -> None:
    with contextlib.suppress(TransferError):
        await client.delete(tmp)


async def finish(client: RemoteClient, staged: Staged, *, log: logging.Logger) -> str:
    """Give a staged file its final name (after its size check); returns the final remote path."""
    staged = await checked(client, staged)
    await client.rename(staged.tmp, staged.final)
    log.debug("sent %s to %s (%d bytes)", staged.src, staged.final, staged.size)
    return staged.final


def finish_later(client: RemoteClient, staged: Staged, *, log: logging.Logger) -> Callable[[], Awaitable[str]]:
    """`finish` of a checked file, its rename sent with the client's next data command when it pipelines them (FTP)."""
    if staged.remote_size is not None:
        raise ValueError(f"{staged.final}: size not checked yet (see `checked`)")
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
