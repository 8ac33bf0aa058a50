"""The console's ASGI application (Starlette): pages, actions, the live log, /metrics.

Every page and action calls the daemon through `ControlServer.dispatch`, the functions behind
the control socket's commands (task.start, job.retry, ...): the same checks, the same
SHUTTING_DOWN refusal while the daemon stops. The login check is an ASGI middleware in front
of the router, so an unknown path without a login gets 403 too. The pages are in `pages`, the
login in `login`; here the gate, the actions (POSTs) and the routes."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..protocol import ControlError, Fault
from . import auth, metrics
from .console import HERE, STATUS, Console, read_form
from .login import Login
from .pages import Pages

TASK_ACTIONS = ("start", "stop", "run-now", "restart")
JOB_ACTIONS = {"retry": ("job.retry", {}), "cancel": ("job.cancel", {}),
               "raise": ("job.priority", {"delta": 1}), "lower": ("job.priority", {"delta": -1})}
PURGE = {"finished": ["finished"], "finished-failed": ["finished", "failed", "cancelled"]}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"), (b"cache-control", b"no-store")]
Endpoint = Callable[[Request], Awaitable[Response]]


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


def back(form: dict[str, str], default: str) -> str:
    """Where an action returns: the page it was sent from (a local path only)."""
    target = form.get("next", "")
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else default


Action = Callable[[Request, dict[str, str]], Awaitable[Any]]


def action(console: Console, default: str, do: Action) -> Endpoint:
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


async def task_action(c: Console, request: Request, form: dict[str, str]) -> None:
    verb = request.path_params["action"]
    if verb not in TASK_ACTIONS:
        raise ControlError(Fault.BAD_ARGUMENTS, f"no action {verb!r} (known: {', '.join(TASK_ACTIONS)})")
    await c.call(f"task.{verb}", name=request.path_params["name"])


async def job_action(c: Console, request: Request, form: dict[str, str]) -> None:
    verb = request.path_params["action"]
    if verb not in JOB_ACTIONS:
        raise ControlError(Fault.BAD_ARGUMENTS, f"no action {verb!r} (known: {', '.join(JOB_ACTIONS)})")
    cmd, extra = JOB_ACTIONS[verb]
    await c.call(cmd, id=request.path_params["id"], **extra)


async def purge(c: Console, request: Request, form: dict[str, str]) -> None:
    states = PURGE.get(form.get("what", ""))
    if states is None:
        raise ControlError(Fault.BAD_ARGUMENTS, f"what: expected one of {', '.join(PURGE)}")
    await c.call("job.purge", states=states)


async def queue_action(c: Console, request: Request, form: dict[str, str]) -> None:
    verb = request.path_params["action"]
    if verb not in ("pause", "resume"):
        raise ControlError(Fault.BAD_ARGUMENTS, f"no action {verb!r} (known: pause, resume)")
    await c.call(f"queue.{verb}", queue=request.path_params["name"])


def routes(c: Console) -> list[BaseRoute]:
    pages, login = Pages(c), Login(c)

    def act(default: str, do: Callable[[Console, Request, dict[str, str]], Awaitable[None]]) -> Endpoint:
        return action(c, default, functools.partial(do, c))

    return [
        Route("/", pages.index),
        Route("/login", login.form, methods=["GET"]),
        Route("/login", login.submit, methods=["POST"]),
        Route("/logout", action(c, "/login", login.logout), methods=["POST"]),
        Route("/tasks", pages.tasks),
        Route("/tasks/{name}", pages.task),
        Route("/tasks/{name}/log", pages.task_log),
        Route("/tasks/{name}/{action}", act("/tasks", task_action), methods=["POST"]),
        Route("/jobs", pages.jobs),
        Route("/jobs/purge", act("/jobs", purge), methods=["POST"]),
        Route("/jobs/{id:int}/{action}", act("/jobs", job_action), methods=["POST"]),
        Route("/queues/{name}/{action}", act("/jobs", queue_action), methods=["POST"]),
        Route("/metrics", pages.scrape),
        Mount("/static", StaticFiles(directory=HERE / "static")),
    ]


def build(console: Console) -> ASGIApp:
    """The console's ASGI app: the routes behind the login gate; a refusal of the daemon's is its page."""

    async def not_found(request: Request, exc: Exception) -> Response:
        return console.page(request, "error.html", 404, message=f"no page {request.url.path}")

    async def refused(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ControlError):  # registered for ControlError only
            raise exc
        return console.page(request, "error.html", STATUS.get(exc.code, 409), message=exc.message)

    app = Starlette(routes=routes(console), exception_handlers={404: not_found, ControlError: refused})
    return Gate(app, console)
