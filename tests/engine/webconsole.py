"""Helpers of the web console's tests: a site with [http], a plugin with a slow job and a chatty
task (found by entry points, as any installed plugin), and an HTTP client with a cookie jar."""

from __future__ import annotations

import functools
import http.client
import os
import re
import socket
import subprocess
import textwrap
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

from tests.engine.conftest import CONSOLE, plugin_dir

PASSWORDS = {"alice": "alice-Pa55word-xyz", "bob": "bob-Pa55word-qrs"}
FTP_PASSWORD = "ftp-Secret-4242"  # a task's secret: must show on no page
METRICS_TOKEN = "metrics-Token-7777"

PLUGIN = '''
import anyio
from schedulerd.plugin import JobType, TaskType


class Chatty(TaskType):
    """Logs one numbered line per iteration."""
    type_name = "chatty"

    def __init__(self, settings):
        super().__init__(settings)
        self.n = 0

    async def run_once(self, ctx):
        self.n += 1
        ctx.log.info("chatty line %d", self.n)
        print(f"chatty out {self.n}", flush=True)  # the daemon's stdout: scheduler.out
        return f"line {self.n}"


class Slow(JobType):
    """Ten steps of payload["step"] seconds, its progress reported at each."""
    type_name = "slow"

    def title(self, payload):
        return f"slow job {payload.get('name', '')}"

    async def run(self, ctx, payload):
        for i in range(10):
            ctx.progress(i, 10)
            await anyio.sleep(float(payload.get("step", 0.3)))
        ctx.progress(10, 10)
        return "ten steps"
'''


def plugin(root: Path) -> Path:
    return plugin_dir(root, "console_probe", PLUGIN, "[schedulerd.tasks]\nchatty = console_probe:Chatty\n\n"
                                                     "[schedulerd.jobs]\nslow = console_probe:Slow\n")


@functools.cache  # a hash made by `http:passwd` once per password and test session: each takes a console start
def password_hash(password: str) -> str:
    p = subprocess.run([str(CONSOLE), "http:passwd", "someone"], input=password + "\n", capture_output=True,
                       text=True, check=True)
    return p.stdout.split(" = ", 1)[1].strip().strip('"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """The console listens a moment after the control socket answers (scheduler:start waits for that)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def console_config(port: int, tasks: str = "", *, refresh: str = "500ms", extra: str = "") -> str:
    users = "\n".join(f'{u} = "{password_hash(p)}"' for u, p in PASSWORDS.items())
    return textwrap.dedent(f"""
        [http]
        listen = "127.0.0.1:{port}"
        refresh = "{refresh}"
        metrics_token = "{METRICS_TOKEN}"
        {extra}

        [http.users]
        """) + users + "\n" + textwrap.dedent(f"""
        [tasks.chatty]
        type = "chatty"
        period = "1s"

        [tasks.pull]
        type = "command"
        period = "1h"
        argv = ["true"]
        env = {{ FTP_PASS = "{FTP_PASSWORD}" }}

        [queues.slow]
        workers = 1
        """) + textwrap.dedent(tasks)


def start_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    env["PYTHONPATH"] = str(root / "plugin") if (root / "plugin").exists() else str(plugin(root))
    return env


class Web:
    """A browser-less client: cookies kept, redirects not followed, answers as (status, headers, text)."""

    def __init__(self, port: int, source: str = "127.0.0.1"):
        self.port = port
        self.source = source  # the client's address: any of 127.0.0.0/8 is a different client
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(self.source, 0))
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body, h)
            r = conn.getresponse()
            text = r.read().decode()
            for value in r.headers.get_all("set-cookie") or []:
                for name, morsel in SimpleCookie(value).items():
                    if morsel.value:
                        self.cookies[name] = morsel.value
                    else:
                        self.cookies.pop(name, None)
            return r.status, {k.lower(): v for k, v in r.headers.items()}, text
        finally:
            conn.close()

    def get(self, path: str, **kw) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, form, **kw)

    def login(self, user: str = "alice", password: str | None = None) -> int:
        return self.try_login(user, password)[0]

    def try_login(self, user: str = "alice", password: str | None = None) -> tuple[int, dict[str, str], str]:
        _, _, page = self.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        return self.post("/login", {"csrf": token, "user": user, "password": password or PASSWORDS[user]})

    def csrf(self, path: str = "/tasks") -> str:
        _, _, page = self.get(path)
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)
