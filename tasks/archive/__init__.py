"""The `archive` task type: files dropped in a hotfolder become records of a databox.

A pass scans the tree (size, mtime, ctime), waits `cold`, rescans, and archives
only what did not change, in journaled batches (see repository.ingest):
a crash at any instant loses nothing and archives nothing twice. A watcher wakes
the task early when files arrive; the scan stays the truth.

Modules: `settings` (`[tasks.NAME]`), `task` (the passes, the watcher), `plan` (what a
pass does with each file), `embedded` (fields read from the files by exiftool).
"""

from .settings import Settings
from .task import ArchiveTask

__all__ = ["ArchiveTask", "Settings"]
