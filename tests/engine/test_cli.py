"""bin/console's wording and output for an admin: unknown names, job:show, the progress bar, logs."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.engine.conftest import CONSOLE, plugin_dir

PY = sys.executable

TWO_TASKS = f"""
[tasks.tick]
type = "command"
period = "200ms"
argv = ["{PY}", "-c", "print('tick')"]

[tasks.tock]
type = "command"
period = "200ms"
argv = ["{PY}", "-c", "print('tock')"]
"""

TASK_COMMANDS = [("task:state",), ("task:start",), ("task:stop",), ("task:restart",), ("task:run-now",),
                 ("task:run",), ("task:log",), ("task:log", "-f"), ("task:history",), ("task:history", "--json")]


def _unknown_everywhere(site) -> None:
    for cmd, *more in TASK_COMMANDS:
        r = site.console(cmd, "nosuch", *more, timeout=20)
        assert (r.returncode, r.stderr, r.stdout) == (2, f"console {cmd}: no task named 'nosuch'\n", ""), (cmd, r)


def test_an_unknown_task_name_is_exit_2_with_one_wording_daemon_down_and_up(site):
    site.write(TWO_TASKS)
    _unknown_everywhere(site)
    site.console("scheduler:start", check=True)
    _unknown_everywhere(site)


def test_unknown_queue_names_are_refused_and_known_ones_listed(site):
    site.write("""
[queues.two]
workers = 2
""")
    for cmd in (("queue:pause", "nosuch"), ("queue:resume", "nosuch"), ("job:list", "--queue", "nosuch")):
        r = site.console(*cmd)
        assert r.returncode == 2 and r.stdout == "", (cmd, r)
        assert r.stderr.startswith(f"console {cmd[0]}: no queue named 'nosuch' (known: "), r.stderr
        assert "default" in r.stderr and "two" in r.stderr, r.stderr
    site.console("queue:pause", "two", check=True)
    assert site.json("worker:show-configuration")["queues"]["two"]["paused"] is True
    site.console("queue:resume", "two", check=True)
    # a queue named only by the jobs it holds is known too
    site.console("job:add", "noop", "--queue", "adhoc", check=True)
    assert [j["queue"] for j in site.json("job:list", "--queue", "adhoc")] == ["adhoc"]
    site.console("queue:pause", "adhoc", check=True)


def test_job_show_prints_key_colon_space_value_without_none_and_the_traceback_only_with_v(site):
    site.write("""
[jobs.types.command]
max_attempts = 2
retry_delay = "1h"
""")
    site.console("scheduler:start", check=True)
    r = site.console("job:add", "command", "--payload", json.dumps({"argv": [PY, "-c", "import sys; sys.exit(4)"]}),
                     check=True)
    jid = r.stdout.strip()
    job = site.wait_for(lambda: (j := site.json("job:show", jid))["attempts"] == 1 and j["error"] and j,
                        what="the first attempt to fail")
    assert job["state"] == "waiting"
    out = site.console("job:show", jid, check=True).stdout
    head = out.split("\nlog:\n")[0].splitlines()
    assert all(re.fullmatch(r"[a-z ]+: +\S.*", line) for line in head), out
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in head}
    assert fields["attempts"] == "1/2" and "exited with status 4" in fields["error"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["next attempt"])
    assert "summary" not in fields and "None" not in out and "Traceback" not in out
    assert "attempt failed: " in out
    stored = "\n".join(e["line"] for e in job["log"])
    verbose = site.console("-v", "job:show", jid, check=True).stdout
    assert ("Traceback" in verbose) == ("Traceback" in stored)  # -v shows the log as stored


PLUGIN = '''
import anyio
from schedulerd.plugin import TaskType


class Steps(TaskType):
    type_name = "steps"

    async def run_once(self, ctx):
        for i in range(1, 4):
            ctx.progress(i, 3)
            ctx.log.info("step %d", i)
            await anyio.sleep(0.05)
        return "three steps"
'''


def _plugin(root: Path) -> Path:
    """A third-party task type, found by its entry point as any installed one."""
    return plugin_dir(root, "steps_task", PLUGIN, "[schedulerd.tasks]\nsteps = steps_task:Steps\n")


def _on_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, bytes]:
    """Run with stdout and stderr on a pseudo-terminal (so the bar is drawn); what the terminal got."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def _screen(raw: bytes) -> list[str]:
    """The lines a terminal shows: carriage return, erase to end of line (ESC [ K), newline."""
    lines, line, col = [], [], 0
    text = raw.decode("utf-8", "replace")
    i = 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        c = text[i]
        if c == "\r":
            col = 0
        elif c == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            line[col:col + 1] = [c]
            col += 1
        i += 1
    if line:
        lines.append("".join(line))
    return lines


