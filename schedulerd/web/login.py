"""Logging in and out. The login form carries a double-submit CSRF token (no session yet); a
password is checked with scrypt in threads of its own; failed logins are throttled per client
address and per user name (ratelimit.LoginLimiter: past the limit 429 with Retry-After, the
password not even checked; a login is counted before its check, so concurrent ones count too)."""

from __future__ import annotations

import logging
import secrets

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..protocol import ControlError
from ..settings import format_duration
from . import auth
from .console import COOKIE, LOGIN_COOKIE, Console, read_form
from .ratelimit import LoginLimiter, Refusal

log = logging.getLogger("schedulerd.web")


class Login:
    def __init__(self, console: Console):
        self.c = console
        self.checks = anyio.CapacityLimiter(2)  # password checks at once (see check)
        s = console.settings
        self.limiter = LoginLimiter(s.login_max_failures, s.login_window, frozenset(s.users),
                                    user_max_failures=s.login_user_max_failures)

    async def form(self, request: Request, status: int = 200, error: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
        token = secrets.token_urlsafe(32)
        response = self.c.page(request, "login.html", status, login_token=token, error=error)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=self.c.settings.tls,
                            path="/login")
        response.headers.update(headers or {})
        return response

    async def submit(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except ControlError as e:
            return await self.form(request, 413, e.message)
        if not auth.same_token(form.get("csrf"), request.cookies.get(LOGIN_COOKIE) or "-"):
            return await self.form(request, 403, "the login form expired: try again")
        user, address = form.get("user", ""), self.address(request)
        admitted = self.limiter.admit(address, user)  # counted as failed until the check passes
        if isinstance(admitted, Refusal):
            return await self.form(request, 429, f"too many failed logins: try again in {admitted.retry_after} s",
                                   headers={"retry-after": str(admitted.retry_after)})
        if not await self.check(user, form.get("password", "")):
            for what, limit in admitted.reached:
                window = format_duration(self.c.settings.login_window)
                log.warning("web console: %d failed logins for %s within %s; its logins are refused (429) "
                            "until the oldest is %s old", limit, what, window, window)
            return await self.form(request, 403, "wrong user name or password")
        self.limiter.succeeded(address, user)
        response = RedirectResponse("/tasks", 303)
        response.set_cookie(COOKIE, self.c.sessions.create(user), httponly=True, samesite="strict",
                            secure=self.c.settings.tls, max_age=int(self.c.settings.session_max_age), path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def check(self, user: str, password: str) -> bool:
        stored = self.c.settings.users.get(user)
        # scrypt costs 16 MiB and tens of ms: two at a time, in threads of their own limiter, so a
        # flood of logins cannot take the worker threads the store calls need
        ok = await anyio.to_thread.run_sync(auth.check_password, password, stored or auth.DUMMY_HASH,
                                            limiter=self.checks)
        return ok and stored is not None

    async def logout(self, request: Request, form: dict[str, str]) -> None:
        self.c.sessions.end(request.cookies.get(COOKIE))

    def address(self, request: Request) -> str:
        """The client's address; behind the reverse proxy of a Unix socket, the last X-Forwarded-For
        hop (only the proxy can connect there; without the header all share one count)."""
        if self.c.unix_socket:
            forwarded = request.headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
            return forwarded or "the unix socket"
        return request.client.host if request.client else "unknown"
