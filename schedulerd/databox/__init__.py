"""Databoxes: the repository the tasks work on (collections, records, status bits, fields).

The embedded default keeps one SQLite file per databox plus a storage folder for
documents. See docs/databox.md for the schema, for set-based SQL over it.
"""

from .fields import normalize_date, now_iso
from .model import (
    Collection,
    DataboxError,
    DataboxMissing,
    DuplicateCollection,
    NewRecord,
    Record,
    RecordType,
    Subdef,
    UnknownCollection,
    UnknownRecord,
)
from .repository import Databox, awaited, display_name, open_databox
from .settings import DataboxSettings, FieldType, SubdefSettings
from .status import NO_MASK, StatusMask, format_mask, format_status, parse_mask
from .storage import DocumentStore, SourceError, StorageError, guess_mime

__all__ = [
    "Collection",
    "Databox",
    "DataboxError",
    "DataboxMissing",
    "DataboxSettings",
    "DocumentStore",
    "DuplicateCollection",
    "FieldType",
    "NO_MASK",
    "NewRecord",
    "Record",
    "RecordType",
    "SourceError",
    "StatusMask",
    "StorageError",
    "Subdef",
    "SubdefSettings",
    "UnknownCollection",
    "UnknownRecord",
    "awaited",
    "display_name",
    "format_mask",
    "format_status",
    "guess_mime",
    "normalize_date",
    "now_iso",
    "open_databox",
    "parse_mask",
]
