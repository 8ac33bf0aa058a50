"""The job service inside the daemon: one dispatcher per queue, N workers at most.

A dispatcher claims while fewer than `workers` jobs of its queue run, then sleeps
until a job is added (the CLI tells the daemon), a job ends, or the next retry is due.
On PostgreSQL other nodes add jobs too: a LISTEN connection (schedulerd.pgstore.listen) wakes
the dispatcher of the queue at once; every POLL seconds the service also looks for itself
(running jobs cancelled elsewhere, jobs of nodes whose heartbeat expired, new queues).
The same service runs inside the daemon and alone in `worker:execute` (schedulerd.worker).
"""

from __future__ import annotations

import functools
import logging
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from . import metrics
from .config import Config
from .context import TaskContext, Waker
from .iteration import TimedOut, within
from .jobadd import add_job, add_jobs, add_once
from .jobstore import Job, Outcome
from .logs import REDACTOR
from .plugin import FAILURES, FailForGood, JobType, error_text, failure_detail
from .registry import job_type
from .store import STORE_ERRORS, store_call
from .stores import open_job_store

log = logging.getLogger("schedulerd.jobs")
PROGRESS_EVERY = 0.5  # seconds between progress writes to the store
POLL = 5.0  # another daemon on the same store may add jobs: look again this often


def retry_delay(attempt: int, delay: float, grows: bool, maximum: float) -> float:
    """Delay before attempt `attempt + 1`: constant, or doubling from `delay` (capped)."""
    return min(maximum, delay * (2 ** (attempt - 1)) if grows else delay)


def node_id(state_dir: Path) -> str:
    """Which daemon ran a job: one daemon per state_dir (pidfile lock), so host + state_dir names it."""
    return f"{socket.gethostname()}:{state_dir.resolve()}"


