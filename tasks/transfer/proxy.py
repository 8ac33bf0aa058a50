"""Open TCP connections, directly or through a SOCKS5/SOCKS4 proxy (python-socks): a connected
non-blocking socket, for FTP control and data connections (plain or TLS) and asyncssh (`sock=`)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import anyio
from python_socks import ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy as SocksProxy

from .errors import ConnectError
from .settings import ConnectionSettings

_TYPES = {"socks5": ProxyType.SOCKS5, "socks4": ProxyType.SOCKS4}


async def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A connected non-blocking socket to the first address of host:port that answers. An
    address needs no lookup (a thread hop): data connections go to the control's address."""
    with anyio.fail_after(timeout):
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            infos = [(family, socket.SOCK_STREAM, 0, "", (host, port))]
        except ValueError:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, addr)
            except OSError as e:
                sock.close()
                last = e
                continue
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
    raise last or OSError(f"no address for {host}")


async def open_socket(host: str, port: int, settings: ConnectionSettings) -> socket.socket:
    """A connected socket to host:port, through the settings' SOCKS proxy when one is set (an FTP
    gateway is reached directly); every wait (name lookup, connection, SOCKS exchange) bounded by `timeout`."""
    proxy, timeout = settings.proxy_spec, settings.timeout
    try:
        if proxy is None or proxy.scheme == "ftp":
            return await _tcp(host, port, timeout)
        password = settings.proxy_password.reveal() if settings.proxy_password else None
        socks = SocksProxy(_TYPES[proxy.scheme], proxy.host, proxy.port, proxy.user, password, rdns=True)
        sock = await socks.connect(host, port, timeout=timeout)
        sock.setblocking(False)
        return sock
    except (TimeoutError, ProxyTimeoutError):
        raise ConnectError(f"timed out connecting to {host}:{port}") from None
    except ProxyError as e:
        assert proxy is not None
        raise ConnectError(f"SOCKS proxy {proxy.host}:{proxy.port} could not reach {host}:{port}: {e}") from None
    except OSError as e:
        raise ConnectError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
