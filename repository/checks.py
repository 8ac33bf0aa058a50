"""What the config checks may compare with a databox's contents.

A config naming a collection its databox does not hold is refused at load (every command
then refuses it). `collection:create` must still run: the collection it makes may be the
one the config names. It loads the config inside `creating_collections()`, where that
comparison is left out; every other check of the config still applies.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

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


__all__ = ["collections_required", "creating_collections"]
