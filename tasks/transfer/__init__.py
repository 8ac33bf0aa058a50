"""One transfer layer for FTP, FTPS and SFTP, shared by `ftp_pull` and `ftp_push`.

`connect(settings, log)` gives a logged-in `RemoteClient` (see `base`); `fetch`
and `send` move one file safely (temp name, size check, fsync, rename).
"""

from __future__ import annotations

import logging

import anyio

from .base import RemoteClient, RemoteEntry
from .errors import AuthError, ConnectError, HostKeyError, IntegrityError, NotFound, RemoteError, TransferError
from .settings import ConnectionSettings

__all__ = [
    "AuthError", "ConnectError", "ConnectionSettings", "HostKeyError", "IntegrityError", "NotFound",
    "RemoteClient", "RemoteEntry", "RemoteError", "TransferError", "connect",
]


async def connect(settings: ConnectionSettings, log: logging.Logger) -> RemoteClient:
    """Connect and log in, retrying `retries` times (doubling `retry_delay`); auth errors are final."""
    if settings.protocol == "sftp":
        from .sftp import SftpClient as impl
    else:
        from .ftp import FtpClient as impl  # type: ignore[assignment]
    delay = settings.retry_delay
    for attempt in range(settings.retries + 1):
        try:
            return await impl.open(settings, log)
        except TransferError as e:
            if e.permanent or attempt >= settings.retries:
                raise
            log.warning("connecting to %s failed: %s; retry %d/%d in %.1fs",
                        settings.describe(), e, attempt + 1, settings.retries, delay)
        await anyio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
