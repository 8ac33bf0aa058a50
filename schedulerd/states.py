"""Task and job states; no dependencies so that every layer may import them."""

from __future__ import annotations

import enum


class TaskState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"  # inside an iteration
    WAITING = "waiting"  # between iterations
    STOPPING = "stopping"
    BACKOFF = "backoff"  # after a failed iteration, before the retry
    CRASHED = "crashed"  # max_crashes consecutive failures: stays until task:start

    def __str__(self) -> str:
        return self.value


ACTIVE_STATES = frozenset({TaskState.STARTING, TaskState.RUNNING, TaskState.WAITING, TaskState.BACKOFF})
STOPPED_STATES = frozenset({TaskState.STOPPED, TaskState.CRASHED})


class RunOutcome(enum.StrEnum):
    """How one iteration of a task ended (`outcome` in the run history)."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # cut short: still running when the stop's grace ran out
    STOPPED = "stopped"  # ended by a stop as the type intends (a long-running task): no error


CLEAN_OUTCOMES = frozenset({RunOutcome.OK, RunOutcome.STOPPED})  # not counted as failures


class Wanted(enum.Enum):
    """The configured status an admin asked for (kept across restarts)."""

    STARTED = "started"
    STOPPED = "stopped"
    DISABLED = "disabled"  # enabled = false in the config

    def __str__(self) -> str:
        return self.value


def matches(wanted: Wanted, state: TaskState) -> bool:
    """Whether the actual state is what the configured status asks for (task:state exit code)."""
    if wanted is Wanted.STARTED:
        return state in ACTIVE_STATES
    return state in STOPPED_STATES or state is TaskState.STOPPING


class JobState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


JOB_DONE_STATES = frozenset({JobState.FINISHED, JobState.FAILED, JobState.CANCELLED})
