"""FTP and FTPS (explicit and implicit) on top of aioftp's command machinery.

aioftp parses replies; the data connections are ours, because aioftp has no
active mode, no SOCKS and completes the TLS handshake before sending RETR,
which deadlocks vsftpd (it accepts, replies 150, and only then handshakes).
FTPS is pyOpenSSL's (see `tls`), control and data connections on bare sockets
driven by the event loop (`tlsloop`); a data connection's handshake runs while
its command waits for the 1xx reply, and resumes a session of this client
(vsftpd `require_ssl_reuse`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, BinaryIO

import aioftp
import anyio
from OpenSSL import SSL

from . import tls
from .base import InMemory, OnBytes, RemoteClient, RemoteEntry
from .deadline import Deadline
from .errors import AuthError, ConnectError, NotFound, RemoteError, TransferError, scrub
from .listing import parse_listing
from .proxy import open_socket
from .settings import ConnectionSettings
from .tlsloop import LoopTls, SocketControlStream

MAX_LISTING = 256 * 1024 * 1024
# the protocol, at debug level (passwords starred): its own logger, as aioftp's was, so a
# task or job log kept at debug level does not get ten lines per file
PROTOCOL_LOG = logging.getLogger("schedulerd.ftp.protocol")


class _Lines(asyncio.Protocol):
    """The plain control connection's bytes cut into lines as they arrive."""

    def __init__(self) -> None:
        self.lines: collections.deque[bytes] = collections.deque()
        self.rest = b""  # a line still without its end
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None  # a reader waiting for a line
        self.drainer: asyncio.Future[None] | None = None  # a writer waiting for room
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        *lines, self.rest = data.split(b"\n")
        if lines:
            self.lines.extend(lines)
            self._wake()

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self.resume_writing()

    def _end(self) -> None:
        if self.rest:  # a last line without its end
            self.lines.append(self.rest)
            self.rest = b""
        self.closed = True
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        _wake(self.drainer)

    def _wake(self) -> None:
        _wake(self.waiter)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class ControlStream:
    """The plain control connection on a bare protocol: a reply line already received is
    taken without a wait (`next_line`). asyncio's StreamReader cost a future and four
    Python frames per line, and a small file's download has four replies."""

    def __init__(self, protocol: _Lines) -> None:
        self._p = protocol
        self._loop = asyncio.get_running_loop()
        self.sock: socket.socket = protocol.transport.get_extra_info("socket")  # type: ignore[union-attr]

    def next_line(self) -> bytes | None:
        """The next line (without its LF) if it is here; None: `readline` waits for it."""
        lines = self._p.lines
        return lines.popleft() if lines else None

    async def readline(self) -> bytes | None:
        """The next line (without its LF); None once the server closed the connection."""
        p = self._p
        while not p.lines:
            if p.closed:
                return None
            p.waiter = self._loop.create_future()
            try:
                await p.waiter
            finally:
                p.waiter = None
        return p.lines.popleft()

    async def write(self, data: bytes) -> None:
        p = self._p
        if p.closed:
            raise ConnectionResetError("the server closed the control connection")
        p.transport.write(data)  # type: ignore[union-attr]
        while p.paused:  # the kernel did not take it all: wait for room
            p.drainer = self._loop.create_future()
            try:
                await p.drainer
            finally:
                p.drainer = None
            if p.closed:
                raise ConnectionResetError("the server closed the control connection")

    def abort(self) -> None:
        self._p.transport.abort()  # type: ignore[union-attr]

    def close(self) -> None:
        self._p.transport.close()  # type: ignore[union-attr]


@dataclasses.dataclass
class _Piggyback:
    """Commands waiting to share the next EPSV/PASV packet (`mtime_later`, `size_later`, `rename_later`)."""

    lines: tuple[str, ...]  # one MDTM, one SIZE, or RNFR + RNTO
    sent: bool = False  # written: its replies are (being) read with the EPSV's
    done: bool = False  # all its replies read
    value: float | None = None  # MDTM's time, SIZE's size (None: no such file, or no answer)
    error: RemoteError | None = None  # the rename's first refusal, SIZE's refusal


def _mdtm(info: list[str]) -> float:
    """`213 YYYYMMDDHHMMSS[.sss]` (UTC) as epoch seconds; ValueError/IndexError when malformed."""
    stamp = info[-1].strip().split()[-1]
    main, _, frac = stamp.partition(".")
    if len(main) != 14 or not main.isdigit():
        raise ValueError(f"not a time: {stamp!r}")
    # by hand: strptime cost more than the rest of a small file's MDTM
    d = datetime(int(main[:4]), int(main[4:6]), int(main[6:8]), int(main[8:10]), int(main[10:12]),
                 int(main[12:14]), tzinfo=timezone.utc)
    return d.timestamp() + (float("0." + frac) if frac.isdigit() else 0.0)


def _size(info: list[str]) -> int:
    """`213 N` as an int; ValueError/IndexError when malformed."""
    return int(info[-1].strip().split()[-1])


