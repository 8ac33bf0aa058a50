"""XML read from hotfolders, parsed safely: no DTD, no entities, no external references, bounded.

Hotfolders are written by anyone who can drop a file; their XML must not be
able to read local files, call out, or blow up memory.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_ELEMENTS = 10000


class XmlError(ValueError):
    """Unsafe or malformed XML; the message says which rule it broke and where."""


def parse(data: bytes, *, max_bytes: int = MAX_BYTES) -> ET.Element:
    """The root element of `data`, or XmlError."""
    if len(data) > max_bytes:
        raise XmlError(f"larger than {max_bytes} bytes")
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    builder = ET.TreeBuilder()
    depth = 0
    count = 0

    def refuse(what: str):
        def handler(*_args: object) -> None:
            raise XmlError(f"line {parser.CurrentLineNumber}: {what} is not allowed")

        return handler

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth, count
        depth += 1
        count += 1
        if depth > MAX_DEPTH:
            raise XmlError(f"line {parser.CurrentLineNumber}: nested deeper than {MAX_DEPTH}")
        if count > MAX_ELEMENTS:
            raise XmlError(f"more than {MAX_ELEMENTS} elements")
        builder.start(tag, attrs)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    parser.StartDoctypeDeclHandler = refuse("a DOCTYPE")
    parser.EntityDeclHandler = refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = refuse("an entity declaration")
    parser.NotationDeclHandler = refuse("a notation declaration")
    parser.ExternalEntityRefHandler = refuse("an external entity")
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise XmlError(f"line {e.lineno}: {expat.errors.messages[e.code]}") from None
    return builder.close()
