"""PostgreSQL connection settings shared by the engine's store (`[store]`) and plugins that keep
their own data in PostgreSQL (the repository's databoxes, `[databoxes.NAME] url`): part of the
plugin API. psycopg is imported only when a pool is opened.

A URL never holds a password (it would show wherever the URL does): the password is a secret of
its own (`password = "env:VAR"`, `"file:PATH"` or literal) given to libpq as a keyword.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .settings import ConfigError, Secret

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

CONNECT_TIMEOUT = 10  # seconds for one connection attempt (an unreachable host fails fast)
POOL_TIMEOUT = 15.0  # seconds a call waits for a pooled connection before it fails

__all__ = ["CONNECT_TIMEOUT", "POOL_TIMEOUT", "connection_kwargs", "describe", "open_pool", "postgres_url"]


def postgres_url(value: object, path: str) -> str:
    """`postgresql://user@host:port/db?sslmode=require`: query parameters go to libpq as they are;
    a password in it is refused, naming the key to set instead (`store.url` -> `store.password`).
    Errors never echo the value."""
    if not isinstance(value, str):
        raise ConfigError(path, "expected a string like \"postgresql://user@host:5432/db\"")
    try:
        parts = urlsplit(value)
        has_password = parts.password is not None
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
    except ValueError as e:
        raise ConfigError(path, f"not a valid URL ({e})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(path, "expected a URL starting with postgresql://")
    if has_password or "password" in params:
        key = (path.rsplit(".", 1)[0] + ".password") if "." in path else "password"
        raise ConfigError(path, f'holds a password: take it out of the URL and set {key} '
                                '("env:VAR", "file:PATH" or the password itself)')
    return value


def describe(url: str) -> str:
    """The URL as messages show it: no query string (it may carry sslkey paths and such)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def connection_kwargs(password: Secret | None, application_name: str) -> dict[str, Any]:
    """libpq keywords besides the URL: the connect timeout, the application name, the password."""
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "application_name": application_name}
    if password is not None:
        kwargs["password"] = password.reveal()
    return kwargs


def open_pool(url: str, password: Secret | None, name: str, *, max_size: int = 4,
              configure: Any = None) -> ConnectionPool:
    """A psycopg_pool pool of synchronous connections, opened without waiting: connections are
    made when a call needs one, and one the server closed (a restart) is replaced before use."""
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(url, kwargs=connection_kwargs(password, name), min_size=0, max_size=max_size, open=False,
                          name=name, timeout=POOL_TIMEOUT, check=check_connection, configure=configure)
    pool.open(wait=False)
    return pool


def check_connection(conn: Any) -> None:
    """The pool's check before it lends a connection: a round trip to the server (psycopg_pool's
    check_connection) only when the connection is not idle or its socket has something to read
    (the server closed it: a restart, an idle timeout; or sent a notice). A quiet idle connection
    is lent as it is: every store call is one transaction, and a round trip more for each one
    was a fifth of a no-op job's store time. A connection the server dropped without a word (a
    network cut) fails at its first statement, like one that fails during a call: the caller's
    retry (store.store_call) takes another."""
    import select

    from psycopg import pq
    from psycopg_pool import ConnectionPool

    if conn.pgconn.status == pq.ConnStatus.OK and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        poller = select.poll()  # not select.select: a daemon with thousands of files has fds above 1024
        poller.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
        if not poller.poll(0):
            return
    ConnectionPool.check_connection(conn)
