"""Progress figures of a pass: throttled while it runs, exact at its end."""

from __future__ import annotations

from pathlib import Path

from schedulerd.context import TaskContext
from tasks.ftp_common import Progress


def test_file_counts_are_throttled_but_the_last_file_and_the_end_are_always_shown(tmp_path: Path) -> None:
    ctx = TaskContext.for_test("p", None, tmp_path=tmp_path)
    p = Progress(ctx, 3, 300, every=3600)
    assert (ctx.done, ctx.total) == (0, 3) and ctx.info["bytes_total"] == 300
    p.on_bytes(100)
    p.file_done()
    assert ctx.done == 0  # within `every` of the last figure: counted, not shown yet
    p.file_done(failed=True)
    assert (p.files_done, p.failed) == (2, 1) and ctx.done == 0
    p.file_done()
    assert (ctx.done, ctx.total) == (3, 3)  # the last file is always shown

    q = Progress(ctx, 5, None, every=3600)  # a pass that stops early (a fatal error)
    q.file_done(skipped=True)
    assert ctx.done == 0
    q.clear()
    assert (ctx.done, ctx.total) == (1, 5) and "bytes_done" not in ctx.info
    assert q.summary("pulled").startswith("pulled 0 files (0 B) in ") and q.summary("pulled").endswith(", 1 skipped")


def test_figures_move_on_once_the_interval_has_passed(tmp_path: Path) -> None:
    ctx = TaskContext.for_test("p", None, tmp_path=tmp_path)
    p = Progress(ctx, 10, 1000, every=0.0)
    p.on_bytes(250)
    assert ctx.info["bytes_done"] == 250
    p.file_done()
    assert ctx.done == 1
