"""External tools: output, errors in words, timeouts and cancellation kill the whole group."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from tasks.media.errors import ToolError, ToolNotFound, ToolTimeout
from tasks.media.tools import run_tool

ROOT = Path(__file__).resolve().parents[2]


def gone(pid: int, within: float = 5.0) -> bool:
    """True once `pid` no longer runs (absent, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


async def wait_for_file(path: Path) -> int:
    with anyio.fail_after(5):
        while not path.exists() or not path.read_text().strip():
            await anyio.sleep(0.02)
    return int(path.read_text())


@pytest.mark.anyio
async def test_output_and_errors() -> None:
    result = await run_tool(["sh", "-c", "echo out; echo note >&2"], timeout=10)
    assert result.stdout == b"out\n" and result.stderr.strip() == "note"
    with pytest.raises(ToolError, match=r"^sh exited with status 3: boom$"):
        await run_tool(["sh", "-c", "echo boom >&2; exit 3"], timeout=10)
    with pytest.raises(ToolNotFound, match=r"^no-such-tool-x not found$"):
        await run_tool(["no-such-tool-x"], timeout=10)


@pytest.mark.anyio
async def test_not_found_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFound, match=r"ffmpeg not found \(install the Debian package ffmpeg\)"):
        await run_tool(["ffmpeg", "-version"], timeout=10)


@pytest.mark.anyio
async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match=r"^sh timed out after 0.5s and was killed$"):
        await run_tool(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert gone(int(pidfile.read_text()))


@pytest.mark.anyio
async def test_cancellation_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_tool(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=60))
        pid = await wait_for_file(pidfile)
        tg.cancel_scope.cancel()
    assert gone(pid)


@pytest.mark.anyio
async def test_cancellation_while_starting_leaves_no_process(tmp_path: Path) -> None:
    """Cancelled at each early checkpoint, even while the pipes are still being set up (asyncio
    then kills only the direct child): no grandchild may survive."""
    survivors = []
    for point in range(36):
        pidfile = tmp_path / f"grandchild{point}"
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(run_tool, ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=60))
            for _ in range(point % 12):
                await anyio.sleep(0)
            tg.cancel_scope.cancel()
        await anyio.sleep(0.05)  # a shell killed after its fork may still be writing the pid
        if pidfile.exists() and pidfile.read_text().strip() and not gone(int(pidfile.read_text()), 1):
            survivors.append(point)
    assert survivors == []


def test_tool_dies_with_a_killed_parent(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    pidfile = tmp_path / "tool"
    script = textwrap.dedent(f"""
        import sys, anyio
        sys.path.insert(0, {str(ROOT)!r})
        from tasks.media.tools import run_tool
        anyio.run(lambda: run_tool(["sh", "-c", "echo $$ > {pidfile}; exec sleep 30"], timeout=60))
        """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the tool never started"
            time.sleep(0.02)
        tool = int(pidfile.read_text())
        os.kill(parent.pid, signal.SIGKILL)  # no chance to clean up: the parent-death signal must do it
        parent.wait(5)
        assert gone(tool), "the tool outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
