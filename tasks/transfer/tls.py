"""TLS for FTPS (pyOpenSSL): certificate and host name checks, session reuse on data connections.

vsftpd's default `require_ssl_reuse=YES` refuses a data connection that does not
resume a TLS session of the same client. CPython's ssl can resume, but copies the
session through DER at every connection (a workaround in its _ssl.c), parsing the
server certificate again with the GIL held, on the system's OpenSSL 3.0: 2.4 ms of
CPU per 100 KB upload, against 1.3 ms with pyOpenSSL, which hands OpenSSL the
session as it is and runs on cryptography's current OpenSSL. A TLS 1.3 session is
good for one resumption (RFC 8446 C.4), so each data connection resumes the newest
one: the control connection's, then the ticket the previous data connection got.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

from .settings import ConnectionSettings

# the X.509 verify errors an admin meets (OpenSSL's x509_vfy.h numbers)
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate", 9: "certificate is not yet valid", 10: "certificate has expired",
    18: "self-signed certificate", 19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate", 21: "unable to verify the first certificate",
    23: "certificate revoked", 26: "unsupported certificate purpose", 27: "certificate not trusted",
}


class TlsFailure(Exception):
    """A handshake or check failed; the message says why, for the admin."""


def reason(e: BaseException) -> str:
    """pyOpenSSL's error list (or an OSError) as one line."""
    if isinstance(e, SSL.SysCallError):
        return "connection closed during the TLS exchange" if e.args and e.args[0] == -1 else str(e.args[-1] if e.args else e)
    if isinstance(e, SSL.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        return "; ".join(str(item[-1]) for item in e.args[0] if item and item[-1])
    return str(e) or type(e).__name__


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def names_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 matching on the subjectAltName (no common-name fallback, as browsers and CPython):
    an IP address by value, a DNS name label by label, `*` only as a whole leftmost label."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    ip = _ip(host)
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    want = host.rstrip(".").lower().split(".")
    for name in san.get_values_for_type(x509.DNSName):
        have = name.rstrip(".").lower().split(".")
        if len(have) != len(want) or not have[0]:
            continue
        if have == want or (have[0] == "*" and len(have) > 2 and have[1:] == want[1:]):
            return True
    return False


# server -> the NIST curve it chose when offered our default key shares (X25519MLKEM768,
# X25519) and no P-256 one: it took neither, so every handshake cost it a HelloRetryRequest
# (vsftpd sets prime256v1 only). Later sessions offer that curve alone: no group lost.
_CURVES: dict[str, type[ec.EllipticCurve]] = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1,
                                              "secp521r1": ec.SECP521R1}
_LEARNED: dict[tuple[str, int], str] = {}


class Tls:
    """One FTPS session's TLS: its context, the certificate checked once, the newest session."""

    def __init__(self, settings: ConnectionSettings, log: logging.Logger):
        self.host = settings.host
        self._sni = None if _ip(settings.host) else settings.host.encode("idna")  # no SNI for an address
        self.verify = settings.verify
        self._server = (settings.host, settings.port)
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)  # keep the tickets the server sends
        self._curve = _LEARNED.get(self._server)
        if self._curve is not None:
            ctx.set_tmp_ecdh(_CURVES[self._curve]())
        self._verify_error: tuple[int, int, str] | None = None  # (errno, depth, subject)
        if settings.verify:
            if settings.ca_file is not None:
                ctx.load_verify_locations(str(settings.ca_file))
            else:
                ctx.set_default_verify_paths()
            ctx.set_verify(SSL.VERIFY_PEER, self._note_verify)
        else:
            log.warning("TLS certificate of %s is NOT verified (verify = false)", settings.host)
            ctx.set_verify(SSL.VERIFY_NONE)
        self.ctx = ctx
        self._session: SSL.Session | None = None
        self.control: SSL.Connection | None = None  # set once its handshake is checked (`controlled`)
        self._checked: bytes | None = None  # the server certificate (DER) whose name was checked

    def _note_verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self._verify_error = (errno, depth, cert.to_cryptography().subject.rfc4514_string())
        return bool(ok)

    def connection(self, sock: socket.socket, *, resume: bool = True) -> SSL.Connection:
        """A client connection on `sock`; it resumes the newest session unless `resume` is false."""
        conn = SSL.Connection(self.ctx, sock)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        if resume:
            self.resume_into(conn)
        conn.set_connect_state()
        return conn

    def controlled(self, conn: SSL.Connection) -> None:
        """The control connection is up: its session is the first to resume, its group learnt."""
        self.control = conn
        group = conn.get_group_name()
        if self._curve is None and group in _CURVES:
            _LEARNED[self._server] = group

    def resume_into(self, conn: SSL.Connection) -> None:
        """The newest session: the control connection's until a data connection brings its own ticket."""
        session = self._session
        if session is None and self.control is not None:
            session = self.control.get_session()  # read late: TLS 1.3 tickets follow the handshake
        if session is not None:
            conn.set_session(session)

    def failure(self, e: BaseException) -> TlsFailure:
        """The handshake error `e` as the admin should read it."""
        _LEARNED.pop(self._server, None)  # the next session offers the default groups again
        noted, self._verify_error = self._verify_error, None
        if noted is not None:
            errno, depth, subject = noted
            detail = _VERIFY_ERRORS.get(errno, f"X.509 error {errno}")
            return TlsFailure(f"certificate verify failed: {detail} (depth {depth}, {subject})")
        return TlsFailure(reason(e))

    def check(self, conn: SSL.Connection) -> None:
        """After a handshake: the certificate names the host (checked once per certificate:
        resumed data connections carry the control connection's)."""
        if not self.verify:
            return
        cert = conn.get_peer_certificate()
        if cert is None:
            raise TlsFailure("the server sent no certificate")
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        if der != self._checked:
            if not names_host(x509.load_der_x509_certificate(der), self.host):
                raise TlsFailure(f"certificate verify failed: the certificate does not name {self.host}")
            self._checked = der

    def keep(self, conn: SSL.Connection) -> None:
        """A data connection's session (with the ticket it got) for the next one."""
        session = conn.get_session()
        if session is not None:
            self._session = session
