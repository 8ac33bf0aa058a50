"""The named statements of queries.sql, read once: `QUERIES["claim_jobs"]`."""

from __future__ import annotations

import re
from importlib.resources import files
from types import MappingProxyType

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


def parse(text: str) -> dict[str, str]:
    """`-- name: X` starts statement X; its comment lines are dropped, a final `;` too."""
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
        if name in found:
            raise ValueError(f"queries.sql: statement {name} is defined twice")
        found[name] = "\n".join(lines).rstrip().rstrip(";")
    return found


def read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


QUERIES = MappingProxyType(parse(read("queries.sql")))