class _Stall:
    """A download's no-progress timer: one `asyncio.timeout` for the transfer, moved on at
    most every 1 % of `timeout` (no byte for `timeout` fails within 1 % of it), not after
    each read: a TLS read is one 16 KB record, and a reschedule (a getpid() and a
    timer-heap push on Python 3.11) after each was ~10 % of a 512 MB FTPS download's CPU."""

    def __init__(self, scope: asyncio.Timeout, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.scope = scope
        self.timeout = timeout
        self.step = timeout / 100
        self.moved = self.loop.time()

    def progress(self) -> None:
        now = self.loop.time()
        if now - self.moved > self.step:
            self.scope.reschedule(now + self.timeout)
            self.moved = now


Keep = Callable[[memoryview], Any] | InMemory  # where a download's bytes go: a function, or received in place


class _Buffered:
    """A `keep` function behind InMemory's `spare`/`filled`: reads land in one reused buffer
    of `room` bytes, each piece then handed to `keep`."""

    def __init__(self, keep: Callable[[memoryview], Any], room: int) -> None:
        self._keep = keep
        self._buf = bytearray(room)
        self._view = memoryview(self._buf)

    def spare(self) -> bytearray:
        return self._buf

    def filled(self, n: int) -> None:
        self._keep(self._view[:n])


def _sink(keep: Keep, room: int) -> InMemory | _Buffered:
    return keep if isinstance(keep, InMemory) else _Buffered(keep, room)


async def _receive_all(recv_into: Callable[[Any], Awaitable[int]], keep: Keep,
                       room: int, timeout: float, on_bytes: OnBytes | None) -> int:
    """A download's bytes to `keep` until EOF; a network error, or `timeout` without a byte,
    as `_NetFailure` (an error of `keep`, the local side, unchanged)."""
    sink = _sink(keep, room)
    got = 0
    try:
        async with asyncio.timeout(timeout) as scope:
            stall = _Stall(scope, timeout)
            while True:
                try:
                    k = await recv_into(sink.spare())
                except (SSL.Error, OSError) as e:
                    raise _NetFailure() from e
                if not k:
                    return got
                stall.progress()
                sink.filled(k)
                got += k
                if on_bytes:
                    on_bytes(k)
    except TimeoutError as e:
        raise _NetFailure() from e


async def _receive_socket(sock: socket.socket, keep: Keep, room: int, timeout: float,
                          on_bytes: OnBytes | None) -> int:
    """`_receive_all` for a plain socket, registered in epoll once per transfer and read until
    it has nothing more at each wake-up: `sock_recv_into` makes a future and registers and
    unregisters the socket for every wait (2-3 per 100 KB file on loopback). A transfer
    that is over by the time it is first read (a small file, a near server) sets no timer."""
    sink = _sink(keep, room)
    got = 0

    def drain() -> bool:
        """What the socket holds now to `keep`; True at EOF."""
        nonlocal got
        while True:
            try:
                k = sock.recv_into(sink.spare())
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as e:
                raise _NetFailure() from e
            if not k:
                return True
            sink.filled(k)
            got += k
            if on_bytes:
                on_bytes(k)

    if drain():
        return got
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout) as scope:
            stall = _Stall(scope, timeout)
            done = loop.create_future()

            def readable() -> None:
                if done.done():
                    return
                try:
                    at = got
                    if drain():
                        done.set_result(None)
                    elif got != at:
                        stall.progress()
                except BaseException as e:  # noqa: B036 - handed to the waiting task
                    done.set_exception(e)

            fd = sock.fileno()
            loop.add_reader(fd, readable)
            try:
                await done
            finally:
                loop.remove_reader(fd)
            return got
    except TimeoutError as e:
        raise _NetFailure() from e


async def _send_all(send: Callable[[bytes], Awaitable[Any]], src: BinaryIO, size: int, timeout: float,
                    on_bytes: OnBytes | None) -> int:
    """`src` to EOF through `send`, `size` bytes at a time; a network error, or `timeout` on
    one chunk, as `_NetFailure` (an error reading `src`, the local side, unchanged)."""
    done = 0
    while chunk := src.read(size):
        try:
            async with asyncio.timeout(timeout):
                await send(chunk)
        except (SSL.Error, OSError, TimeoutError) as e:
            raise _NetFailure() from e
        done += len(chunk)
        if on_bytes:
            on_bytes(len(chunk))
    return done


class _NetFailure(Exception):
    """Raised in a direct transfer from the data socket's error or timeout (its __cause__)."""


# sendfile errors that come from the data connection; any other comes from the local file
_NET_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT,
                         errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN})


def _regular_fd(src: BinaryIO) -> int | None:
    try:
        fd = src.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


async def _sendfile(sock: socket.socket, fd: int, offset: int, step: int, timeout: float,
                    on_bytes: OnBytes | None) -> int:
    """Send a regular file to EOF with os.sendfile: the bytes go from the page cache to the
    socket without passing through Python (no read, no buffer, no copy), which on uploads
    was a third of our CPU. Reads to EOF, not to the size seen at open: a file that grew
    meanwhile must fail the caller's size check rather than go out cut short."""
    start = offset
    out = sock.fileno()
    while True:
        try:
            n = os.sendfile(out, fd, offset, step)
        except BlockingIOError:
            try:
                async with asyncio.timeout(timeout):
                    await anyio.wait_writable(sock)
            except TimeoutError as e:
                raise _NetFailure() from e
            continue
        except OSError as e:
            if e.errno in _NET_ERRNOS:
                raise _NetFailure() from e
            raise  # the local file's error
        if n == 0:
            return offset - start
        offset += n
        if on_bytes:
            on_bytes(n)


APPEND_FROM = 1024 * 1024
"""Bytes from which an upload to a name not on the server goes up with APPE instead of STOR.

vsftpd truncates every file it opens for STOR (ftruncate to 0, even a new one);
ext4 marks a file truncated to 0 and, when it is closed, starts writing all of
it back (auto_da_alloc), in vsftpd's close(), after the 226 and before the
server reads our next command. 512 MB to a local vsftpd: 0.13-0.19 s on the
clock of the size check that follows (strace: close() 0.19 s), a third of the
upload. APPE of a name that does not exist creates it without the truncate. One
SIZE round trip tells whether the name exists (it is our temp name: it does only
after an interrupted upload, and then STOR replaces it); below a megabyte the
round trip costs more than the writeback start it saves.
"""

LOOPBACK_CHUNK = 128 * 1024  # bytes per read+send to a server on this host (see _on_this_host)


def _on_this_host(sock: socket.socket) -> bool:
    """The data connection goes to a loopback address: a server on this host.

    There sendfile costs more than it saves. The server's reads copy our bytes on
    the same CPUs, from the page-cache pages sendfile hands to the socket (4 KB
    pieces, long out of the CPU caches) instead of from freshly copied buffers:
    512 MB to a local vsftpd took it 1.24 s of CPU against 0.97 s with 128 KB
    read+send, 0.99 s against 0.72 s of wall time (best of 6, bench/README.md).
    To another host, sendfile's zero copy is the cheaper path (our CPU 0.16 s
    against 0.38 s for those 512 MB).
    """
    try:
        return _loopback(sock.getpeername()[0])
    except (OSError, IndexError):
        return False


