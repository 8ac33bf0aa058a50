"""SFTP through asyncssh: host keys checked, many requests in flight for speed."""

from __future__ import annotations

import contextlib
import logging
import stat as statmod

import anyio
import asyncssh

from .base import OnBytes, RemoteClient, RemoteEntry, Sink, Source
from .errors import AuthError, ConnectError, HostKeyError, NotFound, RemoteError, TransferError, first_leaf, scrub
from .names import check_name, join
from .proxy import open_socket
from .settings import ConnectionSettings


# asyncssh's defaults, AES-GCM first: one AEAD call per packet, about 4x faster here
# than its chacha20-poly1305 (built from separate cipher and MAC calls)
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr")


def _entry_type(attrs: asyncssh.SFTPAttrs) -> str:
    t = attrs.type
    if t == asyncssh.FILEXFER_TYPE_REGULAR:
        return "file"
    if t == asyncssh.FILEXFER_TYPE_DIRECTORY:
        return "dir"
    if t == asyncssh.FILEXFER_TYPE_SYMLINK:
        return "link"
    if attrs.permissions is not None:
        mode = attrs.permissions
        return "file" if statmod.S_ISREG(mode) else "dir" if statmod.S_ISDIR(mode) else "link" if statmod.S_ISLNK(mode) else "other"
    return "other"


class _Slot:
    __slots__ = ("data", "done")

    def __init__(self) -> None:
        self.data = b""
        self.done = anyio.Event()


