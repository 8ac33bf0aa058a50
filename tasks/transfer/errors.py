"""Transfer errors: messages safe to log and show (secrets scrubbed before raising)."""

from __future__ import annotations


class TransferError(Exception):
    """A transfer failed. `permanent` errors are not worth retrying in the same pass."""

    permanent = False


class ConnectError(TransferError):
    """The server could not be reached or the session could not be set up."""


class AuthError(ConnectError):
    """Login refused: retrying with the same password will not help."""

    permanent = True


class HostKeyError(ConnectError):
    """An SFTP host key is unknown or changed."""

    permanent = True


class RemoteError(TransferError):
    """The server refused one operation (no such file, permission denied...)."""

    code: str | None = None  # the FTP reply code, when there is one


class NotFound(RemoteError):
    permanent = True


class LocalError(TransferError):
    """The local side failed (disk full, permission, unreadable file): the remote file is left alone."""


class ResumeUnsupported(RemoteError):
    """The server cannot resume a transfer (REST refused): restart it from zero."""


class IntegrityError(TransferError):
    """A transferred file does not have the expected size."""
