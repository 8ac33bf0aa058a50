"""Errors of media processing, worded for the task log and the record's error mark."""

from __future__ import annotations


class MediaError(Exception):
    """A document that cannot be turned into a sub-definition (broken, unsupported)."""


class ToolError(MediaError):
    """An external tool failed; the message carries its name and the end of its stderr."""


class ToolNotFound(ToolError):
    """The tool is not installed: a state of the host, not of the document."""


class ToolTimeout(ToolError):
    """The tool ran longer than its timeout and was killed."""
