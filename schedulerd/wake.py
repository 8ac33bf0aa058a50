"""Fire-and-forget wake-ups for the job queue: one datagram per added job.

`job:add` writes the job to the store itself (it works with the daemon down), then
drops the queue name on `state_dir/wake.sock`; the daemon wakes that queue's
dispatcher. No reply is awaited, so adding jobs costs a store write and one send.
A datagram only ever wakes: a stranger could at worst make the daemon look again.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

NAME = "wake.sock"


def send_wake(state_dir: Path, queue: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(queue.encode()[:256], str(state_dir / NAME))
        return True
    except OSError:  # daemon down, or its buffer full: the dispatcher's poll finds the job anyway
        return False


async def serve_wakes(state_dir: Path, mode: int, on_wake: Callable[[str], None],
                      *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    path = state_dir / NAME
    path.unlink(missing_ok=True)
    sock = await anyio.create_unix_datagram_socket(local_path=path, local_mode=mode)
    async with sock:
        task_status.started()
        try:
            async for data, _ in sock:
                on_wake(data.decode("utf-8", "replace"))
        finally:
            path.unlink(missing_ok=True)
