"""Open TCP connections, directly or through a SOCKS5/SOCKS4 proxy.

The result is a connected socket, so the same code feeds asyncio streams (FTP
control and data, TLS or not) and asyncssh (`sock=`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
import struct
from typing import Any

from .errors import ConnectError
from .settings import Proxy

SOCKS5_ERRORS = {
    1: "general failure", 2: "connection not allowed by ruleset", 3: "network unreachable",
    4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
    8: "address type not supported",
}


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise ConnectError("proxy closed the connection during the SOCKS handshake")
        buf += chunk
    return buf


_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux: non-blocking from the start, no ioctl


@functools.lru_cache(maxsize=64)
def _family(host: str) -> socket.AddressFamily | None:
    """The family of an address literal; None for a name (to resolve)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


async def _connect(sock: socket.socket, addr: Any, timeout: float) -> None:
    """asyncio's `sock_connect`, without its wait, nor a timer, when the handshake is over by
    the time the non-blocking connect returns (loopback, a local server): asking again says EISCONN."""
    err = sock.connect_ex(addr)
    if err == errno.EINPROGRESS:
        err = sock.connect_ex(addr)
        if err == errno.EALREADY:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, addr)
            return
    if err not in (0, errno.EISCONN):
        raise OSError(err, os.strerror(err))


async def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A connected non-blocking socket to host:port (first address that answers; `timeout` for each wait)."""
    family = _family(host)  # an address needs no resolver (a thread hop per data connection otherwise)
    if family is not None:
        infos = [(family, socket.SOCK_STREAM, 0, "", (host, port))]
    else:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_ | _NONBLOCK, proto)
        if not _NONBLOCK:
            sock.setblocking(False)
        try:
            await _connect(sock, addr, timeout)
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


async def _socks5(sock: socket.socket, proxy: Proxy, password: str | None, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    methods = b"\x00\x02" if proxy.user else b"\x00"
    await loop.sock_sendall(sock, b"\x05" + bytes([len(methods)]) + methods)
    ver, method = await _recv_exactly(sock, 2)
    if ver != 5:
        raise ConnectError("proxy is not a SOCKS5 server")
    if method == 0x02:
        user = (proxy.user or "").encode()
        pw = (password or "").encode()
        if len(user) > 255 or len(pw) > 255:
            raise ConnectError("SOCKS5 user name or password too long")
        await loop.sock_sendall(sock, b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
        _, status = await _recv_exactly(sock, 2)
        if status != 0:
            raise ConnectError("SOCKS5 proxy refused the user name or password")
    elif method != 0x00:
        raise ConnectError("SOCKS5 proxy accepts none of our authentication methods")
    try:
        ip = ipaddress.ip_address(host)
        addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:
        name = host.encode("idna")
        addr = b"\x03" + bytes([len(name)]) + name
    await loop.sock_sendall(sock, b"\x05\x01\x00" + addr + struct.pack("!H", port))
    ver, rep, _, atyp = await _recv_exactly(sock, 4)
    if ver != 5 or rep != 0:
        raise ConnectError(f"SOCKS5 proxy could not reach {host}:{port}: {SOCKS5_ERRORS.get(rep, f'error {rep}')}")
    tail = {1: 4, 4: 16}.get(atyp)
    if tail is None:
        (tail,) = await _recv_exactly(sock, 1)
    await _recv_exactly(sock, tail + 2)


async def _socks4(sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    user = (proxy.user or "").encode() + b"\x00"
    try:
        ip = ipaddress.ip_address(host)
        if ip.version != 4:
            raise ConnectError("SOCKS4 cannot reach IPv6 addresses; use socks5")
        request = struct.pack("!BBH", 4, 1, port) + ip.packed + user
    except ValueError:  # SOCKS4a: let the proxy resolve the name
        request = struct.pack("!BBH", 4, 1, port) + b"\x00\x00\x00\x01" + user + host.encode("idna") + b"\x00"
    await loop.sock_sendall(sock, request)
    _, status = (await _recv_exactly(sock, 8))[:2]
    if status != 0x5A:
        raise ConnectError(f"SOCKS4 proxy could not reach {host}:{port} (status {status})")


async def open_socket(host: str, port: int, *, proxy: Proxy | None, proxy_password: str | None, timeout: float) -> socket.socket:
    """A connected socket to host:port, through the SOCKS proxy when one is set.

    Each wait (a name lookup, a connection, the SOCKS exchange) is bounded by `timeout`;
    a direct connection made at once (loopback, a near server) sets no timer at all."""
    try:
        if proxy is None or proxy.scheme == "ftp":
            return await _tcp(host, port, timeout)
        async with asyncio.timeout(timeout):  # asyncio's own: anyio's scope cost more than a loopback connect
            try:
                sock = await _tcp(proxy.host, proxy.port, timeout)
            except OSError as e:
                raise ConnectError(f"cannot reach proxy {proxy.host}:{proxy.port}: {e.strerror or e}") from None
            try:
                if proxy.scheme == "socks5":
                    await _socks5(sock, proxy, proxy_password, host, port)
                else:
                    await _socks4(sock, proxy, host, port)
            except BaseException:
                sock.close()
                raise
            return sock
    except TimeoutError:
        raise ConnectError(f"timed out connecting to {host}:{port}") from None
    except OSError as e:
        raise ConnectError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
