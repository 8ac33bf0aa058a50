"""The daemon: one process, one task group, one runner per task, the control socket.

Lifecycle (uvicorn/hypercorn style): acquire the pidfile lock, open the stores,
serve the socket, start the runners, notify READY; on the stop trigger stop in
stages (no new work, drain each task within stop_timeout, cancel), then clean up.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from . import __version__, logs, runtime
from .cluster import ClusterStore, ClusterView, DuplicateNode, NodeKeeper, NodeRow, config_hash, node_info, open_cluster
from .config import Config, TaskConfig, load
from .control import Access, ControlServer
from .notify import sd_notify, watchdog_interval
from .pidfile import DaemonRecord, PidFile
from .plugin import FAILURES, error_text
from .process import withhold_env
from .protocol import ControlError, Fault
from .registry import rescan
from .runner import RunnerEnv, TaskRunner
from .settings import ConfigError
from .states import STOPPED_STATES, TaskState, Wanted
from .statewriter import StateWriter
from .store import STORE_ERRORS, StateStore, TaskRecord, store_call
from .stores import SchemaMismatch, check_schema, open_state_store
from .wake import serve_wakes

log = logging.getLogger("schedulerd")

ShutdownTrigger = Callable[[], Awaitable[None]]


class Daemon:
    def __init__(self, config: Config, *, shutdown_trigger: ShutdownTrigger | None = None, log_to_stderr: bool = False):
        self.config = config
        self.shutdown_trigger = shutdown_trigger
        self.log_to_stderr = log_to_stderr
        self.runners: dict[str, TaskRunner] = {}
        self.started_at = time.time()
        self._stop = anyio.Event()
        self._reopen = anyio.Event()  # SIGUSR1: reopen the log files
        self._tg: TaskGroup | None = None
        self.store: StateStore | None = None
        self.jobs: Any = None
        self.pipelines: Any = None  # schedulerd.pipelinerun.PipelineService, once the job service runs
        self._env: RunnerEnv | None = None  # what the runners share; made once the store is open
        self._listeners: dict[str, list[TaskRunner]] = {}
        self.writer: StateWriter | None = None  # of the state store; made once it is open
        self._server: ControlServer | None = None
        self.cluster: ClusterStore | None = None  # a shared store's nodes and task leases
        self.keeper: NodeKeeper | None = None  # this node's heartbeat in it

    # --- entry ---------------------------------------------------------------
    async def serve(self) -> None:
        sch = self.config.scheduler
        logs.REDACTOR.add(self.config.secrets())
        withhold_env(self.config.secret_env_vars())
        logs.setup_scheduler_log(sch.log_dir, sch.log_level, sch.log_max_bytes, sch.log_backups, stderr=self.log_to_stderr)
        runtime.raise_fd_limit()
        runtime.keep_sleepers_young()
        pidfile = PidFile(sch.pidfile, DaemonRecord(os.getpid(), sch.socket, sch.state_dir, sch.log_dir))
        pidfile.acquire()
        try:
            sch.state_dir.mkdir(parents=True, exist_ok=True)
            # a schema this program does not know ends the start (SchemaMismatch); a store that
            # does not answer yet is waited for, said once in scheduler.log
            await store_call("checking the store's schema", check_schema, self.config.store)
            await self._join_cluster()
            self.store = await store_call("opening the state store", open_state_store, sch, self.config.store)
            self._env = RunnerEnv(self.config, self.store, sch.state_dir / "locks",
                                  make_logger=self._make_logger, emit=self.emit, add_jobs=self._add_jobs,
                                  node=sch.node, cluster=self.cluster)
            self.writer = StateWriter(self.store, self._env.history, lambda: self.config.scheduler)
            try:
                await self._serve()
            finally:
                self.store.close()
                if self.jobs is not None:
                    self.jobs.store.close()
                if self.keeper is not None:
                    await self.keeper.leave()
                    self.keeper.cluster.close()
        except (SchemaMismatch, DuplicateNode) as e:
            log.critical("schedulerd cannot start: %s", e)
            raise
        except Exception:  # in scheduler.log, not only on the stderr nobody reads (scheduler.out)
            log.critical("schedulerd is ending on an unexpected error", exc_info=True)
            raise
        finally:
            pidfile.release()
            log.info("schedulerd stopped")

    async def _join_cluster(self) -> None:
        """A shared store: enter this node in its registry (DuplicateNode when another live node
        has the id); its heartbeat then runs in the task group (NodeKeeper)."""
        store = self.config.store
        self.cluster = open_cluster(store)
        if self.cluster is None:
            return
        me = node_info(self.config.scheduler.node, __version__, "daemon", store.lease, self.config.tasks,
                       self.config.pipelines)
        await store_call("entering the node registry", self.cluster.register, me)
        self.keeper = NodeKeeper(self.cluster, me, store.store_retry, self._node_counts, self._follow)

    def _node_counts(self) -> tuple[int, int]:
        held = sum(1 for r in self.runners.values() if r.lease is not None and r.lease.held)
        return held, len(self.jobs.running) if self.jobs is not None else 0

    def _follow(self, view: ClusterView) -> None:
        """Each heartbeat: who holds which task, and the wanted states set on any node."""
        assert self._env is not None and self._tg is not None
        self._env.holders = view.holders
        pending = self._env.history.wanted  # this node's own changes, not written yet, win
        for name, wanted in view.wanted.items():
            runner = self.runners.get(name)
            if runner is None or name in pending or runner.wanted in (wanted, Wanted.DISABLED) or self._stop.is_set():
                continue
            if wanted is Wanted.STARTED and runner.state in STOPPED_STATES:
                log.info("task %s: started on another node (task:start): starting it here too", name)
                runner.wanted = wanted
                runner.start(self._tg)
            elif wanted is Wanted.STOPPED:
                log.info("task %s: stopped on another node (task:stop): stopping it here too", name)
                runner.wanted = wanted
                self._tg.start_soon(runner.stop)

    async def _serve(self) -> None:
        sch = self.config.scheduler
        from .jobs import JobService
        from .process import ChildRegistry, use_registry

        registry = ChildRegistry(sch.state_dir / "children")
        await anyio.to_thread.run_sync(registry.reap_orphans, log)
        use_registry(registry)
        self.jobs = JobService(self.config, sch.state_dir, self._make_logger, emit=self.emit)
        await self.jobs.recover()
        server = ControlServer(sch.socket, sch.socket_mode, sch.socket_group, Access(sch.allowed_uids, sch.socket_group),
                               sch.max_connections, sch.idle_timeout)
        self._routes(server)
        self._server = server
        # handlers before the socket exists: a SIGTERM sent as soon as the daemon answers must be
        # a clean stop, not the default action (no history written, socket file left behind)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as received:
            await self._serve_with(server, await server.listen(), received)

    async def _serve_with(self, server: ControlServer, listener: Any, signals: AsyncIterator[int]) -> None:
        sch, writer = self.config.scheduler, self.writer
        assert writer is not None  # (made with the store, in serve)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(server.serve, listener)
                tg.start_soon(self._signals, signals)
                tg.start_soon(self._reopen_logs)
                tg.start_soon(writer.run)
                if self.keeper is not None:
                    tg.start_soon(self.keeper.run)
                if self.shutdown_trigger is not None:
                    tg.start_soon(self._trigger)
                interval = watchdog_interval()
                if interval and sch.watchdog:
                    tg.start_soon(self._watchdog, interval)
                await self._apply_tasks(self.config, first=True)
                await tg.start(self.jobs.serve)
                from .pipelinerun import PipelineService

                self.pipelines = PipelineService(self.config, self.jobs.wake_queue)
                await tg.start(self.pipelines.serve)
                await tg.start(serve_wakes, sch.state_dir, sch.socket_mode, self.jobs.wake_queue)
                if self.config.http.enabled:  # the web console ([http]), in this task group (schedulerd.web)
                    from .web.server import serve_console

                    await tg.start(serve_console, server, self.config)
                log.info("schedulerd %s started (pid %d, %d tasks, socket %s)", __version__, os.getpid(),
                         len(self.runners), sch.socket)
                sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=running {len(self.runners)} tasks")
                await self._stop.wait()
                sd_notify("STOPPING=1")
                log.info("stopping: draining tasks (stop_timeout %.1fs)", sch.stop_timeout)
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await writer.write(give_up_after=sch.stop_timeout + 5)
            try:
                sch.socket.unlink()
            except FileNotFoundError:
                pass

    async def _shutdown(self) -> None:
        """Stage 1: no new work. Stage 2: drain every task and job at once, each within stop_timeout."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.jobs.stop)
            for r in self.runners.values():
                tg.start_soon(r.stop)
        for name in self.runners:
            logs.close_task_logger(name)

    def request_stop(self) -> None:
        """From now on nothing starts: state-changing commands get SHUTTING_DOWN, no reload."""
        if self._server is not None:
            self._server.shutting_down = True
        self._stop.set()

    def _refuse_when_stopping(self, what: str) -> None:
        if self._stop.is_set():
            raise ControlError(Fault.SHUTTING_DOWN, f"schedulerd is shutting down: {what} refused")

    async def _trigger(self) -> None:
        assert self.shutdown_trigger is not None
        await self.shutdown_trigger()
        self.request_stop()

    async def _reload_on_signal(self) -> None:
        try:
            await self.reload()
        except ControlError as e:
            if e.code == Fault.SHUTTING_DOWN:
                log.info("SIGHUP ignored: %s", e.message)
            # otherwise logged by reload(); the old configuration stays in force

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        """Signal handlers only set an event or schedule a reload; the task group does the work."""
        async for sig in signals:
            if sig == signal.SIGUSR1:
                self._reopen.set()
            elif sig == signal.SIGHUP:
                log.info("SIGHUP: reloading the configuration")
                # in the task group, not awaited here: a reload waiting for a store that does
                # not answer must not keep this loop from reading the SIGTERM that may follow
                assert self._tg is not None
                self._tg.start_soon(self._reload_on_signal)
            else:
                log.info("%s: stopping", signal.Signals(sig).name)
                self.request_stop()

    async def _reopen_logs(self) -> None:
        """After an external logrotate moved the log files (SIGUSR1): lines go to new files."""
        while True:
            await self._reopen.wait()
            self._reopen = anyio.Event()
            await anyio.to_thread.run_sync(logs.reopen_files)
            log.info("SIGUSR1: log files reopened")

    async def _watchdog(self, interval: float) -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await anyio.sleep(interval)

    # --- tasks ---------------------------------------------------------------
    def _make_logger(self, name: str) -> Any:
        sch = self.config.scheduler
        return logs.task_logger(name, sch.log_dir, sch.log_level, sch.log_max_bytes, sch.log_backups)

    @staticmethod
    def _wanted(tc: TaskConfig, rec: TaskRecord) -> Wanted:
        if not tc.enabled:
            return Wanted.DISABLED
        return rec.wanted or Wanted.STARTED

    async def _records(self, names: list[str]) -> dict[str, TaskRecord]:
        """The stored counters of tasks, read in one query in a worker thread; pending writes not yet saved win."""
        assert self.store is not None and self._env is not None
        store, sink = self.store, self._env.history
        stored = await store_call("reading the tasks' states", store.tasks, names)
        return {n: dataclasses.replace(r, crashes=sink.crashes.get(n, r.crashes), wanted=sink.wanted.get(n, r.wanted))
                for n, r in stored.items()}

    async def _apply_tasks(self, config: Config, first: bool = False) -> None:
        assert self._tg is not None
        assert self._env is not None
        records = await self._records([n for n in config.tasks if n not in self.runners])
        self._env.config = config
        self._listeners = {}
        started = 0
        with runtime.long_lived_objects():
            for name, tc in config.tasks.items():
                runner = self.runners.get(name)
                if runner is None:
                    rec = records[name]
                    runner = self.runners[name] = TaskRunner(tc, self._env, self._wanted(tc, rec), rec)
                    if runner.wanted is Wanted.STARTED:
                        runner.start(self._tg, quiet=first)
                        started += 1
                for event in {*runner.task.wake_on, *tc.trigger}:
                    self._listeners.setdefault(event, []).append(runner)
        self._env.heard = frozenset(self._listeners).union(
            pc.trigger.event for pc in config.pipelines.values() if pc.enabled and pc.trigger.event)
        if first:  # one line for all; each task's own start lines are at debug level in its log
            log.info("%d task(s) starting, %d stopped, %d disabled", started,
                     sum(r.wanted is Wanted.STOPPED for r in self.runners.values()),
                     sum(r.wanted is Wanted.DISABLED for r in self.runners.values()))

    async def reload(self) -> dict[str, list[str]]:
        """New tasks start, removed ones stop, changed ones restart, unchanged ones are untouched."""
        self._refuse_when_stopping("reload")
        try:
            new = await anyio.to_thread.run_sync(rescan_and_load, self.config.file)
        except ConfigError as e:
            log.error("reload refused, the running configuration stays in force: %s", e)
            raise ControlError(Fault.CONFIG_INVALID, str(e)) from None
        except FAILURES as e:  # a plugin's own checks raised something else (its bug): still only a refusal
            why = f"checking the configuration failed: {error_text(e)}"
            log.error("reload refused, the running configuration stays in force: %s", why, exc_info=True)
            raise ControlError(Fault.CONFIG_INVALID, why) from None
        old_tasks = self.config.tasks
        removed = [n for n in old_tasks if n not in new.tasks]
        changed = [n for n in new.tasks if n in old_tasks and new.tasks[n] != old_tasks[n]]
        added = [n for n in new.tasks if n not in old_tasks]
        if new.scheduler != self.config.scheduler:
            log.warning("[scheduler] settings changed: socket, pidfile and directories apply at the next restart")
        async with anyio.create_task_group() as tg:
            for n in removed + changed:
                tg.start_soon(self.runners[n].stop)
        for n in removed + changed:
            del self.runners[n]
            logs.close_task_logger(n)
        self._refuse_when_stopping("reload")  # the stop came while the old tasks stopped: start nothing
        self.config = new
        logs.REDACTOR.add(new.secrets())
        withhold_env(new.secret_env_vars())
        await self._apply_tasks(new)
        self.jobs.reconfigure(new)
        if self.pipelines is not None:
            self.pipelines.reconfigure(new)
        if self.keeper is not None:  # cluster:nodes shows the new task and pipeline configuration's hash
            self.keeper.me = dataclasses.replace(self.keeper.me, config_hash=config_hash(new.tasks, new.pipelines))
        log.info("configuration reloaded: %d added, %d changed, %d removed", len(added), len(changed), len(removed))
        return {"added": added, "changed": changed, "removed": removed}

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        if self.pipelines is not None:  # pipelines this event triggers
            self.pipelines.on_event(event, data)
        for runner in self._listeners.get(event, ()):
            if runner.state in (TaskState.WAITING, TaskState.RUNNING):  # running: one more pass right after
                runner.ctx.wake()

    async def _add_jobs(self, type: str, payloads: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        ids: list[int] = await self.jobs.add_many(type, payloads, **options)
        return ids

    def _runner(self, args: dict[str, Any]) -> TaskRunner:
        name = args.get("name")
        if not isinstance(name, str):
            raise ControlError(Fault.BAD_ARGUMENTS, "missing task name")
        try:
            return self.runners[name]
        except KeyError:
            raise ControlError(Fault.NO_SUCH_TASK, f"no task named {name!r}") from None

    # --- control commands ----------------------------------------------------
    def _routes(self, server: ControlServer) -> None:
        r = server.route
        r("ping", self.c_ping, during_shutdown=True)
        r("state", self.c_state, during_shutdown=True)
        r("queue.list", self.c_queue_list, during_shutdown=True)  # the queues alone (the console's jobs page)
        r("task.list", self.c_task_list, during_shutdown=True)
        r("task.page", self.c_task_page, during_shutdown=True)  # the console's tasks table, a page at a time
        r("task.state", self.c_task_state, during_shutdown=True)
        r("task.start", self.c_task_start)
        r("task.stop", self.c_task_stop)
        r("task.restart", self.c_task_restart)
        r("task.run-now", self.c_task_run_now)
        r("task.history", self.c_task_history, during_shutdown=True)
        r("reload", self.c_reload)
        r("shutdown", self.c_shutdown, during_shutdown=True)  # asked twice: the same answer
        r("logs.reopen", self.c_logs_reopen, during_shutdown=True)  # as SIGUSR1, answered once done
        server.route_stream("log.tail", self.c_log_tail)
        from .jobcontrol import routes

        routes(server, lambda: self.jobs)
        r("pipeline.wake", self.c_pipeline_wake, during_shutdown=True)  # pipeline:run added a run to the store

    async def c_pipeline_wake(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.pipelines is not None:
            self.pipelines.waker.wake()
        return {"woken": self.pipelines is not None}

    async def c_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    async def c_state(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "started_at": self.started_at,
                "uptime": time.time() - self.started_at, "config": str(self.config.file),
                "tasks": [r.snapshot() for r in self.runners.values()], "queues": await self._queue_states(),
                "cluster": self._cluster_status()}

    async def c_queue_list(self, args: dict[str, Any]) -> list[dict[str, Any]] | None:
        return await self._queue_states()

    async def _queue_states(self) -> list[dict[str, Any]] | None:
        """The queues as the store has them; None while the store does not answer (the state still shows)."""
        try:
            with anyio.fail_after(3):
                states: list[dict[str, Any]] = await self.jobs.queue_states()
                return states
        except (TimeoutError, *STORE_ERRORS):
            return None

    def _cluster_status(self) -> dict[str, Any]:
        if self.keeper is not None:
            return self.keeper.status()
        sch = self.config.scheduler  # the SQLite store: this one node
        me = node_info(sch.node, __version__, "daemon", self.config.store.lease, self.config.tasks,
                       self.config.pipelines)
        held = sum(1 for r in self.runners.values() if r.state not in STOPPED_STATES)
        row = NodeRow(me.id, me.host, me.pid, me.version, me.kind, self.started_at, time.time(), 0.0, True,
                      me.config_hash, held, len(self.jobs.running) if self.jobs is not None else 0)
        return {"node": me.id, "store": "ok", "store_down_since": None, "warnings": [], "nodes": [vars(row)]}

    async def c_task_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [r.snapshot() for r in self.runners.values()]

    async def c_task_page(self, args: dict[str, Any]) -> dict[str, Any]:
        """The snapshots of `limit` tasks from `offset`, among those whose name contains `match`;
        how many match, and every task's state (a snapshot costs: 1,000 of them are tens of ms)."""
        try:
            offset, limit, match = int(args.get("offset", 0)), int(args.get("limit", 100)), str(args.get("match", ""))
        except (TypeError, ValueError):
            raise ControlError(Fault.BAD_ARGUMENTS, "offset, limit: expected whole numbers") from None
        matching = [r for r in self.runners.values() if match in r.tc.name]
        return {"total": len(matching), "tasks": [r.snapshot() for r in matching[max(0, offset):][:max(0, limit)]],
                "states": [r.state.value for r in self.runners.values()]}

    async def c_task_state(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._runner(args).snapshot()

    async def c_task_start(self, args: dict[str, Any]) -> dict[str, Any]:
        runner = self._runner(args)
        if runner.wanted is Wanted.DISABLED:
            raise ControlError(Fault.TASK_DISABLED, f"task {runner.tc.name} is disabled (tasks.{runner.tc.name}.enabled = false)")
        if runner.state is TaskState.STOPPING:
            await runner.stop()
        self._refuse_when_stopping(f"task.start {runner.tc.name}")  # the daemon began to stop meanwhile
        runner.wanted = Wanted.STARTED
        assert self._env is not None
        self._env.history.set_wanted(runner.tc.name, Wanted.STARTED)  # saved by the state writer
        assert self._tg is not None
        runner.start(self._tg)
        return runner.snapshot()

    async def c_task_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        runner = self._runner(args)
        if runner.wanted is not Wanted.DISABLED:
            runner.wanted = Wanted.STOPPED
            assert self._env is not None
            self._env.history.set_wanted(runner.tc.name, Wanted.STOPPED)
        await runner.stop(args.get("timeout"))
        return runner.snapshot()

    async def c_task_restart(self, args: dict[str, Any]) -> dict[str, Any]:
        runner = self._runner(args)
        await runner.stop()
        return await self.c_task_start(args)

    async def c_task_run_now(self, args: dict[str, Any]) -> dict[str, Any]:
        runner = self._runner(args)
        if runner.state in (TaskState.STOPPED, TaskState.CRASHED, TaskState.STOPPING):
            raise ControlError(Fault.NOT_RUNNING,
                               f"task {runner.tc.name} is {runner.state}: use task:start, or task:run for a one-shot")
        runner.run_now()
        return runner.snapshot()

    async def c_task_history(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        runner = self._runner(args)
        limit = args.get("limit", 20)
        assert self.writer is not None
        if not self.writer.busy:  # what ended just now is shown; a busy store: the writer saves it later
            await self.writer.write(give_up_after=0)
        return [r._asdict() for r in await anyio.to_thread.run_sync(self.writer.store.history, runner.tc.name,
                                                                     int(limit))]

    async def c_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    async def c_logs_reopen(self, args: dict[str, Any]) -> dict[str, bool]:
        await anyio.to_thread.run_sync(logs.reopen_files)
        log.info("log files reopened (scheduler:reopen-logs)")
        return {"reopened": True}

    async def c_shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        self.request_stop()
        return {"stopping": True, "pid": os.getpid()}

    def _log_source(self, args: dict[str, Any]) -> tuple[str | logs.Follow, list[Path]]:
        """What `log.tail` shows: the scheduler log, one task's log, or (all_tasks) every task's."""
        log_dir = self.config.scheduler.log_dir
        if args.get("all_tasks"):
            return logs.Follow.ALL_TASKS, [logs.task_log_path(log_dir, name) for name in self.runners]
        task = args.get("task")
        if task is None:
            return logs.Follow.SCHEDULER, [logs.scheduler_log_path(log_dir)]
        name = self._runner({"name": task}).tc.name
        return name, [logs.task_log_path(log_dir, name)]

    async def c_log_tail(self, args: dict[str, Any]) -> AsyncIterator[str]:
        n = int(args.get("lines", 20))
        want, paths = self._log_source(args)
        send, receive = anyio.create_memory_object_stream[str](1000)
        if args.get("follow"):
            logs.BROADCAST.subscribers[send] = want
        try:
            for line in await anyio.to_thread.run_sync(logs.merged_tail, paths, n):
                yield line
            if args.get("follow"):
                async with receive:
                    async for line in receive:
                        yield line
        finally:
            logs.BROADCAST.subscribers.pop(send, None)
            send.close()
            receive.close()


def rescan_and_load(file: Path | None) -> Config:
    """The configuration on disk, its task and job types looked up afresh (new modules in tasks/)."""
    rescan()
    return load(file)


def run(config_path: Path | None = None, *, log_to_stderr: bool = False) -> int:
    """The synchronous entry point (`scheduler:run`, and the detached child of `scheduler:start`)."""
    from .pidfile import AlreadyRunning

    try:
        config = load(config_path)
    except ConfigError as e:
        print(f"schedulerd: {e}", file=sys.stderr)
        return 2
    try:
        anyio.run(Daemon(config, log_to_stderr=log_to_stderr).serve)
    except (SchemaMismatch, DuplicateNode) as e:
        print(f"schedulerd: {e}", file=sys.stderr)
        return 2
    except AlreadyRunning as e:  # one line, not "schedulerd: schedulerd is ..."
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="schedulerd-daemon")
    p.add_argument("--config", type=Path)
    p.add_argument("--stderr", action="store_true")
    a = p.parse_args()
    sys.exit(run(a.config, log_to_stderr=a.stderr))
