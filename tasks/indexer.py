"""Task type `indexer`: keep one full-text indexer process running, like supervisord would.

One iteration starts the indexer (after stopping any orphan a killed daemon left on
its port) and supervises it until it dies. An exit within `startsecs` is a failed
start: the iteration raises, so the runner backs off and, after `max_crashes` in a
row, marks the task crashed. An exit after a good start is logged and the iteration
ends normally: the next tick restarts it and the crash count starts again, as
supervisord resets its retries once a program reached RUNNING.

Stopping (task stop, daemon stop, cancellation): `Q\\r\\n` on 127.0.0.1:`socket`, wait
`stop_wait`, SIGTERM to the process group, wait `kill_wait`, SIGKILL.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import anyio
from anyio.abc import Process, TaskStatus

from schedulerd import settings as s
from schedulerd.plugin import Context, TaskFailed, TaskLog, TaskType
from schedulerd.process import end_process, kill_group, pump_lines, spawn
from schedulerd.process import start_time as _start_time
from schedulerd.settings import ConfigError, Secret

CHECKOUT = Path(__file__).resolve().parent.parent
SHIPPED = CHECKOUT / "bin" / "indexer"
PIDFILE = "indexer.json"
MASK = "********"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Phraseanet's indexer settings, plus the supervision timings."""

    base: str  # databox name (or, for a foreign binary, its own base name)
    binary: str = str(SHIPPED)  # path (relative to the checkout) or a name on PATH
    host: str = "127.0.0.1"
    port: Annotated[int, s.int_range(1, 65535)] = 3306
    user: str = "root"
    password: Secret = Secret("")
    socket: Annotated[int, s.int_range(1, 65535)] = 25200
    charset: str = "utf8"
    stem: str | None = None
    sort_empty: Literal["A", "Z"] | None = None
    debug: Annotated[int, s.int_range(0, 2**31 - 1)] = 0
    nolog: bool = False
    extra_args: tuple[str, ...] = ()
    startsecs: Annotated[float, s.duration] = 1.0
    stop_wait: Annotated[float, s.duration] = 10.0
    kill_wait: Annotated[float, s.duration] = 5.0

    def check(self) -> None:
        if not self.base or "\0" in self.base:
            raise ConfigError("base", "expected a databox name")
        if not self.binary:
            raise ConfigError("binary", "expected a path or a program name")
        if not self.charset.replace("-", "").isalnum():
            raise ConfigError("charset", f"expected a character set name like utf8, got {self.charset!r}")


IndexerSettings = Settings  # (in Indexer's body, `Settings` is the ClassVar)


class FailedStart(TaskFailed):
    """The indexer exited within startsecs, or could not be started at all."""


class PortBusy(TaskFailed):
    """Something that is not our orphan already listens on the control port."""


def mask_argv(argv: list[str], secret: str) -> str:
    """The command line as logged: the password value never appears."""
    out = []
    for a in argv:
        if a.startswith(("-p=", "--password=")):
            a = a.split("=", 1)[0] + "=" + MASK
        elif secret and secret in a:
            a = a.replace(secret, MASK)
        out.append(a)
    return " ".join(out)


