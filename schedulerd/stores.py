"""Which store the daemon and the CLI use, chosen in this one place from `[store]`.

Without `[store] url` the embedded SQLite files under `state_dir` (schedulerd.db, jobs.db); with
it, PostgreSQL (schedulerd.pgstore), whose schema `bin/console store:migrate` creates and which
is checked before use: a schema older or newer than this program knows is refused
(SchemaMismatch) with what to run. psycopg is imported only when a URL is set.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

from . import settings as s
from .postgres import postgres_url
from .settings import ConfigError, Secret

if TYPE_CHECKING:
    from .configfiles import SchedulerSettings
    from .jobstore import JobStore
    from .store import StateStore


class SchemaMismatch(Exception):
    """The database's schema is not the one this program knows; the message says what to run."""


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """`[store]`: without `url` the embedded SQLite store, with it PostgreSQL."""

    url: Annotated[str, postgres_url] | None = None
    password: Secret | None = None  # the database user's password: "env:VAR", "file:PATH" or literal
    lease: Annotated[float, s.positive_duration] = 15.0  # how long a node's hold on a task lasts unrenewed
    store_retry: Annotated[float, s.positive_duration] = 5.0  # first wait after a failed store call (doubles to 30 s)

    def check(self) -> None:
        if self.password is not None and self.url is None:
            raise ConfigError("password", "is only used with store.url (the SQLite store has no password)")

    @property
    def shared(self) -> bool:
        return self.url is not None


def check_schema(store: StoreSettings) -> None:
    """Raise SchemaMismatch unless the store's schema is the one this program knows (SQLite: the
    files create their tables themselves); StoreUnavailable when PostgreSQL does not answer."""
    if store.url is not None:
        from .pgstore.migrate import check

        check(store)


def open_state_store(sch: SchedulerSettings, store: StoreSettings, *, pool_size: int = 4) -> StateStore:
    if store.url is not None:
        from .pgstore.statestore import PgStateStore

        return PgStateStore(store, max_size=pool_size, node=sch.node)
    from .store import open_store

    return open_store(sch.state_dir, sch.store_busy_timeout)


def open_job_store(sch: SchedulerSettings, store: StoreSettings, *, pool_size: int = 4) -> JobStore:
    if store.url is not None:
        from .pgstore.jobstore import PgJobStore

        return PgJobStore(store, max_size=pool_size)
    from .jobstore import open_job_store as open_sqlite

    return open_sqlite(sch.state_dir, sch.store_busy_timeout)
