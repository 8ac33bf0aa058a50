"""A server that stops answering: the control connection's deadline (one timer per session)."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import anyio
import pytest

from schedulerd.settings import build
from tasks.transfer import ConnectError, connect
from tasks.transfer.settings import ConnectionSettings

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def mute_server(greet: bytes, answered: int, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Greets (after a TLS handshake when `tls`), answers `answered` commands with 230/200, then reads and stays silent."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.ExitStack() as stack:
            stack.callback(conn.close)
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
                stack.callback(conn.close)
            conn.sendall(greet)
            buf = b""
            for _ in range(answered):
                while b"\r\n" not in buf:
                    buf += conn.recv(1024)
                line, buf = buf.split(b"\r\n", 1)
                conn.sendall(b"230 ok\r\n" if line.startswith((b"USER", b"PASS")) else b"200 ok\r\n")
            conn.settimeout(0.1)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError, OSError):
                    if conn.recv(1024) == b"":
                        return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        listener.close()


def settings(port: int, **over: object) -> ConnectionSettings:
    data = {"host": "127.0.0.1", "port": port, "user": "u", "password": "Pw-never-shown-1", "timeout": 1, "retries": 0}
    data.update(over)
    return build(ConnectionSettings, data, "tasks.t")


@pytest.mark.parametrize("answered", [0, 2], ids=["greeting-then-silence", "login-then-silence"])
async def test_a_silent_server_is_given_up_after_timeout(answered: int, log: logging.Logger) -> None:
    greet = b"220 hello\r\n" if answered else b""  # 0: not even the greeting
    with mute_server(greet, answered) as port:
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(ConnectError, match=r"no reply within 1s"):
            await connect(settings(port), log)
        assert time.monotonic() - started < 4


async def test_a_silent_tls_server_is_given_up_after_timeout(certs, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    """Implicit FTPS: the handshake completes, then no greeting. The wait is on the bare
    socket (pyOpenSSL): closing it must wake the waiting command, not leave it hanging."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert_file, certs.key_file)
    with mute_server(b"", 0, tls=ctx) as port:
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(ConnectError, match=r"no reply within 1s"):
            await connect(settings(port, protocol="ftps-implicit", ca_file=str(certs.ca_file)), log)
        assert time.monotonic() - started < 4
