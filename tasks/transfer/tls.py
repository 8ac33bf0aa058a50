"""TLS for FTPS (pyOpenSSL): certificate and host name checks (service_identity), and data
connections that resume a session of the control connection, without which vsftpd's
default (`require_ssl_reuse=YES`) refuses them. asyncio's TLS cannot be handed a session
to resume; pyOpenSSL can. A TLS 1.3 session is good for one resumption (RFC 8446 C.4):
each data connection resumes the newest one (the control connection's, then the ticket
the previous data connection got). `TlsConn` has the interface of ftp.py's `SocketConn`:
OpenSSL drives the bare non-blocking socket, the event loop waits only when it would block.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from schedulerd.plugin import TaskLog

from .proxy import wait_for
from .settings import ConnectionSettings

T = TypeVar("T")


class TlsFailure(Exception):
    """A handshake or check failed; the message says why, for the admin."""


def reason(e: BaseException) -> str:
    """pyOpenSSL's error list (or an OSError) as one line."""
    if isinstance(e, SSL.SysCallError) and e.args:
        return "connection closed during the TLS exchange" if e.args[0] == -1 else str(e.args[-1])
    if isinstance(e, SSL.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        return "; ".join(str(item[-1]) for item in e.args[0] if item and item[-1])
    return str(e) or type(e).__name__


def ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    return None


def names_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 matching (service_identity): subjectAltName only, an IP address as an IP entry."""
    try:
        if ip_address(host) is not None:
            verify_certificate_ip_address(cert, host)
        else:
            verify_certificate_hostname(cert, host.rstrip("."))
    except (service_identity.VerificationError, service_identity.CertificateError):
        return False
    return True


class Tls:
    """One FTPS session's TLS: its context, the certificate checked once, the newest session."""

    def __init__(self, settings: ConnectionSettings, log: TaskLog):
        self.host = settings.host
        self.timeout = settings.timeout
        self.sni = None if ip_address(settings.host) else settings.host.encode("idna")  # no SNI for an address
        self.verify = settings.verify
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)  # keep the tickets the server sends
        # P-256, the group every TLS 1.3 server implements (RFC 8446 9.1): the key share is
        # then one the server takes, no HelloRetryRequest on each data connection
        ctx.set_tmp_ecdh(ec.SECP256R1())
        if settings.verify:
            if settings.ca_file is not None:
                ctx.load_verify_locations(str(settings.ca_file))
            else:
                ctx.set_default_verify_paths()
            ctx.set_verify(SSL.VERIFY_PEER)
        else:
            log.warning("TLS certificate of %s is NOT verified (verify = false)", settings.host)
            ctx.set_verify(SSL.VERIFY_NONE)
        self.ctx = ctx
        self.session: SSL.Session | None = None
        self.control: SSL.Connection | None = None  # set once its handshake is checked
        self._checked: x509.Certificate | None = None  # the server certificate whose name was checked

    def resume_into(self, conn: SSL.Connection) -> None:
        """The newest session: the control connection's until a data connection brings its own ticket."""
        session = self.session
        if session is None and self.control is not None:
            session = self.control.get_session()  # read late: TLS 1.3 tickets follow the handshake
        if session is not None:
            conn.set_session(session)

    def check(self, conn: SSL.Connection) -> None:
        """After a handshake: the certificate names the host (once per certificate: resumed
        data connections carry the control connection's)."""
        cert = conn.get_peer_certificate(as_cryptography=True) if self.verify else None
        if cert is None or cert == self._checked:  # None: not verifying, or OpenSSL's verification failed already
            return
        if not names_host(cert, self.host):
            raise TlsFailure(f"certificate verify failed: the certificate does not name {self.host}")
        self._checked = cert


class TlsConn:
    """A TLS client connection on a non-blocking socket (control: `resume=False`; data: resumes)."""

    def __init__(self, tls: Tls, sock: socket.socket, *, resume: bool = True) -> None:
        self.sock = sock
        self.tls = tls
        conn = self.conn = SSL.Connection(tls.ctx, sock)
        if tls.sni is not None:
            conn.set_tlsext_host_name(tls.sni)
        if resume:
            tls.resume_into(conn)
        conn.set_connect_state()

    async def _retry(self, op: Callable[..., T], *args: Any) -> T:
        while True:
            try:
                return op(*args)
            except SSL.WantReadError:
                await wait_for(self.sock, True, self.tls.timeout)
            except SSL.WantWriteError:
                await wait_for(self.sock, False, self.tls.timeout)

    async def handshake(self) -> None:
        """Raises `TlsFailure`; the certificate checked."""
        try:
            await self._retry(self.conn.do_handshake)
        except (SSL.Error, OSError) as e:
            raise TlsFailure(reason(e)) from None
        self.tls.check(self.conn)

    async def recv_into(self, buf: bytearray | memoryview) -> int:
        """0 at the end: the server's close_notify, or a bare EOF (a short file shows in the size checks)."""
        try:
            return await self._retry(self.conn.recv_into, buf)
        except SSL.ZeroReturnError:
            return 0
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:
                return 0
            raise

    async def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[await self._retry(self.conn.send, view):]

    async def finish(self, *, upload: bool) -> None:
        """The end of a good transfer: after an upload our close_notify; then the server's is
        awaited and the newest session kept for the next data connection.

        Closing with unread bytes (tickets, close_notify) sends a reset that can cost
        the server the end of an upload (vsftpd: "426 Failure reading network stream")."""
        if upload:
            await self._retry(self.conn.shutdown)
        buf = bytearray(16384)
        for _ in range(64):
            if not await self.recv_into(buf):
                break
        self.tls.session = self.conn.get_session() or self.tls.session

    def close(self) -> None:
        # marked shut down before it is freed: OpenSSL would otherwise mark the session it resumed unusable
        self.conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        self.sock.close()
