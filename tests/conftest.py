"""Suite-wide policy: on CI a skipped test is a failure.

A test that needs a server or a tool (vsftpd, sshd, ffmpeg, exiftool, ICC profiles...) skips with
the reason when it finds none, which is right on a developer's laptop. CI installs all of them, so
there a skip means a missing install step and must fail the run (`CI` set to anything but "" / "0" /
"false").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_schedulerd_loggers() -> Iterator[None]:
    """A test that runs the daemon in-process sets up its loggers ("schedulerd" at the configured
    level, not propagating): put them back, so a later test's captured DEBUG lines still arrive."""
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers))
             for lg in (logging.getLogger("schedulerd"), logging.getLogger("schedulerd.task"))]
    yield
    for lg, level, propagate, handlers in saved:
        lg.setLevel(level)
        lg.propagate = propagate
        lg.handlers[:] = handlers


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if _on_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run: {reason}"
    return report
