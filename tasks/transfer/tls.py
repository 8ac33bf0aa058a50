"""TLS for FTPS: certificate checks, and session reuse on data connections.

vsftpd's default `require_ssl_reuse=YES` refuses a data connection that does not
resume the control connection's TLS session (proof that it comes from the same
client). asyncio's `start_tls` takes no `session=` argument, so the context
handed to it injects the control session into `wrap_bio`.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from .settings import ConnectionSettings


def client_context(settings: ConnectionSettings, log: logging.Logger) -> ssl.SSLContext:
    """Verify against `ca_file` or the system store; `verify = false` only when set, loudly."""
    ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.verify:
        log.warning("TLS certificate of %s is NOT verified (verify = false)", settings.host)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SessionContext(ssl.SSLContext):
    """An SSLContext that resumes `session` on every connection it wraps."""

    session: ssl.SSLSession | None
    base: ssl.SSLContext

    def __new__(cls, base: ssl.SSLContext, session: ssl.SSLSession | None) -> SessionContext:
        self = super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)
        self.base = base
        self.session = session
        return self

    def __init__(self, base: ssl.SSLContext, session: ssl.SSLSession | None) -> None:  # noqa: D107
        pass

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: Any = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self.base.wrap_bio(incoming, outgoing, server_side=server_side,
                                  server_hostname=server_hostname, session=session or self.session)

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        kwargs.setdefault("session", self.session)
        return self.base.wrap_socket(sock, *args, **kwargs)


def data_context(base: ssl.SSLContext, control: ssl.SSLObject | None) -> ssl.SSLContext:
    """The context for a data connection: the control session when there is one."""
    session = control.session if control is not None else None
    return SessionContext(base, session) if session is not None else base
