"""The values a databox hands out: collections, records, sub-definitions (immutable snapshots)."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .status import format_status

RecordType = Literal["record", "story"]


class DataboxError(Exception):
    """A databox operation refused: the message says what and where."""


class DataboxMissing(DataboxError):
    pass


class UnknownCollection(DataboxError, LookupError):
    pass


class DuplicateCollection(DataboxError):
    pass


class UnknownRecord(DataboxError, LookupError):
    pass


@dataclasses.dataclass(frozen=True)
class Collection:
    id: int
    name: str
    created: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Record:
    id: int
    collection_id: int
    collection: str
    type: RecordType
    original_name: str | None
    document: str | None  # relative to the databox storage
    document_path: Path | None
    size: int | None
    sha256: str | None
    mime: str | None
    status: int
    created: str
    updated: str
    document_changed: str
    doc_version: int
    subdefs_version: int | None
    subdef_error: str | None
    metadata_dirty: int
    fields: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def status_bits(self) -> str:
        return format_status(self.status)

    @property
    def label(self) -> str:
        """How messages name a record: `record 12 (photo.jpg)`, its id and original file name
        (its document's storage name means nothing to whoever dropped the file)."""
        return f"record {self.id} ({self.original_name})" if self.original_name else f"record {self.id}"

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["document_path"] = str(self.document_path) if self.document_path else None
        d["fields"] = dict(self.fields)
        d["status_bits"] = self.status_bits
        return d


@dataclasses.dataclass(frozen=True)
class Subdef:
    record_id: int
    name: str
    path: Path
    width: int | None
    height: int | None
    size: int | None
    created: str
    doc_version: int

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


@dataclasses.dataclass(frozen=True, slots=True)
class NewRecord:
    """A record whose document is already in storage (the archive task's batches)."""

    collection_id: int
    original_name: str | None  # (None: a story made without a document)
    document: str
    size: int
    sha256: str
    mime: str
    status: int = 0
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    token: str | None = None
