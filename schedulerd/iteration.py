"""One iteration of a task and how it ended: the one helper of the daemon's runner and `task:run`;
and the time an iteration or a job's attempt is given (`within`, `TimedOut`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import anyio

from . import metrics
from .plugin import FAILURES, Context, TaskLog, TaskType, error_text, failure_detail
from .states import RunOutcome

MAX_TEXT = 2000  # an iteration's error and summary are cut to this many characters in the history
T = TypeVar("T")


class TimedOut(Exception):
    """The `timeout` an iteration or a job's attempt was given ran out. Not TimeoutError: that is
    what a socket or a library raises inside the work (a server that does not answer), a failure
    like any other, with its own message."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds

    def __str__(self) -> str:
        return f"timed out after {self.seconds:g}s"


async def within(timeout: float | None, work: Callable[[], Awaitable[T]]) -> T:
    """`await work()`, cancelled after `timeout` seconds (None: no limit), then TimedOut."""
    if timeout is None:
        return await work()
    with anyio.move_on_after(timeout):
        return await work()
    raise TimedOut(timeout)  # (reached only when the deadline cancelled the work)


class IterationEnd(NamedTuple):
    """How one iteration ended: what the run history records (a named tuple: made at every
    iteration, and cheaper to make than a frozen dataclass)."""

    outcome: RunOutcome
    error: str | None = None
    summary: str | None = None


async def run_iteration(task: TaskType, ctx: Context, timeout: float | None, log: TaskLog) -> IterationEnd:
    """`task.run_once(ctx)` within `timeout`; a failure or timeout is logged here, the one way.
    A cancellation (a stop, Ctrl-C) propagates: the caller knows why it came. Each end is counted
    (schedulerd.metrics: iterations and failures by task and outcome, duration by task type)."""
    began = time.monotonic()
    try:
        if timeout is None:  # as `within` does, without its closure and coroutine: the path of most tasks
            result = await task.run_once(ctx)
        else:
            result = await within(timeout, lambda: task.run_once(ctx))
        summary = None if result is None else str(result)[:MAX_TEXT]  # (a result's own __str__ may fail)
    except TimedOut as e:
        end = IterationEnd(RunOutcome.TIMEOUT, f"iteration {e}")
        log.error("%s", end.error)
    except FAILURES as e:  # a TimeoutError of the task's own (a socket's) too
        end = IterationEnd(RunOutcome.FAILED, error_text(e)[:MAX_TEXT])
        log.error("iteration failed: %s%s", end.error, failure_detail(e))
    else:
        end = IterationEnd(RunOutcome.OK, summary=summary)
    metrics.iteration_ended(ctx.name, task.type_name, end.outcome.value, time.monotonic() - began)
    return end
