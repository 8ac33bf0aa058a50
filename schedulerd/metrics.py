"""What the daemon counts, for `/metrics` (Prometheus text format, served by the web console).

Part of the plugin API: task and job types count what they move through these functions
(`metrics.ftp_transferred(ctx.name, files=1)`), never through prometheus_client itself, so the
names and labels stay the engine's. Counters live in this process; `task:run` in the CLI counts
into its own process, which nobody scrapes. States (tasks by state, jobs by queue and state) are
read at scrape time by schedulerd.web.metrics, not counted here.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from dataclasses import dataclass
from typing import Any

_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
FAILED_OUTCOMES = ("failed", "timeout")


class TaskCounts:
    """Task iterations and failures by task and outcome, and iteration durations by task type:
    plain counts, made into Prometheus counters and a histogram only when scraped (`collect`).
    Why not prometheus_client's `Counter` and `Histogram`: a labelled series is an object with
    its own lock, made at the task's first iteration (with 10,000 tasks, a sixth of the daemon's
    start-up CPU and about 1 KB a task), and an observation takes two locked increments
    (a twelfth of the engine's CPU per no-op iteration, bench_iteration)."""

    def __init__(self) -> None:
        self.iterations: dict[tuple[str, str], int] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self.durations: dict[str, list[float]] = {}  # type -> a count per bucket of _SECONDS and +Inf, then the sum

    def count(self, task: str, type_name: str, outcome: str, seconds: float) -> None:
        key = (task, outcome)
        self.iterations[key] = self.iterations.get(key, 0) + 1
        if outcome in FAILED_OUTCOMES:
            self.failures[key] = self.failures.get(key, 0) + 1
        counts = self.durations.get(type_name)
        if counts is None:
            counts = self.durations[type_name] = [0.0] * (len(_SECONDS) + 2)
        counts[bisect.bisect_left(_SECONDS, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        for name, what, counts in (("schedulerd_task_iterations", "Task iterations that ended", self.iterations),
                                   ("schedulerd_task_failures", "Task iterations that failed or timed out",
                                    self.failures)):
            family = CounterMetricFamily(name, f"{what}, by task and outcome", labels=["task", "outcome"])
            for (task, outcome), n in dict(counts).items():  # a copy: the loop may count meanwhile
                family.add_metric([task, outcome], n)
            yield family
        histogram = HistogramMetricFamily("schedulerd_task_iteration_seconds",
                                          "How long task iterations took, by task type", labels=["type"])
        bounds = [*(repr(float(b)) for b in _SECONDS), "+Inf"]  # as prometheus_client writes them: 1.0
        for type_name, durations in dict(self.durations).items():
            *per_bucket, total = durations
            histogram.add_metric([type_name], list(zip(bounds, itertools.accumulate(per_bucket), strict=True)), total)
        yield histogram


@dataclass(frozen=True)
class Metrics:
    registry: Any  # prometheus_client.CollectorRegistry
    tasks: TaskCounts
    job_wait_seconds: Any
    job_run_seconds: Any
    ftp_bytes: Any
    ftp_files: Any
    records_archived: Any
    subdefs_built: Any
    store_errors: Any


@functools.cache
def counters() -> Metrics:
    """Made at the first count: prometheus_client takes 60 ms to import, which `bin/console` spares."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

    # the _created series: noise for counters that start with the daemon (prometheus_client leaves it unannotated)
    disable_created_metrics()  # type: ignore[no-untyped-call]

    r = CollectorRegistry(auto_describe=True)
    tasks = TaskCounts()
    r.register(tasks)
    return Metrics(
        r,
        tasks,
        Histogram("schedulerd_job_wait_seconds", "From a job being due to its attempt starting", ["queue"],
                  buckets=_SECONDS, registry=r),
        Histogram("schedulerd_job_run_seconds", "How long job attempts ran, by queue and outcome",
                  ["queue", "outcome"], buckets=_SECONDS, registry=r),
        Counter("schedulerd_ftp_bytes", "Bytes transferred by FTP tasks", ["task"], registry=r),
        Counter("schedulerd_ftp_files", "Files transferred by FTP tasks", ["task"], registry=r),
        Counter("schedulerd_records_archived", "Records archived", ["task"], registry=r),
        Counter("schedulerd_subdefs_built", "Sub-definitions built", ["task"], registry=r),
        Counter("schedulerd_store_errors", "Store calls that failed (each retry counts)", ["error"], registry=r),
    )


def _who(name: str) -> str:
    """The `task` label: a task's name; every job counts as `job` (a label per job id would grow without end)."""
    return "job" if name.startswith("job-") else name


def iteration_ended(task: str, type_name: str, outcome: str, seconds: float) -> None:
    counters().tasks.count(task, type_name, outcome, seconds)


def job_started(queue: str, waited: float) -> None:
    counters().job_wait_seconds.labels(queue).observe(max(0.0, waited))


def job_ended(queue: str, outcome: str, seconds: float) -> None:
    counters().job_run_seconds.labels(queue, outcome).observe(max(0.0, seconds))


def ftp_transferred(task: str, *, files: int = 0, bytes: int = 0) -> None:
    if files:
        counters().ftp_files.labels(_who(task)).inc(files)
    if bytes:
        counters().ftp_bytes.labels(_who(task)).inc(bytes)


def records_archived(task: str, n: int = 1) -> None:
    counters().records_archived.labels(_who(task)).inc(n)


def subdefs_built(task: str, n: int = 1) -> None:
    counters().subdefs_built.labels(_who(task)).inc(n)


def store_error(error: str) -> None:
    counters().store_errors.labels(error).inc()
