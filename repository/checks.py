"""What the config checks may compare with a databox's contents.

A config naming a collection its databox does not hold is refused at load (every command
then refuses it). `collection:create` must still run: the collection it makes may be the
one the config names. It loads the config inside `creating_collections()`, where that
comparison is left out; every other check of the config still applies.
"""

from __future__ import annotations

import contextlib
import contextvars
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .settings import DataboxSettings

_CREATING = contextvars.ContextVar("schedulerd_creating_collections", default=False)


@contextlib.contextmanager
def creating_collections() -> Iterator[None]:
    """Within: config checks do not require the collections a config names to exist yet."""
    token = _CREATING.set(True)
    try:
        yield
    finally:
        _CREATING.reset(token)


def collections_required() -> bool:
    """Whether a config check should refuse a collection its databox does not hold."""
    return not _CREATING.get()


def collection_names(settings: DataboxSettings) -> set[str] | None:
    """The collection names a databox holds, read only (SQLite file or PostgreSQL); None when
    it cannot be read now (not created yet, server away): the check is then left to the run."""
    if settings.url is not None:
        from .postgres import collection_names as pg_names

        return pg_names(settings)
    path = Path(settings.path)  # type: ignore[arg-type]
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM collections")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return None


__all__ = ["collection_names", "collections_required", "creating_collections"]
