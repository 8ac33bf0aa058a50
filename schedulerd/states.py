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

    # members are singletons compared by identity: hashed by identity too, in C. Enum's own
    # __hash__ is Python code, and every iteration of every task looks states up several times
    __hash__ = object.__hash__


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


class IllegalTransition(RuntimeError):
    """A state change the tables below do not allow: a bug in the engine, never bad input."""


# Every arrow a task's state may take, and why it happens (TaskRunner._change checks each one).
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.STOPPED: frozenset({
        TaskState.STARTING,  # task:start, or the daemon starts a task configured started
    }),
    TaskState.STARTING: frozenset({
        TaskState.RUNNING,  # the first iteration begins at once
        TaskState.WAITING,  # the first iteration was skipped: a one-shot task:run holds the task's lock
        TaskState.STOPPING,  # task:stop / daemon stop before the first iteration began
    }),
    TaskState.RUNNING: frozenset({
        TaskState.WAITING,  # the iteration succeeded (or ended early by ctx.wait_for): sleep until the next tick
        TaskState.BACKOFF,  # the iteration failed: sleep backoff_delay(crashes) before the retry
        TaskState.CRASHED,  # it was the max_crashes-th consecutive failure: no retry until task:start
        TaskState.STOPPING,  # task:stop / daemon stop / reload: the iteration gets stop_timeout, then is cancelled
    }),
    TaskState.WAITING: frozenset({
        TaskState.RUNNING,  # the tick came, or task:run-now / an event woke the task
        TaskState.STOPPING,  # task:stop / daemon stop / reload
    }),
    TaskState.BACKOFF: frozenset({
        TaskState.RUNNING,  # the backoff delay elapsed, or task:run-now / an event woke the task
        TaskState.WAITING,  # the retry was skipped: a one-shot task:run holds the task's lock
        TaskState.STOPPING,  # task:stop / daemon stop / reload
    }),
    TaskState.STOPPING: frozenset({
        TaskState.STOPPED,  # the loop ended and the type's shutdown ran
    }),
    TaskState.CRASHED: frozenset({
        TaskState.STARTING,  # task:start clears the crash counter and starts again
    }),
}

# Every arrow a job's state may take, and why it happens (jobstore's `move` checks each one).
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.WAITING: frozenset({
        JobState.RUNNING,  # claimed by a daemon: an attempt starts
        JobState.FAILED,  # a job it depends on failed or was cancelled
        JobState.CANCELLED,  # job:cancel
    }),
    JobState.RUNNING: frozenset({
        JobState.FINISHED,  # the attempt succeeded
        JobState.WAITING,  # the attempt failed and attempts remain: retried after retry_delay
        JobState.FAILED,  # the attempt failed (or was interrupted) with its attempts used up
        JobState.INTERRUPTED,  # the daemon stopped or died while it ran, attempts remain: claimed again
        JobState.CANCELLED,  # job:cancel while it ran
    }),
    JobState.INTERRUPTED: frozenset({
        JobState.RUNNING,  # claimed again by a daemon
        JobState.WAITING,  # job:retry: attempts start again from zero
        JobState.FAILED,  # a job it depends on failed or was cancelled
        JobState.CANCELLED,  # job:cancel
    }),
    JobState.FAILED: frozenset({
        JobState.WAITING,  # job:retry
    }),
    JobState.CANCELLED: frozenset({
        JobState.WAITING,  # job:retry
    }),
    JobState.FINISHED: frozenset(),  # done for good
}


def check_task(old: TaskState, new: TaskState) -> None:
    """Raise IllegalTransition unless TASK_TRANSITIONS allows old -> new."""
    if new not in TASK_TRANSITIONS[old]:
        raise IllegalTransition(f"task state {old} -> {new} is not an allowed transition (states.TASK_TRANSITIONS)")


def check_job(old: JobState, new: JobState) -> None:
    """Raise IllegalTransition unless JOB_TRANSITIONS allows old -> new."""
    if new not in JOB_TRANSITIONS[old]:
        raise IllegalTransition(f"job state {old} -> {new} is not an allowed transition (states.JOB_TRANSITIONS)")


def job_sources(new: JobState) -> frozenset[JobState]:
    """The states a job may leave for `new` (what job:cancel and job:retry accept)."""
    return frozenset(s for s, targets in JOB_TRANSITIONS.items() if new in targets)
