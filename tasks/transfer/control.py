"""An FTPS control connection on a bare non-blocking socket, its TLS by pyOpenSSL.

asyncio's TLS is Python code over memory buffers (a few record copies and calls per
reply), and its sessions are CPython ssl objects that pyOpenSSL data connections
cannot resume. Here OpenSSL reads and writes the socket itself; the event loop is
asked only when it would block (`anyio.wait_readable` / `wait_writable`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from aioftp.common import ThrottleStreamIO
from OpenSSL import SSL

from .tls import Tls

T = TypeVar("T")


class SocketControlStream(ThrottleStreamIO):
    """aioftp's control stream over `sock`: plain until `start_tls`, then TLS."""

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(None, None, **kwargs)  # type: ignore[arg-type]
        sock.setblocking(False)
        self.sock = sock
        self.conn: SSL.Connection | None = None
        self._buf = bytearray()

    async def _retry(self, op: Callable[..., T], *args: Any) -> T:
        while True:
            try:
                return op(*args)
            except SSL.WantReadError:
                await anyio.wait_readable(self.sock)
            except SSL.WantWriteError:
                await anyio.wait_writable(self.sock)

    async def start_tls(self, tls: Tls) -> None:
        """The handshake (raises `TlsFailure`); its session is the one data connections resume first."""
        conn = tls.connection(self.sock, resume=False)
        try:
            await self._retry(conn.do_handshake)
        except (SSL.Error, OSError) as e:
            raise tls.failure(e) from None
        tls.check(conn)
        self.conn = tls.control = conn

    async def _recv(self) -> bytes:
        if self.conn is None:
            while True:
                try:
                    return self.sock.recv(65536)
                except BlockingIOError:
                    await anyio.wait_readable(self.sock)
        try:
            return await self._retry(self.conn.recv, 65536)
        except SSL.ZeroReturnError:  # the server's close_notify
            return b""
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:  # EOF without close_notify
                return b""
            raise ConnectionResetError(str(e.args[-1] if e.args else e)) from None
        except SSL.Error as e:
            raise ConnectionError(f"TLS error on the control connection: {e}") from None

    async def readline(self) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                return line
            data = await self._recv()
            if not data:
                line, self._buf = bytes(self._buf), bytearray()
                return line
            self._buf += data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.conn is None:
                try:
                    n = self.sock.send(view)
                except BlockingIOError:
                    await anyio.wait_writable(self.sock)
                    continue
            else:
                try:
                    n = await self._retry(self.conn.send, view)
                except SSL.Error as e:
                    raise ConnectionError(f"TLS error on the control connection: {e}") from None
            view = view[n:]

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def close(self) -> None:
        self.sock.close()
