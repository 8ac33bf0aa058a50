"""`noop`: a task and a job type that do nothing.

Why: benchmarks and smoke tests need to measure the engine itself (runner loop,
job queue, store) without the cost of a real task or a child process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schedulerd.plugin import Context, JobType, TaskType


class NoopTask(TaskType):
    """Each iteration returns at once; its run history is the engine's own timing."""

    type_name = "noop"

    async def run_once(self, ctx: Context) -> str | None:
        return None


class NoopJob(JobType):
    """A job that finishes at once; payload must be a JSON object, its keys are ignored."""

    type_name = "noop"

    def title(self, payload: Mapping[str, Any]) -> str:
        return "noop"

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        return None
