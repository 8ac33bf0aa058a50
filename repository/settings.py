"""Settings of one databox (`[databoxes.NAME]`): its SQLite file, storage folder and sub-definitions."""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

FieldType = Literal["text", "date", "number"]
FIELD_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubdefSettings:
    """One sub-definition (thumbnail, preview, ...): longest side in pixels, format, quality."""

    media_class: Literal["image", "video", "document"] = "image"
    size: int
    format: Literal["jpeg", "png", "webp", "mp4"] = "jpeg"
    quality: int = 85

    def check(self) -> None:
        if not 16 <= self.size <= 20000:
            raise ValueError(f"size: expected 16 to 20000 pixels, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality: expected 1 to 100, got {self.quality}")
        if self.format == "mp4" and self.media_class != "video":
            raise ValueError('format: "mp4" is only for media_class = "video"')


def _default_subdefs() -> Mapping[str, SubdefSettings]:
    return types.MappingProxyType(
        {
            "thumbnail": SubdefSettings(media_class="image", size=240, format="jpeg", quality=80),
            "preview": SubdefSettings(media_class="image", size=1024, format="jpeg", quality=85),
        }
    )


def _no_fields() -> Mapping[str, FieldType]:
    return types.MappingProxyType({})


# which jobs a record event queues (the Worker Manager's messages); [databoxes.NAME.on] replaces them
DEFAULT_ON: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "record.created": ("subdefCreation",),
    "record.document_replaced": ("subdefCreation",),
    "record.fields_changed": ("writeMetadatas", "populateIndex"),
    "record.deleted": ("deleteRecord", "webhook"),
})
RECORD_EVENTS = tuple(DEFAULT_ON)


def _default_on() -> Mapping[str, tuple[str, ...]]:
    return DEFAULT_ON


@dataclasses.dataclass(frozen=True)
class DataboxSettings:
    """`path` is the SQLite file, `storage` the folder of stored documents.

    `fields` optionally declares the metadata fields (name -> "text" | "date" | "number");
    when it is empty any field name is accepted and values are stored as given.
    `on` maps record events to the job types they queue (DEFAULT_ON when not given).
    """

    path: Path
    storage: Path
    subdefs: Mapping[str, SubdefSettings] = dataclasses.field(default_factory=_default_subdefs)
    fields: Mapping[str, FieldType] = dataclasses.field(default_factory=_no_fields)
    on: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=_default_on)

    @property
    def field_types(self) -> Mapping[str, FieldType]:
        """Field name -> its type."""
        return self.fields

    def jobs_on(self, event: str) -> tuple[str, ...]:
        """The job types `event` queues for a record of this databox."""
        return self.on.get(event, ())

    def check(self) -> None:
        if self.path.resolve() == self.storage.resolve():
            raise ValueError("path and storage must differ (path is the SQLite file, storage a folder)")
        for name in self.subdefs:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
                raise ValueError(f"subdefs.{name}: name must be lower-case letters, digits, _ or -")
        for name in self.fields:
            if not FIELD_NAME_RE.match(name):
                raise ValueError(f"fields.{name}: a field name starts with a letter, then letters, digits, _ . : -")
        from schedulerd.registry import job_types

        for event, names in self.on.items():
            if event not in RECORD_EVENTS:
                raise ValueError(f"on.{event}: not a record event (known: {', '.join(RECORD_EVENTS)})")
            for name in names:
                if name not in job_types():
                    raise ValueError(f"on.{event}: unknown job type {name!r} (known: {', '.join(sorted(job_types()))})")
