"""Child processes: own process group, output lines to a log, ended as a group.

The one seam for spawning and killing, so that every task type ends its children
the same way (SIGTERM to the group, then SIGKILL after a grace period).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process


def start_time(pid: int) -> str | None:
    """The kernel's start time of a live `pid` (field 22 of /proc/PID/stat): tells a recycled pid
    apart; None for a zombie, which is dead even while nobody has reaped it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


class ChildRegistry:
    """Child process groups written down under state_dir, so that after a `kill -9` of their
    owner the next daemon finds the orphans and ends them before starting the same work again."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, pid: int) -> None:
        me = os.getpid()
        (self.folder / str(pid)).write_text(f"{start_time(pid)} {me} {start_time(me)}\n")

    def remove(self, pid: int) -> None:
        try:
            (self.folder / str(pid)).unlink()
        except FileNotFoundError:
            pass

    def reap_orphans(self, log: Any) -> list[int]:
        """End the groups whose owner is dead; a live owner (a one-shot task:run) keeps its children."""
        ended = []
        for entry in self.folder.iterdir():
            try:
                pid = int(entry.name)
                child_start, owner, owner_start = entry.read_text().split()
            except (ValueError, OSError):
                entry.unlink(missing_ok=True)
                continue
            if start_time(int(owner)) == owner_start:
                continue
            if start_time(pid) == child_start:
                log.warning("ending orphaned process group %d left by a dead owner (pid %s)", pid, owner)
                kill_group(pid, signal.SIGTERM)
                for _ in range(40):
                    if start_time(pid) != child_start:
                        break
                    time.sleep(0.05)
                kill_group(pid, signal.SIGKILL)
                ended.append(pid)
            entry.unlink(missing_ok=True)
        return ended


REGISTRY: ChildRegistry | None = None


def use_registry(registry: ChildRegistry | None) -> None:
    global REGISTRY
    REGISTRY = registry


def kill_group(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal the process group led by `pid`; False when it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


async def spawn(argv: Sequence[str], **kwargs: Any) -> Process:
    """anyio.open_process shielded from cancellation: cancelled while it still awaits its pipes,
    asyncio kills only the direct child and its own children would live on, out of our reach."""
    with anyio.CancelScope(shield=True):
        return await anyio.open_process(list(argv), **kwargs)


async def end_process(proc: Process, grace: float = 5.0) -> int | None:
    """SIGTERM the group, wait `grace`, then SIGKILL; shielded so cancellation cannot skip it."""
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            kill_group(proc.pid, signal.SIGTERM)
            with anyio.move_on_after(grace):
                await proc.wait()
            if proc.returncode is None:
                kill_group(proc.pid, signal.SIGKILL)
                with anyio.move_on_after(5):
                    await proc.wait()
        # children that outlived the leader still get the group's SIGKILL
        kill_group(proc.pid, signal.SIGKILL)
        return proc.returncode


async def pump_lines(stream: Any, log: Any, level: int = logging.INFO, prefix: str = "") -> None:
    """Copy a byte stream to the log, line by line (partial lines are kept until complete)."""
    buf = b""
    async for chunk in stream:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            log.log(level, "%s%s", prefix, line.decode("utf-8", "replace").rstrip("\r"))
        if len(buf) > 65536:  # no newline in sight: log what we have
            log.log(level, "%s%s", prefix, buf.decode("utf-8", "replace"))
            buf = b""
    if buf:
        log.log(level, "%s%s", prefix, buf.decode("utf-8", "replace"))


async def run_logged(
    argv: Sequence[str],
    log: Any,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = 5.0,
) -> int:
    """Run argv (no shell) to its end with stdout/stderr in the log; ends the group if cancelled."""
    full_env = {**os.environ, **env} if env else None
    proc = await spawn(
        argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    if REGISTRY is not None:
        REGISTRY.add(proc.pid)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_lines, proc.stdout, log, logging.INFO, "")
            tg.start_soon(pump_lines, proc.stderr, log, logging.WARNING, "stderr: ")
            await proc.wait()
    finally:
        await end_process(proc, grace)
        await proc.aclose()
        if REGISTRY is not None:
            REGISTRY.remove(proc.pid)
    assert proc.returncode is not None
    return proc.returncode