def test_task_run_progress_bar_never_glues_a_line_to_itself(site, tmp_path):
    site.write("""
[tasks.prog]
type = "steps"
""")
    env = {**os.environ, "PYTHONPATH": str(_plugin(tmp_path))}
    env.pop("SCHEDULERD_CONFIG", None)
    code, raw = _on_a_terminal([str(CONSOLE), "--config", str(site.config), "task:run", "prog"], env)
    assert code == 0, raw
    assert b"] 3/3" in raw  # the bar was drawn
    screen = [line for line in _screen(raw) if line.strip()]
    stamp = re.compile(r"\d{4}-\d\d-\d\dT")
    for line in screen:
        assert stamp.match(line) or line.startswith("[") or line == "prog: ok: three steps", screen
        assert len(stamp.findall(line)) <= 1 and not (line.startswith("[") and stamp.search(line)), screen
    steps = [line for line in screen if "INFO [prog] step" in line]
    assert len(steps) == 3, screen
    assert screen.index("prog: ok: three steps") > screen.index(next(s for s in screen if s.startswith("[#")))


def _follow(site, *args: str, seconds: float, during=None) -> str:
    """A follower's output until it is stopped with Ctrl-C (SIGINT), as from a terminal: with SIGINT
    not ignored even when the test run itself was started in the background (a shell's `&` makes
    its children ignore SIGINT, and Python then never turns it into KeyboardInterrupt)."""
    proc = subprocess.Popen([str(CONSOLE), "--config", str(site.config), *args], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(0.5)
        if during:
            during()
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    return out


def test_scheduler_log_follow_is_the_scheduler_log_and_task_log_all_follows_every_task(site):
    site.write(TWO_TASKS)
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("tock")["runs"] >= 1, what="a run")
    live = _follow(site, "scheduler:log", "-f", "-n", "0", seconds=1.0,
                   during=lambda: site.console("scheduler:reload", check=True))
    assert "configuration reloaded" in live
    assert "[tick]" not in live and "[tock]" not in live, live  # as in scheduler.log: no task's lines
    assert "[tick]" not in site.console("scheduler:log", "-n", "200", check=True).stdout
    every = _follow(site, "task:log", "--all", "-f", "-n", "0", seconds=1.0)
    assert "[tick]" in every and "[tock]" in every and "[scheduler]" not in every, every
    shown = site.console("task:log", "--all", "-n", "10", check=True).stdout.splitlines()
    assert len(shown) == 10 and {"[tick]", "[tock]"} <= {line.split()[2] for line in shown}
    assert [line[:29] for line in shown] == sorted(line[:29] for line in shown)  # one time order across the files
    site.console("scheduler:stop", check=True)
    down = site.console("task:log", "--all", "-n", "10", check=True).stdout  # daemon down: the files
    assert "[tick]" in down and "[tock]" in down
    r = site.console("task:log")
    assert r.returncode == 2 and "name one task, or give --all" in r.stderr


def test_scheduler_run_while_the_daemon_runs_says_so_once(site):
    site.write(TWO_TASKS)
    site.console("scheduler:start", check=True)
    r = site.console("scheduler:run", timeout=30)
    assert r.returncode == 1
    assert r.stderr == (f"console scheduler:run: schedulerd is already running (pid {site.pid()}): "
                        "see scheduler:state, stop it with scheduler:stop\n"), r.stderr
    assert site.console("scheduler:state").returncode == 10
