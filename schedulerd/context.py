"""The concrete Context handed to task iterations and job attempts."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .plugin import TaskLog

# The runners' clock: their plans, the wakers' deadlines, the leases' times. The daemon runs on
# asyncio, whose loop clock is time.monotonic; anyio.current_time() reads that same clock through
# a lookup of the running backend that was a seventh of an idle iteration's CPU (bench_iteration).
# Nothing hands these times to anyio as deadlines: the Waker gives them to the asyncio loop.
monotonic = time.monotonic

# what `ctx.add_job(s)` hands jobs to: (type, payloads, **options) -> their ids, all in one write
JobAdder = Callable[..., Awaitable[list[int]]]


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile (a stop), or woken
        future.set_result(None)


class Waker:
    """A re-armable timed wait: `wake()` ends the current `wait()` early.

    Shaped for the runners' sleep, the hot path of an idle daemon: a wait is one asyncio future
    and one loop timer (`call_at` on the loop's clock, `monotonic`), not an anyio Event (found
    through the running backend at each creation) waited on under a one-timer heap or a cancel
    scope. CPU per no-op iteration of the daemon (bench_iteration.py, paired against the Event
    and heap): 55.8 -> 46.5 us at 1,000 tasks, 46.3 -> 38.5 us at 10,000. A cancelled wait (a stop)
    cancels its future like any awaited one: anyio's cancel scopes deliver to it as to their own.
    Called on the event loop's thread only (an asyncio future, as anyio's Event, is not thread-safe),
    by one waiter at a time (a wait owns the future until it ends)."""

    def __init__(self) -> None:
        self._woken = False
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        self._woken = True
        if self._future is not None:
            _release(self._future)

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when woken. Re-arms after a wake."""
        if seconds > 0 and not self._woken:
            return await self.wait_until(monotonic() + seconds)
        woken, self._woken = self._woken, False
        return woken

    async def wait_until(self, deadline: float) -> bool:
        """Wait until `deadline` (monotonic(), the runners' plans); True when woken."""
        if not self._woken:
            loop = asyncio.get_running_loop()
            self._future = future = loop.create_future()
            timer = loop.call_at(deadline, _release, future) if math.isfinite(deadline) else None
            try:
                await future
            finally:
                self._future = None
                if timer is not None:
                    timer.cancel()
        woken, self._woken = self._woken, False
        return woken


class TaskContext:
    """Per-task facilities; one instance lives as long as the task is configured."""

    def __init__(
        self,
        name: str,
        settings: Any,
        log: TaskLog,
        config: Any = None,
        state_dir: Path | None = None,
        store: Any = None,
        *,
        emitter: Callable[[str, Mapping[str, Any]], None] | None = None,
        job_adder: JobAdder | None = None,
        on_progress: Callable[[int, int | None], None] | None = None,
        on_started: Callable[[], None] | None = None,
    ):
        self.name = name
        self.settings = settings
        self.log = log
        self.config = config
        self._state_dir = state_dir or Path(".")
        self._state_dir_made = False
        self.store = store
        self.info: dict[str, Any] = {}
        self.done: int | None = None
        self.total: int | None = None
        self.waker = Waker()
        self._retry: float | None = None  # asked by wait_for during the current iteration
        self._emitter = emitter
        self._job_adder = job_adder
        self._on_progress = on_progress
        self._on_started = on_started

    @classmethod
    def for_test(cls, name: str, settings: Any, *, config: Any = None, tmp_path: Path, store: Any = None) -> TaskContext:
        """A context for tests and one-shot runs: logs to the `schedulerd.task.NAME` logger."""
        state_dir = tmp_path / "state"
        state_dir.mkdir(parents=True, exist_ok=True)
        ctx = cls(name, settings, logging.getLogger(f"schedulerd.task.{name}"), config, state_dir, store)
        ctx.events = []  # type: ignore[attr-defined]
        ctx._emitter = lambda event, data: ctx.events.append((event, dict(data)))  # type: ignore[attr-defined]
        return ctx

    @property
    def state_dir(self) -> Path:
        """The task's own directory (`state_dir/tasks/NAME` in the daemon), made at its first use:
        the tasks that keep no file make no directory (a mkdir per task was a fifth of the
        system time of a 10,000-task start)."""
        if not self._state_dir_made:
            self._state_dir.mkdir(parents=True, exist_ok=True)
            self._state_dir_made = True
        return self._state_dir

    @state_dir.setter
    def state_dir(self, path: Path) -> None:
        self._state_dir, self._state_dir_made = path, False

    def progress(self, done: int, total: int | None = None) -> None:
        self.done, self.total = done, total
        if self._on_progress:
            self._on_progress(done, total)

    def set_info(self, **fields: Any) -> None:
        for k, v in fields.items():
            if v is None:
                self.info.pop(k, None)
            else:
                self.info[k] = v

    def mark_started(self) -> None:
        """A long-running iteration reached its steady state (supervisord's startsecs):
        the consecutive-crash counter starts again from zero."""
        if self._on_started:
            self._on_started()

    async def sleep(self, seconds: float) -> bool:
        return await self.waker.wait(seconds)

    def wake(self) -> None:
        self.waker.wake()

    def emit(self, event: str, **data: Any) -> None:
        if self._emitter:
            self._emitter(event, data)

    async def add_job(self, type: str, payload: Mapping[str, Any], **options: Any) -> int:
        """The job goes to the store in a worker thread, retried while the store fails (a locked
        jobs.db, PostgreSQL away): the event loop never waits for it, and no job is lost."""
        return (await self.add_jobs(type, [payload], **options))[0]

    async def add_jobs(self, type: str, payloads: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        """`add_job` of many jobs of one type in one store write (all or none)."""
        if self._job_adder is None:
            raise RuntimeError("no job queue in this process")
        return await self._job_adder(type, payloads, **options)

    def wait_for(self, what: str, retry: float = 5.0) -> None:
        if self.info.get("waiting_for") != what:
            self.log.info("waiting for %s", what)
        self.set_info(waiting_for=what)
        self._retry = retry

    def iteration_ended(self) -> float | None:
        """The engine's side of `wait_for`, after each iteration: the retry delay it asked for,
        or None (a wait shown until then is over)."""
        retry, self._retry = self._retry, None
        if retry is None and "waiting_for" in self.info:
            self.log.info("done waiting for %s", self.info.pop("waiting_for"))
        return retry
