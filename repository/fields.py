"""Metadata field names and values: checked once, dates stored as ISO-8601 text.

ISO-8601 text sorts like time, so workflows compare dates with plain SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

from .settings import FIELD_NAME_RE, FieldType

MAX_VALUE = 65536
MULTI_SEPARATOR = "; "  # a field holds several values (IPTC Keywords, repeated caption elements) joined with it

_DATE_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y:%m:%d %H:%M:%S",  # EXIF
    "%Y:%m:%d",
    "%Y/%m/%d",
    "%Y/%m/%d %H:%M:%S",
    "%Y%m%d",
)


def now_iso() -> str:
    """The current UTC time, ISO-8601 with microseconds (sortable as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def check_name(name: str, declared: Mapping[str, FieldType] | None = None) -> str:
    if not isinstance(name, str) or not FIELD_NAME_RE.match(name):
        raise ValueError(f"bad field name {name!r}: starts with a letter, then letters, digits, _ . : - (64 at most)")
    if declared and name not in declared:
        raise ValueError(f"unknown field {name!r} (known: {', '.join(sorted(declared))})")
    return name


def normalize_date(value: str) -> str:
    """`2024:05:01 10:00:00` -> `2024-05-01T10:00:00`; date-only stays `2024-05-01`."""
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return dt.date().isoformat() if len(text) == 10 else dt.isoformat()
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            dt = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return dt.date().isoformat() if "%H" not in fmt else dt.isoformat()
    raise ValueError(f"expected an ISO-8601 date like 2024-05-01 or 2024-05-01T10:00:00, got {value!r}")


def normalize_value(name: str, value: object, declared: Mapping[str, FieldType] | None = None) -> str:
    """The text stored for field `name`; raise ValueError naming the field."""
    if isinstance(value, (datetime, date)):
        value = value.isoformat()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"field {name}: expected text, got {type(value).__name__}")
    if len(value) > MAX_VALUE:
        raise ValueError(f"field {name}: value longer than {MAX_VALUE} characters")
    if "\0" in value:
        raise ValueError(f"field {name}: value contains a NUL character")
    kind = (declared or {}).get(name, "text")
    try:
        if kind == "date":
            return normalize_date(value)
        if kind == "number":
            if not re.fullmatch(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*", value):
                raise ValueError(f"expected a number, got {value!r}")
            return value.strip()
    except ValueError as e:
        raise ValueError(f"field {name}: {e}") from None
    return value


def check_fields(fields: Mapping[str, object], declared: Mapping[str, FieldType] | None = None) -> dict[str, str]:
    return {check_name(k, declared): normalize_value(k, v, declared) for k, v in fields.items()}


def embedded_fields(sources: Mapping[str, str], declared: Mapping[str, FieldType],
                    read: Mapping[str, Sequence[str]]) -> tuple[dict[str, str], list[str]]:
    """Field values from a document's embedded tags (`[databoxes.NAME.fields] K = { src = TAG }`).

    `sources` is field -> tag (DataboxSettings.field_sources), `read` tag -> the values found
    (several for a list-type tag such as IPTC:Keywords: joined with MULTI_SEPARATOR, as the
    repository stores multi-valued fields). A value its field's type refuses (a date that is
    none) is left out and named in the second list, for the log."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for name, tag in sources.items():
        values = [v.strip() for v in read.get(tag, ()) if v.strip()]
        if not values:
            continue
        try:
            out[name] = normalize_value(name, MULTI_SEPARATOR.join(values), declared)
        except ValueError as e:
            problems.append(f"{tag}: {e}")
    return out, problems
