"""pyOpenSSL driven by the event loop: FTPS control and data connections on bare sockets.

asyncio's TLS is Python code over memory buffers (record copies and calls per
reply), and its sessions are CPython ssl objects that pyOpenSSL cannot resume.
Here OpenSSL reads and writes the non-blocking socket itself; the loop is asked
only when it would block (`anyio.wait_readable` / `wait_writable`). One thread
does it all, as lftp does: worker threads per data connection measured 118
futex calls per small file (the GIL, OpenSSL's locks) for no gain.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from OpenSSL import SSL

from .tls import Tls, reason as tls_reason

T = TypeVar("T")


async def _retry(sock: socket.socket, op: Callable[..., T], *args: Any) -> T:
    while True:
        try:
            return op(*args)
        except SSL.WantReadError:
            await anyio.wait_readable(sock)
        except SSL.WantWriteError:
            await anyio.wait_writable(sock)


class LoopTls:
    """A TLS client connection on a non-blocking socket."""

    def __init__(self, tls: Tls, sock: socket.socket, *, resume: bool = True) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.tls = tls
        self.conn = tls.connection(sock, resume=resume)
        self._failed: BaseException | None = None

    def start(self) -> None:
        """The ClientHello sent now, without waiting for the answer."""
        try:
            self.conn.do_handshake()
        except (SSL.WantReadError, SSL.WantWriteError):
            pass
        except (SSL.Error, OSError) as e:  # OpenSSL's error queue is read once: kept for `handshake`
            self._failed = self.tls.failure(e)

    async def handshake(self) -> None:
        """Raises `TlsFailure`; the certificate checked."""
        if self._failed is not None:
            raise self._failed
        try:
            await _retry(self.sock, self.conn.do_handshake)
        except (SSL.Error, OSError) as e:
            raise self.tls.failure(e) from None
        self.tls.check(self.conn)

    async def _read(self, op: Callable[[Any], T], arg: Any, end: T) -> T:
        """`end` at the end: the server's close_notify, or a bare EOF (a short file shows in the size checks)."""
        try:
            return await _retry(self.sock, op, arg)
        except SSL.ZeroReturnError:
            return end
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:
                return end
            raise

    async def recv_into(self, buf: bytearray) -> int:
        return await self._read(self.conn.recv_into, buf, 0)

    async def recv(self, n: int) -> bytes:
        return await self._read(self.conn.recv, n, b"")

    async def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[await _retry(self.sock, self.conn.send, view):]

    async def finish(self, *, notify: bool) -> None:
        """The end of a good transfer: `notify` sends our close_notify (the end of an
        upload, for the server); then the server's is awaited, the tickets it sent
        taken, and the newest session kept for the next data connection.

        Closing with unread bytes (tickets, close_notify) sends a reset that can cost
        the server the end of an upload (vsftpd: "426 Failure reading network stream").
        """
        if notify:
            await _retry(self.sock, self.conn.shutdown)
        buf = bytearray(16384)
        for _ in range(64):
            if not await self.recv_into(buf):
                break
        self.tls.keep(self.conn)

    def release(self) -> None:
        """Marked shut down before it is freed: OpenSSL would otherwise mark the session it resumed unusable."""
        self.conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)


class SocketControlStream:
    """The control connection over `sock`: plain until `start_tls`, then TLS."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._tls: LoopTls | None = None
        self._buf = bytearray()

    async def start_tls(self, tls: Tls) -> None:
        """The handshake (raises `TlsFailure`); its session is the one data connections resume first."""
        conn = LoopTls(tls, self.sock, resume=False)
        await conn.handshake()
        tls.controlled(conn.conn)
        self._tls = conn

    async def _recv(self) -> bytes:
        if self._tls is None:
            while True:
                try:
                    return self.sock.recv(65536)
                except BlockingIOError:
                    await anyio.wait_readable(self.sock)
        try:
            return await self._tls.recv(65536)
        except SSL.Error as e:
            raise ConnectionError(f"TLS error on the control connection: {tls_reason(e)}") from None

    def next_line(self) -> bytes | None:
        """The next line (without its LF) if it is here; None: `readline` waits for it."""
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        return line

    async def readline(self) -> bytes | None:
        """The next line (without its LF); None once the server closed the connection."""
        while True:
            line = self.next_line()
            if line is not None:
                return line
            data = await self._recv()
            if not data:
                line, self._buf = bytes(self._buf), bytearray()
                return line or None
            self._buf += data

    async def write(self, data: bytes) -> None:
        if self._tls is not None:
            try:
                await self._tls.sendall(data)
            except SSL.Error as e:
                raise ConnectionError(f"TLS error on the control connection: {tls_reason(e)}") from None
            return
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                await anyio.wait_writable(self.sock)

    def abort(self) -> None:
        """Closed under a waiting command (its deadline passed): the wait ends at once."""
        anyio.notify_closing(self.sock)
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
