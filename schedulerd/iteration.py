"""One iteration of a task and how it ended: the one helper of the daemon's runner and `task:run`."""

from __future__ import annotations

import time
from typing import NamedTuple

import anyio

from . import metrics
from .plugin import Context, TaskLog, TaskType, failure_detail
from .states import RunOutcome

MAX_TEXT = 2000  # an iteration's error and summary are cut to this many characters in the history


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
    end = await _iteration(task, ctx, timeout, log)
    metrics.iteration_ended(ctx.name, task.type_name, end.outcome.value, time.monotonic() - began)
    return end


async def _iteration(task: TaskType, ctx: Context, timeout: float | None, log: TaskLog) -> IterationEnd:
    try:
        if timeout is None:  # no cancel scope to make and leave: most tasks have no timeout
            result = await task.run_once(ctx)
        else:
            with anyio.fail_after(timeout):
                result = await task.run_once(ctx)
    except TimeoutError:
        error = f"iteration timed out after {timeout:g}s"
        log.error("%s", error)
        return IterationEnd(RunOutcome.TIMEOUT, error)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"[:MAX_TEXT]
        log.error("iteration failed: %s%s", error, failure_detail(e))
        return IterationEnd(RunOutcome.FAILED, error)
    return IterationEnd(RunOutcome.OK, summary=None if result is None else str(result)[:MAX_TEXT])
