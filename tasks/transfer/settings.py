"""Connection settings shared by `[ftp_destinations.NAME]`, `ftp_pull` and `ftp_push`.

One frozen dataclass, validated once at load: a bad port, an unknown time zone,
an SFTP host without `known_hosts` or a proxy URL holding a password are load
errors naming the key, never surprises at 3 a.m.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import urllib.parse
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

from schedulerd.settings import ConfigError, Secret, byte_size, duration, int_range, positive_duration, read_secret_file

Protocol = Literal["ftp", "ftps", "ftps-implicit", "sftp"]
DEFAULT_PORTS: dict[str, int] = {"ftp": 21, "ftps": 21, "ftps-implicit": 990, "sftp": 22}
PROXY_PORTS: dict[str, int] = {"socks5": 1080, "socks4": 1080, "ftp": 21}


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A parsed `proxy` URL; the password lives in `ConnectionSettings.proxy_password`."""

    scheme: Literal["socks5", "socks4", "ftp"]
    host: str
    port: int
    user: str | None = None


def parse_proxy(value: str) -> Proxy:
    """`socks5://[user@]host:port`, `socks4://...` or `ftp://host:port` (Phraseanet's FTP gateway)."""
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port
    except ValueError:
        raise ValueError("proxy: not a valid URL like \"socks5://host:1080\"") from None
    scheme = url.scheme.lower()
    scheme = {"socks5h": "socks5", "socks": "socks5", "socks4a": "socks4"}.get(scheme, scheme)
    if scheme not in PROXY_PORTS:
        raise ValueError(f"proxy: scheme must be socks5, socks4 or ftp, got {url.scheme!r}")
    if url.password is not None:
        raise ValueError("proxy: do not put a password in the URL; use proxy_password")
    if not url.hostname:
        raise ValueError("proxy: missing host")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError("proxy: expected only scheme://host:port")
    user = urllib.parse.unquote(url.username or "") or None
    return Proxy(scheme, url.hostname, port or PROXY_PORTS[scheme], user)  # type: ignore[arg-type]


def _host(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, "expected a host name or address")
    if any(c.isspace() or ord(c) < 32 or c in "/@" for c in value):
        raise ConfigError(path, f"not a host name: {value!r}")
    return value.strip("[]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectionSettings:
    """Where and how to connect. Task settings inherit these fields (flattened)."""

    host: Annotated[str, _host]
    protocol: Protocol = "ftp"
    port: Annotated[int, int_range(1, 65535)] = 0  # 0: the protocol's default
    user: str = "anonymous"
    password: Secret | None = None
    password_file: Path | None = None
    timeout: Annotated[float, positive_duration] = 30.0
    retries: Annotated[int, int_range(0, 100)] = 2
    retry_delay: Annotated[float, duration] = 2.0
    # FTP
    passive: bool = True
    active_address: str | None = None  # address announced in PORT/EPRT (behind NAT)
    encoding: str = "utf-8"
    server_timezone: str = "UTC"  # zone of LIST times (MLSD is always UTC)
    # proxies
    proxy: str | None = None
    proxy_user: str | None = None
    proxy_password: Secret | None = None
    # TLS (ftps, ftps-implicit)
    ca_file: Path | None = None
    verify: bool = True
    # SFTP
    known_hosts: Literal["off"] | Path | None = None
    key_file: Path | None = None
    key_passphrase: Secret | None = None
    # speed
    block_size: Annotated[int, byte_size] = 256 * 1024
    sftp_requests: Annotated[int, int_range(1, 512)] = 64

    def __post_init__(self) -> None:
        if not self.port:
            object.__setattr__(self, "port", DEFAULT_PORTS[self.protocol])

    def check(self) -> None:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password_file: set either password or password_file, not both")
        try:
            zoneinfo.ZoneInfo(self.server_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"server_timezone: unknown time zone {self.server_timezone!r}") from None
        try:
            "".encode(self.encoding)
        except LookupError:
            raise ValueError(f"encoding: unknown encoding {self.encoding!r}") from None
        proxy = self.proxy_spec
        if proxy is not None and proxy.scheme != "ftp" and not self.passive and self.protocol != "sftp":
            raise ValueError("passive: active mode cannot go through a SOCKS proxy; set passive = true")
        if proxy is not None and proxy.scheme == "ftp" and self.protocol == "sftp":
            raise ValueError("proxy: an FTP gateway cannot carry SFTP; use a socks5:// proxy")
        for key in ("proxy_user", "proxy_password"):
            if proxy is None and getattr(self, key):
                raise ValueError(f"{key}: set only with proxy")
        if self.proxy_user and self.proxy and parse_proxy(self.proxy).user not in (None, self.proxy_user):
            raise ValueError("proxy_user: the proxy URL names another user; name it in one place")
        if self.active_address is not None:
            try:
                ipaddress.ip_address(self.active_address)
            except ValueError:
                raise ValueError(f"active_address: not an IP address: {self.active_address!r}") from None
        if self.protocol == "sftp" and self.known_hosts is None:
            raise ValueError('known_hosts: required for sftp (a known_hosts file, or "off" to accept any host key)')
        if self.protocol != "sftp" and (self.key_file is not None or self.known_hosts is not None):
            raise ValueError("key_file: known_hosts and key_file apply to protocol = \"sftp\" only")
        for key in ("password_file", "ca_file", "known_hosts", "key_file"):
            if isinstance(path := getattr(self, key), Path) and not path.is_file():
                raise ValueError(f"{key}: no such file {path}")
        if self.block_size < 4096 or self.block_size > 16 * 1024 * 1024:
            raise ValueError("block_size: must be from 4KB to 16MB")

    @functools.cached_property
    def proxy_spec(self) -> Proxy | None:
        """The proxy URL parsed (once: every data connection asks); its user is `proxy_user` when the URL names none."""
        if not self.proxy:
            return None
        proxy = parse_proxy(self.proxy)
        return dataclasses.replace(proxy, user=proxy.user or self.proxy_user)

    @property
    def tls(self) -> bool:
        return self.protocol in ("ftps", "ftps-implicit")

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.server_timezone)

    def secret_password(self) -> str:
        """The login password, read now (a password_file may be rotated between passes)."""
        if self.password_file is not None:
            return read_secret_file(str(self.password_file), "password_file").reveal()
        return self.password.reveal() if self.password else ""

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing error texts."""
        found = [s.reveal() for s in (self.password, self.proxy_password, self.key_passphrase) if s]
        if self.password_file is not None:
            with contextlib.suppress(ConfigError):
                found.append(self.secret_password())
        return [v for v in found if v]

    def scrub(self, text: str) -> str:
        """`text` with every secret value replaced by stars (the longest first: one may hold another)."""
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, "********")
        return text

    def describe(self) -> str:
        """`ftps://user@host:port` for log lines: never a secret."""
        proxy = self.proxy_spec
        via = f" via {proxy.scheme}://{proxy.host}:{proxy.port}" if proxy is not None else ""
        return f"{self.protocol}://{self.user}@{self.host}:{self.port}{via}"