class SftpClient(RemoteClient):
    acked_writes = True

    def __init__(self, settings: ConnectionSettings, log: logging.Logger, conn: asyncssh.SSHClientConnection,
                 sftp: asyncssh.SFTPClient):
        self.s = settings
        self.log = log
        self._conn = conn
        self._sftp = sftp
        self.broken = False
        self._dirs: set[str] = set()
        self._block = min(settings.block_size, 255 * 1024)  # OpenSSH caps reads near 256 KiB

    @classmethod
    async def open(cls, settings: ConnectionSettings, log: logging.Logger) -> SftpClient:
        s = settings
        secrets = s.secrets()
        sock = None
        if s.proxy:
            sock = await open_socket(s.host, s.port, proxy=s.proxy_spec, timeout=s.timeout,
                                     proxy_password=s.proxy_password.reveal() if s.proxy_password else None)
        if s.known_hosts == "off":
            log.warning("SSH host key of %s is NOT checked (known_hosts = \"off\")", s.host)
        password = s.secret_password() or None
        options = dict(
            username=s.user,
            password=password,
            client_keys=[str(s.key_file)] if s.key_file else (),
            passphrase=s.key_passphrase.reveal() if s.key_passphrase else None,
            known_hosts=None if s.known_hosts == "off" else str(s.known_hosts),
            agent_path=None,
            connect_timeout=s.timeout,
            login_timeout=s.timeout,
            preferred_auth="publickey,password,keyboard-interactive" if s.key_file else "password,keyboard-interactive",
            encryption_algs=CIPHERS,
            config=None,
        )
        conn = None
        try:
            with anyio.fail_after(s.timeout * 2):
                conn = await asyncssh.connect(s.host, s.port, sock=sock, **options)  # type: ignore[arg-type]
                sftp = await conn.start_sftp_client()
        except asyncssh.HostKeyNotVerifiable as e:
            raise HostKeyError(scrub(f"SSH host key of {s.host}:{s.port} refused: {e.reason}", secrets)) from None
        except asyncssh.PermissionDenied:
            raise AuthError(f"SSH login to {s.host} as {s.user} refused") from None
        except (asyncssh.Error, OSError, TimeoutError) as e:
            if conn is not None:
                conn.abort()
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ConnectError(scrub(f"SFTP connection to {s.host}:{s.port} failed: {reason}", secrets)) from None
        except BaseException:
            if conn is not None:
                conn.abort()
            if sock is not None:
                sock.close()
            raise
        log.debug("connected to %s", s.describe())
        return cls(settings, log, conn, sftp)

    def _wrap(self, e: Exception, what: str, path: str) -> TransferError:
        if isinstance(e, asyncssh.SFTPNoSuchFile):
            return NotFound(f"{what} {path}: no such file")
        if isinstance(e, asyncssh.SFTPError):
            return RemoteError(scrub(f"{what} {path}: {e.reason}", self.s.secrets()))
        self.broken = True
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        return ConnectError(scrub(f"{what} {path}: connection to {self.s.host} lost ({reason})", self.s.secrets()))

    @contextlib.contextmanager
    def _errors(self, what: str, path: str):  # type: ignore[no-untyped-def]
        try:
            yield
        except TransferError:
            raise
        except (asyncssh.Error, OSError, TimeoutError) as e:
            raise self._wrap(e, what, path) from None
        except BaseExceptionGroup as eg:  # from the parallel request groups
            leaf = first_leaf(eg)
            if isinstance(leaf, TransferError):
                raise leaf from None
            if isinstance(leaf, (asyncssh.Error, OSError, TimeoutError)):
                raise self._wrap(leaf, what, path) from None
            raise

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
            raw = n.filename if isinstance(n.filename, bytes) else str(n.filename).encode()
            try:
                name = raw.decode(self.s.encoding)
            except UnicodeDecodeError:
                self.log.warning("skipping a name in %s: not valid %s: %r", path, self.s.encoding, raw[:80])
                continue
            if name in (".", "..") or not check_name(name, self.log, path):
                continue
            a = n.attrs
            out.append(RemoteEntry(name, join(path, name), _entry_type(a), a.size,  # type: ignore[arg-type]
                                   float(a.mtime) if a.mtime is not None else None, True))
        return out

    async def stat(self, path: str) -> RemoteEntry | None:
        try:
            with self._errors("stat", path), anyio.fail_after(self.s.timeout):
                a = await self._sftp.stat(path.encode(self.s.encoding))
        except NotFound:
            return None
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return RemoteEntry(name, path, _entry_type(a), a.size, float(a.mtime) if a.mtime is not None else None, True)  # type: ignore[arg-type]

    async def mtime(self, path: str) -> float | None:
        e = await self.stat(path)
        return e.mtime if e else None

    async def get(self, path: str, sink: Sink, offset: int = 0, size: int | None = None,
                  on_bytes: OnBytes | None = None) -> int:
        """Keep `sftp_requests` reads of one block in flight; hand them to `sink` in order."""
        with self._errors("download", path):
            with anyio.fail_after(self.s.timeout):
                # block_size=0: each read is one request (ours keep many in flight already)
                f = await self._sftp.open(path.encode(self.s.encoding), "rb", block_size=0)
            try:
                return await self._read_into(f, sink, offset, size, on_bytes)
            finally:
                with anyio.move_on_after(self.s.timeout, shield=True), contextlib.suppress(asyncssh.Error, OSError):
                    await f.close()

    async def _read_into(self, f: asyncssh.SFTPClientFile, sink: Sink, offset: int, size: int | None,
                         on_bytes: OnBytes | None) -> int:
        """Reads at known offsets up to the expected end (one more there proves the end); a short
        read or bytes past the end (the file changed) and the rest is read one block at a time."""
        block, timeout = self._block, self.s.timeout
        if size is None:
            with anyio.fail_after(timeout):
                size = (await f.stat()).size or 0
        written = 0

        async def put(data: bytes) -> bool:
            """`data` to the sink; False when it is not what was expected (read on, one by one)."""
            nonlocal written
            await sink(memoryview(data))
            written += len(data)
            if on_bytes:
                on_bytes(len(data))
            at = offset + written
            return not ((at < size and len(data) < block) or at > size)

        async def fetch(slot: _Slot, pos: int) -> None:
            with anyio.fail_after(timeout):
                slot.data = await f.read(block, pos)
            slot.done.set()

        more = False
        send, recv = anyio.create_memory_object_stream[_Slot](self.s.sftp_requests)
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                async with send:
                    for pos in range(offset, size + 1, block):  # a read at `size` finds the end
                        slot = _Slot()
                        await send.send(slot)
                        tg.start_soon(fetch, slot, pos)

            tg.start_soon(produce)
            async with recv:
                async for slot in recv:
                    await slot.done.wait()
                    if not slot.data:
                        break
                    if not await put(slot.data):
                        more = True
                        break
            tg.cancel_scope.cancel()  # the reads still in flight
        while more:
            with anyio.fail_after(timeout):
                data = await f.read(block, offset + written)
            if not data:
                break
            await put(data)
        return written

    async def put(self, source: Source, path: str, on_bytes: OnBytes | None = None) -> int:
        """Writes at known offsets, at most `sftp_requests` in flight."""
        timeout = self.s.timeout
        sent = 0
        limiter = anyio.Semaphore(self.s.sftp_requests)
        with self._errors("upload", path):
            async with self._sftp.open(path.encode(self.s.encoding), "wb", block_size=0) as f:

                async def write(data: bytes, pos: int) -> None:
                    try:
                        with anyio.fail_after(timeout):
                            await f.write(data, pos)
                    finally:
                        limiter.release()
                    if on_bytes:
                        on_bytes(len(data))

                async with anyio.create_task_group() as tg:
                    while piece := await source():
                        for at in range(0, len(piece), self._block):
                            data = piece[at:at + self._block]
                            await limiter.acquire()
                            tg.start_soon(write, data, sent)
                            sent += len(data)
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
