"""Child processes: own process group, output lines to a log, ended as a group.

The one seam for spawning and killing, so that every task type ends its children
the same way (SIGTERM to the group, then SIGKILL after a grace period).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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


def group_alive(pgid: int, leader_start: str) -> bool:
    """Whether the process group `pgid` whose leader started at `leader_start` still has a member.

    The leader may be gone (killed by its PDEATHSIG) while its children live on in the group.
    A pid in use as a pgid is not handed out again, so members with that pgid belong to the
    recorded group unless the pid `pgid` itself runs again under another start time (reused
    after the whole group ended)."""
    leader = start_time(pgid)
    if leader is not None:
        return leader == leader_start
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
    return False


@dataclass(frozen=True)
class ChildRecord:
    """One line under state_dir/children/PGID: who started the group and how to end it."""

    pgid: int
    start: str  # the leader's start time (field 22 of /proc/PID/stat)
    owner: int  # the daemon or `task:run` process that started it
    owner_start: str
    grace: float  # seconds between SIGTERM and SIGKILL
    label: str  # the task name or `job-ID` the group works for

    def line(self) -> str:
        return f"{self.start} {self.owner} {self.owner_start} {self.grace:g} {self.label}\n"

    @classmethod
    def parse(cls, pgid: int, text: str) -> ChildRecord:
        fields = text.split(maxsplit=4)
        if len(fields) == 3:  # written before grace and label were recorded
            fields += ["2", "-"]
        start, owner, owner_start, grace, label = fields
        return cls(pgid, start, int(owner), owner_start, float(grace), label.strip())


KILL_WAIT = 10.0  # seconds a group may take to vanish after SIGKILL before we give up waiting


class ChildRegistry:
    """Child process groups written down under state_dir before they may do any work, so that
    after a `kill -9` of their owner the next daemon (or the next attempt of the same task or
    job) finds the orphans and ends them before starting the same work again.

    A plain write (no fsync) is enough: the records must survive the death of a process, not
    of the machine, and a machine that goes down takes every child with it."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, pid: int, grace: float = 5.0, label: str = "-") -> bool:
        """Record the group `pid` leads; False when the child is already gone (nothing to record)."""
        child_start = start_time(pid)
        if child_start is None:
            return False
        me = os.getpid()
        record = ChildRecord(pid, child_start, me, start_time(me) or "?", grace, label or "-")
        (self.folder / str(pid)).write_text(record.line())
        return True

    def remove(self, pid: int) -> None:
        try:
            (self.folder / str(pid)).unlink()
        except FileNotFoundError:
            pass

    def _orphans(self, label: str | None) -> list[ChildRecord]:
        """Records whose owner is dead (a live owner, a `task:run`, keeps its children); records
        of groups that have ended are removed on the way."""
        found = []
        for entry in self.folder.iterdir():
            try:
                record = ChildRecord.parse(int(entry.name), entry.read_text())
            except (ValueError, OSError):
                entry.unlink(missing_ok=True)  # torn by a kill while written: its child never ran
                continue
            if label is not None and record.label != label:
                continue
            if start_time(record.owner) == record.owner_start:
                continue
            if group_alive(record.pgid, record.start):
                found.append(record)
            else:
                entry.unlink(missing_ok=True)
        return found

    def reap_orphans(self, log: Any, label: str | None = None) -> list[int]:
        """End the groups (all, or those working for `label`) whose owner is dead: SIGTERM, then
        SIGKILL after the longest recorded grace; returns when none of them has a member left.
        Blocking: call it in a thread."""
        orphans = self._orphans(label)
        for r in orphans:
            log.warning("ending orphaned process group %d of %s, left by a dead owner (pid %d)", r.pgid, r.label, r.owner)
            kill_group(r.pgid, signal.SIGTERM)
        deadline = time.monotonic() + max((r.grace for r in orphans), default=0.0)
        killed_at: float | None = None
        left = orphans
        while left:
            left = [r for r in left if group_alive(r.pgid, r.start)]
            if left and killed_at is None and time.monotonic() >= deadline:
                for r in left:
                    kill_group(r.pgid, signal.SIGKILL)
                killed_at = time.monotonic()
            if left and killed_at is not None and time.monotonic() - killed_at > KILL_WAIT:
                # SIGKILL cannot be refused, but a process in uninterruptible sleep (a hung NFS
                # mount) dies only when its I/O returns: say so and go on rather than wait forever
                for r in left:
                    log.error("process group %d of %s survives SIGKILL (uninterruptible sleep?): "
                              "kept on record, ended again at the next start", r.pgid, r.label)
                break
            time.sleep(0.02 if left else 0)
        for r in orphans:
            if r not in left:
                self.remove(r.pgid)
        return [r.pgid for r in orphans if r not in left]


