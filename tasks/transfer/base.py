"""The small async client interface every protocol implements: plain operations, one at a time."""

from __future__ import annotations

import abc
import builtins
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from .errors import TransferError

EntryType = Literal["file", "dir", "link", "other"]
OnBytes = Callable[[int], None]
Sink = Callable[[memoryview], Awaitable[None]]  # where a download's bytes go, in order
Source = Callable[[], Awaitable[bytes]]  # an upload's next bytes; b"" at the end


@dataclasses.dataclass(frozen=True)
class RemoteEntry:
    """One listed remote object. `mtime` is epoch seconds (UTC); `precise` when to the second."""

    name: str
    path: str
    type: EntryType
    size: int | None
    mtime: float | None
    precise: bool = True


class RemoteClient(abc.ABC):
    """One logged-in session. Not safe for concurrent use: one client per worker."""

    broken: bool = False  # the session is unusable (lost, or out of step): reconnect

    @abc.abstractmethod
    async def list(self, path: str) -> list[RemoteEntry]:
        """Entries of directory `path` whose names are safe (others skipped with a warning)."""

    @abc.abstractmethod
    async def stat(self, path: str) -> RemoteEntry | None:
        """Size (and time when cheap) of one file, or None when it does not exist."""

    @abc.abstractmethod
    async def get(self, path: str, sink: Sink, offset: int = 0, size: int | None = None,
                  on_bytes: OnBytes | None = None) -> int:
        """The file's bytes from `offset` to `sink`; returns their count. `size`: expected, when known."""

    @abc.abstractmethod
    async def put(self, source: Source, path: str, on_bytes: OnBytes | None = None) -> int:
        """Store what `source` gives as `path`; returns the bytes sent (see `short_uploads`)."""

    async def short_uploads(self, uploads: Sequence[tuple[str, int]]) -> builtins.list[str | None]:
        """For each `put` (path, bytes sent), why the stored file is not whole, or None (whole, or
        the server cannot tell). Here: None, the protocol acknowledges what it stores (SFTP)."""
        return [None] * len(uploads)

    @abc.abstractmethod
    async def delete(self, path: str) -> None: ...

    @abc.abstractmethod
    async def rename(self, src: str, dst: str) -> None:
        """Rename, replacing `dst` if it exists."""

    async def renames(self, pairs: Sequence[tuple[str, str]]) -> builtins.list[TransferError | None]:
        """`rename` each (src, dst): per pair None, or why it failed. A session lost partway (`broken`)
        fails the pairs not renamed yet with its error; those renamed before keep their None."""
        failed: list[TransferError | None] = []
        for src, dst in pairs:
            try:
                await self.rename(src, dst)
                failed.append(None)
            except TransferError as e:
                failed.append(e)
                if self.broken:
                    return failed + [e] * (len(pairs) - len(failed))
        return failed

    @abc.abstractmethod
    async def mkdir(self, path: str) -> None:
        """Create `path` and its missing parents; an existing folder is fine."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Log out politely (bounded in time) and close."""

    async def __aenter__(self) -> RemoteClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
