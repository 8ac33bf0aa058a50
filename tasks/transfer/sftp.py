"""SFTP through asyncssh: host keys checked, many requests in flight for speed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import cast

import anyio
import asyncssh

from schedulerd.plugin import TaskLog

from .base import EntryType, OnBytes, RemoteClient, RemoteEntry, Sink, Source
from .errors import AuthError, ConnectError, HostKeyError, NotFound, RemoteError
from .names import check_name, join
from .proxy import open_socket
from .settings import ConnectionSettings

# asyncssh's defaults, AES-GCM first: one AEAD call per packet, about 4x faster here
# than its chacha20-poly1305 (built from separate cipher and MAC calls)
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr")


# asyncssh gives the type (SFTP v4+), or derives it from the permissions (v3)
_TYPES: dict[int, EntryType] = {asyncssh.FILEXFER_TYPE_REGULAR: "file", asyncssh.FILEXFER_TYPE_DIRECTORY: "dir",
                                 asyncssh.FILEXFER_TYPE_SYMLINK: "link"}


def _entry(name: str, path: str, a: asyncssh.SFTPAttrs) -> RemoteEntry:
    return RemoteEntry(name, path, _TYPES.get(a.type, "other"), a.size, None if a.mtime is None else float(a.mtime))


class SftpClient(RemoteClient):
    """SFTP: every write is acknowledged (an upload's stored size needs no check)."""

    def __init__(self, settings: ConnectionSettings, log: TaskLog, conn: asyncssh.SSHClientConnection,
                 sftp: asyncssh.SFTPClient):
        self.s = settings
        self.log = log
        self._conn = conn
        self._sftp = sftp
        self._dirs: set[str] = set()
        self._block = min(settings.block_size, 255 * 1024)  # OpenSSH caps reads near 256 KiB

    @classmethod
    async def open(cls, settings: ConnectionSettings, log: TaskLog) -> SftpClient:
        s = settings
        sock = await open_socket(s.host, s.port, s) if s.proxy else None  # no proxy: asyncssh connects itself
        if s.known_hosts == "off":
            log.warning("SSH host key of %s is NOT checked (known_hosts = \"off\")", s.host)
        options = dict(
            username=s.user, password=s.secret_password() or None, agent_path=None, config=None,
            client_keys=[str(s.key_file)] if s.key_file else (),
            passphrase=s.key_passphrase.reveal() if s.key_passphrase else None,
            known_hosts=None if s.known_hosts == "off" else str(s.known_hosts),
            connect_timeout=s.timeout, login_timeout=s.timeout, encryption_algs=CIPHERS,
            preferred_auth="publickey,password,keyboard-interactive" if s.key_file else "password,keyboard-interactive",
        )
        conn = None
        try:
            with anyio.fail_after(s.timeout * 2):
                conn = await asyncssh.connect(s.host, s.port, sock=sock, **options)
                sftp = await conn.start_sftp_client()
        except BaseException as e:
            if conn is not None:
                conn.abort()
            elif sock is not None:  # not handed over to a connection yet
                sock.close()
            if isinstance(e, asyncssh.HostKeyNotVerifiable):
                raise HostKeyError(s.scrub(f"SSH host key of {s.host}:{s.port} refused: {e.reason}")) from None
            if isinstance(e, asyncssh.PermissionDenied):
                raise AuthError(f"SSH login to {s.host} as {s.user} refused") from None
            if isinstance(e, (asyncssh.Error, OSError, TimeoutError)):
                reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
                raise ConnectError(s.scrub(f"SFTP connection to {s.host}:{s.port} failed: {reason}")) from None
            raise
        log.debug("connected to %s", s.describe())
        return cls(settings, log, conn, sftp)

    @contextlib.contextmanager
    def _errors(self, what: str, path: str) -> Iterator[None]:
        """asyncssh's errors as ours: a refusal is a RemoteError, anything else breaks the session."""
        try:
            yield
        except asyncssh.SFTPNoSuchFile:
            raise NotFound(f"{what} {path}: no such file") from None
        except asyncssh.SFTPError as e:
            raise RemoteError(self.s.scrub(f"{what} {path}: {e.reason}")) from None
        except (asyncssh.Error, OSError, TimeoutError) as e:
            self.broken = True
            why = getattr(e, "reason", None) or str(e) or type(e).__name__
            raise ConnectError(self.s.scrub(f"{what} {path}: connection to {self.s.host} lost ({why})")) from None

    async def aclose(self) -> None:
        self._sftp.exit()
        self._conn.close()
        with anyio.move_on_after(min(self.s.timeout, 5)):
            await self._conn.wait_closed()
        self._conn.abort()

    async def list(self, path: str) -> list[RemoteEntry]:
        with self._errors("list", path), anyio.fail_after(self.s.timeout * 4):
            names = await self._sftp.readdir(path.encode(self.s.encoding))
        out = []
        for n in names:
            raw = cast(bytes, n.filename)  # (a bytes path: bytes names)
            try:
                name = raw.decode(self.s.encoding)
            except UnicodeDecodeError:
                self.log.warning("skipping a name in %s: not valid %s: %r", path, self.s.encoding, raw[:80])
                continue
            if not check_name(name, self.log, path):  # . and .. skipped silently
                continue
            out.append(_entry(name, join(path, name), n.attrs))
        return out

    async def stat(self, path: str) -> RemoteEntry | None:
        try:
            with self._errors("stat", path), anyio.fail_after(self.s.timeout):
                a = await self._sftp.stat(path.encode(self.s.encoding))
        except NotFound:
            return None
        return _entry(path.rstrip("/").rsplit("/", 1)[-1], path, a)

    async def get(self, path: str, sink: Sink, offset: int = 0, size: int | None = None,
                  on_bytes: OnBytes | None = None) -> int:
        """Read to the end in pieces of up to `sftp_requests` blocks, asyncssh keeping their reads in
        flight; with the size known, a piece asks one byte past it (a short answer proves the end)."""
        piece = self._block * self.s.sftp_requests
        got = 0
        with self._errors("download", path):
            with anyio.fail_after(self.s.timeout):
                f = await self._sftp.open(path.encode(self.s.encoding), "rb", block_size=self._block,
                                          max_requests=self.s.sftp_requests)
            try:
                while True:
                    want = piece if size is None else max(1, min(piece, size - offset - got + 1))
                    with anyio.fail_after(self.s.timeout * 4):
                        data = cast(bytes, await f.read(want, offset + got))  # (opened "rb": bytes)
                    if data:
                        await sink(memoryview(data))
                        got += len(data)
                        if on_bytes:
                            on_bytes(len(data))
                    if len(data) < want:  # a parallel read comes back short only at the end
                        return got
            finally:
                with anyio.move_on_after(self.s.timeout, shield=True), contextlib.suppress(asyncssh.Error, OSError):
                    await f.close()

    async def put(self, source: Source, path: str, on_bytes: OnBytes | None = None) -> int:
        """Write in pieces of half `sftp_requests` blocks, two pieces written at once (asyncssh
        keeping each one's writes in flight, parallel writes at their offsets): the next piece is
        read while the others are written, and the requests in flight never all drain at once."""
        piece = self._block * max(1, self.s.sftp_requests // 2)
        sent = 0
        failure: list[BaseException] = []  # raised below, not as an ExceptionGroup
        with self._errors("upload", path):
            async with self._sftp.open(path.encode(self.s.encoding), "wb", block_size=self._block,
                                       max_requests=max(1, self.s.sftp_requests // 2)) as f:
                room = anyio.Semaphore(2)

                async def write(data: bytes, at: int) -> None:
                    try:
                        with anyio.fail_after(self.s.timeout * 4):
                            await f.write(data, at)
                        if on_bytes:
                            on_bytes(len(data))
                    except Exception as e:
                        failure.append(e)
                        tg.cancel_scope.cancel()
                    finally:
                        room.release()

                async with anyio.create_task_group() as tg:
                    try:
                        async for data in _pieces(source, piece):
                            await room.acquire()
                            tg.start_soon(write, data, sent)
                            sent += len(data)
                    except Exception as e:
                        failure.append(e)
                        tg.cancel_scope.cancel()
                if failure:
                    raise failure[0]
        return sent

    async def delete(self, path: str) -> None:
        with self._errors("delete", path), anyio.fail_after(self.s.timeout):
            await self._sftp.remove(path.encode(self.s.encoding))

    async def rename(self, src: str, dst: str) -> None:
        enc = self.s.encoding
        with self._errors("rename", src), anyio.fail_after(self.s.timeout):
            try:
                await self._sftp.posix_rename(src.encode(enc), dst.encode(enc))
            except asyncssh.SFTPOpUnsupported:
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await self._sftp.remove(dst.encode(enc))
                await self._sftp.rename(src.encode(enc), dst.encode(enc))

    async def mkdir(self, path: str) -> None:
        if path in self._dirs:
            return
        with self._errors("mkdir", path), anyio.fail_after(self.s.timeout):
            await self._sftp.makedirs(path.encode(self.s.encoding), exist_ok=True)
        self._dirs.add(path)


async def _pieces(source: Source, piece: int) -> AsyncIterator[bytes]:
    """What `source` gives, joined into pieces of at least `piece` bytes (the last one shorter)."""
    chunks: list[bytes] = []
    size = 0
    while more := await source():
        chunks.append(more)
        size += len(more)
        if size >= piece:
            yield b"".join(chunks)
            chunks.clear()
            size = 0
    if chunks:
        yield b"".join(chunks)
