"""What was already pulled (path, size, mtime), so that nothing is pulled twice.

A snapshot written atomically (temp + fsync + rename) plus an append-only
journal of one JSON line per pulled file, handed to the kernel by `flush()`
after each group of settled files: a crash mid-pass loses nothing flushed
(a file not yet flushed is pulled again, as if the crash came a moment earlier),
and the next `compact()` folds the journal in.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

Key = tuple[int | None, float | None]
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _number(v: int | float | None) -> str:
    return repr(v) if v is not None and math.isfinite(v) else "null"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.journal = path.with_suffix(path.suffix + ".journal")
        self.items: dict[str, Key] = {}
        self._fh = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.items = {k: (v[0], v[1]) for k, v in data.get("files", {}).items()}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"ledger {self.path} is damaged ({e}); move it away to pull everything again") from None
        with contextlib.suppress(FileNotFoundError):
            for line in self.journal.read_text().splitlines():
                try:
                    k, size, mtime = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a torn last line after a crash
                self.items[k] = (size, mtime)

    def seen(self, rel: str, size: int | None, mtime: float | None) -> bool:
        return self.items.get(rel) == (size, mtime)

    def add(self, rel: str, size: int | None, mtime: float | None) -> None:
        self.items[rel] = (size, mtime)
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.journal, "a", encoding="utf-8")
        # json.dumps([rel, size, mtime]) by hand: its encoder set-up cost more than the rest of a small file's entry
        self._fh.write(f"[{_quote(rel)},{_number(size)},{_number(mtime)}]\n")

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def compact(self, keep: Iterable[str] | None = None) -> None:
        """Fold the journal into the snapshot; with `keep`, forget files no longer on the server."""
        if keep is not None:
            wanted = set(keep)
            self.items = {k: v for k, v in self.items.items() if k in wanted}
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files = {k: list(v) for k, v in sorted(self.items.items())}
        write_atomic(self.path, json.dumps({"version": 1, "files": files}, separators=(",", ":")).encode())
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
