"""A connection's deadline kept by one timer, not one timer per command.

An FTP session reads several replies per small file; `asyncio.timeout` around each
puts a timer in the loop's heap and cancels it: 8–20 % of our CPU on a pull of many
small files (two A/B runs on a noisy machine). Here a command only stores its deadline (a float); one timer
per connection wakes when the earliest deadline could have passed, moves itself on if a
later command pushed the deadline, and only when a command really overran calls
`on_expiry` (which closes the connection under the waiting command). Used as `with
deadline:` around an exchange, the error that closing causes comes out as TimeoutError.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType

import anyio


class Deadline:
    def __init__(self, timeout: float, on_expiry: Callable[[], None]) -> None:
        self.timeout = timeout
        self.expired = False
        self._on_expiry = on_expiry
        self._at = math.inf  # inf: no command waiting
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # a connection lives in one loop

    def start(self) -> None:
        """A command begins: it must be answered within `timeout`."""
        loop = self._loop
        if loop is None:  # kept: on Python 3.11 each get_running_loop() is a getpid() call
            loop = self._loop = asyncio.get_running_loop()
        self._at = loop.time() + self.timeout
        if self._handle is None:
            self._handle = loop.call_at(self._at, self._check)

    def stop(self) -> None:
        """The command was answered (or failed): nothing to watch until the next `start`."""
        self._at = math.inf

    def __enter__(self) -> Deadline:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        if isinstance(e, (OSError, EOFError, anyio.ClosedResourceError)):
            if self.expired:
                raise TimeoutError(f"no reply within {self.timeout:g}s") from None
            if isinstance(e, anyio.ClosedResourceError):
                raise ConnectionResetError("connection closed") from None

    def _check(self) -> None:
        self._handle = None
        if self._at == math.inf:
            return
        loop = self._loop
        assert loop is not None  # set by the `start` that scheduled this check
        if loop.time() < self._at:  # a later command moved the deadline
            self._handle = loop.call_at(self._at, self._check)
            return
        self.expired = True
        self._on_expiry()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = math.inf