class _MaskedLog:
    """A logger facade for pump_lines that blanks the password in every child output line."""

    def __init__(self, log: TaskLog, secret: str):
        self._log = log
        self._secret = secret

    def log(self, level: int, fmt: str, *args: object) -> None:
        text = fmt % args if args else fmt
        if self._secret:
            text = text.replace(self._secret, MASK)
        self._log.log(level, "%s", text)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def send_quit(port: int, timeout: float = 2.0) -> bool:
    """`Q\r\n` to 127.0.0.1:port; False when nothing listens there (or it does not accept)."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    async with stream:
        try:
            with anyio.move_on_after(timeout):
                await stream.send(b"Q\r\n")
                await stream.receive(64)  # the shipped indexer answers "bye"; others may just close
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return True


async def port_in_use(port: int) -> bool:
    try:
        with anyio.fail_after(1.0):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.aclose()
        return True
    except (OSError, TimeoutError):
        return False


class Indexer(TaskType):
    type_name: ClassVar[str] = "indexer"
    Settings: ClassVar[type] = Settings
    default_period: ClassVar[float] = 5.0  # the delay before a restart after an exit following a good start
    long_running: ClassVar[bool] = True  # a stop cancels the supervision at once; the cancel path sends Q

    settings: IndexerSettings

    def __init__(self, settings: IndexerSettings):
        super().__init__(settings)
        self.proc: Process | None = None
        self.starts = 0
        self.last_exit: int | None = None

    # --- config ------------------------------------------------------------------
    def check(self, config: Any) -> None:
        st: Settings = self.settings
        databoxes = getattr(config, "databoxes", {}) or {}
        if self._is_shipped(config) and st.base not in databoxes and "/" not in st.base:
            known = ", ".join(sorted(databoxes)) or "none configured"
            raise ConfigError("base", f"unknown databox {st.base!r} (known: {known})")
        for name, tc in (getattr(config, "tasks", {}) or {}).items():
            other = tc.settings
            if tc.type == self.type_name and other is not st and getattr(other, "socket", None) == st.socket:
                raise ConfigError("socket", f"port {st.socket} is also the socket of indexer task {name!r}: "
                                            "two indexers cannot share a control port")

    def binary_path(self, config: Any) -> str:
        b = self.settings.binary
        if "/" in b and not os.path.isabs(b):
            base = getattr(config, "base_dir", None) or CHECKOUT
            return str(Path(base) / b)
        return b

    def _is_shipped(self, config: Any) -> bool:
        try:
            return Path(self.binary_path(config)).resolve() == SHIPPED.resolve()
        except OSError:
            return False

    def argv(self, config: Any) -> list[str]:
        st: Settings = self.settings
        argv = [
            self.binary_path(config), f"-h={st.host}", f"-P={st.port}", f"-b={st.base}", f"-u={st.user}",
            f"-p={st.password.reveal()}", f"--socket={st.socket}", f"--default-character-set={st.charset}", "-o",
        ]
        if st.stem:
            argv.append(f"--stem={st.stem}")
        if st.sort_empty:
            argv.append(f"--sort-empty={st.sort_empty}")
        if st.debug:
            argv.append(f"-d={st.debug}")
        if st.nolog:
            argv.append("-n")
        databoxes = getattr(config, "databoxes", {}) or {}
        if st.base in databoxes and self._is_shipped(config):
            argv.append(f"--databox-path={databoxes[st.base].path}")
        argv.extend(st.extra_args)
        return argv

    async def _ensure_databox(self, config: Any) -> None:
        """The shipped indexer reads the databox file: create an empty one rather than fail a first start."""
        databoxes = getattr(config, "databoxes", {}) or {}
        if self.settings.base in databoxes and self._is_shipped(config):
            from repository import open_databox

            def touch() -> None:
                open_databox(databoxes[self.settings.base], create=True).close()

            await anyio.to_thread.run_sync(touch)

    # --- orphans -------------------------------------------------------------------
    def _pidfile(self, ctx: Context) -> Path:
        return Path(ctx.state_dir) / PIDFILE

    def _record(self, ctx: Context, proc: Process) -> None:
        info = {"pid": proc.pid, "start_time": _start_time(proc.pid), "port": self.settings.socket,
                "owner": os.getpid(), "owner_start_time": _start_time(os.getpid()), "started": time.time()}
        _atomic_write(self._pidfile(ctx), json.dumps(info) + "\n")

    def _forget(self, ctx: Context) -> None:
        try:
            self._pidfile(ctx).unlink()
        except FileNotFoundError:
            pass

    async def stop_orphan(self, ctx: Context) -> int | None:
        """Stop the indexer a dead owner left running (recorded pid and port); its pid, or None."""
        path = self._pidfile(ctx)
        try:
            info = json.loads(path.read_text())
            pid, started, port = int(info["pid"]), info["start_time"], int(info["port"])
            owner, owner_started = int(info["owner"]), info.get("owner_start_time")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            ctx.log.warning("ignoring an unreadable %s", path)
            self._forget(ctx)
            return None
        if started is None or _start_time(pid) != started:
            self._forget(ctx)  # gone (or the pid was reused): nothing to stop
            return None
        if owner != os.getpid() and owner_started is not None and _start_time(owner) == owner_started:
            raise PortBusy(f"the indexer pid {pid} on port {port} belongs to live process {owner} "
                           "(a one-shot task:run?): refusing to start a second one")
        ctx.log.warning("found an orphaned indexer (pid %d, socket %d) left by a previous daemon: stopping it", pid, port)
        with anyio.CancelScope(shield=True):
            await self._stop_pid(ctx, pid, started, port)
        self._forget(ctx)
        return pid

    async def _stop_pid(self, ctx: Context, pid: int, started: str, port: int) -> None:
        """Q, then SIGTERM, then SIGKILL to a process that is not our child (polled, not awaited)."""
        st: Settings = self.settings

        async def gone(within: float) -> bool:
            with anyio.move_on_after(within):
                while _start_time(pid) == started:
                    await anyio.sleep(0.05)
            return _start_time(pid) != started

        if await send_quit(port) and await gone(st.stop_wait):
            ctx.log.info("orphaned indexer %d quit on Q", pid)
        else:
            ctx.log.warning("orphaned indexer %d did not quit on Q within %.1fs: SIGTERM", pid, st.stop_wait)
            kill_group(pid, signal.SIGTERM)
            if not await gone(st.kill_wait):
                ctx.log.warning("orphaned indexer %d ignored SIGTERM: SIGKILL", pid)
                kill_group(pid, signal.SIGKILL)
                await gone(5.0)
        kill_group(pid, signal.SIGKILL)  # whatever is left of its group

    # --- supervision ----------------------------------------------------------------
    async def run_once(self, ctx: Context) -> str | None:
        st: Settings = self.settings
        await self.stop_orphan(ctx)
        if await port_in_use(st.socket):
            raise PortBusy(f"port 127.0.0.1:{st.socket} is already in use by a process this task did not start "
                           f"(another checkout's indexer?): refusing to run a second indexer on it; "
                           f"set tasks.{ctx.name}.socket to a free port")
        await self._ensure_databox(ctx.config)
        argv = self.argv(ctx.config)
        secret = st.password.reveal()
        ctx.log.info("starting: %s", mask_argv(argv, secret))
        try:
            proc = await spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise FailedStart(f"cannot start {argv[0]}: {e.strerror or e}") from None
        self.proc = proc
        self.starts += 1
        started = time.time()
        try:
            self._record(ctx, proc)
            ctx.set_info(pid=proc.pid, started=started, uptime=0, restarts=self.starts - 1, socket=st.socket)
            code = await self._supervise(ctx, proc, started, secret)
        finally:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    await self.stop_process(ctx, proc)
                await proc.aclose()
                self.proc = None
                self._forget(ctx)
                ctx.set_info(pid=None, uptime=None, started=None)
                if proc.returncode is not None:
                    self.last_exit = proc.returncode
                    ctx.set_info(last_exit=proc.returncode)
        uptime = time.time() - started
        if uptime < st.startsecs:
            raise FailedStart(f"the indexer exited with status {code} after {uptime:.2f}s, "
                              f"within startsecs ({st.startsecs:g}s)")
        ctx.log.log(logging.WARNING if code == 0 else logging.ERROR,
                    "the indexer exited with status %s after %.0fs; it is restarted at the next tick", code, uptime)
        return f"indexer ran {uptime:.0f}s, exited with status {code}"

    async def _supervise(self, ctx: Context, proc: Process, started: float, secret: str) -> int:
        """Wait for the child's exit; on cancellation stop it while its last lines still reach the log."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._uptime, ctx, started, self.settings.startsecs)
            pumps: anyio.CancelScope = await tg.start(self._pump, proc, _MaskedLog(ctx.log, secret))
            try:
                code = await proc.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    if proc.returncode is None:
                        await self.stop_process(ctx, proc)
                    # the pumps end at end of file; a grandchild holding the pipes gets 1 s, no more
                    pumps.deadline = anyio.current_time() + 1.0
            tg.cancel_scope.cancel()
        return code

    @staticmethod
    async def _pump(proc: Process, log: _MaskedLog, *,
                    task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED) -> None:
        """Output lines to the task log; shielded, so a stop does not lose the child's last words."""
        with anyio.CancelScope(shield=True) as scope:
            task_status.started(scope)
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump_lines, proc.stdout, log, logging.INFO, "")
                tg.start_soon(pump_lines, proc.stderr, log, logging.WARNING, "stderr: ")

    @staticmethod
    async def _uptime(ctx: Context, started: float, startsecs: float) -> None:
        healthy = False
        while True:
            uptime = time.time() - started
            ctx.set_info(uptime=round(uptime))
            if not healthy and uptime >= startsecs:
                healthy = True
                ctx.mark_started()  # past startsecs: a good start, the crash counter resets
            await anyio.sleep(min(1.0, max(0.05, startsecs - uptime)) if not healthy else 1.0)

    async def stop_process(self, ctx: Context, proc: Process) -> int | None:
        """Q on the socket, stop_wait, then SIGTERM/kill_wait/SIGKILL to the group (shielded)."""
        st: Settings = self.settings
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                ctx.log.info("stopping the indexer (pid %d): Q on 127.0.0.1:%d", proc.pid, st.socket)
                if await send_quit(st.socket):
                    with anyio.move_on_after(st.stop_wait):
                        await proc.wait()
                if proc.returncode is None:
                    ctx.log.warning("the indexer did not quit on Q within %.1fs: SIGTERM to its group", st.stop_wait)
            code = await end_process(proc, st.kill_wait)
            ctx.log.info("the indexer stopped (status %s)", code)
        return code

    async def shutdown(self, ctx: Context) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            await self.stop_process(ctx, proc)

