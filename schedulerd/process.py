"""Child processes: own process group, output lines to a log, ended as a group.

The one seam for spawning and killing, so that every task type ends its children
the same way (SIGTERM to the group, then SIGKILL after a grace period).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process


def kill_group(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal the process group led by `pid`; False when it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


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
    proc = await anyio.open_process(
        list(argv), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_lines, proc.stdout, log, logging.INFO, "")
            tg.start_soon(pump_lines, proc.stderr, log, logging.WARNING, "stderr: ")
            await proc.wait()
    finally:
        await end_process(proc, grace)
        await proc.aclose()
    assert proc.returncode is not None
    return proc.returncode
