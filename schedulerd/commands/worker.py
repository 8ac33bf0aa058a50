"""worker:execute — a process that only runs jobs (the Worker Manager's command)."""

from __future__ import annotations

import socket
from typing import Any

from . import CommandError, arg, command


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise CommandError(f"{flag}: expected a whole number of at least 1, got {value}", 2)


@command("worker:execute",
         "Run jobs only (no periodic tasks): the named queues with N workers each, against the shared store",
         arg("--queue-name", action="append", default=[], metavar="Q", help="a queue to work (repeat; default: all)"),
         arg("-m", "--max-processes", dest="workers", type=int, metavar="N", help="workers per queue"),
         arg("--max-jobs", type=int, metavar="N", help="after N jobs, finish the running ones and start afresh"),
         arg("--max-memory", type=int, metavar="MB", help="above this resident size, the same"),
         arg("--node", help="this worker's node id (default HOST:worker:PID)"))
def execute(args: Any, env: Any) -> int:
    import os

    from ..worker import WorkerOptions
    from ..worker import execute as run

    for flag, value in (("-m", args.workers), ("--max-jobs", args.max_jobs), ("--max-memory", args.max_memory)):
        _positive(flag, value)
    config = env.config()
    env.check_store()
    node = args.node or f"{socket.gethostname()}:worker:{os.getpid()}"
    opts = WorkerOptions(tuple(dict.fromkeys(args.queue_name)), args.workers, args.max_jobs, args.max_memory, node)
    return run(config, opts)