@functools.lru_cache(maxsize=64)
def _loopback(address: str) -> bool:
    """Parsed once per address: the check runs for every upload."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class ResumeUnsupported(RemoteError):
    """The server refused REST: restart the transfer from zero."""


def _reply(e: aioftp.StatusCodeError) -> tuple[str, str]:
    code = str(e.received_codes[-1]) if e.received_codes else "???"
    text = " ".join(str(i).strip() for i in (e.info if isinstance(e.info, list) else [e.info]) if str(i).strip())
    return code, text[:300]


@functools.lru_cache(maxsize=256)
def _prefixes(masks: str | tuple[str, ...]) -> tuple[str, ...] | None:
    """Masks whose "x"s all come last ("2xx", "33x", "350") as the prefixes a code starts
    with; None when an "x" comes before a digit."""
    prefixes = tuple(m.rstrip("x") for m in ((masks,) if isinstance(masks, str) else masks))
    return None if any("x" in p for p in prefixes) else prefixes


def _matches(code: str, masks: str | tuple[str, ...]) -> bool:
    """aioftp's `Code.matches` for masks like "2xx", "33x", "350": an "x" matches any digit."""
    prefixes = _prefixes(masks)
    if prefixes is not None:
        return code.startswith(prefixes)
    for mask in (masks,) if isinstance(masks, str) else masks:
        prefix = mask.rstrip("x")
        if code.startswith(prefix) and "x" not in prefix:
            return True
        if "x" in prefix and all(m == "x" or m == c for m, c in zip(mask, code)):
            return True
    return False


