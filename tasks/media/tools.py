"""Run an external tool (ffmpeg, ffprobe, pdftoppm) with a timeout, in its own process group.

A tool that hangs on a hostile file must not hang the task: each run has a
deadline, and on timeout or cancellation the whole process group is killed.
Failures come back as ToolError with the tool's own words (end of stderr).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process

from schedulerd.process import die_with_parent, spawn

from .errors import ToolError, ToolNotFound, ToolTimeout

# Debian package to install for each tool, for the "not found" message.
PACKAGES = {
    "ffmpeg": "ffmpeg",
    "ffprobe": "ffmpeg",
    "pdftoppm": "poppler-utils",
    "pdftotext": "poppler-utils",
    "exiftool": "libimage-exiftool-perl",
}
STDERR_KEEP = 2000  # characters of stderr quoted in an error
STDOUT_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class ToolResult:
    stdout: bytes
    stderr: str


def find_tool(name: str) -> str:
    """The tool's full path, or ToolNotFound naming the package to install."""
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(Path(name).name)
        hint = f" (install the Debian package {package})" if package else ""
        raise ToolNotFound(f"{Path(name).name} not found{hint}")
    return path


def tail(text: str, keep: int = STDERR_KEEP) -> str:
    text = text.strip()
    return text if len(text) <= keep else "..." + text[-keep:]


def kill_group(process: Process) -> None:
    """SIGKILL the process group the tool leads (it was started in a new session)."""
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


async def _drain(stream: ByteReceiveStream | None, sink: bytearray, limit: int) -> None:
    if stream is None:
        return
    async for chunk in stream:
        sink += chunk
        if len(sink) > limit:  # keep the end: that is where tools say what went wrong
            del sink[: len(sink) - limit]


async def run_tool(argv: Sequence[str | os.PathLike[str]], *, timeout: float, cwd: Path | None = None) -> ToolResult:
    """Run `argv` to completion; ToolError unless it exits 0 within `timeout` seconds."""
    name = Path(os.fspath(argv[0])).name
    command = [find_tool(os.fspath(argv[0]))] + [os.fspath(a) for a in argv[1:]]
    try:
        process = await spawn(
            die_with_parent(command), stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True
        )
    except OSError as e:
        raise ToolError(f"{name} could not start: {e.strerror or e}") from None
    out, err = bytearray(), bytearray()
    try:
        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, process.stdout, out, STDOUT_LIMIT)
                    tg.start_soon(_drain, process.stderr, err, STDERR_KEEP * 4)
                rc = await process.wait()
        except TimeoutError:
            raise ToolTimeout(f"{name} timed out after {timeout:g}s and was killed") from None
        finally:
            kill_group(process)
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    stderr = err.decode("utf-8", "replace")
    if rc != 0:
        what = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        detail = tail(stderr)
        raise ToolError(f"{name} {what}" + (f": {detail}" if detail else ""))
    return ToolResult(bytes(out), stderr)
