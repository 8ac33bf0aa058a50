"""Caption sidecars: a metadata file beside a document (`photo.xml` for `photo.jpg`).

XML (Phraseanet's form)::

    <record>
      <description><Title>Harbour</Title><Keywords>sea</Keywords></description>
      <status>1x</status>
    </record>

or JSON: `{"fields": {"Title": "Harbour"}, "status": "1x"}` (a flat object of
fields is accepted too). Repeated XML elements are joined with "; ".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from .fields import check_fields
from .safexml import XmlError, parse
from .settings import FieldType
from .status import StatusMask, parse_mask

MAX_BYTES = 1024 * 1024


class CaptionError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Caption:
    fields: Mapping[str, str]
    status: StatusMask | None = None


def parse_caption(data: bytes, name: str, declared: Mapping[str, FieldType] | None = None) -> Caption:
    """Fields and status of a caption file named `name`; CaptionError says what is wrong."""
    if len(data) > MAX_BYTES:
        raise CaptionError(f"larger than {MAX_BYTES} bytes")
    try:
        if name.lower().endswith(".json"):
            raw, status_text = _from_json(data)
        else:
            raw, status_text = _from_xml(data)
        fields = check_fields(raw, declared)
        status = parse_mask(status_text.strip(), "status") if status_text and status_text.strip() else None
    except (XmlError, ValueError) as e:
        raise CaptionError(str(e)) from None
    return Caption(fields, status)


def _from_xml(data: bytes) -> tuple[dict[str, str], str | None]:
    root = parse(data, max_bytes=MAX_BYTES)
    desc = root.find("description")
    holder = desc if desc is not None else root
    fields: dict[str, str] = {}
    for el in holder:
        if el.tag == "status" and holder is root:
            continue
        value = "".join(el.itertext()).strip()
        fields[el.tag] = f"{fields[el.tag]}; {value}" if el.tag in fields else value
    node = root.find("status")
    return fields, (node.text or "") if node is not None else None


def _from_json(data: bytes) -> tuple[dict[str, str], str | None]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CaptionError(f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CaptionError("expected a JSON object")
    if "fields" in obj:
        fields, status = obj["fields"], obj.get("status")
        extra = set(obj) - {"fields", "status"}
        if extra:
            raise CaptionError(f"unknown keys {sorted(extra)} (expected fields, status)")
    else:
        fields, status = obj, None
    if not isinstance(fields, dict):
        raise CaptionError("fields: expected an object")
    if status is not None and not isinstance(status, str):
        raise CaptionError('status: expected a mask like "x1x0"')
    out = {}
    for k, v in fields.items():
        if isinstance(v, list):
            v = "; ".join(str(x) for x in v)
        out[k] = v
    return out, status
