"""One transfer layer for FTP, FTPS and SFTP: `connect(settings, log)` gives a logged-in
`RemoteClient` (see `base`: list, stat, get, put, rename, delete, mkdir); `fetch`
downloads files safely (temp name, size check, syncfs, rename), `send` a batch of uploads
(temp names, size checks, renames)."""

from __future__ import annotations

import anyio

from schedulerd.plugin import TaskLog

from .base import RemoteClient, RemoteEntry
from .errors import AuthError, ConnectError, HostKeyError, IntegrityError, NotFound, RemoteError, ResumeUnsupported, TransferError
from .settings import ConnectionSettings

__all__ = [
    "AuthError", "ConnectError", "ConnectionSettings", "HostKeyError", "IntegrityError", "NotFound",
    "RemoteClient", "RemoteEntry", "RemoteError", "ResumeUnsupported", "TransferError", "close", "connect",
    "extra_session",
]


async def connect(settings: ConnectionSettings, log: TaskLog, *, retries: int | None = None) -> RemoteClient:
    """Connect and log in, retrying `retries` times (default: the setting's; doubling `retry_delay`);
    auth errors are final."""
    retries = settings.retries if retries is None else retries
    if settings.protocol == "sftp":
        from .sftp import SftpClient as impl
    else:
        from .ftp import FtpClient as impl  # type: ignore[assignment]
    delay = settings.retry_delay
    for attempt in range(retries):
        try:
            return await impl.open(settings, log)
        except TransferError as e:
            if e.permanent:
                raise
            log.warning("connecting to %s failed: %s; retry %d/%d in %.1fs",
                        settings.describe(), e, attempt + 1, retries, delay)
        await anyio.sleep(delay)
        delay *= 2
    return await impl.open(settings, log)  # the last attempt: its error is the caller's


async def extra_session(settings: ConnectionSettings, log: TaskLog, parallel: int) -> RemoteClient | None:
    """One more session for `parallel`, tried once: None, with a warning, when it cannot be
    opened (a server that allows fewer connections per address than `parallel`). The pass
    goes on with the sessions it has; only the first session's failure fails it."""
    try:
        return await connect(settings, log, retries=0)
    except TransferError as e:
        log.warning("cannot open one more session to %s (%s): going on with fewer than parallel = %d",
                    settings.describe(), e, parallel)
        return None


async def close(client: RemoteClient | None) -> None:
    """Log out of `client` (if any), even from a cancelled task."""
    if client is not None:
        with anyio.CancelScope(shield=True):
            await client.aclose()