def _private(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_unspecified or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved


class FtpClient(RemoteClient):
    """One FTP/FTPS session (see module doc)."""

    def __init__(self, settings: ConnectionSettings, log: logging.Logger):
        self.s = settings
        self.log = log
        self._tls = tls.Tls(settings, log) if settings.tls else None
        self._trace = PROTOCOL_LOG.isEnabledFor(logging.DEBUG)
        self._deadline = Deadline(settings.timeout, self._expire)  # of each command's reply
        self._piggyback: list[_Piggyback] = []  # sent with the next EPSV/PASV
        proxy = settings.proxy_spec
        self._gateway = proxy if proxy and proxy.scheme == "ftp" else None
        self._socks = proxy if proxy and proxy.scheme != "ftp" else None
        self._ctrl_host = self._gateway.host if self._gateway else settings.host
        self._ctrl_port = self._gateway.port if self._gateway else settings.port
        self._features: set[str] = set()
        self._epsv = True
        self._epsv_seen = False  # a 229 came back: later data commands may share its packet
        self._mlsd: bool | None = None
        self._append = True  # big uploads to a new name use APPE (until the server refuses it)
        self._dirs: set[str] = set()
        self._home = "/"
        self._data_host = self._ctrl_host  # where EPSV (and a private PASV address) points
        self._stream: ControlStream | SocketControlStream | None = None  # set by `_connect`
        self.broken = False

    # --- session -----------------------------------------------------------

    @classmethod
    async def open(cls, settings: ConnectionSettings, log: logging.Logger) -> FtpClient:
        client = cls(settings, log)
        try:
            await client._connect()
        except BaseException:
            client._abort()
            raise
        return client

    def _secrets(self) -> list[str]:
        return self.s.secrets()

    def _error(self, cls: type[TransferError], text: str) -> TransferError:
        return cls(scrub(text, self._secrets()))

    async def _connect(self) -> None:
        s = self.s
        sock = await open_socket(self._ctrl_host, self._ctrl_port, proxy=self._socks,
                                 proxy_password=s.proxy_password.reveal() if s.proxy_password else None,
                                 timeout=s.timeout)
        if self._socks is None:  # data connections go to the address already resolved, no lookup each
            with contextlib.suppress(OSError, IndexError, TypeError):
                self._data_host = sock.getpeername()[0]
        if self._tls is None:
            try:
                _, protocol = await asyncio.get_running_loop().create_connection(_Lines, sock=sock)
            except OSError as e:
                sock.close()
                raise self._error(ConnectError, f"cannot connect to {s.host}:{s.port}: {e}") from None
            self._stream = ControlStream(protocol)
        else:
            stream = self._stream = SocketControlStream(sock)
            if s.protocol == "ftps-implicit":
                await self._start_tls(stream)
        await self._cmd(None, "220", "120", what="greeting")
        if s.protocol == "ftps":
            await self._cmd("AUTH TLS", "234", what="AUTH TLS")
            await self._start_tls(stream)
        await self._login()
        if s.tls:
            await self._cmd("PBSZ 0", "200", what="PBSZ")
            await self._cmd("PROT P", "200", what="PROT P")
        await self._feat()
        if "UTF8" in self._features and s.encoding.lower().replace("-", "") == "utf8":
            with contextlib.suppress(RemoteError):
                await self._cmd("OPTS UTF8 ON", "2xx", what="OPTS")
        await self._cmd("TYPE I", "200", what="TYPE")
        with contextlib.suppress(RemoteError):
            _, info = await self._cmd("PWD", "257", what="PWD")
            self._home = aioftp.Client.parse_directory_response(info[-1]).as_posix()
        self.log.debug("connected to %s", s.describe())

    async def _start_tls(self, stream: SocketControlStream) -> None:
        s = self.s
        assert self._tls is not None
        try:
            with anyio.fail_after(s.timeout):
                await stream.start_tls(self._tls)
        except (tls.TlsFailure, OSError, TimeoutError) as e:
            self.broken = True
            raise self._error(ConnectError, f"TLS handshake with {s.host}:{s.port} failed: {e or type(e).__name__}") from None

    async def _login(self) -> None:
        s = self.s
        user = s.user
        if self._gateway:  # Phraseanet's gateway: USER user@host, then ACCT with the proxy password
            user = f"{s.user}@{s.host}" + (f":{s.port}" if s.port != 21 else "")
        acct = s.proxy_password.reveal() if (self._gateway and s.proxy_password) else ""
        try:
            code, info = await self._command("USER " + user, ("230", "33x"))
            sent_acct = False
            while _matches(code, "33x"):
                if code == "331":
                    code, info = await self._command("PASS " + s.secret_password(), ("230", "202", "33x"))
                elif code == "332":
                    code, info = await self._command("ACCT " + acct, ("230", "202", "33x"))
                    sent_acct = True
                else:
                    raise self._error(AuthError, f"login to {s.host} failed: unexpected reply {code}")
            if acct and not sent_acct:
                code, info = await self._command("ACCT " + acct, ("2xx", "5xx"))
                if _matches(code, "5xx") and code not in ("500", "502"):
                    raise self._error(AuthError, f"FTP gateway {self._ctrl_host} refused the proxy password: {code}")
        except aioftp.StatusCodeError as e:
            code, text = _reply(e)
            raise self._error(AuthError, f"login to {s.host} as {s.user} refused: {code} {text}") from None
        except (OSError, TimeoutError, ValueError) as e:
            self.broken = True
            raise self._error(ConnectError, f"connection to {s.host} lost during login: {e or type(e).__name__}") from None

    async def _feat(self) -> None:
        try:
            _, info = await self._command("FEAT", "2xx")
        except aioftp.StatusCodeError:
            return
        for line in info[1:]:
            word = line.strip().split(" ", 1)[0].upper()
            if word:
                self._features.add(word)
                if word == "REST" and "STREAM" in line.upper():
                    self._features.add("REST STREAM")
        self._mlsd = "MLST" in self._features

    async def _command(self, line: str | None, expected: str | tuple[str, ...] = (),
                       wait: str | tuple[str, ...] = ()) -> tuple[str, list[str]]:
        """aioftp's `command` (write `line`, read replies while they match `wait`, check
        `expected`) under one `timeout` deadline, leaner: aioftp's per-line Code objects
        and mask matching cost as much as the rest of a small file's exchange."""
        stream = self._stream
        with self._deadline:  # each wait for the server under `timeout`
            if line:
                if "\r" in line or "\n" in line:
                    raise aioftp.errors.InvalidCommand("Command must not contain CR/LF")
                if self._trace:
                    PROTOCOL_LOG.debug("%s> %s", self.s.host, line[:5] + "********" if line[:5] in ("PASS ", "ACCT ") else line)
                await stream.write((line + "\r\n").encode(self.s.encoding))
            code, info = await self._reply()
            while wait and _matches(code, wait):
                code, info = await self._reply()
        if expected and not _matches(code, expected):
            expect = (expected,) if isinstance(expected, str) else expected
            raise aioftp.StatusCodeError(tuple(map(aioftp.Code, expect)), aioftp.Code(code), info)
        return code, info

    def _expire(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            self._stream.abort()

    async def _line(self) -> tuple[str, str]:
        """The next reply line, as code (3 characters) and the rest."""
        raw = self._stream.next_line()
        text = self._text(raw if raw is not None else await self._wait_line())
        return text[:3], text[3:]

    def _text(self, raw: bytes) -> str:
        text = raw.decode(self.s.encoding).rstrip()
        if self._trace:
            PROTOCOL_LOG.debug("%s< %s", self.s.host, text)
        return text

    async def _wait_line(self) -> bytes:
        raw = await self._stream.readline()
        if raw is None:
            raise ConnectionResetError("the server closed the control connection")
        return raw

    async def _reply(self) -> tuple[str, list[str]]:
        """One reply, multi-line ones too (RFC 959 4.2), as aioftp's `parse_response`.

        A one-line reply already received is taken without a wait nor a call per line
        (a small file's download reads four replies)."""
        raw = self._stream.next_line()  # as `_line`, without its frame
        text = self._text(raw if raw is not None else await self._wait_line())
        code, rest = text[:3], text[3:]
        info = [rest]
        if rest[:1] != "-" and code.isdigit():
            return code, info
        current = code
        while rest.startswith("-") or not current.isdigit():
            current, rest = await self._line()
            if current.isdigit():
                info.append(rest)
                if current != code:
                    raise aioftp.StatusCodeError(aioftp.Code(code), aioftp.Code(current), info)
            else:
                info.append(current + rest)
        return code, info

    async def _cmd(self, line: str | None, expected: str | tuple[str, ...] = (), wait: str | tuple[str, ...] = (),
                   *, what: str = "", not_found: bool = False) -> tuple[str, list[str]]:
        """One command; server refusals become RemoteError, lost connections ConnectError (broken)."""
        try:
            return await self._command(line, expected, wait)
        except aioftp.StatusCodeError as e:
            code, text = _reply(e)
            cls = NotFound if (not_found and code in ("550", "450")) else RemoteError
            err = self._error(cls, f"{what or (line or '').split(' ')[0]}: {code} {text}")
            err.code = code  # type: ignore[attr-defined]
            raise err from None
        except (OSError, TimeoutError, ValueError, EOFError, aioftp.AIOFTPException) as e:
            self.broken = True
            raise self._error(ConnectError, f"{what or 'connection'}: connection to {self.s.host} lost ({e or type(e).__name__})") from None

    def _abort(self) -> None:
        self.broken = True
        self._deadline.close()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()

    async def aclose(self) -> None:
        if not self.broken and self._stream is not None:
            with anyio.move_on_after(min(self.s.timeout, 5)), contextlib.suppress(TransferError):
                await self._cmd("QUIT", "2xx")
        self._abort()

    # --- data connections --------------------------------------------------

    async def _passive_address(self, then: str | None = None) -> tuple[str, int, bool]:
        """Where to connect, and whether `then` (the data command) went in the EPSV's packet.

        Once EPSV has worked on this session, the command follows it in the same
        packet: the server reads it as soon as it has answered the EPSV and waits for
        our connection, so the transfer starts one round trip earlier.
        """
        sent = None  # EPSV or PASV, already sent with queued MDTMs
        early = then is not None and self._epsv and self._epsv_seen and self._pipelined()
        if self._piggyback or early:
            sent = "EPSV" if self._epsv else "PASV"
            await self._send_piggyback(sent, *((then,) if early else ()))
        if self._epsv:
            try:
                _, info = await self._cmd(None if sent == "EPSV" else "EPSV", "229", what="EPSV")
                self._epsv_seen = True
                return self._data_host, aioftp.Client.parse_epsv_response(info[-1])[1], early
            except RemoteError as e:
                if self.broken:
                    raise
                if early:  # `then` came with no data connection announced: the server refuses it
                    what = then.split(" ", 1)[0]  # type: ignore[union-attr]
                    try:
                        await self._cmd(None, ("4xx", "5xx"), what=what)
                    except RemoteError as answer:  # anything else (a transfer started?): the session is lost
                        self.broken = True
                        raise self._error(ConnectError, f"EPSV refused ({e}) after it had worked on this session, "
                                                        f"and {what} answered {answer}: session abandoned") from None
                    early = False
                self.log.debug("EPSV refused (%s), using PASV", e)
                self._epsv = False
        _, info = await self._cmd(None if sent == "PASV" else "PASV", "227", what="PASV")
        try:
            host, port = aioftp.Client.parse_pasv_response(info[-1])
        except (ValueError, IndexError):
            self.broken = True
            raise self._error(RemoteError, f"PASV: cannot parse reply {info[-1][:100]!r}") from None
        if _private(host) and host != self._data_host:
            self.log.debug("PASV address %s replaced by the control host %s", host, self._data_host)
            host = self._data_host
        return host, port, False

    def _control_socket(self) -> socket.socket:
        return self._stream.sock

    async def _rest(self, offset: int) -> None:
        """REST before a resumed transfer; a refusal means this server cannot resume."""
        try:
            await self._cmd(f"REST {offset}", "350", what="REST")
        except RemoteError:
            if self.broken:
                raise
            raise ResumeUnsupported(f"{self.s.host} does not resume transfers (REST refused)") from None

    async def _active_listener(self) -> socket.socket:
        """Listen beside the control connection and announce it with PORT (IPv4) or EPRT (IPv6)."""
        local = self._control_socket().getsockname()[0]
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            lsock.bind((local, 0))
            lsock.listen(1)
            lsock.setblocking(False)
            port = lsock.getsockname()[1]
            announced = self.s.active_address or local
            if ":" in announced:
                await self._cmd(f"EPRT |2|{announced}|{port}|", "200", what="EPRT")
            else:
                await self._cmd("PORT " + ",".join(announced.split(".") + [str(port >> 8), str(port & 255)]), "200", what="PORT")
        except BaseException:
            lsock.close()
            raise
        return lsock

    async def _accept(self, lsock: socket.socket) -> socket.socket:
        loop = asyncio.get_running_loop()
        peer = self._control_socket().getpeername()[0]
        while True:
            conn, addr = await loop.sock_accept(lsock)
            if addr[0] == peer:
                conn.setblocking(False)
                return conn
            self.log.warning("refusing an active data connection from %s (server is %s)", addr[0], peer)
            conn.close()

    @contextlib.asynccontextmanager
    async def _data(self, command: str, offset: int = 0, *, not_found: bool = False) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A plain data connection carrying `command`; on clean exit the 226 is read."""
        assert self._tls is None, "TLS data connections are `_tls_data`'s"
        if self.broken:
            raise ConnectError("connection is broken")
        s = self.s
        what = command.split(" ", 1)[0]
        lsock: socket.socket | None = None
        sock: socket.socket | None = None
        if s.passive:
            host, port, _ = await self._passive_address()
            sock = await self._data_socket(host, port, False)
        else:
            lsock = await self._active_listener()
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            if offset:
                await self._rest(offset)

            async def establish() -> None:
                nonlocal sock
                if lsock is not None:
                    sock = await self._accept(lsock)
                limit = max(4 * s.block_size, 2**16)
                reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
                sock = None  # owned by the transport now
                streams.append((reader, writer))
                writer.transport.set_write_buffer_limits(high=limit)

            if lsock is None:  # passive: nothing to wait for, no task needed
                try:
                    with anyio.fail_after(s.timeout):
                        await establish()
                except Exception as e:
                    failure = e
                else:
                    failure = None
                    await self._cmd(command, "1xx", what=what, not_found=not_found)
            else:  # the accept runs while the command waits for its 1xx
                failure = await self._beside_1xx(command, what, not_found, establish)
            if failure is not None:
                raise self._data_lost(failure, what, "passive" if s.passive else "active")
            if not streams:  # pragma: no cover - cancelled from outside
                raise ConnectError(f"{what}: no data connection")
            reader, writer = streams[0]
            try:
                yield reader, writer
            except BaseException:
                self.broken = True
                raise
            await self._close_data(writer)
            await self._cmd(None, "2xx", "1xx", what=what)
        finally:
            if lsock is not None:
                lsock.close()
            if sock is not None:
                sock.close()
            for _, w in streams:
                if not w.is_closing():
                    w.transport.abort()

    async def _tls_data(self, command: str, offset: int, job: Callable[[LoopTls], Awaitable[int]],
                        *, not_found: bool = False) -> int:
        """A TLS transfer on the event loop (see `tlsloop`); `job(conn)` moves the data.

        The handshake runs beside the wait for the 1xx (`_beside_1xx`). A data connection
        error comes back as ConnectError (session broken), anything else of `job` (the
        local file) unchanged.
        """
        if self.broken:
            raise ConnectError("connection is broken")
        s = self.s
        t = self._tls
        assert t is not None
        what = command.split(" ", 1)[0]
        mode = "passive" if s.passive else "active"
        lsock: socket.socket | None = None
        conns: list[LoopTls] = []
        early = False
        if s.passive:
            host, port, early = await self._passive_address(None if offset else command)
            sock = await self._data_socket(host, port, early)
            try:
                conns.append(LoopTls(t, sock))
            except BaseException:
                self.broken = True
                sock.close()
                raise
            conns[0].start()  # ClientHello out: the server answers it once it has read the command
        else:
            lsock = await self._active_listener()
        try:
            if offset:
                await self._rest(offset)

            async def establish() -> None:
                if lsock is not None:
                    conns.append(LoopTls(t, await self._accept(lsock)))
                await conns[0].handshake()

            failure = await self._beside_1xx(None if early else command, what, not_found, establish)
            try:
                if failure is not None:
                    raise _NetFailure() from failure
                n = await job(conns[0])
                try:
                    with anyio.fail_after(s.timeout):
                        await conns[0].finish(notify=command.startswith(("STOR", "APPE")))
                except (SSL.Error, OSError, TimeoutError) as e:
                    raise _NetFailure() from e
            except _NetFailure as e:
                raise self._data_lost(e.__cause__ or e, what, mode) from None
            except BaseException:
                self.broken = True  # the server still waits on the data connection or its reply
                raise
        finally:
            if lsock is not None:
                lsock.close()
            for conn in conns:
                conn.release()
                conn.sock.close()
        await self._cmd(None, "2xx", "1xx", what=what)
        return n

    async def _direct(self, command: str, offset: int, job: Callable[[socket.socket], Awaitable[int]],
                      *, not_found: bool = False) -> int:
        """A plain passive transfer on the bare non-blocking socket: no transport, no stream objects.

        Per small file, asyncio's transport and stream objects (an epoll registration,
        a reader, a writer, a close handshake) cost more than the bytes. A download
        reads the socket until it is empty at each wake-up (`_receive_socket`); an
        upload's `sock_sendall` tries the socket first and waits only when it is full.
        `job(sock)` moves the data; a socket error in it comes back as `_NetFailure`,
        anything else (the local file) unchanged.
        """
        if self.broken:
            raise ConnectError("connection is broken")
        what = command.split(" ", 1)[0]
        host, port, early = await self._passive_address(None if offset else command)
        sock = await self._data_socket(host, port, early)
        try:
            if offset:
                await self._rest(offset)
            await self._cmd(None if early else command, "1xx", what=what, not_found=not_found)
            try:
                n = await job(sock)
            except _NetFailure as e:
                raise self._data_lost(e.__cause__ or e, what, "passive") from None
            except BaseException:
                self.broken = True  # the server still waits on the data connection or its reply
                raise
        finally:
            sock.close()  # after an upload: the kernel still delivers what it holds, then the FIN
        await self._cmd(None, "2xx", "1xx", what=what)
        return n

    async def _beside_1xx(self, command: str | None, what: str, not_found: bool,
                          establish: Callable[[], Awaitable[None]]) -> BaseException | None:
        """`command` (None: already sent) waits for its 1xx while `establish` makes the data
        connection (an accept, a TLS handshake), within `timeout`: vsftpd answers 150 before
        its side of a handshake, other servers after it. A refusal (550...) is raised; the
        data connection's failure, which ends the wait, is returned."""
        failure: list[BaseException] = []
        refused: list[TransferError] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                try:
                    with anyio.fail_after(self.s.timeout):
                        await establish()
                except Exception as e:  # returned, not raised as an ExceptionGroup
                    failure.append(e)
                    tg.cancel_scope.cancel()

            tg.start_soon(run)
            try:
                await self._cmd(command, "1xx", what=what, not_found=not_found)
            except TransferError as e:  # the data connection is not wanted any more
                refused.append(e)
                tg.cancel_scope.cancel()
        if refused:
            raise refused[0]
        return failure[0] if failure else None

    def _data_lost(self, cause: BaseException, what: str, mode: str) -> TransferError:
        """A data connection that failed for `cause`: the session is out of step, broken."""
        self.broken = True
        if isinstance(cause, TimeoutError):
            return self._error(ConnectError, f"{what}: data connection timed out ({mode} mode)")
        return self._error(ConnectError, f"{what}: data connection failed: {tls.reason(cause)}")

    async def _data_socket(self, host: str, port: int, early: bool) -> socket.socket:
        """The passive data connection; `early`: its command is already sent (see `_passive_address`)."""
        s = self.s
        try:
            return await open_socket(host, port, proxy=self._socks, timeout=s.timeout,
                                     proxy_password=s.proxy_password.reveal() if s.proxy_password else None)
        except BaseException:
            self.broken = self.broken or early  # the server waits for this connection before it answers
            raise

    async def _close_data(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        with anyio.move_on_after(self.s.timeout), contextlib.suppress(OSError):
            await writer.wait_closed()

    # --- operations ----------------------------------------------------------

    async def list(self, path: str) -> list[RemoteEntry]:
        data = b""
        mlsd = self._mlsd is not False
        if mlsd:
            try:
                data = await self._read_all(f"MLSD {path}")
            except RemoteError as e:
                if self.broken:
                    raise
                if e.code not in ("500", "502", "504"):
                    raise NotFound(f"{path}: no such remote folder ({e})") if e.code in ("501", "550", "450") else e from None
                self._mlsd = mlsd = False
        if not mlsd:
            try:
                data = await self._read_all(f"LIST {path}")
            except NotFound as e:
                raise NotFound(f"{path}: no such remote folder ({e})") from None
        return parse_listing(data, path, mlsd=mlsd, encoding=self.s.encoding, zone=self.s.zone, log=self.log)

    async def _read_all(self, command: str) -> bytes:
        chunks = bytearray()
        if self._tls is not None:

            def keep(chunk: memoryview) -> None:
                chunks.extend(chunk)
                if len(chunks) > MAX_LISTING:
                    raise self._error(RemoteError, f"{command.split(' ')[0]}: listing larger than {MAX_LISTING} bytes")

            await self._tls_data(command, 0, lambda conn: _receive_all(conn.recv_into, keep, 1 << 16, self.s.timeout, None),
                                 not_found=True)
            return bytes(chunks)
        async with self._data(command, not_found=True) as (reader, _):
            while True:
                with anyio.fail_after(self.s.timeout):
                    chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                chunks += chunk
                if len(chunks) > MAX_LISTING:
                    raise self._error(RemoteError, f"{command.split(' ')[0]}: listing larger than {MAX_LISTING} bytes")
        return bytes(chunks)

    async def stat(self, path: str) -> RemoteEntry | None:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            _, info = await self._cmd(f"SIZE {path}", "213", what="SIZE", not_found=True)
        except NotFound:
            return None
        except RemoteError:
            if self.broken:
                raise
            parent = path.rsplit("/", 1)[0] if "/" in path else "."
            for e in await self.list(parent or "/"):
                if e.name == name:
                    return e
            return None
        return RemoteEntry(name, path, "file", self._parsed_size(info), None, False)

    def _parsed_size(self, info: list[str]) -> int:
        try:
            return _size(info)
        except (ValueError, IndexError):
            raise self._error(RemoteError, f"SIZE: cannot parse reply {info[-1][:60]!r}") from None

    async def mtime(self, path: str) -> float | None:
        if self._features and "MDTM" not in self._features:
            return None
        try:
            _, info = await self._cmd(f"MDTM {path}", "213", what="MDTM", not_found=True)
            return _mdtm(info)
        except (NotFound, ValueError, IndexError):
            return None
        except RemoteError:
            if self.broken:
                raise
            return None

    def mtime_later(self, path: str) -> Callable[[], Awaitable[float | None]]:
        """MDTM sent in the same packet as the next EPSV/PASV (passive, no proxy): one round trip fewer.

        Only MDTM, SIZE (`size_later`), a checked file's RNFR/RNTO (`rename_later`)
        and, after an EPSV (never a PASV), the data command share a packet with
        EPSV/PASV: an FTP-aware firewall rewriting PORT or PASV replies sees nothing
        unusual, and each reply is read in the order of its command. When no
        EPSV/PASV follows (the download failed first), a plain MDTM is sent.
        """
        later = self._queue(f"MDTM {path}", "MDTM")
        if later is None:
            return super().mtime_later(path)

        async def get() -> float | None:
            if self._unqueue(later):
                return await self.mtime(path)
            return later.value

        return get

    def _queue(self, line: str, feature: str) -> _Piggyback | None:
        """`line` queued for the next EPSV/PASV packet; None when this session does not pipeline it."""
        if not self._pipelined() or (self._features and feature not in self._features):
            return None
        later = _Piggyback((line,))
        self._piggyback.append(later)
        return later

    def _unqueue(self, later: _Piggyback) -> bool:
        """True (and `later` dropped from the queue) when it was never sent: the caller asks plainly."""
        if later.sent:
            return False
        with contextlib.suppress(ValueError):
            self._piggyback.remove(later)
        return True

    def size_later(self, path: str) -> Callable[[], Awaitable[int | None]]:
        """SIZE sent in the packet of the next EPSV/PASV (passive, no proxy): an upload's check costs no round trip.

        Queued once the upload's 226 is read, so the server answers it after the
        transfer, never during it. Awaiting the result sends a plain SIZE when no
        EPSV/PASV came first.
        """
        later = self._queue(f"SIZE {path}", "SIZE")
        if later is None:
            return super().size_later(path)

        async def get() -> int | None:
            if self._unqueue(later):
                if self.broken:
                    raise self._error(ConnectError, f"SIZE: connection to {self.s.host} lost before the check of {path}")
                return await super(FtpClient, self).size_later(path)()
            if not later.done:
                raise self._error(ConnectError, f"SIZE: connection to {self.s.host} lost (size of {path} unknown)")
            if later.error is not None:  # SIZE refused or garbled: ask as `stat` does (a listing)
                return await super(FtpClient, self).size_later(path)()
            return None if later.value is None else int(later.value)

        return get

    def _pipelined(self) -> bool:
        return self.s.passive and not self.s.proxy

    @property
    def pipelined_renames(self) -> bool:
        return self._pipelined()

    def rename_later(self, src: str, dst: str) -> Callable[[], Awaitable[None]]:
        """RNFR + RNTO sent in the same packet as the next EPSV/PASV: two round trips fewer per upload.

        Queued only once the file is complete and size-checked (its rename is due
        anyway); it then waits for the next data command, whose packet it shares.
        The replies are read in order: a refused RNFR makes the server answer the
        RNTO with 503, and every refusal goes to this rename, never to the EPSV.
        Awaiting the result sends a plain RNFR/RNTO when no EPSV came first.
        """
        if not self._pipelined():
            return super().rename_later(src, dst)
        later = _Piggyback((f"RNFR {src}", f"RNTO {dst}"))
        self._piggyback.append(later)

        async def get() -> None:
            if self._unqueue(later):
                if self.broken:
                    raise self._error(ConnectError, f"RNFR: connection to {self.s.host} lost before the rename of {dst}")
                return await self.rename(src, dst)
            if not later.done:  # the session was lost while its replies were read
                raise self._error(ConnectError, f"RNTO: connection to {self.s.host} lost (rename of {dst} unknown)")
            if later.error is not None:
                if isinstance(later.error, NotFound) or self.broken:
                    raise later.error
                await self._replace(src, dst, later.error)

        return get

    async def _send_piggyback(self, *lines: str) -> None:
        """Send the queued commands and `lines` in one write; read the queued commands' replies (in order)."""
        queued, self._piggyback = self._piggyback, []
        payload = "".join(x + "\r\n" for q in queued for x in q.lines) + "".join(x + "\r\n" for x in lines)
        for q in queued:
            q.sent = True
        if self._trace:
            PROTOCOL_LOG.debug("%s> %s", self.s.host, payload.rstrip().replace("\r\n", " + "))
        try:
            with self._deadline:  # each wait for the server under `timeout`
                await self._stream.write(payload.encode(self.s.encoding))
        except (OSError, TimeoutError) as e:
            self.broken = True
            raise self._error(ConnectError, f"connection to {self.s.host} lost ({e or type(e).__name__})") from None
        for q in queued:
            if q.lines[0].startswith("SIZE "):
                try:
                    _, info = await self._cmd(None, "213", what="SIZE", not_found=True)
                    q.value = self._parsed_size(info)
                except NotFound:
                    pass
                except RemoteError as e:
                    if self.broken:
                        raise
                    q.error = e
            elif len(q.lines) == 1:  # MDTM
                try:
                    _, info = await self._cmd(None, "213", what="MDTM", not_found=True)
                    q.value = _mdtm(info)
                except (NotFound, ValueError, IndexError):
                    pass
                except RemoteError:
                    if self.broken:
                        raise
            else:  # RNFR + RNTO: both answered whatever the first said
                for expected, what, nf in (("350", "RNFR", True), ("2xx", "RNTO", False)):
                    try:
                        await self._cmd(None, expected, what=what, not_found=nf)
                    except RemoteError as e:
                        if self.broken:
                            raise
                        q.error = q.error or e
            q.done = True

    async def download(self, path: str, dest: BinaryIO, offset: int = 0, on_bytes: OnBytes | None = None,
                       size: int | None = None) -> int:
        if offset and self._features and "REST STREAM" not in self._features:
            raise ResumeUnsupported(f"{self.s.host} does not announce REST STREAM")
        block = self.s.block_size
        timeout = self.s.timeout
        # a small file needs no 1 MB buffer (zeroed at each allocation)
        room = block if size is None else min(block, max(65536, size - offset + 1))
        keep: Keep = dest if isinstance(dest, InMemory) else dest.write  # in memory: received in place
        if self._tls is not None:
            return await self._tls_data(
                f"RETR {path}", offset, lambda conn: _receive_all(conn.recv_into, keep, room, timeout, on_bytes),
                not_found=True)
        if self.s.passive:
            return await self._direct(
                f"RETR {path}", offset,
                lambda sock: _receive_socket(sock, keep, room, timeout, on_bytes),
                not_found=True)
        n = 0
        async with self._data(f"RETR {path}", offset, not_found=True) as (reader, _):
            while True:
                with anyio.fail_after(timeout):
                    chunk = await reader.read(block)
                if not chunk:
                    break
                dest.write(chunk)
                n += len(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        return n

    async def upload(self, src: BinaryIO, path: str, on_bytes: OnBytes | None = None) -> int:
        if not await self._absent_and_big(src, path):
            return await self._store("STOR", src, path, on_bytes)
        start = src.tell()
        accepted: list[bool] = []
        try:
            return await self._store("APPE", src, path, on_bytes, accepted)
        except RemoteError as e:
            if accepted or self.broken or not (e.code or "").startswith("5"):
                raise
        # refused before any byte went (not implemented, not allowed): STOR from now on
        self._append = False
        self.log.debug("%s refuses APPE: uploads use STOR", self.s.host)
        src.seek(start)
        return await self._store("STOR", src, path, on_bytes)

    async def _absent_and_big(self, src: BinaryIO, path: str) -> bool:
        """Whether `src` is big enough to go up with APPE, and `path` is not on the server (see APPEND_FROM)."""
        if not self._append or (self._features and "SIZE" not in self._features):
            return False
        try:  # one fstat: this runs before every upload, small files included
            st = os.fstat(src.fileno())
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size - src.tell() < APPEND_FROM:
            return False
        try:
            await self._cmd(f"SIZE {path}", "213", what="SIZE", not_found=True)
        except NotFound:
            return True
        except RemoteError:
            if self.broken:
                raise
        return False  # there (STOR replaces it), or the server cannot tell

    async def _store(self, verb: str, src: BinaryIO, path: str, on_bytes: OnBytes | None,
                     accepted: list[bool] | None = None) -> int:
        """`verb` (STOR or APPE) `path` with the bytes of `src` from where it stands; `accepted`
        gets an item once the server has accepted the command (its 1xx came)."""
        accepted = [] if accepted is None else accepted
        block = self.s.block_size
        timeout = self.s.timeout
        command = f"{verb} {path}"
        if self._tls is not None:

            async def transmit_tls(conn: LoopTls) -> int:
                accepted.append(True)
                return await _send_all(conn.sendall, src, block, timeout, on_bytes)

            return await self._tls_data(command, 0, transmit_tls)
        if self.s.passive:

            async def transmit_direct(sock: socket.socket) -> int:
                accepted.append(True)
                fd = _regular_fd(src)
                local = _on_this_host(sock)
                if fd is not None and not local:
                    return await _sendfile(sock, fd, src.tell(), max(block, 1 << 20), timeout, on_bytes)
                loop = asyncio.get_running_loop()
                return await _send_all(lambda chunk: loop.sock_sendall(sock, chunk), src,
                                       LOOPBACK_CHUNK if local else block, timeout, on_bytes)

            return await self._direct(command, 0, transmit_direct)
        n = 0
        async with self._data(command) as (_, writer):
            accepted.append(True)
            while True:
                chunk = src.read(block)
                if not chunk:
                    break
                writer.write(chunk)
                with anyio.fail_after(timeout):
                    await writer.drain()
                n += len(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        return n

    async def delete(self, path: str) -> None:
        await self._cmd(f"DELE {path}", "2xx", what="DELE", not_found=True)

    async def rename(self, src: str, dst: str) -> None:
        try:
            await self._cmd(f"RNFR {src}", "350", what="RNFR", not_found=True)
            await self._cmd(f"RNTO {dst}", "2xx", what="RNTO")
        except NotFound:
            raise
        except RemoteError as e:
            if self.broken:
                raise
            await self._replace(src, dst, e)

    async def _replace(self, src: str, dst: str, refusal: RemoteError) -> None:
        """After a refused rename: servers that refuse to replace get dst deleted, then the rename."""
        if await self.stat(dst) is None:
            raise refusal
        await self.delete(dst)
        await self._cmd(f"RNFR {src}", "350", what="RNFR", not_found=True)
        await self._cmd(f"RNTO {dst}", "2xx", what="RNTO")

    async def mkdir(self, path: str) -> None:
        path = path.rstrip("/") or "/"
        if path in self._dirs or path in ("/", ".", ""):
            return
        try:
            await self._cmd(f"MKD {path}", "257", what="MKD")
        except RemoteError:
            if self.broken:
                raise
            if await self._is_dir(path):
                self._dirs.add(path)
                return
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if not parent or parent == path:
                raise
            await self.mkdir(parent)
            await self._cmd(f"MKD {path}", "257", what="MKD")
        self._dirs.add(path)

    async def _is_dir(self, path: str) -> bool:
        try:
            await self._cmd(f"CWD {path}", "2xx", what="CWD")
        except RemoteError:
            if self.broken:
                raise
            return False
        await self._cmd(f"CWD {self._home}", "2xx", what="CWD")
        return True
