"""What every part of the console shares: the `Console` (the daemon's commands, the [http]
settings, the sessions, the templates), the bounded form reader, the cookie names."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..control import ControlServer
from ..protocol import ControlError, Fault
from ..settings import format_duration
from . import auth
from .settings import HttpSettings

HERE = Path(__file__).parent
COOKIE = "schedulerd_session"
LOGIN_COOKIE = "schedulerd_login"  # the login form's CSRF token (double submit): no session yet
MAX_FORM = 16 * 1024
STATUS = {Fault.NO_SUCH_TASK: 404, Fault.NO_SUCH_JOB: 404, Fault.NO_SUCH_QUEUE: 404, Fault.SHUTTING_DOWN: 503,
          Fault.BAD_ARGUMENTS: 400}


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
        self.templates = _templates()
        # a table of 1,000 rows takes tens of ms to render: in threads of their own (not the
        # event loop, where the tasks run; not the store calls' threads), two at a time
        self.render_limiter = anyio.CapacityLimiter(2)

    async def call(self, cmd: str, **args: Any) -> Any:
        return await self.control.dispatch(cmd, args)

    def user(self, request: Request) -> auth.Session | None:
        header = self.settings.proxy_user_header
        if header and self.unix_socket:
            name = request.headers.get(header)
            if name:
                return self.sessions.proxy_session(name)
        return self.sessions.get(request.cookies.get(COOKIE))

    def _html(self, request: Request, template: str, values: dict[str, Any]) -> str:
        session: auth.Session | None = request.scope.get("session_user")
        return self.templates.get_template(template).render(
            user=session.user if session else None, csrf=session.csrf if session else "",
            refresh=self.settings.refresh, path=request.url.path, **values)

    def page(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        """A small page (a form, an error), rendered here and now."""
        return HTMLResponse(self._html(request, template, values), status)

    async def table(self, request: Request, template: str, **values: Any) -> HTMLResponse:
        """A page with a table of any length, rendered in a worker thread."""
        html = await anyio.to_thread.run_sync(self._html, request, template, values, limiter=self.render_limiter)
        return HTMLResponse(html)


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form (the console's forms have a few short fields), bounded in size."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ControlError(Fault.BAD_ARGUMENTS, "form too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
