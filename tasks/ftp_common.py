"""What `ftp_pull`, `ftp_push` and the `ftp` job share beside the transfer layer
(`tasks.transfer`): a pass's progress, atomic state files, the `remote_dir` check."""

from __future__ import annotations

import time

from schedulerd import metrics
from schedulerd.plugin import Context


def check_remote_dir(value: str, key: str = "remote_dir") -> None:
    if not value or any(c in value for c in "\r\n\0"):
        raise ValueError(f"{key}: must be a non-empty path without CR, LF or NUL")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


class Progress:
    def __init__(self, ctx: Context, files_total: int, bytes_total: int | None, every: float = 0.25):
        self.ctx = ctx
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.files_done = 0
        self.failed = 0
        self.skipped = 0
        self.bytes_done = 0
        self.start = time.monotonic()
        self.every = every
        self._last = 0.0
        self._publish(force=True)

    def on_bytes(self, n: int) -> None:
        self.bytes_done += n
        metrics.ftp_transferred(self.ctx.name, bytes=n)
        self._publish()

    def file_done(self, *, failed: bool = False, skipped: bool = False) -> None:
        """Counted at once, shown at most every `every` seconds (and at the last file, and
        by `clear`): publishing cost more than a small file's download."""
        self.files_done += 1
        if not failed and not skipped:
            metrics.ftp_transferred(self.ctx.name, files=1)
        self.failed += failed
        self.skipped += skipped
        self._publish(force=self.files_done == self.files_total)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        self.ctx.progress(self.files_done, self.files_total)
        self.ctx.set_info(bytes_done=self.bytes_done, bytes_total=self.bytes_total, bytes_per_second=round(self.rate))

    def clear(self) -> None:
        """The pass is over: its final file count shown, the byte figures dropped."""
        self.ctx.progress(self.files_done, self.files_total)
        self.ctx.set_info(bytes_done=None, bytes_total=None, bytes_per_second=None)

    def summary(self, verb: str) -> str:
        elapsed = time.monotonic() - self.start
        ok = self.files_done - self.failed - self.skipped
        text = f"{verb} {ok} file{'s' if ok != 1 else ''} ({human(self.bytes_done)}) in {elapsed:.1f}s, {human(self.rate)}/s"
        if self.skipped:
            text += f", {self.skipped} skipped"
        if self.failed:
            text += f", {self.failed} failed"
        return text
