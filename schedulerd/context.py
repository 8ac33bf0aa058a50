"""The concrete Context handed to task iterations and job attempts."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from .plugin import TaskLog

# The runners' clock: their plans, the alarms' deadlines, the leases' times. The daemon runs on
# asyncio, whose loop clock is time.monotonic; anyio.current_time() reads that same clock through
# a lookup of the running backend that was a seventh of an idle iteration's CPU (bench_iteration).
# Nothing hands these times to anyio as deadlines: the sleeps below are relative delays.
monotonic = time.monotonic


class Alarms:
    """One timer for many sleepers: `run()` (in the daemon's task group) sets each registered
    event at its deadline. Why: a timed wait of its own (a cancel scope, a timer handle, a
    cancellation thrown into the task) was the largest cost of an idle task's iteration; with
    thousands of tasks due at the same instant, one heap and one timer do the same work."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()  # ties: first registered, first set (events do not compare)
        self._earlier = anyio.Event()  # a deadline before the one run() sleeps to was registered
        self._compact_at = 1024

    def set_at(self, deadline: float, event: anyio.Event) -> None:
        """Set `event` at `deadline` (monotonic()); an event set before then stays set."""
        if not self._heap or deadline < self._heap[0][0]:
            self._earlier.set()
        heapq.heappush(self._heap, (deadline, next(self._seq), event))
        if len(self._heap) >= self._compact_at:  # drop the alarms of waits a wake() ended (amortized)
            self._heap = [alarm for alarm in self._heap if not alarm[2].is_set()]
            heapq.heapify(self._heap)
            self._compact_at = max(1024, 2 * len(self._heap))

    async def run(self) -> None:
        while True:
            now = monotonic()
            while self._heap and self._heap[0][0] <= now:
                heapq.heappop(self._heap)[2].set()
            if self._earlier.is_set():  # a new event only when the last one was used
                self._earlier = anyio.Event()
            with anyio.move_on_after(self._heap[0][0] - now if self._heap else None):
                await self._earlier.wait()


class Waker:
    """A re-armable event: `wake()` ends the current `wait()` early. With `alarms` (the daemon's),
    a timed wait is one entry in its heap instead of a timer of its own."""

    def __init__(self, alarms: Alarms | None = None) -> None:
        self._event = anyio.Event()
        self._woken = False
        self._alarms = alarms

    def wake(self) -> None:
        self._woken = True
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when woken. Re-arms after a wake."""
        if seconds > 0 and not self._woken:
            return await self.wait_until(monotonic() + seconds)
        woken, self._woken = self._woken, False
        return woken

    async def wait_until(self, deadline: float) -> bool:
        """Wait until `deadline` (monotonic(), the runners' plans); True when woken."""
        if not self._woken:
            # an event per wait: the alarm of an earlier wait (cancelled, or woken) sets only its own
            self._event = event = anyio.Event()
            if self._alarms is not None and math.isfinite(deadline):
                self._alarms.set_at(deadline, event)
                await event.wait()
            else:
                with anyio.move_on_after(deadline - monotonic() if math.isfinite(deadline) else None):
                    await event.wait()
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
        job_adder: Callable[..., Awaitable[int]] | None = None,
        on_progress: Callable[[int, int | None], None] | None = None,
        on_started: Callable[[], None] | None = None,
        alarms: Alarms | None = None,
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
        self.waker = Waker(alarms)
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
        if self._job_adder is None:
            raise RuntimeError("no job queue in this process")
        return await self._job_adder(type, payload, **options)

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
