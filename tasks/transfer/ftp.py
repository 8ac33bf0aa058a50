"""FTP and FTPS (explicit and implicit): a small client of our own (see docs/ftp.md for why not aioftp).

One control connection and one data path: a data connection, passive (EPSV, then
PASV) or active (PORT/EPRT), is a `SocketConn`, or a `TlsConn` (tls.py) wrapped
around the same socket for FTPS. Its TLS handshake (and an active mode accept)
runs while the command waits for its 1xx reply: vsftpd answers 150 before its
side of the handshake, other servers after it.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Sequence

import anyio
from OpenSSL import SSL

from schedulerd.plugin import TaskLog

from .base import OnBytes, RemoteClient, RemoteEntry, Sink, Source
from .errors import AuthError, ConnectError, NotFound, RemoteError, ResumeUnsupported, TransferError
from .listing import parse_listing, parse_mlsd_time
from .proxy import open_socket, wait_for
from .settings import ConnectionSettings
from .tls import Tls, TlsConn, TlsFailure, ip_address, reason

MAX_LISTING = 256 * 1024 * 1024
PIPELINE = 100  # commands sent in one write (MDTM, SIZE, RNFR+RNTO): their short replies fit any buffer
# the protocol, at debug level (passwords starred): its own logger, so a task or job log
# kept at debug level does not get ten lines per file
PROTOCOL_LOG = logging.getLogger("schedulerd.ftp.protocol")
NET_ERRORS = (OSError, TimeoutError, SSL.Error, TlsFailure, EOFError)


class SocketConn:
    """A plain connection; every wait for the socket bounded by `timeout`."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout

    async def handshake(self) -> None:  # TlsConn's interface: nothing to do
        return

    async def recv_into(self, buf: bytearray | memoryview) -> int:
        while True:
            try:
                return self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                await wait_for(self.sock, True, self.timeout)

    async def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except (BlockingIOError, InterruptedError):
                await wait_for(self.sock, False, self.timeout)

    async def finish(self, *, upload: bool) -> None:  # closed after an upload: the kernel delivers the rest, then FIN
        return

    def close(self) -> None:
        self.sock.close()


Conn = SocketConn | TlsConn  # one data path: TLS is a wrapper around the same socket


def _matches(code: str, masks: str | tuple[str, ...]) -> bool:
    """Masks like "2xx", "33x", "350": an "x" (always last) matches any digit."""
    return code.startswith(tuple(m.rstrip("x") for m in ((masks,) if isinstance(masks, str) else masks)))


def _size(info: list[str]) -> int | None:
    """The size in a 213 reply to SIZE: its last word that is a number (`213 1234`, and worded ones
    like `213 File size: 1234`); None when it holds none."""
    return next((int(w) for w in reversed(info[-1].split()) if w.isdecimal()), None)


_EPSV = re.compile(r"\(([!-~])\1\1(\d+)\1\)")
_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


Replies = list[tuple[str, list[str]]]  # (code, lines) per command


