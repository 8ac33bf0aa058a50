"""XML read from hotfolders, parsed safely: no DTD, no entities, no external references, bounded.

Hotfolders are written by anyone who can drop a file; their XML must not be able to read local
files, call out, or blow up memory. defusedxml refuses DTDs (and with them every entity and
external reference); the size, depth and element-count bounds are ours, as defusedxml has none.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

import defusedxml
import defusedxml.ElementTree

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_ELEMENTS = 10000


class XmlError(ValueError):
    """Unsafe or malformed XML; the message says which rule it broke and where."""


def parse(data: bytes, *, max_bytes: int = MAX_BYTES) -> ET.Element:
    """The root element of `data`, or XmlError."""
    if len(data) > max_bytes:
        raise XmlError(f"larger than {max_bytes} bytes")
    try:
        root: ET.Element = defusedxml.ElementTree.fromstring(data, forbid_dtd=True)
    except defusedxml.DTDForbidden:
        raise XmlError("a DOCTYPE is not allowed") from None
    except defusedxml.DefusedXmlException as e:
        raise XmlError(f"{type(e).__name__}: not allowed") from None
    except ET.ParseError as e:
        line, _column = e.position
        raise XmlError(f"line {line}: {expat.errors.messages[e.code]}") from None
    _check_shape(root)
    return root


def _check_shape(root: ET.Element) -> None:
    """Depth and element count, walked without recursion (the input is bounded by MAX_BYTES)."""
    count = 0
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise XmlError(f"<{element.tag}>: nested deeper than {MAX_DEPTH}")
        if count > MAX_ELEMENTS:
            raise XmlError(f"more than {MAX_ELEMENTS} elements")
        stack.extend((child, depth + 1) for child in element)
