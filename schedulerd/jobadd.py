"""Adding jobs: a payload checked by its type, then written to the job store, once.

The one path of every add: `job:add` (the CLI writes the job itself), `ctx.add_job(s)` in the
daemon (schedulerd.jobs.JobService.add_many) and outside it (`store_adder`: task:run,
worker:run-service), the pipelines and the benches. Kept apart from the job service so that a
command adding a job imports no dispatcher.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from .config import Config
from .context import JobAdder
from .jobstore import JobError, JobStore
from .registry import UnknownType, job_type, job_types
from .store import RETRY_MAX, store_call
from .stores import open_job_store

log = logging.getLogger("schedulerd.jobs")
ADD_GRACE = RETRY_MAX  # seconds a cancelled ctx.add_job still tries to write its job (add_once)
T = TypeVar("T")


def validate(config: Config, type_name: str, payload: Any) -> Any:
    """The job type, after checking the payload; raises JobError with a clear message."""
    handler = _handler(config, type_name)
    _check(handler, payload, config)
    return handler


def _handler(config: Config, type_name: str) -> Any:
    try:
        cls = job_type(type_name)
    except UnknownType as e:
        raise JobError(str(e)) from None
    return cls(config.jobs.type_config(type_name).settings)


def _check(handler: Any, payload: Any, config: Config) -> None:
    if not isinstance(payload, Mapping):
        raise JobError("--payload: expected a JSON object")
    try:
        handler.check_payload(payload, config)
    except (ValueError, KeyError) as e:
        raise JobError(f"--payload: {e}") from None


def add_job(store: JobStore, config: Config, type_name: str, payload: Mapping[str, Any], *,
            queue: str | None = None, priority: int = 0, after: tuple[int, ...] = (),
            delay: float | None = None, key: str | None = None) -> tuple[int, str]:
    """Validate and store a job; (its id, the queue it went to) — the queue is what to wake.
    Without `delay`, the type's `defer`: such a deferred job coalesces with an identical deferred
    one still waiting for its first attempt (a record changed twice within the defer is built once).
    `key`: the add's idempotency key (a retried add gets the job its first try made)."""
    ids, q = add_jobs(store, config, type_name, [payload], queue=queue, priority=priority, after=after,
                      delay=delay, key=key)
    return ids[0], q


def add_jobs(store: JobStore, config: Config, type_name: str, payloads: Sequence[Mapping[str, Any]], *,
             queue: str | None = None, priority: int = 0, after: tuple[int, ...] = (),
             delay: float | None = None, key: str | None = None) -> tuple[list[int], str]:
    """`add_job` of many payloads of one type in one transaction (all are added or none): a pass
    that made 10,000 records queues their 10,000 jobs with one commit, not 10,000. Every payload
    is checked before any is written."""
    payloads = list(payloads)  # read twice: checked, then written
    handler = _handler(config, type_name)
    for payload in payloads:
        _check(handler, payload, config)
    tc = config.jobs.type_config(type_name)
    q = queue or tc.queue or handler.default_queue
    if not payloads:
        return [], q
    wait = tc.defer if delay is None else delay
    ids = store.add_batch(type_name, q, [dict(p) for p in payloads], [handler.title(p)[:200] for p in payloads],
                          priority=priority, max_attempts=tc.max_attempts, deps=after, delay=wait,
                          coalesce=delay is None and tc.defer > 0, key=key)
    return ids, q


async def add_once(type: str, call: Callable[[str], T]) -> T:
    """A `ctx.add_job`'s store write `call(key)`, retried while the store fails (store_call), made
    once however it ends. Every try carries one idempotency key drawn here, so a try whose commit
    was lost (PostgreSQL: the connection dropped after the server committed) is not made again by
    the next. A cancelled caller (its task stopped or timed out, the daemon stopping) gets ADD_GRACE
    seconds more, shielded, to finish the write: the caller's own work is committed already (an
    archived record, a moved one) and its job must not be dropped; only a store failing all that
    time loses it, and that is logged."""
    key, what = uuid.uuid4().hex, f"adding a {type} job"
    try:
        return await store_call(what, call, key)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + ADD_GRACE) as scope:
            await store_call(what, call, key)
        if scope.cancelled_caught:
            log.error("a %s job was not added: its task was stopped, and the job store kept failing for %gs "
                      "more", type, ADD_GRACE)
        raise


def store_adder(config: Config) -> JobAdder:
    """`ctx.add_job(s)` outside the daemon (task:run, worker:run-service): the jobs go to the
    store (in a worker thread, retried while the store fails), and a running daemon's queue is woken."""
    from .wake import send_wake

    def add_sync(type: str, payloads: Sequence[Mapping[str, Any]], options: Mapping[str, Any], key: str) -> list[int]:
        store = open_job_store(config.scheduler, config.store, pool_size=1)
        try:
            ids, queue = add_jobs(store, config, type, payloads, **options, key=key)
        finally:
            store.close()
        send_wake(config.scheduler.state_dir, queue)
        return ids

    async def add(type: str, payloads: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        if not payloads:
            return []
        return await add_once(type, functools.partial(add_sync, type, payloads, options))
    return add


def configured_queues(config: Config) -> set[str]:
    """The queues the config knows: [queues.NAME], the job types' queues, and `default`."""
    types = {config.jobs.type_config(name).queue or cls.default_queue for name, cls in job_types().items()}
    return set(config.queues) | types | {"default"}


def check_queue(store: JobStore, config: Config, name: str) -> None:
    """Refuse a queue name that is neither configured nor holds jobs (a typo), naming the known ones."""
    known = configured_queues(config) | store.queue_names()
    if name not in known:
        raise JobError(f"no queue named {name!r} (known: {', '.join(sorted(known))})")
