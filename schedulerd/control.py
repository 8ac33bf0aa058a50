"""The control socket: a Unix stream socket speaking newline-delimited JSON.

Bounded in every direction (request size, idle time, connections) and guarded by
SO_PEERCRED, so that no client can hurt the daemon or another client.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from .plugin import FAILURES, error_text
from .protocol import MAX_REQUEST, ControlError, Fault

log = logging.getLogger("schedulerd.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[Any]]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from the kernel: cannot be forged by the client."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


class Access:
    """Who may talk: root, the daemon's own uid, allowed_uids, members of socket_group."""

    def __init__(self, allowed_uids: tuple[int, ...], group: str | None):
        self.uids = {0, os.getuid(), *allowed_uids}
        self.gid: int | None = None
        self.members: set[str] = set()
        if group:
            g = grp.getgrnam(group)
            self.gid, self.members = g.gr_gid, set(g.gr_mem)

    def allows(self, uid: int, gid: int) -> bool:
        if uid in self.uids:
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            import pwd

            return pwd.getpwuid(uid).pw_name in self.members
        except KeyError:
            return False


class ControlServer:
    def __init__(self, path: Path, mode: int, group: str | None, access: Access,
                 max_connections: int, idle_timeout: float):
        self.path = path
        self.mode = mode
        self.group = group
        self.access = access
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.handlers: dict[str, Handler] = {}
        self.streams: dict[str, StreamHandler] = {}
        self.connections = 0
        self.shutting_down = False  # set once the daemon stops: only `during_shutdown` commands answer
        self._during_shutdown: set[str] = set()

    def route(self, cmd: str, handler: Handler, *, during_shutdown: bool = False) -> None:
        """`during_shutdown`: the command changes nothing (a query), so it is still answered while
        the daemon drains; every other command then gets SHUTTING_DOWN."""
        self.handlers[cmd] = handler
        if during_shutdown:
            self._during_shutdown.add(cmd)

    def route_stream(self, cmd: str, handler: StreamHandler) -> None:
        self.streams[cmd] = handler

    async def listen(self) -> anyio.abc.Listener[anyio.abc.SocketStream]:
        """Bind with the final mode already in force (umask), then set the group."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket() or self.path.exists():
            self.path.unlink()  # stale: we hold the pidfile lock, so nobody else serves it
        old = os.umask(0o777 & ~self.mode)
        try:
            listener = await anyio.create_unix_listener(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        return listener

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream], *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with listener:
            task_status.started()
            await listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            sock = stream.extra(SocketAttribute.raw_socket)
            try:
                pid, uid, gid = peer_credentials(sock)
            except OSError:
                return
            if not self.access.allows(uid, gid):
                log.warning("refused control connection from uid %d (pid %d)", uid, pid)
                await self._send(stream, ControlError(Fault.FORBIDDEN, f"uid {uid} may not use this socket").to_json())
                return
            if self.connections >= self.max_connections:
                await self._send(stream, ControlError(Fault.BUSY, "too many control connections").to_json())
                return
            self.connections += 1
            try:
                await self._session(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError, TimeoutError):
                pass
            except Exception:  # one bad connection never takes the daemon down
                log.exception("control connection failed")
            finally:
                self.connections -= 1

    async def _session(self, stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        while True:
            try:
                with anyio.fail_after(self.idle_timeout):
                    raw = await reader.receive_until(b"\n", MAX_REQUEST)
            except TimeoutError:
                await self._send(stream, ControlError(Fault.TIMEOUT, "idle or incomplete request timed out").to_json())
                return
            except anyio.DelimiterNotFound:
                await self._send(stream, ControlError(Fault.TOO_LARGE, f"request larger than {MAX_REQUEST} bytes").to_json())
                return
            except (anyio.IncompleteRead, anyio.EndOfStream):
                return
            if not raw.strip():
                continue
            try:
                req = json.loads(raw)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError
                args = req.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError
            except ValueError:
                bad = ControlError(Fault.BAD_REQUEST, 'expected a JSON object {"cmd": ..., "args": {...}}')
                await self._send(stream, bad.to_json())
                continue
            cmd = req["cmd"]
            if cmd in self.streams:
                await self._stream(stream, cmd, args)
                return
            await self._send(stream, await self._call(cmd, args))

    async def dispatch(self, cmd: str, args: dict[str, Any]) -> Any:
        """Run one command as the socket does (the web console calls this too): its result, or
        ControlError (unknown command, SHUTTING_DOWN while the daemon stops, the handler's own)."""
        handler = self.handlers.get(cmd)
        if handler is None:
            raise ControlError(Fault.UNKNOWN_COMMAND, f"unknown command {cmd!r}")
        if self.shutting_down and cmd not in self._during_shutdown:
            raise ControlError(Fault.SHUTTING_DOWN, f"schedulerd is shutting down: {cmd} refused")
        return await handler(args)

    def stream(self, cmd: str, args: dict[str, Any]) -> AsyncIterator[Any]:
        """A streaming command's items (`log.tail`), as the socket sends them."""
        handler = self.streams.get(cmd)
        if handler is None:
            raise ControlError(Fault.UNKNOWN_COMMAND, f"unknown command {cmd!r}")
        return handler(args)

    async def _call(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"ok": True, "result": await self.dispatch(cmd, args)}
        except ControlError as e:
            return e.to_json()
        except FAILURES as e:  # a plugin's sys.exit() too (a job type's title at job.add): a reply, not an exit
            log.exception("control command %s failed", cmd)
            return ControlError(Fault.INTERNAL, error_text(e)).to_json()

    async def _stream(self, stream: SocketStream, cmd: str, args: dict[str, Any]) -> None:
        try:
            async for item in self.streams[cmd](args):
                await self._send(stream, {"ok": True, "line": item})
            await self._send(stream, {"ok": True, "end": True})
        except ControlError as e:
            await self._send(stream, e.to_json())

    @staticmethod
    async def _send(stream: SocketStream, obj: dict[str, Any]) -> None:
        with anyio.fail_after(30):
            await stream.send(json.dumps(obj, default=str).encode() + b"\n")
