"""`[http]`: the operator's console (schedulerd.web), off unless `listen` is set.

Light on purpose (no Starlette here): the config loader imports it."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated

from .. import settings as s
from ..settings import ConfigError, Secret

HASH_PREFIX = "scrypt$"


@dataclasses.dataclass(frozen=True)
class Listen:
    """Where the console listens: a TCP host and port, or a Unix socket path."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @property
    def loopback(self) -> bool:
        if self.path is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:  # a host name other than localhost may resolve to anything
            return False

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"[{self.host}]:{self.port}" if self.host and ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str, path: str, base_dir: Path | None) -> Listen:
    """`"127.0.0.1:8021"`, `"[::1]:8021"`, `"localhost:8021"`, or a socket path (has a `/`)."""
    if "/" in value:
        p = Path(value)
        return Listen(path=p if p.is_absolute() or base_dir is None else base_dir / p)
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(path, f'expected "HOST:PORT" (e.g. "127.0.0.1:8021") or a Unix socket path, got {value!r}')
    return Listen(host=host, port=int(port))


def password_hash(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.startswith(HASH_PREFIX) or value.count("$") != 5:
        raise ConfigError(path, "expected a password hash as `bin/console http:passwd USER` prints it "
                                "(scrypt$N$r$p$salt$hash), not a password")
    return value


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    listen: str | None = None  # off unless set: "127.0.0.1:8021" or a Unix socket path
    tls_cert: Path | None = None  # both: HTTPS (required to listen on a non-loopback address)
    tls_key: Path | None = None
    # user name -> password hash (`bin/console http:passwd USER`)
    users: Mapping[str, Annotated[str, password_hash]] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))
    # a reverse proxy's header naming the user it authenticated; only on a Unix socket (opt-in)
    proxy_user_header: str | None = None
    refresh: Annotated[float, s.positive_duration] = 5.0  # the tables refresh themselves this often
    session_max_age: Annotated[float, s.positive_duration] = 12 * 3600.0
    # failed logins per client address, and per user name, within login_window: past it, 429
    login_max_failures: Annotated[int, s.int_range(1, 1000)] = 5
    # per user name, if not login_max_failures; 0: no per-user limit (docs/console.md: lockouts)
    login_user_max_failures: Annotated[int, s.int_range(0, 1000)] | None = None
    login_window: Annotated[float, s.positive_duration] = 60.0
    metrics_token: Secret | None = None  # `Authorization: Bearer TOKEN` reads /metrics from anywhere
    metrics_public_on_loopback: bool = True  # /metrics without login from 127.0.0.1/::1

    @property
    def enabled(self) -> bool:
        return self.listen is not None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def where(self, base_dir: Path | None = None) -> Listen:
        assert self.listen is not None
        return parse_listen(self.listen, "listen", base_dir)

    def check(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert", "tls_cert and tls_key go together")
        if self.listen is None:
            return
        where = parse_listen(self.listen, "listen", None)
        if not where.loopback and not self.tls:
            raise ConfigError("listen", f"{where} is not a loopback address and no TLS is set: passwords and "
                                        "session cookies would cross the network in clear. Set http.tls_cert "
                                        "and http.tls_key, or listen on 127.0.0.1 or on a Unix socket behind "
                                        "a reverse proxy that does TLS")
        if self.proxy_user_header is not None and where.path is None:
            raise ConfigError("proxy_user_header", "is accepted only when listening on a Unix socket (only the "
                                                   "proxy can reach it); on TCP anyone could send the header")
        if not self.users and self.proxy_user_header is None:
            raise ConfigError("users", "the console needs at least one user (`bin/console http:passwd USER` "
                                       "prints the line to add under [http.users]) or proxy_user_header")
