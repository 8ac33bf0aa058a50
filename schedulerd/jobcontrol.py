"""The control socket's job and queue commands (`job.*`, `queue.pause`/`queue.resume`): what the
web console asks of the daemon's job service. The CLI writes jobs to the store itself and then
says `job.wake`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .jobadd import check_queue
from .jobs import JobService, RunningJob
from .jobstore import Job, JobError
from .protocol import ControlError, Fault
from .store import store_call


def job_view(job: Job, running: RunningJob | None = None) -> dict[str, Any]:
    d = job.to_json()
    if running is not None and running.ctx is not None and running.ctx.done is not None:
        d["done"], d["total"] = running.ctx.done, running.ctx.total
    return d


def routes(server: Any, service: Callable[[], JobService]) -> None:
    """Control commands for jobs; the CLI writes jobs to the store itself and then says `job.wake`."""
    c = JobCommands(service)
    server.route("job.retry", c.retry)
    server.route("job.priority", c.priority)
    server.route("job.purge", c.purge)
    server.route("queue.pause", functools.partial(c.pause, paused=True))
    server.route("queue.resume", functools.partial(c.pause, paused=False))
    server.route("job.list", c.listing, during_shutdown=True)
    server.route("job.wake", c.wake, during_shutdown=True)  # the job is in the store already; no dispatch now
    server.route("job.cancel", c.cancel)
    server.route("job.add", c.add)
    server.route("job.running", c.running, during_shutdown=True)


class JobCommands:
    """Each command takes the request's arguments and answers what goes back to the client."""

    def __init__(self, service: Callable[[], JobService]):
        self.service = service  # the daemon's job service of the moment

    async def wake(self, args: dict[str, Any]) -> dict[str, Any]:
        s = self.service()
        queue = args.get("queue")
        if isinstance(queue, str):  # a job was added to this queue
            s.wake_queue(queue)
        else:  # something changed somewhere (pause, resume, retry): the service's loop looks again
            s.wake_all()
        return {"woken": True}

    async def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return job_view(await self.service().cancel(_id(args)))
        except JobError as e:
            raise ControlError(Fault.BAD_JOB_STATE if "no job" not in str(e) else Fault.NO_SUCH_JOB, str(e)) from None

    async def add(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            jid = await self.service().submit(str(args.get("type")), args.get("payload") or {},
                                              queue=args.get("queue"), priority=int(args.get("priority", 0)),
                                              after=tuple(int(a) for a in args.get("after", ())))
        except JobError as e:
            raise ControlError(Fault.BAD_JOB, str(e)) from None
        return {"id": jid}

    async def running(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [job_view(r.job, r) for r in self.service().running.values()]

    async def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        s = self.service()
        job = await _change("retrying a job", functools.partial(s.store.retry, _id(args)))
        s.wake_queue(job.queue)
        return job_view(job)

    async def priority(self, args: dict[str, Any]) -> dict[str, Any]:
        delta = args.get("delta")
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise ControlError(Fault.BAD_ARGUMENTS, "delta: expected an integer (+1 raises, -1 lowers)")
        store = self.service().store
        return job_view(await _change("moving a job", functools.partial(store.change_priority, _id(args), delta)))

    async def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        states = args.get("states")
        if not isinstance(states, list) or not states or not set(states) <= {"finished", "failed", "cancelled"}:
            raise ControlError(Fault.BAD_ARGUMENTS, "states: expected a list of finished, failed, cancelled")
        return {"purged": await _change("purging jobs", functools.partial(self.service().store.purge, states))}

    async def pause(self, args: dict[str, Any], *, paused: bool) -> dict[str, Any]:
        s, queue = self.service(), args.get("queue")
        if not isinstance(queue, str):
            raise ControlError(Fault.BAD_ARGUMENTS, "missing queue name")
        try:
            await store_call("checking a queue", check_queue, s.store, s.config, queue, give_up_after=10)
        except JobError as e:
            raise ControlError(Fault.NO_SUCH_QUEUE, str(e)) from None
        await _change("pausing a queue", functools.partial(s.store.set_paused, queue, paused))
        s.wake_all()
        return {"queue": queue, "paused": paused}

    async def listing(self, args: dict[str, Any]) -> dict[str, Any]:
        """Jobs newest first (running ones with live progress), filtered, and the counts by queue and state."""
        s = self.service()
        state, queue, limit = args.get("state"), args.get("queue"), int(args.get("limit", 200))
        before = None if args.get("before") is None else int(args["before"])  # the next page: ids below it
        jobs = await store_call("listing jobs", s.store.list, state, queue, limit, before, give_up_after=10)
        counts = await store_call("counting jobs", s.store.count_by_queue_state, give_up_after=10)
        return {"jobs": [job_view(j, s.running.get(j.id)) for j in jobs],
                "counts": [{"queue": q, "state": st, "jobs": n} for (q, st), n in sorted(counts.items())]}


def _id(args: dict[str, Any]) -> int:
    try:
        return int(args["id"])
    except (KeyError, TypeError, ValueError):
        raise ControlError(Fault.BAD_ARGUMENTS, "expected a job id") from None


async def _change(what: str, fn: Callable[[], Any]) -> Any:
    """A store operation the CLI does itself (job:retry, queue:pause, ...), for the web console."""
    try:
        return await store_call(what, fn, give_up_after=10)
    except JobError as e:
        raise ControlError(Fault.NO_SUCH_JOB if "no job" in str(e) else Fault.BAD_JOB_STATE, str(e)) from None
