"""The thin control client: plain blocking sockets, no engine imports."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .protocol import ControlError, Fault


class NotRunning(Exception):
    pass


class Client:
    def __init__(self, path: Path, timeout: float = 60.0):
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            raise NotRunning(f"schedulerd is not running (no answer on {self.path})") from e
        return s

    def call(self, cmd: str, **args: Any) -> Any:
        with self._connect() as s:
            s.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            reply = self._read(s.makefile("rb"))
        return self._result(reply)

    def stream(self, cmd: str, **args: Any) -> Iterator[Any]:
        s = self._connect()
        s.settimeout(None)
        try:
            s.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            f = s.makefile("rb")
            while True:
                reply = self._read(f)
                if reply.get("end"):
                    return
                if "line" not in reply:
                    self._result(reply)
                    return
                yield reply["line"]
        finally:
            s.close()

    @staticmethod
    def _read(f: BinaryIO) -> dict[str, Any]:
        line = f.readline()
        if not line:
            raise NotRunning("schedulerd closed the connection")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ControlError(Fault.INTERNAL, f"schedulerd answered {line[:200]!r}, not a JSON object")
        return reply

    @staticmethod
    def _result(reply: dict[str, Any]) -> Any:
        if reply.get("ok"):
            return reply.get("result")
        err = reply.get("error") or {}
        raise ControlError(err.get("code", Fault.INTERNAL), err.get("message", "unknown error"))