REGISTRY: ChildRegistry | None = None


def use_registry(registry: ChildRegistry | None) -> None:
    global REGISTRY
    REGISTRY = registry


WITHHELD: frozenset[str] = frozenset()


def withhold_env(names: Iterable[str]) -> None:
    """Environment variables consumed as secrets (`"env:VAR"` in the config) are not passed on
    to children; once withheld a name stays withheld (a reload may drop it from the config,
    the value is still a secret)."""
    global WITHHELD
    WITHHELD = WITHHELD | frozenset(names)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child inherits: ours without the withheld secrets, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD}
    env.update(extra or {})
    return env


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """Prefix `setpriv --pdeathsig KILL` (util-linux) when present, so a child is killed when the
    process that started it dies without a chance to end it (kill -9).

    PDEATHSIG fires on the death of the *thread* that forked the child: children are spawned
    by anyio on the event loop's thread, which lives as long as the daemon (or `task:run`).
    It reaches only the direct child, not what that child starts: the process group recorded
    in the ChildRegistry is the guarantee for the rest of the tree."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


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
    asyncio kills only the direct child and its own children would live on, out of our reach.
    Without an `env`, the child gets ours minus the secrets (see withhold_env)."""
    if kwargs.get("env") is None:
        kwargs["env"] = child_env()
    with anyio.CancelScope(shield=True):
        proc = await anyio.open_process(list(argv), **kwargs)
    return proc


# Run by /bin/sh in the new child, which leads its own process group. It waits for one line on
# stdin (sent once the group is written in the REGISTRY): if we die before, stdin ends and the
# program never runs (exit 125). Then a watcher in the group keeps reading our end of that pipe,
# which we hold open while the child runs: when we die, even by kill -9, it reaches end of file
# and kills the whole group, so no part of the tree works on after its owner. Then the shell
# becomes the program (same pid, the group's leader) with stdin from /dev/null.
GATE = ('IFS= read -r _ || exit 125; exec 3<&0; '
        '{ cat <&3 >/dev/null; kill -s KILL 0; } </dev/null >/dev/null 2>&1 & '
        'exec "$@" </dev/null 3<&-')


async def spawn_recorded(argv: Sequence[str], *, grace: float, label: str, **kwargs: Any) -> Process:
    """Spawn argv in a new process group that does nothing until the group (pgid and start
    time) is written in the REGISTRY: a daemon killed at any moment leaves no group the next
    one does not know of. The group dies with us (GATE's watcher, and die_with_parent for the
    leader); the REGISTRY is the guarantee where both fail (a member that left the group)."""
    gated = die_with_parent(["/bin/sh", "-c", GATE, "schedulerd-gate", *argv])
    proc = await spawn(gated, stdin=subprocess.PIPE, start_new_session=True, **kwargs)
    assert proc.stdin is not None
    with anyio.CancelScope(shield=True):
        try:
            # on the loop, not in a thread: one small file, and no cancellation between the
            # spawn and its record
            if REGISTRY is not None:
                REGISTRY.add(proc.pid, grace, label)
            await proc.stdin.send(b"go\n")  # stdin stays open until proc.aclose(): see GATE
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the gate is gone already (killed): wait() tells how it ended
        except BaseException:
            await end_process(proc, 0)
            raise
    return proc


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
    label: str = "-",
) -> int:
    """Run argv (no shell) to its end with stdout/stderr in the log; ends the group if cancelled.

    `label` (the task name or `job-ID`) names the work: groups an earlier owner of the same
    work left behind when it died are ended first, so two attempts never overlap."""
    if REGISTRY is not None:
        await anyio.to_thread.run_sync(REGISTRY.reap_orphans, log, label)
    proc = await spawn_recorded(argv, grace=grace, label=label, cwd=cwd, env=child_env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
