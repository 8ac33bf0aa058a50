"""uvicorn inside the daemon's task group: no thread, no second event loop.

uvicorn's `Server.serve()` is a coroutine on the running asyncio loop (anyio's default backend),
so it runs as one more task of the daemon's task group, beside the control socket and the runners,
and its handlers call the daemon's objects directly. We bind the socket ourselves (the file's mode,
a clear error) and hand it over; uvicorn's own signal handling is switched off (the daemon owns
SIGTERM/SIGINT/SIGHUP/SIGUSR1) and it serves through the drain and ends with the daemon's task group."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from ..config import Config
from ..control import ControlServer
from .app import build
from .console import Console
from .settings import Listen

log = logging.getLogger("schedulerd.web")
POLL = 0.2  # how often the server looks whether the daemon stops (uvicorn itself ticks every 0.1 s)


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The daemon handles the signals; uvicorn must not replace its handlers."""
        yield


def bind(where: Listen) -> socket.socket:
    if where.path is not None:
        where.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            where.path.unlink()  # stale: we hold the pidfile lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)  # rw for the owner and the group (the reverse proxy's)
        try:
            sock.bind(str(where.path))
        finally:
            os.umask(old)
    else:
        family = socket.AF_INET6 if ":" in (where.host or "") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((where.host, where.port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_console(control: ControlServer, config: Config, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve [http] until the daemon stops (started in its task group once the socket is bound)."""
    http = config.http
    where = http.where(config.base_dir)
    sock = bind(where)
    console = Console(control, http, unix_socket=where.path is not None)
    server = EmbeddedServer(uvicorn.Config(
        build(console), lifespan="off", log_config=None, access_log=False, proxy_headers=False, server_header=False,
        ssl_certfile=str(http.tls_cert) if http.tls_cert else None, ssl_keyfile=str(http.tls_key) if http.tls_key else None,
        timeout_graceful_shutdown=1, timeout_keep_alive=5))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(30):
                while not server.started:
                    await anyio.sleep(0.01)
            log.info("web console on %s", where if where.path else f"{'https' if http.tls else 'http'}://{where}/")
            task_status.started()
            # served through the drain, like the control socket (pages show the tasks stopping,
            # actions answer 503 SHUTTING_DOWN); the daemon cancels its task group once drained
            while not server.should_exit:
                await anyio.sleep(POLL)
    finally:
        sock.close()
        if where.path is not None:
            with contextlib.suppress(FileNotFoundError):
                Path(where.path).unlink()
