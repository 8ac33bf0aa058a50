"""`worker:run-service TYPE --payload JSON`: one job in the CLI's own process, in the foreground
(the Worker Manager's `worker:run-service`). Nothing is written to the job store for the job
itself; jobs it queues (`ctx.add_job`) go to the store and wake a running daemon."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import anyio

from . import logs
from .context import TaskContext
from .iteration import TimedOut, within
from .jobadd import store_adder, validate
from .jobstore import JobError
from .oneshot import EchoHandler, ProgressBar
from .plugin import FAILURES, error_text, failure_detail
from .process import withhold_env

OK, FAILED, BAD_INPUT = 0, 1, 2


def run_service(config: Any, type_name: str, payload: Any, *, progress: bool = False) -> int:
    """Run one job of `type_name` now: 0 finished, 1 failed, 2 bad type or payload (said on stderr)."""
    try:
        handler = validate(config, type_name, payload)
    except JobError as e:
        print(f"console worker:run-service: {e}", file=sys.stderr)
        return BAD_INPUT
    logs.REDACTOR.add(config.secrets())
    withhold_env(config.secret_env_vars())
    bar = ProgressBar() if progress else None
    log = logging.Logger(f"schedulerd.service.{type_name}", logging.INFO)
    echo = EchoHandler(bar)
    echo.setFormatter(logs.Formatter(logs.FORMAT))
    echo.addFilter(logs.REDACTOR)
    log.addHandler(echo)
    state_dir = config.scheduler.state_dir / "jobs" / f"service-{os.getpid()}"
    tc = config.jobs.type_config(type_name)
    ctx = TaskContext(f"service-{type_name}", handler.settings, log, config, state_dir, None,
                      job_adder=store_adder(config), on_progress=bar)

    async def once() -> Any:
        state_dir.mkdir(parents=True, exist_ok=True)
        return await within(tc.timeout, lambda: handler.run(ctx, payload))

    try:
        summary = anyio.run(once)
    except TimedOut as e:
        return _failed(bar, type_name, str(e))
    except FAILURES as e:  # a TimeoutError of the job's own (a socket's) too
        log.error("failed: %s%s", logs.REDACTOR.redact(error_text(e)), failure_detail(e))
        return _failed(bar, type_name, error_text(e))
    finally:
        _remove_empty(state_dir)
    if bar:
        bar.close()
    print(f"{type_name}: ok{': ' + str(summary) if summary else ''}")
    return OK


def _failed(bar: ProgressBar | None, type_name: str, error: str) -> int:
    if bar:
        bar.close()
    print(f"console worker:run-service: {type_name} failed: {logs.REDACTOR.redact(error)}", file=sys.stderr)
    return FAILED


def _remove_empty(folder: Any) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (the job kept files) or already gone
