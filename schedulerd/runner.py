"""One runner per task: the periodic loop and its state machine.

Transitions (every one goes through `_change`, checked against states.TASK_TRANSITIONS):
  stopped  -> starting   task:start / daemon start with wanted=started
  crashed  -> starting   task:start (the crash counter is cleared)
  starting -> running    first iteration begins at once
  running  -> waiting    iteration succeeded; sleep until the next tick
  running  -> backoff    iteration failed; sleep backoff_delay(crashes)
  running  -> crashed    the iteration was the max_crashes-th consecutive failure: stays until task:start
  backoff  -> running    backoff elapsed (or run-now)
  waiting  -> running    tick reached (or run-now / an event woke the task)
  starting, backoff -> waiting   the iteration was skipped: a one-shot task:run holds the lock
  starting -> waiting    a schedule's first start is later (schedulerd.schedule)
  *        -> stopping   task:stop / daemon stop: the iteration gets stop_timeout, then is cancelled
                         (also when the loop ends without a stop: cancelled from outside, or a bug)
  stopping -> stopped
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .cluster import TaskLease
from .config import TaskConfig
from .context import JobAdder, TaskContext, monotonic
from .iteration import IterationEnd, run_iteration
from .plugin import FAILURES, TaskType
from .registry import task_type
from .schedule import first_due, local_text, zone
from .snapshot import Live, task_snapshot
from .states import ACTIVE_STATES, CLEAN_OUTCOMES, STOPPED_STATES, RunOutcome, TaskState, Wanted, check_task
from .store import STORE_ERRORS, Run, TaskRecord, store_call
from .tasklock import TaskLock

log = logging.getLogger("schedulerd.runner")
ROUTINE_STATES = (TaskState.RUNNING, TaskState.WAITING)  # a change between these two is logged at debug level
START_STATES = (TaskState.STOPPED, TaskState.STARTING)  # a quiet start (the daemon's own) logs leaving these at debug


def next_run(scheduled: float, period: float, now: float) -> float:
    """The next tick: one period after the previous *scheduled* start, so there is no drift;
    an iteration that overran its period is followed at once, never by a burst of catch-ups."""
    nxt = scheduled + period
    return nxt if nxt > now else now


def backoff_delay(crashes: int, initial: float, maximum: float) -> float:
    """Exponential: initial, 2x, 4x ... capped at maximum."""
    return min(maximum, initial * (2.0 ** max(0, crashes - 1)))


class HistorySink:
    """The daemon's pending state-store writes: finished runs, crash counters and wanted states.
    The daemon's writer saves them in one batch and drops them only once written (a store
    locked for a while delays them, loses none); `ready` wakes the writer."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.crashes: dict[str, int] = {}
        self.wanted: dict[str, Wanted] = {}
        self.ready: anyio.Event | None = None

    def append(self, run: Run) -> None:
        self.runs.append(run)
        self._wake()

    def set_crashes(self, task: str, crashes: int) -> None:
        self.crashes[task] = crashes
        self._wake()

    def set_wanted(self, task: str, wanted: Wanted) -> None:
        self.wanted[task] = wanted
        self._wake()

    def _wake(self) -> None:
        if self.ready is not None:
            self.ready.set()

    def pending(self) -> bool:
        return bool(self.runs or self.crashes or self.wanted)

    def batch(self) -> tuple[list[Run], dict[str, int], dict[str, Wanted]]:
        """A copy of what is pending, for one write; `written(*batch)` after it succeeded."""
        return list(self.runs), dict(self.crashes), dict(self.wanted)

    def written(self, runs: list[Run], crashes: dict[str, int], wanted: dict[str, Wanted]) -> None:
        """Drop what a write saved; runs appended and values changed since the batch stay pending."""
        del self.runs[:len(runs)]
        for task, n in crashes.items():
            if self.crashes.get(task) == n:
                del self.crashes[task]
        for task, w in wanted.items():
            if self.wanted.get(task) is w:
                del self.wanted[task]


