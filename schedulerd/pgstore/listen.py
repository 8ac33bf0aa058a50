"""LISTEN/NOTIFY: one AsyncConnection per node, waking its dispatchers when another node (or the
CLI) adds a job, makes one due, or cancels one this node runs.

The job store sends `pg_notify('schedulerd_jobs', queue)` and `pg_notify('schedulerd_cancel',
id)` in the transactions that change jobs (schedulerd.pgstore.jobstore). This connection waits
on the database itself, so it is psycopg's AsyncConnection on the event loop (no thread held for
nothing), autocommit. When the database goes away the listener says so once, reconnects with a
bounded backoff (`[store] store_retry` doubling to 30 s), and on every (re)connection calls
`on_connect`: a notification sent while nobody listened is lost, so the node looks at every
queue once. Silence is bounded too: after KEEPALIVE seconds without a notification the
connection is probed (a half-open TCP connection must not keep the node deaf).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg

from ..stores import StoreSettings
from . import _kwargs, unavailable

log = logging.getLogger("schedulerd.pgstore.listen")
JOBS_CHANNEL = "schedulerd_jobs"
CANCEL_CHANNEL = "schedulerd_cancel"
KEEPALIVE = 10.0  # seconds of silence before the connection is probed
PROBE_TIMEOUT = 10.0
RETRY_MAX = 30.0


@dataclass(frozen=True)
class Handlers:
    on_queue: Callable[[str], None]  # a queue may have work
    on_cancel: Callable[[int], None]  # this job was cancelled
    on_connect: Callable[[], None]  # (re)connected: notifications may have been missed


class Listener:
    def __init__(self, settings: StoreSettings, handlers: Handlers, name: str = "listen"):
        assert settings.url is not None
        self.settings = settings
        self.handlers = handlers
        self.name = name
        self.connected = False
        self._failed = False
        self._delay = settings.store_retry

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; a lost connection is made again (never ends the node)."""
        task_status.started()
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError, TimeoutError) as e:
                self.connected = False
                if not self._failed:
                    why = unavailable(self.settings, e) if isinstance(e, psycopg.Error) else e
                    log.warning("job notifications lost (%s); polling meanwhile, reconnecting", why)
                    self._failed = True
                await anyio.sleep(self._delay)
                self._delay = min(RETRY_MAX, self._delay * 2)

    async def _listen(self) -> None:
        assert self.settings.url is not None
        conn = await psycopg.AsyncConnection.connect(self.settings.url, autocommit=True,
                                                     **_kwargs(self.settings, self.name))
        async with conn:
            await conn.execute(f"LISTEN {JOBS_CHANNEL}")
            await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
            if self._failed:
                log.info("job notifications: listening again")
            self._failed, self._delay, self.connected = False, self.settings.store_retry, True
            self.handlers.on_connect()
            while True:
                async for n in conn.notifies(timeout=KEEPALIVE):
                    self._dispatch(n.channel, n.payload)
                with anyio.fail_after(PROBE_TIMEOUT):
                    await conn.execute("SELECT 1")

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == JOBS_CHANNEL:
            self.handlers.on_queue(payload)
        elif channel == CANCEL_CHANNEL and payload.isdigit():
            self.handlers.on_cancel(int(payload))
