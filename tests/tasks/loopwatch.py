"""Is the event loop free while a task waits for a file? A FIFO stands in for a slow file: opening
it for reading blocks until a writer comes, which a plain thread does after `delay` seconds."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio

T = TypeVar("T")


def fifo_served_later(path: Path, data: bytes, delay: float) -> threading.Thread:
    """`path` made a FIFO; after `delay` s a thread opens it for writing (blocks until a reader) and writes `data`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)

    def serve() -> None:
        time.sleep(delay)
        with open(path, "wb") as f:
            f.write(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


async def longest_stall(work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """`work()`'s result and the longest time the loop went without running a 10 ms heartbeat meanwhile."""
    gaps = [0.0]
    result: list[T] = []

    async def heartbeat(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        last = time.monotonic()
        task_status.started()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            gaps[0] = max(gaps[0], now - last)
            last = now

    async with anyio.create_task_group() as tg:
        await tg.start(heartbeat)
        result.append(await work())
        tg.cancel_scope.cancel()
    return result[0], gaps[0]
