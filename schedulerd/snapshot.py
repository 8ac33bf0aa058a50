"""A task's snapshot: what task:list, task:state and scheduler:state show, from the running
daemon (TaskRunner.snapshot) or, with the daemon down, from the config and the state store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import TaskConfig
from .states import TaskState, Wanted
from .store import Run, TaskRecord


@dataclass(frozen=True)
class Live:
    """What only a running daemon knows of a task (all empty when the daemon is down)."""

    started_at: float | None = None  # wall time the task was started
    iteration_started: float | None = None  # wall time the current iteration began (state running)
    next_run_in: float | None = None  # seconds until the next iteration (waiting, backoff)
    next_run_at: str | None = None  # the same on the wall clock, in [scheduler] timezone
    progress: tuple[int, int | None] | None = None  # done, total of the current iteration
    info: dict[str, Any] = field(default_factory=dict)


def task_snapshot(tc: TaskConfig, wanted: Wanted, state: TaskState, counts: TaskRecord, live: Live | None = None,
                  *, node: str | None = None, cluster: bool = False) -> dict[str, Any]:
    """The one shape of a task's snapshot; `counts`: its crashes, runs, failures and last run;
    `node`: the node running it (on a shared store, `cluster`: whichever holds its lease)."""
    live = live or Live()
    return {
        "name": tc.name,
        "node": node,
        "cluster": cluster,
        "nodes": list(tc.nodes),
        "type": tc.type,
        "wanted": wanted.value,
        "state": state.value,
        "period": tc.period,
        "schedule": tc.schedule.expression if tc.schedule is not None else None,
        "catch_up": tc.catch_up,
        "timeout": tc.timeout,
        "crashes": counts.crashes,
        "runs": counts.runs,
        "failures": counts.failures,
        "started_at": live.started_at,
        "iteration_started": live.iteration_started,
        "next_run_in": live.next_run_in,
        "next_run_at": live.next_run_at,
        "progress": None if live.progress is None else {"done": live.progress[0], "total": live.progress[1]},
        "last_run": _last_run(counts.last_run),
        "info": dict(live.info),
    }


def _last_run(last: Run | None) -> dict[str, Any] | None:
    if last is None:
        return None
    return {"started": last.started, "ended": last.ended, "outcome": last.outcome, "error": last.error,
            "summary": last.summary, "source": last.source}


def offline_snapshot(tc: TaskConfig, record: TaskRecord) -> dict[str, Any]:
    """With the daemon down: the configured status from the store, the actual state stopped."""
    wanted = Wanted.DISABLED if not tc.enabled else (record.wanted or Wanted.STARTED)
    return task_snapshot(tc, wanted, TaskState.STOPPED, record)
