"""`[tasks.NAME]` of type "archive": the settings, checked once at load."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Literal

from schedulerd.settings import ConfigError, duration

MAX_COLD = 300.0
_CAPTION_RE = re.compile(r"^(?:[^{}]|\{stem\}|\{name\})+$")


@dataclasses.dataclass(frozen=True)
class Settings:
    """`[tasks.NAME]` of type "archive" (besides type, period, enabled, timeout)."""

    databox: str
    collection: str  # name or id; a folder's .phrasea.xml may choose another for its subtree
    hotfolder: Path
    cold: Annotated[float, duration] = 30.0
    move_archived: bool = False  # keep a copy in <hotfolder>_archived (same sub-paths)
    move_error: bool = True  # send failures to <hotfolder>_error with a .error.txt
    status: str = ""  # mask given to new records, e.g. "x1x0"
    accept: tuple[str, ...] = ("*",)  # file-name patterns (case-insensitive) to archive
    refuse: tuple[str, ...] = ()  # patterns sent to the error folder
    captions: tuple[str, ...] = ()  # sidecar names, e.g. "{stem}.xml", "{name}.json"
    duplicates: Literal["allow", "skip", "error"] = "allow"  # same sha256 in the collection
    delete_empty_folders: bool = False
    force_polling: bool = False  # network shares: poll instead of inotify
    batch: int = 5000  # files per journaled transaction (one durable sync each)
    bootstrap: bool = False  # create a missing hotfolder, its .phrasea.xml and the collection
    exiftool: str = "exiftool"  # reads the embedded tags the databox's fields name (`src`)

    def check(self) -> None:
        from repository import parse_mask

        if not 0 <= self.cold <= MAX_COLD:
            raise ConfigError("cold", f"expected 0 to {MAX_COLD:.0f} seconds, got {self.cold:g}")
        try:
            parse_mask(self.status, "status mask")
        except ValueError as e:
            raise ConfigError("status", str(e)) from None
        if not 1 <= self.batch <= 100000:
            raise ConfigError("batch", f"expected 1 to 100000 files, got {self.batch}")
        for i, p in enumerate(self.captions):
            if not _CAPTION_RE.match(p) or "/" in p or "{" not in p:
                raise ConfigError(f"captions[{i}]",
                                  f'expected a name made with {{stem}} or {{name}}, like "{{stem}}.xml", got {p!r}')
        for key in ("accept", "refuse"):
            for i, p in enumerate(getattr(self, key)):
                if not p or "/" in p:
                    raise ConfigError(f"{key}[{i}]", f'expected a file-name pattern like "*.jpg", got {p!r}')


def sibling(hotfolder: Path, suffix: str) -> Path:
    return hotfolder.parent / f"{hotfolder.name}{suffix}"
