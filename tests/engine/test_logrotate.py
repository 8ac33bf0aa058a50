"""Debian's logrotate rotates a running daemon's logs (contrib/logrotate/schedulerd's way: move,
then `scheduler:reopen-logs`): no line lost, and the daemon writes into the new files."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap

import pytest

from tests.engine.conftest import CONSOLE
from tests.engine.webconsole import start_env

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


def numbers(text: str, pattern: str) -> list[int]:
    return [int(n) for n in re.findall(pattern, text)]


@pytest.mark.skipif(not shutil.os.path.exists(LOGROTATE), reason="needs the Debian package logrotate")
def test_logrotate_rotates_a_running_daemons_logs_without_losing_a_line(site, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", start_env(tmp_path)["PYTHONPATH"])
    site.write("""
[tasks.chatty]
type = "chatty"
period = "50ms"
""", scheduler="log_max_bytes = 0\n")
    assert site.console("scheduler:start").returncode == 0
    logs = site.var / "log"
    site.wait_for(lambda: "chatty line 20" in site.log("chatty"), what="some lines")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(textwrap.dedent(f"""
        {logs}/*.log {logs}/scheduler.out {{
            rotate 3
            missingok
            sharedscripts
            postrotate
                {CONSOLE} --config {site.config} scheduler:reopen-logs >/dev/null
            endscript
        }}
        """))
    p = subprocess.run([LOGROTATE, "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (logs / "task-chatty.log.1").exists() and (logs / "scheduler.out.1").exists()
    site.wait_for(lambda: len(numbers(site.log("chatty"), r"chatty line (\d+)")) >= 10, what="lines in the new task log")
    site.wait_for(lambda: len(numbers((logs / "scheduler.out").read_text(), r"chatty out (\d+)")) >= 10,
                  what="lines in the new scheduler.out")
    assert "log files reopened" in site.log()  # the new scheduler.log has the daemon's line
    assert site.console("scheduler:stop").returncode == 0
    for name, pattern in (("task-chatty.log", r"chatty line (\d+)"), ("scheduler.out", r"chatty out (\d+)")):
        old = numbers((logs / f"{name}.1").read_text(), pattern)
        new = numbers((logs / name).read_text(), pattern)
        assert old and new, name
        every = old + new
        assert every == list(range(1, len(every) + 1)), f"{name}: a line lost or doubled across the rotation"
