"""A document's own text, for the full-text index: a PDF's through poppler's `pdftotext` (run by
`run_tool`, with a timeout), a plain-text file's read directly; both cut at MAX_CHARS.
Other documents have none (None)."""

from __future__ import annotations

from pathlib import Path

import anyio

from .tools import run_tool

MAX_BYTES = 4 * 1024 * 1024  # of a plain-text file read
MAX_CHARS = 1024 * 1024  # of text kept for the index
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".csv", ".log"})


def has_text(path: Path, mime: str | None) -> bool:
    """Whether the document is a kind whose text is read (PDF, plain text)."""
    return _kind(path, mime) is not None


def _kind(path: Path, mime: str | None) -> str | None:
    m = (mime or "").lower()
    if m == "application/pdf" or path.suffix.lower() == ".pdf":
        return "pdf"
    if m.startswith("text/plain") or path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    return None


def _read_text(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES)
    return data.decode("utf-8", "replace")


def _clean(text: str) -> str:
    return text.replace("\0", " ").replace("\f", "\n").strip()[:MAX_CHARS]


async def document_text(path: Path, mime: str | None, *, timeout: float) -> str | None:
    """The text of `path` (None: not a PDF or a text file); ToolError / ToolNotFound /
    ToolTimeout from pdftotext, OSError from reading."""
    kind = _kind(path, mime)
    if kind == "pdf":
        result = await run_tool(["pdftotext", "-q", "-enc", "UTF-8", path, "-"], timeout=timeout)
        return _clean(result.stdout.decode("utf-8", "replace"))
    if kind == "text":
        return _clean(await anyio.to_thread.run_sync(_read_text, path))
    return None
