"""`task:run`: one iteration in the CLI's process, honouring the per-task lock."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PY = sys.executable
CONSOLE = Path(__file__).resolve().parents[2] / "bin" / "console"


def test_exit_codes_without_daemon(site, tmp_path):
    out = tmp_path / "out"
    site.write(f"""
[tasks.ok]
type = "command"
argv = ["sh", "-c", "echo one-shot >> {out}"]

[tasks.bad]
type = "command"
argv = ["{PY}", "-c", "import sys; print('boom'); sys.exit(4)"]
""")
    r = site.console("task:run", "ok")
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "one-shot\n"
    r = site.console("task:run", "bad")
    assert r.returncode == 1
    assert "exited with status 4" in r.stderr and "boom" in site.log("bad")
    r = site.console("task:run", "nope")
    assert r.returncode == 2 and "no task named 'nope'" in r.stderr
    hist = site.json("task:history", "bad")
    assert hist[0]["source"] == "cli" and hist[0]["outcome"] == "failed"


def test_refused_while_the_daemon_runs_the_same_iteration(site, tmp_path):
    count = tmp_path / "count"
    site.write(f"""
[tasks.slow]
type = "command"
period = "1h"
argv = ["sh", "-c", "echo x >> {count}; sleep 2"]

[tasks.quick]
type = "command"
period = "1h"
argv = ["true"]
""")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("slow")["state"] == "running", what="the daemon's iteration")
    r = site.console("task:run", "slow")
    assert r.returncode == 3 and "running an iteration elsewhere" in r.stderr
    assert count.read_text() == "x\n"  # never two iterations at once
    r = site.console("task:run", "quick")  # another task is not blocked
    assert r.returncode == 0
    site.wait_for(lambda: site.task("slow")["state"] == "waiting", what="the iteration to end")
    r = site.console("task:run", "slow")  # between iterations the one-shot may run
    assert r.returncode == 0
    assert count.read_text() == "x\nx\n"


def test_daemon_skips_its_iteration_while_a_one_shot_holds_the_lock(site, tmp_path):
    import subprocess

    count = tmp_path / "count"
    site.write(f"""
[tasks.slow]
type = "command"
period = "200ms"
argv = ["sh", "-c", "echo x >> {count}; sleep 3"]
""")
    site.console("task:stop", "slow")  # configured stopped while the daemon is down
    site.console("scheduler:start", check=True)
    oneshot = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "task:run", "slow"])
    site.wait_for(lambda: count.exists(), what="the one-shot to begin")
    site.console("task:start", "slow", check=True)
    # the one-shot holds the lock for 3 s: the daemon's first try comes within that on a loaded machine
    site.wait_for(lambda: "iteration skipped: a one-shot task:run holds the lock" in site.log("slow"), 10,
                  "the daemon's skipped iteration")
    assert count.read_text() == "x\n"  # the daemon skipped: the one-shot holds the lock
    assert oneshot.wait(10) == 0
    site.wait_for(lambda: count.read_text().count("x") >= 2, what="the daemon to run again")


def lock_file(site) -> Path:
    from schedulerd.config import load

    return load(site.config).scheduler.state_dir / "locks" / "tasks.lock"


def lock_descriptors(pid: int, lock_file: Path) -> int:
    """How many of the process's descriptors are open on `lock_file`."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(lock_file))


def test_the_daemons_running_iterations_share_one_descriptor_of_the_lock_file(site, tmp_path):
    """One open file for every task's lock: not a descriptor (an open and a close) per iteration."""
    site.write("".join(f"""
[tasks.slow{i}]
type = "command"
period = "1h"
argv = ["sh", "-c", "touch {tmp_path}/began{i}; sleep 30"]
""" for i in range(3)))
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: all((tmp_path / f"began{i}").exists() for i in range(3)), what="three iterations running")
    pid = site.pid()
    assert pid is not None
    assert lock_descriptors(pid, lock_file(site)) == 1
    r = site.console("task:run", "slow1")  # each task's lock still holds on that one file
    assert r.returncode == 3 and "running an iteration elsewhere" in r.stderr


def test_a_lock_file_removed_while_the_daemon_runs_still_keeps_task_run_out(site, tmp_path):
    """The daemon keeps the lock file open between iterations: a removed one is opened again, or
    the daemon would lock a file nobody else opens and a task:run could overlap its iteration."""
    count = tmp_path / "count"
    site.write(f"""
[tasks.slow]
type = "command"
period = "200ms"
argv = ["sh", "-c", "echo x >> {count}; sleep 5"]
""")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: count.exists(), what="a first iteration")  # its lock taken on the file removed next
    lock_file(site).unlink()
    site.wait_for(lambda: count.read_text().count("x") >= 2, 20, "the next iteration")
    r = site.console("task:run", "slow")
    assert r.returncode == 3 and "running an iteration elsewhere" in r.stderr
    assert count.read_text().count("x") == 2  # the one-shot did not run beside it
