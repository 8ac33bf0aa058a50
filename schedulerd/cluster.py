"""Several daemons on one shared store (PostgreSQL): nodes and task leases. docs/cluster.md.

Every daemon is a node: a row in the store's registry (`nodes`) whose heartbeat it renews
(NodeKeeper, in the daemon's task group); with it the node follows the wanted states of the
tasks (task:start|stop on any node) and learns which node holds each task.

A periodic task runs where its lease is held (TaskLease, one per task runner): a row with an
expiry in the database's time and a generation number raised at every take (the fencing
token). The holder renews it every lease/3; a node that cannot renew gives it up on its own
clock GIVE_UP_MARGIN before the database would let another node take it, and its running
iteration is cancelled then. The SQLite store has one node and no leases (the local flock).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import anyio

from .context import monotonic
from .states import Wanted
from .store import STORE_ERRORS

log = logging.getLogger("schedulerd.cluster")
T = TypeVar("T")
RETRY_MAX = 30.0  # seconds: the longest wait between two attempts at a store that is away
GIVE_UP_MARGIN = 0.25  # of a lease: a node gives its lease up this much before it runs out


class DuplicateNode(Exception):
    """Another live node has this node's id; the message says what to change."""


@dataclass(frozen=True)
class NodeInfo:
    id: str
    host: str
    pid: int
    version: str
    kind: Literal["daemon", "worker"]
    lease: float
    config_hash: str


@dataclass(frozen=True)
class NodeRow:
    """A node as `cluster:nodes` shows it (times: seconds since the epoch, database clock)."""

    id: str
    host: str
    pid: int
    version: str
    kind: str
    started: float
    heartbeat: float
    heartbeat_age: float
    alive: bool
    config_hash: str
    tasks_held: int
    jobs_running: int


@dataclass(frozen=True)
class Grant:
    generation: int
    due_in: float | None  # seconds until the task's next start is due (by its last start anywhere); None: now


@dataclass(frozen=True)
class ClusterView:
    nodes: list[NodeRow]
    holders: Mapping[str, str]  # task -> the node holding its lease
    wanted: Mapping[str, Wanted]


class ClusterStore(Protocol):
    """schedulerd.pgstore.cluster.PgCluster; plain calls, run in worker threads."""

    def register(self, me: NodeInfo) -> None: ...
    def beat(self, me: NodeInfo, tasks_held: int, jobs_running: int) -> ClusterView: ...
    def unregister(self, me: NodeInfo) -> None: ...
    def nodes(self) -> list[NodeRow]: ...
    def acquire(self, task: str, node: str, lease: float, period: float) -> Grant | None: ...
    def renew(self, task: str, node: str, generation: int, lease: float) -> bool: ...
    def begin(self, task: str, node: str, generation: int, margin: float) -> float | None: ...
    def release(self, task: str, node: str, generation: int) -> None: ...
    def close(self) -> None: ...


DIFFERING_CONFIGS = ("a task runs only where it is defined; a pipeline's running runs fail on a node that does not "
                     "have it with the same steps")


