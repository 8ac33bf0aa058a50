"""Remote names are untrusted: refuse anything that could escape the local folder."""

from __future__ import annotations

import unicodedata

from schedulerd.plugin import TaskLog

MAX_NAME_BYTES = 255


def unsafe_reason(name: str) -> str | None:
    """Why `name` (one path component from a server) must not be used, or None."""
    if not name:
        return "empty name"
    if name in (".", ".."):
        return "dot entry"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if "\0" in name:
        return "contains NUL"
    if "\r" in name or "\n" in name:
        return "contains CR/LF"
    if not name.isprintable() and any(unicodedata.category(c) == "Cc" for c in name):  # C-speed test first
        return "contains a control character"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def printable(name: str, limit: int = 80) -> str:
    """A log-safe rendering of a hostile name (escaped, shortened)."""
    r = repr(name)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def check_name(name: str, log: TaskLog | None, where: str = "") -> bool:
    """True when `name` is safe; otherwise warn (except for . and ..) and return False."""
    if (reason := unsafe_reason(name)) is None:
        return True
    if reason != "dot entry" and log is not None:
        log.warning("refusing remote name %s%s: %s", printable(name), f" in {where}" if where else "", reason)
    return False


def join(directory: str, name: str) -> str:
    """Join a remote directory and a (checked) name with one slash."""
    return name if directory in ("", ".") else directory.rstrip("/") + "/" + name