class FtpClient(RemoteClient):
    """One FTP/FTPS session (see module doc)."""

    def __init__(self, settings: ConnectionSettings, log: TaskLog):
        self.s = settings
        self.log = log
        self._tls = Tls(settings, log) if settings.tls else None
        proxy = settings.proxy_spec
        self._gateway = proxy if proxy and proxy.scheme == "ftp" else None
        self._ctrl_host = self._gateway.host if self._gateway else settings.host
        self._ctrl_port = self._gateway.port if self._gateway else settings.port
        self._data_host = self._ctrl_host  # where EPSV (and a private PASV address) points
        self._features: set[str] = set()
        self._epsv = True
        self._epsv_seen = False  # EPSV worked on this session: data commands may share its write
        self._mlsd: bool | None = None
        self._dirs: set[str] = set()
        self._control: Conn | None = None
        self._lines = bytearray()  # of the control connection, not yet read

    @classmethod
    async def open(cls, settings: ConnectionSettings, log: TaskLog) -> FtpClient:
        client = cls(settings, log)
        try:
            await client._connect()
        except BaseException:
            client._abort()
            raise
        return client

    def _error(self, cls: type[TransferError], text: str, code: str | None = None) -> TransferError:
        err = cls(self.s.scrub(text))
        if isinstance(err, RemoteError):
            err.code = code
        return err

    async def _connect(self) -> None:
        s = self.s
        sock = await open_socket(self._ctrl_host, self._ctrl_port, s)
        if not s.proxy or self._gateway:  # no SOCKS proxy: data connections go to the address already resolved
            with contextlib.suppress(OSError, IndexError):
                self._data_host = sock.getpeername()[0]
        self._control = SocketConn(sock, s.timeout)
        if s.protocol == "ftps-implicit":
            await self._start_tls()
        await self._cmd(None, "220", "120", what="greeting")
        if s.protocol == "ftps":
            await self._cmd("AUTH TLS", "234")
            await self._start_tls()
        await self._login()
        if s.tls:
            await self._cmd("PBSZ 0", "200")
            await self._cmd("PROT P", "200")
        await self._feat()
        if "UTF8" in self._features and s.encoding.lower().replace("-", "") == "utf8":
            with contextlib.suppress(RemoteError):
                await self._cmd("OPTS UTF8 ON", "2xx")
        await self._cmd("TYPE I", "200")
        self.log.debug("connected to %s", s.describe())

    async def _start_tls(self) -> None:
        assert self._tls is not None and self._control is not None
        conn = TlsConn(self._tls, self._control.sock, resume=False)
        try:
            await conn.handshake()
        except TlsFailure as e:  # handshake() raises no other error (a timeout included)
            self.broken = True
            raise self._error(ConnectError, f"TLS handshake with {self.s.host}:{self.s.port} failed: {e}") from None
        self._tls.control = conn.conn  # its session is the first the data connections resume
        self._control = conn

    async def _login(self) -> None:
        s = self.s
        user = s.user
        if self._gateway:  # Phraseanet's gateway: USER user@host, then ACCT with the proxy password
            user = f"{s.user}@{s.host}" + (f":{s.port}" if s.port != 21 else "")
        acct = s.proxy_password.reveal() if (self._gateway and s.proxy_password) else ""
        try:
            code, _ = await self._cmd("USER " + user, ("230", "331", "332"))
            sent_acct = False
            while code in ("331", "332"):
                sent_acct |= code == "332"
                line = "PASS " + s.secret_password() if code == "331" else "ACCT " + acct
                code, _ = await self._cmd(line, ("230", "202", "331", "332"))
            if acct and not sent_acct:
                code, _ = await self._cmd("ACCT " + acct, ("2xx", "5xx"))
                if _matches(code, "5xx") and code not in ("500", "502"):
                    raise self._error(AuthError, f"FTP gateway {self._ctrl_host} refused the proxy password: {code}")
        except RemoteError as e:  # a lost connection (ConnectError) goes through as it is
            raise self._error(AuthError, f"login to {s.host} as {s.user} refused: {e}") from None

    async def _feat(self) -> None:
        try:
            _, info = await self._cmd("FEAT", "2xx")
        except RemoteError:  # a refusal: the session is fine (a lost one is a ConnectError)
            return
        self._features = {line.split()[0].upper() for line in info[1:] if line.strip()}
        self._mlsd = "MLST" in self._features

    async def _line(self) -> str:
        assert self._control is not None
        chunk = bytearray(4096)
        while (end := self._lines.find(b"\n")) < 0:
            if not (n := await self._control.recv_into(chunk)):
                raise ConnectionResetError("the server closed the control connection")
            self._lines += chunk[:n]
        text = self._lines[:end].decode(self.s.encoding).rstrip()
        del self._lines[:end + 1]
        PROTOCOL_LOG.debug("%s< %s", self.s.host, text)
        return text

    async def _reply(self) -> tuple[str, list[str]]:
        """One reply, multi-line ones too (RFC 959 4.2): `123-` up to the line starting `123 `."""
        text = await self._line()
        code, info = text[:3], [text[3:]]
        if not code.isdigit():
            raise ValueError(f"not an FTP reply: {text[:60]!r}")
        if text[3:4] == "-":
            while not ((text := await self._line())[:3] == code and text[3:4] != "-"):
                info.append(text)
            info.append(text[3:])
        return code, info

    async def _cmd(self, line: str | tuple[str, ...] | None, expected: str | tuple[str, ...] = (),
                   wait: str | tuple[str, ...] = (), *, what: str = "",
                   not_found: bool = False) -> tuple[str, list[str]]:
        """Write `line` (several: in one write; None: already sent), read the (first) reply and those
        after it while they match `wait`. A reply not `expected` is a RemoteError (NotFound: 550 or
        450 with `not_found`); a lost connection a ConnectError, the session broken."""
        assert self._control is not None
        lines = (line,) if isinstance(line, str) else line or ()
        what = what or lines[0].split(" ", 1)[0]
        try:
            for one in lines:
                if "\r" in one or "\n" in one:
                    raise ValueError("a command must not contain CR or LF")
                if PROTOCOL_LOG.isEnabledFor(logging.DEBUG):
                    shown = one[:5] + "********" if one[:5] in ("PASS ", "ACCT ") else one
                    PROTOCOL_LOG.debug("%s> %s", self.s.host, shown)
            if lines:
                await self._control.sendall("".join(one + "\r\n" for one in lines).encode(self.s.encoding))
            code, info = await self._reply()
            while wait and _matches(code, wait):
                code, info = await self._reply()
        except (*NET_ERRORS, ValueError) as e:
            self.broken = True
            why = f"no reply within {self.s.timeout:g}s" if isinstance(e, TimeoutError) else reason(e)
            raise self._error(ConnectError, f"{what}: connection to {self.s.host} lost ({why})") from None
        if expected and not _matches(code, expected):
            cls = NotFound if (not_found and code in ("550", "450")) else RemoteError
            text = " ".join(i.strip() for i in info if i.strip())[:300]
            raise self._error(cls, f"{what}: {code} {text}", code)
        return code, info

    def _abort(self) -> None:
        self.broken = True
        if self._control is not None:
            with contextlib.suppress(Exception):
                self._control.close()

    async def aclose(self) -> None:
        if not self.broken and self._control is not None:
            with anyio.move_on_after(min(self.s.timeout, 5)), contextlib.suppress(TransferError):
                await self._cmd("QUIT", "2xx")
        self._abort()

    async def _passive_address(self, then: str | None) -> tuple[str, int, bool]:
        """Where to connect, and whether `then` (the data command) went in the write of the EPSV:
        it may once EPSV worked on this session (one round trip fewer per transfer)."""
        early = then is not None and self._epsv_seen
        if self._epsv:
            try:
                _, info = await self._cmd(("EPSV", then) if early else "EPSV", "229")  # type: ignore[arg-type]
                if m := _EPSV.search(info[-1]):
                    self._epsv_seen = True
                    return self._data_host, int(m.group(2)), early
                raise self._error(RemoteError, f"EPSV: cannot parse reply {info[-1][:100]!r}")
            except RemoteError as e:
                if early:  # the command came with no data connection announced: its refusal is read
                    try:
                        await self._cmd(None, ("4xx", "5xx"), what=then.split(" ")[0])  # type: ignore[union-attr]
                    except RemoteError:  # anything else (a transfer started?): out of step
                        self.broken = True
                        raise
                self.log.debug("EPSV refused (%s), using PASV", e)
                self._epsv = False
        _, info = await self._cmd("PASV", "227")
        m = _PASV.search(info[-1])
        if m is None:
            self.broken = True
            raise self._error(RemoteError, f"PASV: cannot parse reply {info[-1][:100]!r}")
        host, port = ".".join(m.groups()[:4]), int(m.group(5)) * 256 + int(m.group(6))
        if (ip := ip_address(host)) is not None and not ip.is_global and host != self._data_host:
            self.log.debug("PASV address %s replaced by the control host %s", host, self._data_host)
            host = self._data_host
        return host, port, False

    async def _active_listener(self) -> socket.socket:
        """Listen beside the control connection and announce it with PORT (IPv4) or EPRT (IPv6)."""
        assert self._control is not None
        local = self._control.sock.getsockname()[0]
        lsock = socket.socket(socket.AF_INET6 if ":" in local else socket.AF_INET, socket.SOCK_STREAM)
        try:
            lsock.bind((local, 0))
            lsock.listen(1)
            lsock.setblocking(False)
            port = lsock.getsockname()[1]
            announced = self.s.active_address or local
            if ":" in announced:
                await self._cmd(f"EPRT |2|{announced}|{port}|", "200")
            else:
                await self._cmd("PORT " + ",".join(announced.split(".") + [str(port >> 8), str(port & 255)]), "200")
        except BaseException:
            lsock.close()
            raise
        return lsock

    async def _accept(self, lsock: socket.socket) -> socket.socket:
        """The server's data connection; one from another address is refused."""
        assert self._control is not None
        peer = self._control.sock.getpeername()[0]
        while True:
            await anyio.wait_readable(lsock)
            try:
                conn, addr = lsock.accept()
            except BlockingIOError:
                continue
            if addr[0] == peer:
                conn.setblocking(False)
                return conn
            self.log.warning("refusing an active data connection from %s (server is %s)", addr[0], peer)
            conn.close()

    async def _transfer(self, command: str, job: Callable[[Conn], Awaitable[int]], *, offset: int = 0,
                        not_found: bool = False, upload: bool = False) -> int:
        """`command` over a new data connection; `job(conn)` moves the bytes. The data connection's
        failure (an OSError, a TLS error) is a ConnectError; the errors of `job`'s sink or source
        (TransferErrors: the local file) come out unchanged. Either way the session is broken
        (out of step: the server still waits)."""
        if self.broken:
            raise self._error(ConnectError, f"connection to {self.s.host} is broken")
        what = command.split(" ", 1)[0]
        listener = sock = None
        conns: list[Conn] = []
        try:
            if self.s.passive:
                host, port, sent = await self._passive_address(None if offset else command)
                command = None if sent else command  # type: ignore[assignment]
                try:
                    sock = await open_socket(host, port, self.s)
                except ConnectError as e:
                    raise self._data_lost(e, what) from None
            else:
                listener = await self._active_listener()
            if offset:  # a resumed transfer: a refused REST means this server cannot resume
                try:
                    await self._cmd(f"REST {offset}", "350")
                except RemoteError:
                    raise ResumeUnsupported(f"{self.s.host} does not resume transfers (REST refused)") from None

            async def establish() -> None:
                nonlocal sock
                if listener is not None:
                    sock = await self._accept(listener)
                assert sock is not None
                conns.append(SocketConn(sock, self.s.timeout) if self._tls is None else TlsConn(self._tls, sock))
                sock = None  # the connection's now
                await conns[0].handshake()

            if listener is None and self._tls is None:  # nothing to wait for
                await establish()
                await self._cmd(command, "1xx", what=what, not_found=not_found)
            else:
                await self._beside_1xx(command, what, not_found, establish)
            try:
                n = await job(conns[0])
                await conns[0].finish(upload=upload)
            except NET_ERRORS as e:
                raise self._data_lost(e, what) from None
            except BaseException:
                self.broken = True
                raise
        finally:
            for c in (*conns, sock, listener):
                if c is not None:
                    c.close()
        await self._cmd(None, "2xx", "1xx", what=what)  # not pipelined: some servers answer commands mid-transfer
        return n

    async def _beside_1xx(self, command: str | None, what: str, not_found: bool,
                          establish: Callable[[], Awaitable[None]]) -> None:
        """`command` waits for its 1xx while `establish` makes the data connection (an accept,
        a TLS handshake) within `timeout`. A refusal (550...) is raised as is."""
        failure: list[BaseException] = []  # raised below, not as an ExceptionGroup
        refused: list[TransferError] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                try:
                    with anyio.fail_after(self.s.timeout):
                        await establish()
                except Exception as e:
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
        if failure:
            raise self._data_lost(failure[0], what)

    def _data_lost(self, cause: BaseException, what: str) -> TransferError:
        """A data connection that failed for `cause`: the session is out of step, broken."""
        self.broken = True
        if isinstance(cause, TimeoutError):
            mode = "passive" if self.s.passive else "active"
            return self._error(ConnectError, f"{what}: data connection timed out ({mode} mode)")
        return self._error(ConnectError, f"{what}: data connection failed: {reason(cause)}")

    async def _receive(self, conn: Conn, sink: Sink, room: int, on_bytes: OnBytes | None) -> int:
        """Bytes to `sink` in pieces of up to `room` until the server closes the connection."""
        buf = memoryview(bytearray(room))
        got = fill = 0
        while True:
            k = await conn.recv_into(buf[fill:])
            if k:
                fill += k
                got += k
                if on_bytes:
                    on_bytes(k)
            if fill and (fill == room or not k):
                await sink(buf[:fill])
                fill = 0
            if not k:
                return got

    async def list(self, path: str) -> list[RemoteEntry]:
        mlsd = self._mlsd is not False
        try:
            if mlsd:
                try:
                    data = await self._read_all(f"MLSD {path}")
                except RemoteError as e:  # 500, 502, 504: no MLSD after all, LIST it is
                    if self.broken or e.code not in ("500", "502", "504"):
                        raise
                    self._mlsd = mlsd = False
            if not mlsd:
                data = await self._read_all(f"LIST {path}")
        except RemoteError as e:
            if isinstance(e, NotFound) or (mlsd and e.code in ("501", "550", "450") and not self.broken):
                raise NotFound(f"{path}: no such remote folder ({e})") from None
            raise
        entries = parse_listing(data, path, mlsd=mlsd, encoding=self.s.encoding, zone=self.s.zone, log=self.log)
        return entries if mlsd else await self._exact_times(entries)

    async def _exact_times(self, entries: builtins.list[RemoteEntry]) -> builtins.list[RemoteEntry]:
        """LIST times are to the minute at best: each file's exact time from `MDTM` (pipelined); a
        file whose `MDTM` is refused (gone meanwhile, no permission) keeps its listed time."""
        files = [i for i, e in enumerate(entries) if e.type == "file" and not e.precise]
        if not files or (self._features and "MDTM" not in self._features):
            return entries
        out = list(entries)
        for i, (code, info) in zip(files, await self._pipelined([f"MDTM {entries[i].path}" for i in files], "MDTM"),
                                   strict=True):
            with contextlib.suppress(ValueError, IndexError):
                if code == "213":
                    out[i] = dataclasses.replace(entries[i], mtime=parse_mlsd_time(info[-1].split()[-1]), precise=True)
        return out

    async def _pipelined(self, lines: builtins.list[str], what: str) -> Replies:
        """Each line's reply, whatever its code (see `_answered`). Only a lost connection raises."""
        replies, lost = await self._answered(lines, what)
        if lost is not None:
            raise lost
        return replies

    async def _answered(self, lines: builtins.list[str], what: str) -> tuple[Replies, ConnectError | None]:
        """Up to PIPELINE lines go in one write, their replies (in order, RFC 959) are read after it:
        the replies read, and the error that lost the connection before the last one (else None)."""
        replies = []
        for start in range(0, len(lines), PIPELINE):
            chunk = tuple(lines[start:start + PIPELINE])
            for n in range(len(chunk)):
                try:
                    replies.append(await self._cmd(chunk if n == 0 else None, what=what))
                except ConnectError as e:
                    return replies, e
        return replies, None

    async def _read_all(self, command: str) -> bytes:
        chunks = bytearray()

        async def keep(piece: memoryview) -> None:
            chunks.extend(piece)
            if len(chunks) > MAX_LISTING:
                raise self._error(RemoteError, f"{command.split(' ')[0]}: listing larger than {MAX_LISTING} bytes")

        await self._transfer(command, lambda conn: self._receive(conn, keep, 1 << 16, None), not_found=True)
        return bytes(chunks)

    async def stat(self, path: str) -> RemoteEntry | None:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            _, info = await self._cmd(f"SIZE {path}", "213", not_found=True)
            if (size := _size(info)) is not None:
                return RemoteEntry(name, path, "file", size, None, False)
        except NotFound:
            return None
        except RemoteError:
            pass  # no SIZE (or no number in its reply): ask the listing
        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        return next((e for e in await self.list(parent or "/") if e.name == name), None)

    async def get(self, path: str, sink: Sink, offset: int = 0, size: int | None = None,
                  on_bytes: OnBytes | None = None) -> int:
        room = self.s.block_size if size is None else min(self.s.block_size, max(65536, size - offset + 1))
        return await self._transfer(f"RETR {path}", lambda conn: self._receive(conn, sink, room, on_bytes),
                                    offset=offset, not_found=True)

    async def put(self, source: Source, path: str, on_bytes: OnBytes | None = None) -> int:
        async def send(conn: Conn) -> int:
            sent = 0
            while chunk := await source():
                await conn.sendall(chunk)
                sent += len(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
            return sent

        return await self._transfer(f"STOR {path}", send, upload=True)

    async def short_uploads(self, uploads: Sequence[tuple[str, int]]) -> builtins.list[str | None]:
        """A data connection cut short can look like a complete upload to the server: each stored
        size from `SIZE` (pipelined); a refusal, or a reply with no number, means the server cannot tell."""
        replies = await self._pipelined([f"SIZE {path}" for path, _ in uploads], "SIZE")
        short: list[str | None] = []
        for (path, sent), (code, info) in zip(uploads, replies, strict=True):
            size = _size(info) if code == "213" else None
            short.append(None if size in (None, sent) else f"{path}: remote size {size}, local size {sent}")
        return short

    async def delete(self, path: str) -> None:
        await self._cmd(f"DELE {path}", "2xx", not_found=True)

    async def rename(self, src: str, dst: str) -> None:
        try:
            await self._rename(src, dst)
        except RemoteError as e:
            if isinstance(e, NotFound) or await self.stat(dst) is None:
                raise
            await self.delete(dst)  # a server that does not replace: dst deleted, then the rename
            await self._rename(src, dst)

    async def renames(self, pairs: Sequence[tuple[str, str]]) -> builtins.list[TransferError | None]:
        """RNFR+RNTO pairs pipelined; a pair not answered 350 then 2xx (a refusal, a server that does
        not replace) is done again by `rename`, which says why or deletes `dst` first. A session
        lost amid the replies fails the pairs not answered (and those to do again) with its error."""
        lines = [line for src, dst in pairs for line in (f"RNFR {src}", f"RNTO {dst}")]
        replies, lost = await self._answered(lines, "RNFR")
        answered = len(replies) // 2
        redo = [pair for n, pair in enumerate(pairs[:answered])
                if (replies[2 * n][0], replies[2 * n + 1][0][:1]) != ("350", "2")]
        failed = dict(zip(redo, [lost] * len(redo) if lost else await super().renames(redo), strict=True))
        return [failed.get(pair) if n < answered else lost for n, pair in enumerate(pairs)]

    async def _rename(self, src: str, dst: str) -> None:
        """RNFR and RNTO in one write (one round trip for the operation), their replies read in order."""
        try:
            await self._cmd((f"RNFR {src}", f"RNTO {dst}"), "350", not_found=True)
        except RemoteError:
            if not self.broken:
                await self._cmd(None, what="RNTO")  # its answer to a refused RNFR (503)
            raise
        await self._cmd(None, "2xx", what="RNTO")

    async def mkdir(self, path: str) -> None:
        """Each missing folder of `path`, parents first (once per session); a refusal (it exists,
        or it may not be made) is left for the upload into it to report."""
        parts = path.rstrip("/").split("/")
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder and folder not in self._dirs:
                with contextlib.suppress(RemoteError):
                    await self._cmd(f"MKD {folder}", "257")
                self._dirs.add(folder)
