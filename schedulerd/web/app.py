"""The console's ASGI application (Starlette): pages, actions, the live log, /metrics.

Every page and action calls the daemon through `ControlServer.dispatch`, the functions behind
the control socket's commands (task.start, job.retry, ...): the same checks, the same
SHUTTING_DOWN refusal while the daemon stops. The login check is an ASGI middleware in front
of the router, so an unknown path without a login gets 403 too."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..control import ControlServer
from ..protocol import ControlError, Fault
from ..settings import format_duration
from ..states import JobState
from . import auth, metrics
from .settings import HttpSettings

HERE = Path(__file__).parent
COOKIE = "schedulerd_session"
LOGIN_COOKIE = "schedulerd_login"  # the login form's CSRF token (double submit): no session yet
MAX_FORM = 16 * 1024
JOBS_SHOWN = 200  # the jobs table shows the newest this many of the filter (counts show them all)
TASK_ACTIONS = ("start", "stop", "run-now", "restart")
JOB_ACTIONS = {"retry": ("job.retry", {}), "cancel": ("job.cancel", {}),
               "raise": ("job.priority", {"delta": 1}), "lower": ("job.priority", {"delta": -1})}
PURGE = {"finished": ["finished"], "finished-failed": ["finished", "failed", "cancelled"]}
STATUS = {Fault.NO_SUCH_TASK: 404, Fault.NO_SUCH_JOB: 404, Fault.NO_SUCH_QUEUE: 404, Fault.SHUTTING_DOWN: 503,
          Fault.BAD_ARGUMENTS: 400}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"), (b"cache-control", b"no-store")]


def ago(ts: float | None) -> str:
    return "" if ts is None else format_duration(max(0, round(time.time() - ts)))


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["duration"] = lambda s: "" if s is None else format_duration(round(s, 1) if s < 1 else round(s))
    env.filters["ago"] = ago
    env.filters["when"] = lambda ts: "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return env


class Console:
    """What the pages need: the control server's commands, the [http] settings, the sessions."""

    def __init__(self, control: ControlServer, settings: HttpSettings, *, unix_socket: bool):
        self.control = control
        self.settings = settings
        self.unix_socket = unix_socket
        self.sessions = auth.Sessions(settings.session_max_age)
        self.login_limiter = anyio.CapacityLimiter(2)  # password checks at once (see login)
        self.templates = _templates()

    async def call(self, cmd: str, **args: Any) -> Any:
        return await self.control.dispatch(cmd, args)

    def user(self, request: Request) -> auth.Session | None:
        header = self.settings.proxy_user_header
        if header and self.unix_socket:
            name = request.headers.get(header)
            if name:
                return self.sessions.proxy_session(name)
        return self.sessions.get(request.cookies.get(COOKIE))

    def page(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        session: auth.Session | None = request.scope.get("session_user")
        html = self.templates.get_template(template).render(
            user=session.user if session else None, csrf=session.csrf if session else "",
            refresh=self.settings.refresh, path=request.url.path, **values)
        return HTMLResponse(html, status)


class Gate:
    """ASGI middleware before the router: security headers on every answer; no login, no page
    (403, unknown paths too); /metrics from loopback or with the token."""

    def __init__(self, app: ASGIApp, console: Console):
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        began = time.perf_counter()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":  # the page is rendered by then: its server time
                took = f"app;dur={(time.perf_counter() - began) * 1000:.1f}".encode()
                message["headers"] = [*message.get("headers", []), *HEADERS, (b"server-timing", took)]
            await send(message)

        request = Request(scope)
        session = self.console.user(request)
        scope["session_user"] = session
        if session is None and not self._open(request):
            response = self.console.page(request, "refused.html", 403)
            await response(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)

    def _open(self, request: Request) -> bool:
        """What answers without a login: the login form, and /metrics when allowed."""
        path = request.url.path
        if path == "/login":
            return True
        if path == "/metrics":
            return metrics.may_read(request, self.console.settings, self.console.unix_socket)
        return False


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form (the console's forms have a few short fields), bounded in size."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ControlError(Fault.BAD_ARGUMENTS, "form too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def back(form: dict[str, str], default: str) -> str:
    """Where an action returns: the page it was sent from (a local path only)."""
    target = form.get("next", "")
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else default


Action = Callable[[Request, dict[str, str]], Awaitable[Any]]


def action(console: Console, default: str, do: Action) -> Callable[[Request], Awaitable[Response]]:
    """A POST: the CSRF token checked first, then `do`; back to the page, or the daemon's refusal."""

    async def endpoint(request: Request) -> Response:
        session: auth.Session = request.scope["session_user"]
        try:
            form = await read_form(request)
        except ControlError as e:
            return console.page(request, "error.html", 413, message=e.message)
        if not auth.same_token(form.get("csrf"), session.csrf):
            return console.page(request, "error.html", 403, message="missing or wrong CSRF token: reload the page")
        try:
            await do(request, form)
        except ControlError as e:
            return console.page(request, "error.html", STATUS.get(e.code, 409), message=e.message)
        return RedirectResponse(back(form, default), 303)

    return endpoint


def build(console: Console) -> ASGIApp:
    c = console

    async def index(request: Request) -> Response:
        return RedirectResponse("/tasks", 303)

    async def login_form(request: Request, status: int = 200, error: str | None = None) -> Response:
        token = secrets.token_urlsafe(32)
        response = c.page(request, "login.html", status, login_token=token, error=error)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=c.settings.tls, path="/login")
        return response

    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
        except ControlError as e:
            return await login_form(request, 413, e.message)
        if not auth.same_token(form.get("csrf"), request.cookies.get(LOGIN_COOKIE) or "-"):
            return await login_form(request, 403, "the login form expired: try again")
        user, password = form.get("user", ""), form.get("password", "")
        stored = c.settings.users.get(user)
        # scrypt costs 16 MiB and tens of ms: two at a time, in threads of their own limiter, so a
        # flood of logins cannot take the worker threads the store calls need
        ok = await anyio.to_thread.run_sync(auth.check_password, password, stored or auth.DUMMY_HASH,
                                            limiter=c.login_limiter)
        if not ok or stored is None:
            return await login_form(request, 403, "wrong user name or password")
        response = RedirectResponse("/tasks", 303)
        response.set_cookie(COOKIE, c.sessions.create(user), httponly=True, samesite="strict", secure=c.settings.tls,
                            max_age=int(c.settings.session_max_age), path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(request: Request, form: dict[str, str]) -> None:
        c.sessions.end(request.cookies.get(COOKIE))

    async def tasks(request: Request) -> Response:
        snapshots = await c.call("task.list")
        clustered = any(t["cluster"] for t in snapshots)
        template = "tasks_rows.html" if request.query_params.get("fragment") else "tasks.html"
        return c.page(request, template, tasks=snapshots, clustered=clustered)

    async def task(request: Request) -> Response:
        name = request.path_params["name"]
        snapshot = await c.call("task.state", name=name)
        history = await c.call("task.history", name=name, limit=50)
        lines = [line async for line in c.control.stream("log.tail", {"task": name, "lines": 200})]
        return c.page(request, "task.html", task=snapshot, history=history, lines=lines)

    async def task_log(request: Request) -> Response:
        name = request.path_params["name"]
        await c.call("task.state", name=name)  # NO_SUCH_TASK before the stream starts
        return StreamingResponse(sse(c.control.stream("log.tail", {"task": name, "lines": 0, "follow": True})),
                                 media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def task_action(request: Request, form: dict[str, str]) -> None:
        verb = request.path_params["action"]
        if verb not in TASK_ACTIONS:
            raise ControlError(Fault.BAD_ARGUMENTS, f"no action {verb!r} (known: {', '.join(TASK_ACTIONS)})")
        await c.call(f"task.{verb}", name=request.path_params["name"])

    async def jobs(request: Request) -> Response:
        state, queue = request.query_params.get("state") or None, request.query_params.get("queue") or None
        if state is not None and state not in {s.value for s in JobState}:
            return c.page(request, "error.html", 400, message=f"state: no job state {state!r}")
        listing = await c.call("job.list", state=state, queue=queue, limit=JOBS_SHOWN)
        queues = await c.call("state")
        template = "jobs_rows.html" if request.query_params.get("fragment") else "jobs.html"
        query = urlencode({k: v for k, v in (("state", state), ("queue", queue)) if v})
        return c.page(request, template, jobs=listing["jobs"], counts=listing["counts"], queues=queues["queues"] or [],
                      states=[s.value for s in JobState], state=state, queue=queue, shown=JOBS_SHOWN,
                      here="/jobs" + (f"?{query}" if query else ""), now=time.time())

    async def job_action(request: Request, form: dict[str, str]) -> None:
        verb = request.path_params["action"]
        if verb not in JOB_ACTIONS:
            raise ControlError(Fault.BAD_ARGUMENTS, f"no action {verb!r} (known: {', '.join(JOB_ACTIONS)})")
        cmd, extra = JOB_ACTIONS[verb]
        await c.call(cmd, id=request.path_params["id"], **extra)

    async def purge(request: Request, form: dict[str, str]) -> None:
        states = PURGE.get(form.get("what", ""))
        if states is None:
            raise ControlError(Fault.BAD_ARGUMENTS, f"what: expected one of {', '.join(PURGE)}")
        await c.call("job.purge", states=states)

    async def queue_action(request: Request, form: dict[str, str]) -> None:
        verb = request.path_params["action"]
        if verb not in ("pause", "resume"):
            raise ControlError(Fault.BAD_ARGUMENTS, f"no action {verb!r} (known: pause, resume)")
        await c.call(f"queue.{verb}", queue=request.path_params["name"])

    async def scrape(request: Request) -> Response:
        body = await metrics.scrape(c)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    async def not_found(request: Request, exc: Exception) -> Response:
        return c.page(request, "error.html", 404, message=f"no page {request.url.path}")

    async def refused(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ControlError):  # registered for ControlError only
            raise exc
        return c.page(request, "error.html", STATUS.get(exc.code, 409), message=exc.message)

    routes = [
        Route("/", index),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", action(c, "/login", logout), methods=["POST"]),
        Route("/tasks", tasks),
        Route("/tasks/{name}", task),
        Route("/tasks/{name}/log", task_log),
        Route("/tasks/{name}/{action}", action(c, "/tasks", task_action), methods=["POST"]),
        Route("/jobs", jobs),
        Route("/jobs/purge", action(c, "/jobs", purge), methods=["POST"]),
        Route("/jobs/{id:int}/{action}", action(c, "/jobs", job_action), methods=["POST"]),
        Route("/queues/{name}/{action}", action(c, "/jobs", queue_action), methods=["POST"]),
        Route("/metrics", scrape),
        Mount("/static", StaticFiles(directory=HERE / "static")),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, ControlError: refused})
    return Gate(app, c)


async def sse(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Server-sent events: one event per log line (a traceback's lines are `data:` lines of one event)."""
    async for line in lines:
        yield "".join(f"data: {part}\n" for part in line.split("\n")) + "\n"