class JobLogHandler(logging.Handler):
    """Keeps a job's log lines for `job:show`; written to the store in batches."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = REDACTOR.redact(record.getMessage())
        if record.exc_info:
            msg += "\n" + REDACTOR.redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        self.lines.append((record.created, record.levelname, msg[:10000]))


class RunningJob:
    def __init__(self, job: Job, scope: anyio.CancelScope):
        self.job = job
        self.scope = scope
        self.cancelled_by_user = False
        self.ctx: TaskContext | None = None


class JobService:
    def __init__(self, config: Config, state_dir: Path, make_logger: Callable[[str], Any],
                 emit: Callable[[str, Mapping[str, Any]], None] | None = None,
                 *, node: str | None = None, only: frozenset[str] | None = None, max_jobs: int | None = None,
                 tell_daemon: bool = False):
        self.config = config
        # worker:execute on SQLite: the daemon beside it hears of the queues that may have work now
        # (a job it added, a dependency it finished) on wake.sock, as from the CLI (PostgreSQL: NOTIFY)
        self.tell_daemon = tell_daemon
        self.store = open_job_store(config.scheduler, config.store, pool_size=8)
        # on a shared store the node's id in the registry (its heartbeat guards its running jobs)
        self.node = node or (config.scheduler.node if config.store.shared else node_id(state_dir))
        self.only = only  # worker:execute --queue-name: the queues it works; None: every queue
        self.max_jobs = max_jobs  # claim no more than this many, then drain (worker:execute --max-jobs)
        self.claimed = 0
        self.recycle = anyio.Event()  # set once the service stopped claiming for a recycle (max jobs, memory)
        self.make_logger = make_logger
        self.emit = emit
        self.running: dict[int, RunningJob] = {}
        self.wakers: dict[str, Waker] = {}
        self.dispatchers: set[str] = set()
        self.recycled: dict[str, int] = {}  # queue -> times its workers were recycled ([queues.NAME] max_jobs)
        self._tg: TaskGroup | None = None
        self._accepting = True
        self._last_purge = 0.0
        self._idle = anyio.Event()
        self._ended: list[Outcome] = []
        self._unsaved: set[int] = set()  # jobs whose attempt ended here and is not yet in the store
        self._progress: dict[int, tuple[int, int | None]] = {}  # job id -> (done, total) not yet saved
        self._ended_ready = anyio.Event()
        self._ended_count = 0  # attempts ended so far; _saved_count of them are in the store
        self._saved_count = 0
        self._saved_more = anyio.Event()
        self._closing = False  # stop(): the settler saves what is left, then ends
        self._settled = anyio.Event()

    async def recover(self) -> None:
        ids = await store_call("recovering the jobs of the last run", self.store.recover, self.node)
        if ids:
            log.warning("%d job(s) were running when the daemon last stopped: interrupted: %s", len(ids), ids)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.wake_all()

    # --- lifecycle -----------------------------------------------------------
    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._settler, name="jobs:settler")
            tg.start_soon(self._watch_cluster, name="jobs:cluster")
            if self.config.store.shared:
                from .pgstore.listen import Handlers, Listener

                listener = Listener(self.config.store, Handlers(self.wake_queue, self._cancelled_elsewhere,
                                                                self.wake_all), name=f"listen {self.node}")
                await tg.start(listener.serve)
            self._ensure_dispatchers(set(self.config.queues) | {"default"})
            task_status.started()
            waker = self.wakers.setdefault("", Waker())
            while True:
                await self._refresh_dispatchers()
                await waker.wait(POLL)
                if time.monotonic() - self._last_purge > 60:
                    self._last_purge = time.monotonic()
                    await self._purge()

    async def _purge(self) -> None:
        try:  # retention only: when the store is busy, the next purge (in a minute) does it
            await anyio.to_thread.run_sync(self.purge_by_retention)
        except STORE_ERRORS as e:
            log.warning("job retention skipped: the job store failed (%s: %s)", type(e).__name__, e)

    async def _refresh_dispatchers(self) -> None:
        """A dispatcher for every queue holding work (another daemon or the CLI may have added some)."""
        with_work = await store_call("listing the queues with work", self.store.queues_with_work)
        self._ensure_dispatchers(set(self.config.queues) | with_work | {"default"})

    async def _watch_cluster(self) -> None:
        """Every POLL seconds: running jobs cancelled from elsewhere end here; jobs of nodes whose
        heartbeat expired are put back in their queues (PostgreSQL); every lease, jobs the store
        says this node runs and it does not are put back (_recover_lost). Skipped while the store fails."""
        grace = 2 * self.config.store.lease
        last_lost = time.monotonic()
        while True:
            await anyio.sleep(POLL)
            try:
                for jid in await anyio.to_thread.run_sync(self.store.cancelled_among, set(self.running)):
                    self._cancelled_elsewhere(jid)
                if self.config.store.shared and self._accepting:
                    ids = await anyio.to_thread.run_sync(self.store.recover_orphans, self.node, grace)
                    if ids:
                        log.warning("%d job(s) of node(s) whose heartbeat expired were interrupted, to run "
                                    "again: %s", len(ids), ids)
                if self._accepting and time.monotonic() - last_lost >= self.config.store.lease:
                    last_lost = time.monotonic()
                    await self._recover_lost()
            except STORE_ERRORS as e:
                log.debug("cluster check skipped: the job store failed (%s)", e)

    async def _recover_lost(self) -> None:
        """A claim whose answer never came back (PostgreSQL: the connection lost after the server
        ran the UPDATE; store_call then claims again) leaves jobs `running` for this live node,
        whose heartbeat keeps the other nodes off them: they would wait for its restart. Those
        claimed more than a lease ago that this node neither runs nor has yet to save go back to
        their queues (their attempt not counted) and are claimed again."""
        mine = set(self.running) | self._unsaved  # read before the store's list: a job's end moves it
        ids = await anyio.to_thread.run_sync(self.store.recover_lost, self.node, self.config.store.lease, mine)
        if ids:
            log.warning("%d job(s) the store had running on this node, which does not run them (a claim "
                        "whose answer was lost), were put back in their queues: %s", len(ids), ids)
            self.wake_all()

    def _cancelled_elsewhere(self, job_id: int) -> None:
        """job:cancel on another node (or the CLI) of a job this node runs: its attempt ends now."""
        running = self.running.get(job_id)
        if running is not None and not running.cancelled_by_user:
            running.cancelled_by_user = True
            running.scope.cancel()

    def _ensure_dispatchers(self, queues: set[str]) -> None:
        if not self._accepting or self._tg is None:
            return
        if self.only is not None:
            queues = queues & self.only
        for q in queues - self.dispatchers:
            self.dispatchers.add(q)
            self._tg.start_soon(self._dispatch, q, name=f"queue:{q}")

    async def stop(self) -> None:
        """Claim nothing more; running jobs get stop_timeout, then are cancelled (-> interrupted)."""
        self._accepting = False
        for w in self.wakers.values():
            w.wake()
        grace = self.config.scheduler.stop_timeout
        with anyio.move_on_after(grace):
            await self._drained()
        for r in list(self.running.values()):
            r.scope.cancel()
        with anyio.move_on_after(10):
            await self._drained()
        self._closing = True  # the settler saves every ended attempt, then ends
        self._ended_ready.set()
        with anyio.move_on_after(grace + 5):
            await self._settled.wait()
        if not self._settled.is_set():
            log.error("the job store still fails: job attempts that ended are not saved; those jobs are "
                      "recovered as interrupted at the next start")
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def start_recycle(self, why: str) -> None:
        """Claim nothing more; the owner (worker:execute) drains, then starts afresh."""
        if not self.recycle.is_set():
            log.info("recycling this worker: %s; finishing the running jobs first", why)
            self._accepting = False
            self.recycle.set()
            self.wake_all()

    def abandon_running(self) -> None:
        """End every running attempt now (interrupted): this node can no longer prove it is alive,
        and the other nodes will take its jobs over once its heartbeat expired."""
        for r in list(self.running.values()):
            r.scope.cancel()

    async def _drained(self) -> None:
        while self.running:
            self._idle = anyio.Event()
            await self._idle.wait()

    def wake(self, queue: str) -> None:
        self.wakers.setdefault(queue, Waker()).wake()

    def wake_queue(self, queue: str) -> None:
        """A job was added to `queue` (by the CLI: see schedulerd.wake; by another node: a notification)."""
        if queue and (self.only is None or queue in self.only):
            self._ensure_dispatchers({queue})
            self.wake(queue)

    def wake_all(self) -> None:
        for w in list(self.wakers.values()):
            w.wake()

    # --- dispatch ------------------------------------------------------------
    def _running_in(self, queue: str) -> int:
        return sum(1 for r in self.running.values() if r.job.queue == queue)

    def _free_slots(self, queue: str, claimed_here: int) -> int:
        """How many jobs the queue's dispatcher may claim now: its free workers, within the
        queue's `max_jobs` left in this incarnation and the process's max jobs left."""
        qc = self.config.queue(queue)
        free = qc.workers - self._running_in(queue)
        if qc.max_jobs is not None:
            free = min(free, qc.max_jobs - claimed_here)
        return free

    async def _recycle_queue(self, queue: str, jobs: int) -> None:
        """[queues.NAME] max_jobs reached: the queue's workers drain (nothing more is claimed for
        it here), then its dispatcher ends and a fresh one takes its place, counting from zero."""
        waker = self.wakers.setdefault(queue, Waker())
        log.info("queue %s: %d jobs claimed (max_jobs); recycling its workers once the running ones end",
                 queue, jobs)
        while self._accepting and self._running_in(queue):
            await waker.wait(POLL)  # a job's end wakes us
        self.recycled[queue] = self.recycled.get(queue, 0) + 1
        self.dispatchers.discard(queue)
        if self._accepting:
            log.info("queue %s: workers recycled (%d so far); claiming again", queue, self.recycled[queue])
            self._ensure_dispatchers({queue})

    async def _dispatch(self, queue: str) -> None:
        waker = self.wakers.setdefault(queue, Waker())
        assert self._tg is not None
        claimed_here = 0  # by this dispatcher: its queue's max_jobs recycles it
        while self._accepting:
            limit = self.config.queue(queue).max_jobs
            if limit is not None and claimed_here >= limit:
                await self._recycle_queue(queue, claimed_here)
                return
            free = self._free_slots(queue, claimed_here)
            if self.max_jobs is not None:
                free = min(free, self.max_jobs - self.claimed)
                if free <= 0 and self.claimed >= self.max_jobs:
                    self.start_recycle(f"{self.claimed} jobs claimed (max jobs {self.max_jobs})")
                    return
            if free <= 0:  # every slot busy: a job's end wakes us
                await waker.wait(POLL)
                continue
            # In a worker thread: a claim waits for another process's write lock (busy timeout), and
            # a store that fails is retried (logged once). A paused queue claims nothing (checked in the SQL).
            looked = time.monotonic()
            claimed = await store_call(f"claiming jobs of queue {queue}", self.store.claim_many, queue, self.node, free)
            self.claimed += len(claimed)
            claimed_here += len(claimed)
            for job in claimed:
                scope = anyio.CancelScope()
                self.running[job.id] = RunningJob(job, scope)
                self._tg.start_soon(self._run, job, scope, name=f"job:{job.id}")
            if len(claimed) == free:  # every slot asked for was filled: there may be more
                continue
            # fewer than asked (none: another node was quicker): the queue has nothing more ready
            # now; a job added meanwhile has woken the waker already, so nothing is missed
            await self._sleep_until_due(queue, waker, time.monotonic() - looked)

    async def _sleep_until_due(self, queue: str, waker: Waker, since: float) -> None:
        """Nothing more to claim: sleep until the queue's next job not yet due at the claim
        (`since` seconds ago) is due, a wake (a job added, a job's or a dependency's end, a
        resume, a retry, a notification), or POLL (another process on the store, not telling).
        A job due but not claimed (its queue paused, its dependency unfinished) waits for such
        a wake: an idle queue of 10,000 paused jobs costs a look every POLL, not a claim loop."""
        due = await store_call(f"reading the next due job of queue {queue}", self.store.next_due, queue, since)
        timeout = POLL if due is None else max(0.0, min(POLL, due - time.time()))
        await waker.wait(timeout if timeout > 0 else 0.01)

    async def _run(self, job: Job, scope: anyio.CancelScope) -> None:
        handler_log = JobLogHandler()
        # not registered with logging's manager: a logger per job would never be freed
        logger = logging.Logger(f"schedulerd.job.{job.id}", logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler_log)
        running = self.running[job.id]
        last_write = [0.0]

        def on_progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last_write[0] >= PROGRESS_EVERY or (total is not None and done >= total):
                last_write[0] = now
                self._progress[job.id] = (done, total)  # saved by the settler
                self._ended_ready.set()

        tc = self.config.jobs.type_config(job.type)
        ended_before = self._ended_count
        outcome, error, summary = "interrupted", "interrupted: the daemon stopped while it ran", None
        for_good = False  # a FailForGood: no retry
        log.debug("job %d (%s, queue %s) attempt %d/%d started", job.id, job.type, job.queue, job.attempts, job.max_attempts)
        began = time.time()
        metrics.job_started(job.queue, (job.started or began) - job.next_attempt_at)
        try:
            with scope:
                try:
                    handler = job_type(job.type)(tc.settings)
                    ctx = TaskContext(f"job-{job.id}", handler.settings, logger, self.config,
                                      self.config.scheduler.state_dir / "jobs" / str(job.id), None,
                                      emitter=self.emit, job_adder=self.add_many, on_progress=on_progress)
                    running.ctx = ctx
                    result = await within(tc.timeout, lambda: self._attempt(ended_before, handler, ctx, job))
                    outcome, summary = "finished", None if result is None else REDACTOR.redact(str(result))[:2000]
                except TimedOut as e:
                    outcome, error = "failed", str(e)
                except FAILURES as e:  # a TimeoutError of the job's own (a socket's) too
                    outcome, error, for_good = "failed", error_text(e)[:2000], isinstance(e, FailForGood)
                    logger.error("attempt failed: %s%s", error, failure_detail(e))
            if running.cancelled_by_user:
                outcome, error = "cancelled", "cancelled by job:cancel"
        finally:
            with anyio.CancelScope(shield=True):
                # the work is over: the slot frees now, the outcome is written with the next batch
                # (until then the job stays `running` in the store, so nothing claims it twice)
                self._ended.append(self._outcome(job, tc, outcome, error, summary, handler_log.lines, for_good))
                self._unsaved.add(job.id)
                metrics.job_ended(job.queue, outcome, time.time() - began)
                self._ended_count += 1
                self._ended_ready.set()
                del self.running[job.id]
                if not self.running:
                    self._idle.set()
                self.wake(job.queue)

    async def _attempt(self, ended_before: int, handler: JobType, ctx: TaskContext, job: Job) -> Any:
        """The attempt's work, within its type's timeout: once the attempts ended before it are saved."""
        await self._saved_up_to(ended_before)
        return await handler.run(ctx, job.payload)

    async def _saved_up_to(self, count: int) -> None:
        """Wait until the first `count` ended attempts are in the store. An attempt starts its work
        only then: the slot of a job that ended frees at once (its outcome is saved with the next
        batch), and a daemon killed between that end and its save would run the ended job again;
        without this wait that moment is exactly when the next job's child starts."""
        while self._saved_count < count:
            await self._saved_more.wait()

    def _outcome(self, job: Job, tc: Any, outcome: str, error: str | None, summary: str | None,
                 lines: list[tuple[float, str, str]], for_good: bool = False) -> Outcome:
        """Decide what an ended attempt means (retry or not) and say it in the scheduler log."""
        error = REDACTOR.redact(error) if error else error
        kind, retry_at = outcome, None
        if outcome == "finished":
            log.debug("job %d finished%s", job.id, f": {summary}" if summary else "")
        elif outcome == "cancelled":
            log.info("job %d cancelled while running", job.id)
        elif outcome == "interrupted":
            log.warning("job %d interrupted by the daemon's stop", job.id)
        elif job.attempts < job.max_attempts and not for_good:
            delay = retry_delay(job.attempts, tc.retry_delay, tc.retry_backoff, tc.retry_max_delay)
            kind, retry_at = "retry", time.time() + delay
            log.warning("job %d attempt %d/%d failed (%s); retry in %.1fs", job.id, job.attempts,
                        job.max_attempts, error, delay)
        else:
            kind = "failed"
            log.error("job %d failed%s: %s", job.id, " for good" if for_good else ", attempts used up", error)
            if self.emit is not None:  # pipelines triggered by job.failed
                self.emit("job.failed", {"job": job.id, "type": job.type, "queue": job.queue, "error": error or ""})
        return Outcome(job.id, kind, time.time(), summary, error, retry_at, tuple(lines), node=self.node)

    async def _settler(self) -> None:
        """The one writer of ended attempts and progress: one transaction for all that ended meanwhile.
        Until saved an attempt's job stays `running` in the store, so nothing claims it twice."""
        try:
            while True:
                if not self._ended and not self._progress:
                    if self._closing:
                        return
                    self._ended_ready = anyio.Event()
                    await self._ended_ready.wait()
                await self._write_ended()
        finally:
            self._settled.set()

    async def _write_ended(self) -> None:
        """Save a batch, retried while the store fails; a batch not saved (cancelled) stays pending."""
        batch, self._ended = self._ended, []
        progress, self._progress = self._progress, {}
        try:
            wake = await store_call("saving ended job attempts", self._save, progress, batch)
        except BaseException:
            self._ended[:0] = batch
            self._progress = {**progress, **self._progress}
            raise
        self._saved_count += len(batch)
        self._unsaved.difference_update(o.job_id for o in batch)
        self._saved_more.set()
        self._saved_more = anyio.Event()
        self._ensure_dispatchers(wake)
        for q in wake:
            self.wake(q)

    def _save(self, progress: dict[int, tuple[int, int | None]], batch: list[Outcome]) -> set[str]:
        for job_id, (done, total) in progress.items():
            self.store.set_progress(job_id, done, total)
        queues = self.store.settle_many(batch)
        self._tell_daemon(queues)
        return queues

    def _tell_daemon(self, queues: set[str]) -> None:
        if self.tell_daemon:
            from .wake import send_wake

            for q in queues:
                send_wake(self.config.scheduler.state_dir, q)

    # --- operations ------------------------------------------------------------
    async def add(self, type: str, payload: Mapping[str, Any], **options: Any) -> int:
        """`ctx.add_job` in the daemon: `add_many` of one."""
        return (await self.add_many(type, [payload], **options))[0]

    async def add_many(self, type: str, payloads: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        """`ctx.add_job(s)` in the daemon: the store write in a worker thread, retried while the
        store fails (a locked jobs.db, PostgreSQL away) so no job is lost, made once (add_once);
        a JobError raises at once."""
        if not payloads:
            return []

        def write(key: str) -> tuple[list[int], str]:
            return add_jobs(self.store, self.config, type, payloads, **options, key=key)

        ids, queue = await add_once(type, write)
        self.wake_queue(queue)
        self._tell_daemon({queue})
        return ids

    async def submit(self, type: str, payload: Mapping[str, Any], **options: Any) -> int:
        """`add` with the store write in a worker thread (for the control socket)."""
        jid, queue = await anyio.to_thread.run_sync(
            functools.partial(add_job, self.store, self.config, type, payload, **options))
        self.wake_queue(queue)
        return jid

    async def cancel(self, job_id: int) -> Job:
        job = await anyio.to_thread.run_sync(self.store.cancel, job_id)
        running = self.running.get(job_id)
        if running is not None:
            running.cancelled_by_user = True
            running.scope.cancel()
        return job

    def purge_by_retention(self) -> int:
        j = self.config.jobs
        n = self.store.purge(["finished"], keep=j.keep_finished) + self.store.purge(["finished"], max_age=j.finished_max_age)
        n += self.store.purge(["failed", "cancelled"], keep=j.keep_failed)
        n += self.store.purge(["failed", "cancelled"], max_age=j.failed_max_age)
        if n:
            log.info("retention: purged %d done jobs", n)
        return n

    async def queue_states(self) -> list[dict[str, Any]]:
        paused = await anyio.to_thread.run_sync(self.store.paused, abandon_on_cancel=True)  # bounded by the caller
        return [{"name": q, "workers": self.config.queue(q).workers, "paused": q in paused,
                 "running": self._running_in(q), "recycled": self.recycled.get(q, 0)}
                for q in sorted(self.dispatchers | set(self.config.queues))]
