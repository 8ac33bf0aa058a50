"""`worker:execute`: a process that only runs jobs (the Worker Manager's command).

No periodic tasks, no hotfolders, no control socket: the job service (schedulerd.jobs) alone,
on the named queues with N workers each, against the store the config names. On PostgreSQL it
is a node of kind `worker` (its heartbeat in `nodes`, shown by cluster:nodes; its running jobs
recovered by the other nodes once the heartbeat expired); it stops claiming and ends its running
attempts before its heartbeat could expire when the store stops answering. On SQLite it works
the local jobs.db beside the daemon.

--max-jobs / --max-memory recycle it: it claims no more, finishes what runs, then re-executes
itself (a fresh process, as ANDS advises for long-lived workers).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from types import MappingProxyType

import anyio

from . import __version__, logs
from .cluster import GIVE_UP_MARGIN, ClusterStore, NodeInfo, bounded, node_info, open_cluster
from .config import Config
from .jobs import JobService
from .store import STORE_ERRORS, store_call
from .stores import check_schema

log = logging.getLogger("schedulerd.worker")
MEMORY_EVERY = 1.0  # seconds between two looks at the resident size


@dataclass(frozen=True)
class WorkerOptions:
    queues: tuple[str, ...]  # empty: every queue
    workers: int | None  # per queue; None: each queue's `workers`
    max_jobs: int | None
    max_memory_mb: int | None
    node: str


def worker_config(config: Config, opts: WorkerOptions) -> Config:
    """The config with `-m N` as every worked queue's `workers`."""
    if opts.workers is None:
        return config
    names = set(opts.queues) or set(config.queues) | {"default"}
    queues = dict(config.queues)
    for q in names:
        queues[q] = dataclasses.replace(config.queue(q), workers=opts.workers)
    return dataclasses.replace(config, queues=MappingProxyType(queues))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class Worker:
    def __init__(self, config: Config, opts: WorkerOptions):
        self.config = worker_config(config, opts)
        self.opts = opts
        self.jobs: JobService | None = None
        self.me: NodeInfo = node_info(opts.node, __version__, "worker", config.store.lease, {})
        self.stop = anyio.Event()

    async def serve(self) -> bool:
        """Run until a signal (False) or a recycle (True)."""
        await store_call("checking the store's schema", check_schema, self.config.store)
        jobs = self.jobs = JobService(self.config, self.config.scheduler.state_dir, lambda n: log,
                                      node=self.opts.node, only=frozenset(self.opts.queues) or None,
                                      max_jobs=self.opts.max_jobs, tell_daemon=not self.config.store.shared)
        cluster = open_cluster(self.config.store)
        try:
            if cluster is not None:
                await store_call("registering this worker", cluster.register, self.me)
            await jobs.recover()
            async with anyio.create_task_group() as tg:
                await tg.start(jobs.serve)
                if cluster is not None:
                    tg.start_soon(self._heartbeat, cluster)
                if self.opts.max_memory_mb is not None:
                    tg.start_soon(self._watch_memory, self.opts.max_memory_mb)
                tg.start_soon(self._signals)
                log.info("worker %s started (pid %d; queues %s)", self.opts.node, os.getpid(),
                         ", ".join(self.opts.queues) or "all")
                tg.start_soon(self._until, jobs.recycle)
                await self.stop.wait()
                await jobs.stop()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if cluster is not None:
                    try:
                        await bounded(cluster.unregister, self.me, timeout=5)
                    except (*STORE_ERRORS, TimeoutError):
                        pass
                    cluster.close()
                jobs.store.close()
        return jobs.recycle.is_set()

    async def _until(self, event: anyio.Event) -> None:
        await event.wait()
        self.stop.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for sig in received:
                log.info("%s: stopping", signal.Signals(sig).name)
                self.stop.set()

    async def _watch_memory(self, limit_mb: int) -> None:
        assert self.jobs is not None
        while True:
            await anyio.sleep(MEMORY_EVERY)
            if rss_mb() > limit_mb:
                self.jobs.start_recycle(f"resident size {rss_mb():.0f} MB above --max-memory {limit_mb} MB")
                return

    async def _heartbeat(self, cluster: ClusterStore) -> None:
        """Beat every lease/3. A node whose beats fail for (1 - GIVE_UP_MARGIN) of a lease ends its
        running attempts (interrupted, claimed again elsewhere) before the others may take them."""
        assert self.jobs is not None
        lease = self.config.store.lease
        last_ok = time.monotonic()
        while True:
            try:
                await bounded(cluster.beat, self.me, 0, len(self.jobs.running), timeout=lease / 3)
                last_ok = time.monotonic()
            except (*STORE_ERRORS, TimeoutError) as e:
                if time.monotonic() - last_ok > lease * (1 - GIVE_UP_MARGIN) and self.jobs.running:
                    log.warning("heartbeat not renewed for %.1fs (%s): ending the running jobs before other "
                                "nodes take them over", time.monotonic() - last_ok, e)
                    self.jobs.abandon_running()
            await anyio.sleep(lease / 3)


def execute(config: Config, opts: WorkerOptions) -> int:
    logs.REDACTOR.add(config.secrets())
    handler = logging.StreamHandler()
    handler.setFormatter(logs.Formatter(logs.FORMAT))
    handler.addFilter(logs.REDACTOR)
    root = logging.getLogger("schedulerd")
    root.addHandler(handler)
    root.setLevel(config.scheduler.log_level.upper())
    recycle = anyio.run(Worker(config, opts).serve)
    if recycle:
        log.info("worker %s: starting afresh", opts.node)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "schedulerd.cli", *sys.argv[1:]])
    return 0
