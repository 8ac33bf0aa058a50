"""`/metrics`: the counters of schedulerd.metrics, and the states read at scrape time (tasks by
state, jobs by queue and state), in the Prometheus text format."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request

from .. import metrics
from ..states import JobState, TaskState
from . import auth
from .settings import HttpSettings

if TYPE_CHECKING:
    from .console import Console

CONTENT_TYPE = CONTENT_TYPE_LATEST


def may_read(request: Request, settings: HttpSettings, unix_socket: bool) -> bool:
    """Without a login: with `Authorization: Bearer <metrics_token>`, or from a loopback TCP peer
    (a Unix socket's peer is the reverse proxy, which passes on anyone's request)."""
    token = settings.metrics_token
    header = request.headers.get("authorization", "")
    if token and header.startswith("Bearer ") and auth.same_token(header[7:], token.reveal()):
        return True
    if unix_socket or not settings.metrics_public_on_loopback or request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


class States:
    """A collector of what is true now, filled just before the scrape renders it."""

    def __init__(self, task_states: list[str], jobs: list[dict[str, Any]]):
        self.task_states = task_states
        self.jobs = jobs

    def collect(self) -> Any:
        g = GaugeMetricFamily("schedulerd_tasks", "Tasks by state", labels=["state"])
        for state in TaskState:
            g.add_metric([state.value], self.task_states.count(state.value))
        yield g
        j = GaugeMetricFamily("schedulerd_jobs", "Jobs in the store by queue and state", labels=["queue", "state"])
        queues = sorted({c["queue"] for c in self.jobs})
        counts = {(c["queue"], c["state"]): c["jobs"] for c in self.jobs}
        for q in queues:
            for job_state in JobState:
                j.add_metric([q, job_state.value], counts.get((q, job_state.value), 0))
        yield j


async def scrape(console: Console) -> bytes:
    tasks = (await console.call("task.page", limit=0))["states"]  # no snapshot needed
    jobs = (await console.call("job.list", limit=0))["counts"]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(States(tasks, jobs))
    return generate_latest(registry) + generate_latest(metrics.counters().registry)
