"""The console's pages (GET): the tasks table, a task with its history and live log, the jobs
table a page at a time, /metrics. The daemon's answers come from `Console.call` (the control
socket's commands); the tables are rendered off the event loop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from ..states import JobState
from . import metrics
from .console import Console

TASKS_SHOWN = 100  # tasks on one page of the tasks table, in the config's order
JOBS_SHOWN = 100  # jobs on one page of the jobs table, newest first (the counts show them all)
JOB_STATES = [s.value for s in JobState]


class Pages:
    def __init__(self, console: Console):
        self.c = console

    async def index(self, request: Request) -> Response:
        return RedirectResponse("/tasks", 303)

    async def tasks(self, request: Request) -> Response:
        """TASKS_SHOWN tasks a page (`page=N`), of those whose name contains `match`."""
        q = request.query_params
        match, page = q.get("match", ""), q.get("page") or "1"
        number = whole_number(page, 9)
        if number is None:
            return self.c.page(request, "error.html", 400, message=f"page: expected a page number, got {page!r}")
        listing = await self.c.call("task.page", offset=(number - 1) * TASKS_SHOWN, limit=TASKS_SHOWN, match=match)
        pages = max(1, -(-listing["total"] // TASKS_SHOWN))

        def link(n: int) -> str:
            params = urlencode({**({"match": match} if match else {}), **({"page": n} if n > 1 else {})})
            return "/tasks" + (f"?{params}" if params else "")

        return await self.c.table(
            request, "tasks_rows.html" if q.get("fragment") else "tasks.html", tasks=listing["tasks"],
            clustered=any(t["cluster"] for t in listing["tasks"]), total=listing["total"], match=match,
            number=number, pages=pages, here=link(number), previous=link(number - 1) if number > 1 else None,
            next=link(number + 1) if number < pages else None)

    async def task(self, request: Request) -> Response:
        name = request.path_params["name"]
        snapshot = await self.c.call("task.state", name=name)
        history = await self.c.call("task.history", name=name, limit=50)
        lines = [line async for line in self.c.control.stream("log.tail", {"task": name, "lines": 200})]
        return await self.c.table(request, "task.html", task=snapshot, history=history, lines=lines)

    async def task_log(self, request: Request) -> Response:
        name = request.path_params["name"]
        await self.c.call("task.state", name=name)  # NO_SUCH_TASK before the stream starts
        lines = self.c.control.stream("log.tail", {"task": name, "lines": 0, "follow": True})
        return StreamingResponse(sse(lines), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def jobs(self, request: Request) -> Response:
        """JOBS_SHOWN jobs of the filter, newest first; `before=ID`: the page of those older than ID."""
        q = request.query_params
        state, queue, before = q.get("state") or None, q.get("queue") or None, q.get("before") or None
        if state is not None and state not in JOB_STATES:
            return self.c.page(request, "error.html", 400, message=f"state: no job state {state!r}")
        older_than = None if before is None else whole_number(before, 18)
        if before is not None and older_than is None:
            return self.c.page(request, "error.html", 400, message=f"before: expected a job id, got {before!r}")
        listing = await self.c.call("job.list", state=state, queue=queue, limit=JOBS_SHOWN, before=older_than)
        queues = await self.c.call("queue.list")
        filters = {k: v for k, v in (("state", state), ("queue", queue)) if v}
        jobs = listing["jobs"]
        older = urlencode({**filters, "before": jobs[-1]["id"]}) if len(jobs) >= JOBS_SHOWN else None
        here = {**filters, **({"before": before} if before else {})}
        return await self.c.table(
            request, "jobs_rows.html" if q.get("fragment") else "jobs.html",
            jobs=jobs, counts=listing["counts"], queues=queues or [], states=JOB_STATES, state=state, queue=queue,
            shown=JOBS_SHOWN, before=before, newest="/jobs" + (f"?{urlencode(filters)}" if filters else ""),
            older=f"/jobs?{older}" if older else None, here="/jobs" + (f"?{urlencode(here)}" if here else ""),
            now=time.time())

    async def scrape(self, request: Request) -> Response:
        return Response(await metrics.scrape(self.c), media_type=metrics.CONTENT_TYPE)


def whole_number(text: str, max_digits: int) -> int | None:
    """`text` as a number from 1, in at most `max_digits` ASCII digits; None if it is not one
    ('²' and '١' are digits to str.isdigit, and int('²') raises)."""
    if text.isascii() and text.isdigit() and len(text) <= max_digits and int(text) > 0:
        return int(text)
    return None


async def sse(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Server-sent events: one event per log line (a traceback's lines are `data:` lines of one event)."""
    async for line in lines:
        yield "".join(f"data: {part}\n" for part in line.split("\n")) + "\n"