def config_hash(tasks: Mapping[str, Any], pipelines: Mapping[str, Any] | None = None) -> str:
    """A short hash of the task and pipeline configuration: nodes that show different ones
    disagree (a task runs only where it is defined; a node fails the runs of a pipeline it does
    not have, or has with other steps). Without pipelines it is the tasks' hash alone, as before."""
    text = repr(sorted((name, repr(tc)) for name, tc in tasks.items()))
    if pipelines:
        text += repr(sorted((name, repr(pc)) for name, pc in pipelines.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def node_info(node: str, version: str, kind: Literal["daemon", "worker"], lease: float, tasks: Mapping[str, Any],
              pipelines: Mapping[str, Any] | None = None) -> NodeInfo:
    return NodeInfo(node, socket.gethostname(), os.getpid(), version, kind, lease, config_hash(tasks, pipelines))


def open_cluster(store: Any) -> ClusterStore | None:
    """The shared store's registry and leases; None for the SQLite store (one node, no leases)."""
    if store.url is None:
        return None
    from .pgstore.cluster import PgCluster

    return PgCluster(store)


async def bounded(fn: Callable[..., T], *args: Any, timeout: float) -> T:
    """`fn(*args)` in a worker thread, given up (TimeoutError) after `timeout` seconds: a lease
    decision never waits past its deadline on a store that hangs."""
    with anyio.fail_after(max(0.01, timeout)):
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


class Outage:
    """The store being away, said once when it goes and once when it is back (at `level`: the
    node's keeper says it in scheduler.log, each task's lease only in debug); the waits between
    attempts grow from store_retry doubling to RETRY_MAX."""

    def __init__(self, first: float, what: str, level: int = logging.WARNING):
        self.first = first
        self.what = what
        self.level = level
        self.since: float | None = None  # wall time of the first failure
        self.delay = first

    def failed(self, e: BaseException) -> float:
        """The wait before the next attempt."""
        if self.since is not None:
            self.delay = min(RETRY_MAX, self.delay * 2)
            return self.delay
        self.since = time.time()
        self.delay = self.first
        log.log(self.level, "%s: the store does not answer (%s: %s); retrying from %.0fs up to every %.0fs",
                self.what, type(e).__name__, str(e).strip() or "no answer in time", self.first, RETRY_MAX)
        return self.delay

    def ok(self) -> None:
        if self.since is not None:
            log.log(logging.INFO if self.level >= logging.WARNING else logging.DEBUG,
                    "%s: the store answers again after %.1fs", self.what, time.time() - self.since)
            self.since = None
            self.delay = self.first


FAILURES = (*STORE_ERRORS, TimeoutError)


class TaskLease:
    """One node's hold on one task. `keep()` runs beside the task's loop: it takes the lease when
    it is free (every lease/3; after a store failure from store_retry doubling to 30 s) and renews
    it every lease/3. `held` is True only while the node's own clock says the lease has
    GIVE_UP_MARGIN left, counted from *before* the renewal was sent: the database's expiry is
    later, so the node stops before any other may start. On a loss, `on_lost(reason)`."""

    def __init__(self, cluster: ClusterStore, task: str, node: str, lease: float, period: float,
                 retry: float, on_lost: Callable[[str], None], eligible: bool = True):
        self.cluster, self.task, self.node = cluster, task, node
        self.lease, self.period, self.retry = lease, period, retry
        self.on_lost = on_lost
        self.eligible = eligible  # pinned to other nodes: never taken here
        self.generation: int | None = None
        self.valid_until = 0.0  # monotonic
        self.due_at = 0.0  # monotonic, set with `generation` at each take: when the task's next start is due
        self.changed = anyio.Event()

    @property
    def held(self) -> bool:
        return self.generation is not None and monotonic() < self.valid_until

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def keep(self) -> None:
        if not self.eligible:
            await anyio.sleep_forever()
        outage = Outage(self.retry, f"task {self.task}'s lease", logging.DEBUG)
        await anyio.sleep(random.uniform(0, self.lease / 6))  # nodes started together share the tasks
        while True:
            wait = await (self._take(outage) if self.generation is None else self._renew(outage))
            await anyio.sleep(wait)

    async def _take(self, outage: Outage) -> float:
        sent = monotonic()
        try:
            grant = await bounded(self.cluster.acquire, self.task, self.node, self.lease, self.period,
                                  timeout=self.lease / 3)
        except FAILURES as e:
            return outage.failed(e)
        outage.ok()
        if grant is not None:
            # due_in was counted from the database's clock when the statement ran, before now:
            # counted from now, the next start is never early
            self.generation, self.due_at = grant.generation, monotonic() + max(0.0, grant.due_in or 0.0)
            self.valid_until = sent + self.lease * (1 - GIVE_UP_MARGIN)
            log.debug("task %s: lease taken (generation %d)", self.task, grant.generation)
            self._changed()
        return self.lease / 3

    async def _renew(self, outage: Outage) -> float:
        sent = monotonic()
        if sent >= self.valid_until:
            self._lose("its lease could not be renewed in time (the store does not answer)")
            return 0
        assert self.generation is not None
        try:
            ok = await bounded(self.cluster.renew, self.task, self.node, self.generation, self.lease,
                               timeout=self.valid_until - sent)
        except FAILURES as e:
            outage.failed(e)
            return max(0.0, min(self.lease / 8, self.valid_until - monotonic()))
        outage.ok()
        if not ok:
            self._lose("its lease ran out and another node may hold it")
            return self.lease / 3
        lapsed = monotonic() >= self.valid_until  # the answer came just after its deadline
        self.valid_until = sent + self.lease * (1 - GIVE_UP_MARGIN)
        if lapsed:  # the same hold goes on (the database's expiry never passed): wake the waiting loop
            self._changed()
        return self.lease / 3

    def _lose(self, reason: str) -> None:
        self.generation = None
        self.valid_until = 0.0
        self._changed()
        self.on_lost(reason)

    async def begin(self, generation: int | None) -> float | None:
        """Before an iteration under `generation`: its start in database time when the lease still
        holds there (with its margin) and here, None otherwise. The start is recorded in the
        database, so that the next holder keeps the period. Checked again here after the answer:
        a lease given up while the database answered (its iteration not yet there to cancel)
        starts nothing."""
        left = self.valid_until - monotonic()
        if generation is None or generation != self.generation or left <= 0:
            return None
        try:
            started = await bounded(self.cluster.begin, self.task, self.node, generation,
                                    self.lease * GIVE_UP_MARGIN, timeout=left)
        except FAILURES:
            return None
        return started if self.held and self.generation == generation else None

    async def release(self) -> None:
        """At the task's stop: free the lease so another node takes the task at once."""
        generation, self.generation = self.generation, None
        if generation is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await bounded(self.cluster.release, self.task, self.node, generation, timeout=2.0)
            except FAILURES as e:
                log.debug("task %s: lease not released (%s): it runs out by itself", self.task, e)


class NodeKeeper:
    """The daemon's heartbeat (every min(2 s, lease/3)); each round brings the view it follows."""

    def __init__(self, cluster: ClusterStore, me: NodeInfo, retry: float, counts: Callable[[], tuple[int, int]],
                 on_view: Callable[[ClusterView], None]):
        self.cluster, self.me = cluster, me
        self.counts = counts
        self.on_view = on_view
        self.outage = Outage(retry, f"node {me.id}")
        self.view = ClusterView([], {}, {})

    @property
    def interval(self) -> float:
        return min(2.0, self.me.lease / 3)

    async def run(self) -> None:
        while True:
            try:
                view = await bounded(self.cluster.beat, self.me, *self.counts(), timeout=self.me.lease)
            except DuplicateNode as e:
                log.error("heartbeat refused: %s", e)
                await anyio.sleep(self.me.lease)
                continue
            except FAILURES as e:
                await anyio.sleep(self.outage.failed(e))
                continue
            self.outage.ok()
            self.view = view
            self.on_view(view)
            await anyio.sleep(self.interval)

    def status(self) -> dict[str, Any]:
        """What scheduler:state shows of the cluster: the node, the store, the warnings."""
        warnings = []
        if self.outage.since is not None:
            warnings.append(f"the store does not answer since {time.strftime('%H:%M:%S', time.localtime(self.outage.since))}"
                            f": retrying; task leases not renewed are given up")
        hashes = {n.config_hash for n in self.view.nodes if n.alive and n.kind == "daemon"}
        if len(hashes) > 1:
            by = ", ".join(f"{n.id}={n.config_hash}" for n in self.view.nodes if n.alive and n.kind == "daemon")
            warnings.append(f"the nodes' task or pipeline configurations differ ({by}): {DIFFERING_CONFIGS}")
        return {"node": self.me.id, "store": "unavailable" if self.outage.since is not None else "ok",
                "store_down_since": self.outage.since, "warnings": warnings,
                "nodes": [vars(n) for n in self.view.nodes]}

    async def leave(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await bounded(self.cluster.unregister, self.me, timeout=3.0)
            except FAILURES as e:
                log.warning("node %s not removed from the registry (%s): its heartbeat runs out", self.me.id, e)
