"""`.phrasea.xml`: the per-folder settings of a hotfolder, as Phraseanet writes them.

    <?xml version="1.0" encoding="UTF-8"?>
    <record collection="press" status="x1x0">
      <magicfile method="UNLOCK">READY</magicfile>
    </record>

`collection` (a name or an id) and `status` (a mask) apply to the folder's whole
subtree until a deeper `.phrasea.xml` says otherwise; `<status>` may also be an
element. A magic file makes the task skip the folder while it exists (LOCK) or
until it exists (UNLOCK, removed once the folder was archived).

An empty (or whitespace-only) file is what Phraseanet's documentation tells admins
to create: it means "no per-folder settings". A non-empty file must be valid XML.
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import Literal

from .safexml import XmlError, parse
from .status import StatusMask, parse_mask

NAME = ".phrasea.xml"
MAX_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class FolderConfig:
    collection: str | None = None
    status: StatusMask | None = None
    magic_name: str | None = None
    magic_method: Literal["LOCK", "UNLOCK"] | None = None


def parse_phrasea_xml(data: bytes) -> FolderConfig:
    """Parse one `.phrasea.xml`; XmlError says what is wrong (the caller adds where).
    An empty or whitespace-only file (a UTF-8 BOM allowed) sets nothing."""
    if not data.removeprefix(codecs.BOM_UTF8).strip():
        return FolderConfig()
    root = parse(data, max_bytes=MAX_BYTES)
    collection = (root.get("collection") or "").strip() or None
    node = root.find("collection")
    if collection is None and node is not None:
        collection = (node.text or "").strip() or None
    status_text = root.get("status")
    node = root.find("status")
    if status_text is None and node is not None:
        status_text = node.text or ""
    status = None
    if status_text is not None and status_text.strip():
        try:
            status = parse_mask(status_text.strip(), "status")
        except ValueError as e:
            raise XmlError(str(e)) from None
    magic_name = magic_method = None
    node = root.find("magicfile")
    if node is not None:
        magic_name = (node.text or "").strip()
        method = (node.get("method") or "").strip().upper()
        if method not in ("LOCK", "UNLOCK"):
            raise XmlError(f'magicfile: method must be "LOCK" or "UNLOCK", got {node.get("method")!r}')
        if not magic_name or "/" in magic_name or magic_name in (".", "..") or "\0" in magic_name:
            raise XmlError(f"magicfile: expected a file name in this folder, got {magic_name!r}")
        magic_method = method
    return FolderConfig(collection, status, magic_name, magic_method)  # type: ignore[arg-type]


def render_phrasea_xml(collection: str, status: str = "") -> bytes:
    """A minimal `.phrasea.xml` (used when a task bootstraps its hotfolder)."""
    from xml.sax.saxutils import quoteattr

    attrs = f" collection={quoteattr(collection)}" + (f" status={quoteattr(status)}" if status else "")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<record{attrs}/>\n'.encode()


__all__ = ["NAME", "FolderConfig", "XmlError", "parse_phrasea_xml", "render_phrasea_xml"]
