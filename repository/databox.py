"""One databox: a SQLite file (WAL, short transactions) or a PostgreSQL database, plus a storage
folder. The statements are written once (`?` placeholders); repository.backend is the seam.

`Databox` is made of one part per concern, each its own module: `core` (transactions, files
removed after commit, set-based SQL, collections), `records` (finding, writing, deleting
records), `stories`, `derived` (sub-definitions, metadata written back, document text).
Synchronous on purpose: callers in the daemon run it through `anyio.to_thread.run_sync`; a lock
makes one `Databox` safe to share between worker threads. Files are removed only after the
transaction that forgot them has committed, so a crash never leaves a record without its document.
"""

from __future__ import annotations

from pathlib import Path

from .backend import database_errors, open_backend
from .core import CollectionRef, display_name
from .derived import Derived
from .model import DataboxError, DataboxMissing
from .records import Records
from .settings import DataboxSettings
from .storage import StorageError


class Databox(Records, Derived):
    """Collections, records, fields, status bits and sub-definitions of one databox."""


def awaited(name: str, settings: DataboxSettings) -> str:
    """What a task shows while it waits for a databox that does not exist yet (another task,
    an archive or the indexer, creates it on its first run): `databox main to be created (PATH)`."""
    return f"databox {name} to be created ({settings.where})"


def open_databox(settings: DataboxSettings, *, create: bool = True) -> Databox:
    """Open (and with `create`, make) the databox described by `settings`."""
    try:
        backend = open_backend(settings)
    except database_errors() as e:
        raise DataboxError(f"cannot open databox {settings.where}: {e}") from None
    try:
        if not backend.exists() and not create:
            raise DataboxMissing(f"databox {settings.where} does not exist yet (create it with databox:create)")
        try:
            Path(settings.storage).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        except OSError as e:
            raise DataboxError(f"cannot create storage folder {settings.storage}: {e.strerror}") from None
        try:
            backend.migrate()
        except database_errors() as e:
            raise DataboxError(f"cannot open databox {settings.where}: {str(e).strip()}") from None
    except BaseException:
        backend.close()
        raise
    db = Databox(settings, backend)
    db.store.clean_tmp()
    return db


__all__ = [
    "CollectionRef",
    "Databox",
    "DataboxError",
    "StorageError",
    "awaited",
    "display_name",
    "open_databox",
]