@dataclass
class RunnerEnv:
    """What the daemon shares with its runners."""

    config: Any
    store: Any
    lock_dir: Path
    history: HistorySink = field(default_factory=lambda: HistorySink())
    make_logger: Callable[[str], Any] = lambda name: logging.getLogger(f"schedulerd.task.{name}")
    emit: Callable[[str, Mapping[str, Any]], None] | None = None
    # the events something consumes (a pipeline's trigger, a task's wake_on or trigger), set by the
    # daemon: a `task.state` event no one hears is not made (two per iteration, ~0.6 us of the
    # ~13 us the runner's own code takes in a no-op iteration)
    heard: frozenset[str] = frozenset()
    add_jobs: JobAdder | None = None
    node: str = ""  # this daemon's node id
    cluster: Any = None  # a shared store's cluster.ClusterStore: tasks run under leases; None: SQLite
    holders: Mapping[str, str] = field(default_factory=dict)  # task -> node holding it (the last heartbeat's view)


class TaskRunner:
    def __init__(self, tc: TaskConfig, env: RunnerEnv, wanted: Wanted, record: TaskRecord | None = None):
        """`record`: the task's counters and last run as stored (read from env.store when not given)."""
        self.tc = tc
        self.env = env
        self.wanted = wanted
        self.state = TaskState.STOPPED
        self.task: TaskType = task_type(tc.type)(tc.settings)
        self.log = env.make_logger(tc.name)
        self.ctx = TaskContext(tc.name, tc.settings, self.log, env.config, env.config.scheduler.state_dir / "tasks" / tc.name,
                               env.store, emitter=env.emit, job_adder=env.add_jobs, on_started=self._healthy)
        rec = record if record is not None else env.store.task(tc.name)
        self.crashes = rec.crashes
        self.runs = rec.runs
        self.failures = rec.failures
        self.last: Run | None = rec.last_run
        self.started_at: float | None = None  # wall time the task was started
        self.iteration_started: float | None = None
        self.next_at: float | None = None  # monotonic
        self.slot: float | None = None  # a schedule's: wall time of the start waited for (None: not a scheduled one)
        self.cursor: float | None = None  # a schedule's: the last start recorded in the store (wall time)
        self._cursor_before: float | None = None  # the cursor before the start being recorded (_left_due)
        self._scope: anyio.CancelScope | None = None
        self._iteration_scope: anyio.CancelScope | None = None
        self._cut: tuple[RunOutcome, str | None] = (RunOutcome.CANCELLED, "cancelled at stop")  # set by stop()
        self._done = anyio.Event()
        self._done.set()
        self._quiet = False  # set by start(quiet=True)
        self.lock = TaskLock(env.lock_dir, tc.name)
        self.lease = self._lease()

    def _lease(self) -> TaskLease | None:
        """On a shared store the task runs where its lease is held; pinned (`nodes`) elsewhere: never here."""
        if self.env.cluster is None:
            return None
        store = self.env.config.store
        return TaskLease(self.env.cluster, self.tc.name, self.env.node, store.lease, self.tc.period, store.store_retry,
                         self._lease_lost, eligible=not self.tc.nodes or self.env.node in self.tc.nodes)

    def _lease_lost(self, reason: str) -> None:
        """Given up before the database lets another node take it: the running iteration is cancelled."""
        self.log.warning("task lease lost: %s%s", reason, "; cancelling the running iteration"
                         if self._iteration_scope is not None else "")
        if self._iteration_scope is not None:
            self._cut = (RunOutcome.CANCELLED, f"cancelled: {reason}")
            self._iteration_scope.cancel()

    @property
    def node(self) -> str | None:
        """The node running this task: this one, another one (a shared store), or none."""
        if self.lease is None:
            return self.env.node if self.state not in STOPPED_STATES else None
        if self.lease.held:
            return self.env.node
        holder = self.env.holders.get(self.tc.name)
        return None if holder == self.env.node else holder

    # --- state ---------------------------------------------------------------
    def _change(self, new: TaskState, why: str = "") -> None:
        old = self.state
        if old is new:
            return
        check_task(old, new)
        self.state = new
        routine = (old in ROUTINE_STATES and new in ROUTINE_STATES) or (self._quiet and old in START_STATES)
        level = logging.DEBUG if routine else logging.INFO
        self.log.log(level, "state %s -> %s%s", old, new, f" ({why})" if why else "")
        if self.env.emit and "task.state" in self.env.heard:
            self.env.emit("task.state", {"task": self.tc.name, "from": old.value, "to": new.value})

    @property
    def settings(self) -> Any:
        return self.env.config.scheduler

    def _stop_asked(self) -> bool:
        """stop() sets STOPPING from another task while the loop awaits (a method: no narrowing across awaits)."""
        return self.state is TaskState.STOPPING

    def snapshot(self) -> dict[str, Any]:
        sleeping = self.next_at is not None and self.state in (TaskState.WAITING, TaskState.BACKOFF)
        counts = TaskRecord(self.tc.name, self.wanted, self.crashes, self.runs, self.failures, self.last)
        live = Live(
            started_at=self.started_at,
            iteration_started=self.iteration_started if self.state is TaskState.RUNNING else None,
            next_run_in=max(0.0, self.next_at - monotonic())
            if sleeping and self.next_at is not None and math.isfinite(self.next_at) else None,
            next_run_at=self._next_run_at() if sleeping else None,
            progress=(self.ctx.done, self.ctx.total) if self.ctx.done is not None else None,
            info=self.ctx.info)
        return task_snapshot(self.tc, self.wanted, self.state, counts, live, node=self.node,
                             cluster=self.lease is not None)

    def _next_run_at(self) -> str | None:
        """The next start on the wall clock, in [scheduler] timezone (`2026-03-29 03:00:00 CEST`)."""
        if self.next_at is None or not math.isfinite(self.next_at):
            return None
        wall = self.slot if self.slot is not None else time.time() + self.next_at - monotonic()
        return local_text(wall, zone(self.settings.timezone))

    # --- control -------------------------------------------------------------
    def start(self, tg: TaskGroup, quiet: bool = False) -> None:
        """Start the loop in the daemon's task group (no-op if already active). `quiet`: the
        daemon starts all its tasks and says so in one line; each task's start is logged at debug
        level (10,000 INFO lines, each opening a task's log file, were a third of the start-up)."""
        if self.state not in STOPPED_STATES:
            return
        self._quiet = quiet
        if self.state is TaskState.CRASHED:
            self._set_crashes(0)
        self._done = anyio.Event()
        self._change(TaskState.STARTING)
        tg.start_soon(self._run, name=f"task:{self.tc.name}")

    async def stop(self, timeout: float | None = None) -> None:
        """Let the current iteration finish within `timeout` (stop_timeout), then cancel it."""
        if self.state in STOPPED_STATES:
            return
        if self.state is not TaskState.STOPPING:
            self._change(TaskState.STOPPING)
        if self._iteration_scope is None and self._scope is not None:
            self._scope.cancel()
        elif self._iteration_scope is not None and self.task.long_running:
            self._cut = (RunOutcome.STOPPED, None)  # the way a long-running task ends: not an error
            self._iteration_scope.cancel()
        grace = self.settings.stop_timeout if timeout is None else timeout
        with anyio.move_on_after(grace):
            await self._done.wait()
        if not self._done.is_set():
            self.log.warning("iteration still running after %.1fs: cancelling it", grace)
            self._cut = (RunOutcome.CANCELLED, f"cancelled at stop: still running after {grace:g}s")
            if self._iteration_scope is not None:
                self._iteration_scope.cancel()
            with anyio.move_on_after(10):
                await self._done.wait()
        if not self._done.is_set() and self._scope is not None:
            self._scope.cancel()
            with anyio.move_on_after(10):
                await self._done.wait()

    def run_now(self) -> None:
        self.ctx.wake()

    # --- the loop ------------------------------------------------------------
    async def _run(self) -> None:
        self.started_at = time.time()
        try:
            with anyio.CancelScope() as self._scope:  # the scope stop() cancels
                companions = self._companions()
                if companions:
                    async with anyio.create_task_group() as tg:
                        for companion, what in companions:
                            tg.start_soon(companion, name=f"task:{self.tc.name}:{what}")
                        await self._loop()
                        tg.cancel_scope.cancel()
                else:
                    await self._loop()
        finally:
            self._scope = None
            if self.lease is not None:
                await self.lease.release()
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.move_on_after(self.settings.stop_timeout + 5):
                        await self.task.shutdown(self.ctx)
                except FAILURES:
                    self.log.exception("shutdown failed")
            self.lock.close()
            self.next_at = None
            self.started_at = None
            if self.state in ACTIVE_STATES:  # no stop asked for it: cancelled from outside, or an error
                self._change(TaskState.STOPPING, "the loop ended")
            if self.state is TaskState.STOPPING:
                self._change(TaskState.STOPPED)
            self._done.set()

    def _companions(self) -> list[tuple[Callable[[], Coroutine[Any, Any, None]], str]]:
        """What runs beside the loop: the task type's background watcher, the lease keeper. A task
        with neither gets no task group of its own (with 10,000 tasks, a group and a watcher task
        that ends at once were per runner ~1 KB and an eighth of the start-up's CPU)."""
        companions: list[tuple[Callable[[], Coroutine[Any, Any, None]], str]] = []
        if type(self.task).background is not TaskType.background:
            companions.append((self._background, "background"))
        if self.lease is not None:
            companions.append((self.lease.keep, "lease"))
        return companions

    async def _background(self) -> None:
        try:
            await self.task.background(self.ctx)
        except FAILURES:
            self.log.exception("background watcher failed; the periodic scan goes on")

    async def _loop(self) -> None:
        scheduled = self.next_at = await self._first_tick()
        if self.next_at > monotonic() and self.state is TaskState.STARTING:
            self._change(TaskState.WAITING, "until its scheduled start")
        planned: int | None = None  # the lease generation the ticks were planned under
        while self.state is not TaskState.STOPPING:
            if not self._leased(planned):
                scheduled = await self._wait_for_lease(planned)
                planned = self.lease.generation if self.lease is not None else None
            if self.next_at > monotonic():
                if await self.ctx.waker.wait_until(self.next_at):
                    scheduled = self.next_at = monotonic()  # woken: run now, re-base the ticks
                    self.slot = None
                elif self.slot is not None and time.time() < self.slot - 0.01:
                    self.next_at = self._monotonic(self.slot)  # the wall clock was set back meanwhile
                    continue
            if self._stop_asked():
                break
            if not self._leased(planned):
                continue  # lost while sleeping (and perhaps taken again since: planned from that take)
            if self.slot is not None:
                self._cursor_before = self.cursor
                await self._save_cursor(self.slot)
                if self._stop_asked():  # came while the start was written: written back, left due
                    await self._left_due()
                    break
            ok = await self._iteration()
            retry = self.ctx.iteration_ended()  # the task waits for something (ctx.wait_for)
            # counted before the stop check: a failure that ends as the stop comes is in the
            # history, so it is in the consecutive-failure counter too
            if ok is False:
                self._set_crashes(self.crashes + 1)
            elif ok and self.crashes:
                self._set_crashes(0)
            if self._stop_asked():
                break
            now = monotonic()
            if ok is None:  # skipped: the one-shot holds the lock
                scheduled = self.next_at = self._next_tick(scheduled, now)
                self._change(TaskState.WAITING)
            elif ok:
                scheduled = self.next_at = self._next_tick(scheduled, now)
                if retry is not None and now + retry < self.next_at:
                    scheduled = self.next_at = now + retry
                    self.slot = None  # a retry, not a scheduled start
                self._change(TaskState.WAITING)
            else:
                if self.crashes >= self.settings.max_crashes:
                    self._change(TaskState.CRASHED, f"{self.crashes} consecutive failures")
                    return
                delay = backoff_delay(self.crashes, self.settings.backoff_initial, self.settings.backoff_max)
                self.next_at = now + delay
                scheduled = self.next_at
                self._change(TaskState.BACKOFF, f"failure {self.crashes}/{self.settings.max_crashes}, retry in {delay:.1f}s")

    def _leased(self, planned: int | None) -> bool:
        """Whether the task may run here on the ticks planned under lease generation `planned`:
        always on the SQLite store; on a shared one while that same take is held. A new take
        (even by this node: it lost the lease meanwhile, and another node may have run the task)
        plans the ticks again from the task's last start anywhere."""
        return self.lease is None or (self.lease.held and self.lease.generation == planned)

    async def _wait_for_lease(self, planned: int | None) -> float:
        """Until this node holds the task's lease (another node runs it meanwhile); then the next
        start is when the task's last start anywhere plus its period is due (the database's
        clock), so a takeover neither runs early nor skips an iteration that was due. The ticks
        planned under `planned` go on when that same take holds again (renewed just late)."""
        assert self.lease is not None
        next_at, self.next_at = self.next_at, None
        if self.state in (TaskState.STARTING, TaskState.BACKOFF):
            self._change(TaskState.WAITING, "waiting for the task's lease")
        while not self.lease.held:
            changed = self.lease.changed
            with anyio.move_on_after(5):
                await changed.wait()
        if self.lease.generation == planned and next_at is not None:  # the same hold: the same ticks
            self.next_at = next_at
            return next_at
        if self.tc.schedule is not None:  # from the last scheduled start anywhere (the shared store)
            self.next_at = await self._first_tick()
            return self.next_at
        self.next_at = max(monotonic(), self.lease.due_at)
        return self.next_at

    # --- schedules (`schedule = "0 3 * * *"`: schedulerd.schedule) -------------------
    def _next_tick(self, scheduled: float, now: float) -> float:
        """The next start (monotonic): a period after the last scheduled one, or the schedule's
        next start after both that one and now (an overrun skips to the next, no burst)."""
        if self.tc.schedule is None:
            return next_run(scheduled, self.tc.period, now)
        self.slot = self.tc.schedule.next_after(max(time.time(), self.slot or 0.0))
        return self._monotonic(self.slot)

    @staticmethod
    def _monotonic(wall: float | None) -> float:
        return math.inf if wall is None else monotonic() + max(0.0, wall - time.time())

    async def _first_tick(self) -> float:
        """Where the loop starts: at once for a period; for a schedule, from its cursor in the
        state store (its last start anywhere): a start missed meanwhile runs at once with catch_up
        (or, on a shared store, when it fell due within two leases: a takeover), else the next."""
        if self.tc.schedule is None:
            return monotonic()
        cursor = await self._store_call(self.env.store.get_value, self._cursor_key)
        now = time.time()
        self.cursor = None if cursor is None else float(cursor)
        if cursor is None:
            await self._save_cursor(now)  # from now on, a downtime is seen
        grace = math.inf if self.tc.catch_up else 2 * self.env.config.store.lease if self.lease is not None else 0.0
        self.slot = first_due(self.tc.schedule, None if cursor is None else float(cursor), now, grace)
        return self._monotonic(self.slot)

    @property
    def _cursor_key(self) -> str:
        return f"schedule.cursor.{self.tc.name}"

    async def _save_cursor(self, wall: float) -> None:
        """The scheduled start is written before its iteration runs (the cursor catch_up reads)."""
        await self._store_call(self.env.store.set_value, self._cursor_key, repr(wall))
        self.cursor = wall

    async def _left_due(self) -> None:
        """A start recorded but not run: the task stopped as it was written (a schedule's cursor,
        a lease's start). A schedule's cursor goes back, so that the next start of the task (here,
        or on the node that takes it over) catches it up; a lease's start stays recorded (the next
        holder is due a period after it)."""
        if self.slot is None:
            self.log.info("iteration not run: the task stopped as its start was recorded")
            return
        self.log.info("stopped as its scheduled start was recorded: the start is left due")
        before = self._cursor_before
        with anyio.CancelScope(shield=True):
            await self._store_call(self.env.store.set_value, self._cursor_key, None if before is None else repr(before))
        self.cursor = before

    async def _store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await store_call(f"task {self.tc.name}'s schedule", fn, *args, give_up_after=10.0)
        except STORE_ERRORS as e:
            self.log.warning("schedule: the store failed (%s); a missed start may not be caught up", e)
            return None

    def _healthy(self) -> None:
        if self.crashes:
            self._set_crashes(0)

    def _set_crashes(self, n: int) -> None:
        self.crashes = n
        self.env.history.set_crashes(self.tc.name, n)  # written by the daemon's state writer

    async def _iteration(self) -> bool | None:
        """One run_once under the per-task lock and the task's timeout; True ok, False failed."""
        if not self.lock.try_acquire():  # the daemon leaves no holder's note: task:run knows it
            self.log.warning("iteration skipped: a one-shot task:run holds the lock (%s)", self.lock.holder())
            return None
        generation = self.lease.generation if self.lease is not None else None
        began = monotonic() if self.lease is not None else 0.0  # under a lease: see `ended`
        started = time.time() if self.lease is None else await self.lease.begin(generation)
        if started is None:  # from here nothing is awaited until the iteration's scope is set: a loss cancels it
            self.lock.release()
            self.log.info("iteration skipped: the task's lease is no longer held")
            return None
        if self._stop_asked():  # came while the database recorded the lease's start
            self.lock.release()
            await self._left_due()
            return None
        self._change(TaskState.RUNNING)
        self.iteration_started = started
        self.ctx.done = self.ctx.total = None
        self._cut = (RunOutcome.CANCELLED, "cancelled at stop")
        end: IterationEnd | None = None
        try:
            if self.lease is None:
                # only stop() cuts the iteration, and it ends the loop too: the loop's scope serves
                # (a scope made and left per iteration: 46 -> 41 us of CPU per no-op iteration, bench_iteration)
                self._iteration_scope = self._scope
                end = await run_iteration(self.task, self.ctx, self.tc.timeout, self.log)
            else:  # a lost lease cuts the iteration alone, and the loop waits for the lease again
                with anyio.CancelScope() as self._iteration_scope:
                    end = await run_iteration(self.task, self.ctx, self.tc.timeout, self.log)
        finally:
            self._iteration_scope = None
            self.lock.release()
            if end is None:  # cancelled: stop() says whether that was the planned end
                end = IterationEnd(*self._cut)
            # under a lease both times are the database's: the start it recorded, and the end
            # counted from before that start was asked for (never before the real end)
            ended = time.time() if self.lease is None else started + (monotonic() - began)
            run = Run(self.tc.name, started, ended, end.outcome, end.error, end.summary,
                      node=self.env.node or None, generation=generation)
            self.last = run
            self.runs += 1
            self.failures += end.outcome not in CLEAN_OUTCOMES
            self.env.history.append(run)
            if end.outcome in (RunOutcome.FAILED, RunOutcome.TIMEOUT) and self.env.emit:  # pipelines' task.failed
                self.env.emit("task.failed", {"task": self.tc.name, "outcome": end.outcome.value,
                                              "error": end.error or ""})
        if end.outcome in (RunOutcome.CANCELLED, RunOutcome.STOPPED):
            return None
        if end.outcome is RunOutcome.OK:
            self.log.debug("iteration ok in %.3fs%s", run.ended - run.started, f": {end.summary}" if end.summary else "")
        return end.outcome is RunOutcome.OK
