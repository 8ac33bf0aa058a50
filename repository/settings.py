"""Settings of one databox (`[databoxes.NAME]`): its SQLite file or PostgreSQL database, storage
folder and sub-definitions."""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from schedulerd.postgres import describe, postgres_url
from schedulerd.settings import Secret

FieldType = Literal["text", "date", "number"]
FIELD_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
SRC_TAG_RE = re.compile(r"^[A-Za-z][\w-]*:[A-Za-z][\w-]*$")  # GROUP:Tag, as exiftool names it


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldSettings:
    """A declared field written as a table: `Keywords = { type = "text", src = "IPTC:Keywords" }`;
    `src` is the embedded tag (IPTC, XMP, EXIF, ...) the archive task reads into the field."""

    type: FieldType = "text"
    src: str | None = None

    def check(self) -> None:
        if self.src is not None and not SRC_TAG_RE.match(self.src):
            raise ValueError(f'src: expected a tag like "IPTC:Keywords", "XMP-dc:Title" or '
                             f'"EXIF:DateTimeOriginal", got {self.src!r}')


def _field_spec(value: object, path: str) -> FieldType | FieldSettings:
    """`"text"` (the plain form) or a `{ type = ..., src = ... }` table."""
    from schedulerd.settings import ConfigError, build, convert

    if isinstance(value, Mapping):
        return build(FieldSettings, value, path)
    if isinstance(value, str):
        kind: FieldType = convert(FieldType, value, path)
        return kind
    raise ConfigError(path, 'expected "text", "date", "number" or a table like '
                            '{ type = "text", src = "IPTC:Keywords" }')


FieldSpec = Annotated[FieldType | FieldSettings, _field_spec]


def _no_fields() -> Mapping[str, FieldSpec]:
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
    """`path` is the SQLite file, or `url` (+ `password`) the PostgreSQL database: exactly one;
    `storage` the folder of stored documents (with PostgreSQL, one folder every host mounts).

    `fields` optionally declares the metadata fields (name -> "text" | "date" | "number");
    when it is empty any field name is accepted and values are stored as given.
    `on` maps record events to the job types they queue (DEFAULT_ON when not given).
    """

    path: Path | None = None
    storage: Path | None = None  # required (check() says so): typed optional only to follow `path`
    url: Annotated[str, postgres_url] | None = None
    password: Secret | None = None  # the database user's password: "env:VAR", "file:PATH" or literal
    subdefs: Mapping[str, SubdefSettings] = dataclasses.field(default_factory=_default_subdefs)
    fields: Mapping[str, FieldSpec] = dataclasses.field(default_factory=_no_fields)
    index_document_text: bool = True  # a document's own text (PDF, plain text) searchable with its fields
    on: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=_default_on)

    @property
    def field_types(self) -> Mapping[str, FieldType]:
        """Field name -> its type."""
        return types.MappingProxyType({k: v if isinstance(v, str) else v.type for k, v in self.fields.items()})

    @property
    def field_sources(self) -> Mapping[str, str]:
        """Field name -> the embedded tag the archive reads into it (the fields given a `src`)."""
        return types.MappingProxyType({k: v.src for k, v in self.fields.items()
                                       if isinstance(v, FieldSettings) and v.src})

    def jobs_on(self, event: str) -> tuple[str, ...]:
        """The job types `event` queues for a record of this databox."""
        return self.on.get(event, ())

    @property
    def postgres(self) -> bool:
        return self.url is not None

    @property
    def where(self) -> str:
        """The database as messages show it: the SQLite file, or the URL without its query."""
        return describe(self.url) if self.url is not None else str(self.path)

    def check(self) -> None:
        if self.storage is None:
            raise ValueError("storage: missing required setting (the folder of stored documents)")
        if (self.path is None) == (self.url is None):
            raise ValueError("path: give exactly one of path (a SQLite file) and url (postgresql://...)")
        if self.password is not None and self.url is None:
            raise ValueError("password: is only used with url (a SQLite databox has no password)")
        if self.path is not None and self.path.resolve() == self.storage.resolve():
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
