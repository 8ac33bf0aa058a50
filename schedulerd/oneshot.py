"""`task:run`: one iteration in the CLI's own process, under the same per-task lock."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import anyio

from . import logs
from .context import TaskContext
from .iteration import IterationEnd, run_iteration
from .jobadd import store_adder
from .process import ChildRegistry, use_registry, withhold_env
from .registry import task_type
from .states import RunOutcome
from .store import Run
from .stores import open_state_store
from .tasklock import TaskLock

BUSY = 3


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class ProgressBar:
    """A one-line bar on stderr: `[#####.....] 50/100  12.0 MB/40.0 MB  3.1 MB/s`.

    Byte figures come from the task's info (`bytes_done`, `bytes_total`, `bytes_per_second`)."""

    def __init__(self, stream: Any = sys.stderr, width: int = 30):
        self.stream = stream
        self.width = width
        self.shown = False
        self.text = ""  # the bar as last drawn
        self.info: dict[str, Any] = {}

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            filled = int(self.width * min(done, total) / total)
            text = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}"
        else:
            text = f"\r{done} done"
        if self.info.get("bytes_done") is not None:
            text += f"  {human_bytes(self.info['bytes_done'])}"
            if self.info.get("bytes_total"):
                text += f"/{human_bytes(self.info['bytes_total'])}"
        if self.info.get("bytes_per_second"):
            text += f"  {human_bytes(self.info['bytes_per_second'])}/s"
        self.text = text
        self._draw()

    def _draw(self) -> None:
        self.stream.write(self.text + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def write_above(self, line: str) -> None:
        """A log line shown above the bar: the bar's line cleared, the line written, the bar drawn again."""
        if self.shown:
            self.stream.write("\r\x1b[K")
        self.stream.write(line)
        if self.shown:
            self._draw()
        else:
            self.stream.flush()

    def close(self) -> None:
        """The bar's line ended, so what follows starts on a line of its own."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


class EchoHandler(logging.StreamHandler[TextIO]):
    """The task's log on stderr; with a progress bar, each line goes above the bar, never glued to it."""

    def __init__(self, bar: ProgressBar | None):
        super().__init__(sys.stderr)
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is None:
            super().emit(record)
            return
        try:
            self.bar.write_above(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def run_one(config: Any, name: str, *, progress: bool = False) -> int:
    sch = config.scheduler
    tc = config.tasks[name]
    lock = TaskLock(sch.state_dir / "locks", name)
    if not lock.try_acquire("task:run"):
        print(f"console task:run: task {name} is running an iteration elsewhere ({lock.holder() or 'the daemon'}); "
              "try again later",
              file=sys.stderr)
        lock.close()
        return BUSY
    logs.REDACTOR.add(config.secrets())
    withhold_env(config.secret_env_vars())
    bar = ProgressBar() if progress else None
    echo = EchoHandler(bar)
    echo.setFormatter(logs.Formatter(logs.FORMAT))
    echo.addFilter(logs.REDACTOR)
    log = logs.task_logger(name, sch.log_dir, sch.log_level, sch.log_max_bytes, sch.log_backups, extra_handlers=[echo])
    state_dir = sch.state_dir / "tasks" / name
    state_dir.mkdir(parents=True, exist_ok=True)
    store = open_state_store(sch, config.store, pool_size=1)
    use_registry(ChildRegistry(sch.state_dir / "children"))
    task = task_type(tc.type)(tc.settings)
    ctx = TaskContext(name, tc.settings, log, config, state_dir, store, on_progress=bar,
                      job_adder=store_adder(config))  # jobs it queues go to the store
    if bar:
        bar.info = ctx.info
    started = time.time()
    end = IterationEnd(RunOutcome.CANCELLED, "interrupted")

    async def once() -> IterationEnd:
        try:
            return await run_iteration(task, ctx, tc.timeout, log)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await task.shutdown(ctx)
                except Exception:
                    log.exception("shutdown failed")
            if bar:
                bar.close()  # the outcome's lines (stderr and stdout) start on their own line

    try:
        log.info("one-shot iteration started by task:run")
        end = anyio.run(once)
        if end.outcome is RunOutcome.OK:
            log.info("one-shot iteration ok%s", f": {end.summary}" if end.summary else "")
            print(f"{name}: ok{': ' + end.summary if end.summary else ''}")
    except KeyboardInterrupt:
        pass  # recorded as cancelled: interrupted
    finally:
        if bar:
            bar.close()
        lock.close()
        store.record_run(Run(name, started, time.time(), end.outcome, end.error, end.summary, "cli"))
        store.close()
        logs.close_task_logger(name)
    return 0 if end.outcome is RunOutcome.OK else 1
