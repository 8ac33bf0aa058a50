"""The daemon as a real subprocess, driven through bin/console."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.engine.conftest import CONSOLE

PY = sys.executable

TICK = f"""
[tasks.tick]
type = "command"
period = "200ms"
argv = ["{PY}", "-c", "print('tick')"]
"""


def test_start_state_stop_lifecycle(site):
    site.write(TICK)
    r = site.console("scheduler:state", "--short")
    assert (r.returncode, r.stdout.strip()) == (11, "stopped")
    r = site.console("scheduler:start")
    assert r.returncode == 0, r.stderr
    pid = site.pid()
    assert pid and f"pid {pid}" in r.stdout
    r = site.console("scheduler:start")  # twice: says so, exit 0, same daemon
    assert r.returncode == 0 and "already running" in r.stdout and site.pid() == pid
    r = site.console("scheduler:state", "--short")
    assert (r.returncode, r.stdout.strip()) == (10, f"started({pid})")
    r = site.console("scheduler:state")
    assert r.returncode == 10 and "tick" in r.stdout and "started" in r.stdout
    st = site.json("scheduler:state")
    assert st["pid"] == pid and st["tasks"][0]["name"] == "tick"
    site.wait_for(lambda: site.task("tick")["runs"] >= 2, what="two iterations")
    assert "tick" in site.log("tick")
    mode = os.stat(site.var / "run" / "s.sock").st_mode & 0o777
    assert mode == 0o600
    r = site.console("scheduler:stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not site.pidfile.exists()
    assert not (site.var / "run" / "s.sock").exists()
    r = site.console("scheduler:stop")  # stop when stopped
    assert r.returncode == 0 and "not running" in r.stdout


def test_kill_9_leaves_stale_pidfile_and_socket_that_are_replaced(site):
    site.write(TICK)
    assert site.console("scheduler:start").returncode == 0
    pid = site.pid()
    os.kill(pid, signal.SIGKILL)
    site.wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
                  what="the daemon to die")
    assert site.pidfile.exists() and (site.var / "run" / "s.sock").exists()  # stale leftovers
    r = site.console("scheduler:state", "--short")
    assert r.returncode == 11, r.stdout + r.stderr  # a stale pidfile is never trusted
    r = site.console("scheduler:start")
    assert r.returncode == 0, r.stderr
    assert site.pid() != pid
    assert site.console("ping" if False else "scheduler:state").returncode == 10


def test_task_stop_survives_restart_and_start_clears(site):
    site.write(TICK)
    site.console("scheduler:start", check=True)
    r = site.console("task:stop", "tick")
    assert r.returncode == 0 and "stopped" in r.stdout
    r = site.console("task:state", "tick")
    assert r.returncode == 0  # configured stopped, actually stopped
    assert site.console("task:list").returncode == 0
    site.console("scheduler:stop", check=True)
    site.console("scheduler:start", check=True)
    snap = site.task("tick")
    assert (snap["wanted"], snap["state"]) == ("stopped", "stopped")
    site.console("task:start", "tick", check=True)
    site.wait_for(lambda: site.task("tick")["state"] in ("running", "waiting"), what="tick to run")


def test_the_daemons_start_is_one_line_and_a_task_start_is_said_in_the_tasks_log(site):
    """issue 22: with thousands of tasks one INFO line per task start (each opening the task's log
    file) was a third of the start-up: the daemon says in one line how many tasks it starts, each
    task's own start lines are at debug level; a task:start is still said in the task's log."""
    site.write("".join(f'[tasks.t{i}]\ntype = "noop"\nperiod = "1h"\n\n' for i in range(3))
               + '[tasks.off]\ntype = "noop"\nperiod = "1h"\nenabled = false\n')
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: all(site.task(f"t{i}")["runs"] == 1 for i in range(3)), what="the first runs")
    site.wait_for(lambda: "3 task(s) starting, 0 stopped, 1 disabled" in site.log(), what="the summary line")
    assert all("state " not in site.log(f"t{i}") for i in range(3)), site.log("t0")
    site.console("task:stop", "t0", check=True)
    site.console("task:start", "t0", check=True)
    site.wait_for(lambda: "INFO [t0] state stopped -> starting" in site.log("t0"), what="task:start's line")
    site.wait_for(lambda: "INFO [t0] state starting -> running" in site.log("t0"), what="its first iteration")


def test_sighup_reload_valid_and_invalid(site):
    site.write(TICK + f"""
[tasks.other]
type = "command"
period = "1h"
argv = ["{PY}", "-c", "print('other')"]
""")
    site.console("scheduler:start", check=True)
    pid = site.pid()
    before = site.task("tick")["started_at"]
    # valid: one task added, one removed, "tick" unchanged (not restarted)
    site.write(TICK + f"""
[tasks.added]
type = "command"
period = "1h"
argv = ["{PY}", "-c", "print('added')"]
""")
    os.kill(pid, signal.SIGHUP)
    site.wait_for(lambda: {t["name"] for t in site.json("task:list")} == {"tick", "added"}, what="reload")
    assert site.task("tick")["started_at"] == before
    # invalid: logged, the old configuration stays in force, the daemon keeps running
    site.config.write_text(site.config.read_text().replace('period = "1h"', "period = -1"))
    os.kill(pid, signal.SIGHUP)
    site.wait_for(lambda: "reload refused" in site.log(), what="the refusal in the log")
    assert "tasks.added.period" in site.log()
    assert {t["name"] for t in site.json("task:list")} == {"tick", "added"}
    r = site.console("scheduler:reload")
    assert r.returncode == 2 and "tasks.added.period" in r.stderr
    assert site.console("scheduler:state").returncode == 10 and site.pid() == pid
    # changed: "tick" gets a new period and is restarted; "added" is untouched
    added_since = site.task("added")["started_at"]
    site.write(TICK.replace("200ms", "300ms") + f"""
[tasks.added]
type = "command"
period = "1h"
argv = ["{PY}", "-c", "print('added')"]
""")
    r = site.console("scheduler:reload")
    assert r.returncode == 0 and "changed ['tick']" in r.stdout
    assert site.task("tick")["period"] == 0.3 and site.task("tick")["started_at"] != before
    assert site.task("added")["started_at"] == added_since


def test_crashing_task_backs_off_then_crashes_while_neighbour_keeps_period(site):
    site.write(f"""
[tasks.bad]
type = "command"
period = "100ms"
argv = ["{PY}", "-c", "import sys; sys.exit(3)"]

[tasks.good]
type = "command"
period = "200ms"
argv = ["{PY}", "-c", "print('ok')"]
""", scheduler="max_crashes = 3\n")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("bad")["state"] == "crashed", what="bad to crash")
    assert "state running -> backoff" in site.log("bad")
    assert "exited with status 3" in site.log("bad")
    bad = site.task("bad")
    assert bad["crashes"] == 3 and bad["last_run"]["outcome"] == "failed"
    r = site.console("task:state", "bad")
    assert r.returncode == 1 and "crashed" in r.stdout  # configured started, actually crashed
    assert site.console("task:list").returncode == 1
    time.sleep(1.0)
    assert site.task("bad")["state"] == "crashed"  # stays crashed
    # the neighbour kept its period: each start ~200 ms after the one before, or at once
    # after an iteration that overran it (a python start-up on a machine short of CPU)
    hist = sorted(site.json("task:history", "good", "-n", "6"), key=lambda h: h["started"])
    gaps = [(b["started"] - a["started"], a["ended"] - a["started"]) for a, b in zip(hist, hist[1:], strict=False)]
    assert len(gaps) >= 4 and all(0.1 < g < max(0.2, took) + 0.25 for g, took in gaps), gaps
    assert all(h["outcome"] == "ok" for h in hist)
    assert "state crashed -> " not in site.log("bad")
    site.console("task:start", "bad", check=True)  # clears crashed
    # it may crash again before a next console call could see it running (a loaded machine):
    # the log tells that it left `crashed`
    site.wait_for(lambda: "state crashed -> " in site.log("bad"), what="bad to leave crashed")


def test_timeout_kills_the_process_group(site, tmp_path):
    marker = tmp_path / "child.pid"
    site.write(f"""
[tasks.slow]
type = "command"
period = "1h"
timeout = "500ms"
argv = ["sh", "-c", "sleep 60 & echo $! > {marker}; wait"]
""")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("slow")["last_run"], what="the first iteration to end")
    last = site.task("slow")["last_run"]
    assert last["outcome"] == "timeout" and "timed out after 0.5s" in last["error"]
    child = int(marker.read_text())
    site.wait_for(lambda: not os.path.exists(f"/proc/{child}"), timeout=5, what="the grandchild to be killed")


def test_graceful_stop_waits_for_the_iteration(site, tmp_path):
    done = tmp_path / "done"
    site.write(f"""
[tasks.work]
type = "command"
period = "1h"
argv = ["sh", "-c", "sleep 1; touch {done}"]
""")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("work")["state"] == "running", what="the iteration")
    assert site.console("scheduler:stop").returncode == 0
    assert done.exists()  # finished within stop_timeout (3 s), not cancelled


def test_sigterm_stops_gracefully(site):
    site.write(TICK)
    site.console("scheduler:start", check=True)
    pid = site.pid()
    os.kill(pid, signal.SIGTERM)
    site.wait_for(lambda: site.console("scheduler:state").returncode == 11, what="the daemon to stop")
    assert "SIGTERM: stopping" in site.log()


def test_sigterm_as_soon_as_the_socket_exists_is_a_clean_stop(site):
    """The handlers are in place before the socket is: an admin's script (or systemd) may signal
    the daemon the moment it answers, and the default action would leave the socket behind."""
    site.write(TICK)
    for _ in range(5):
        p = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "scheduler:run"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 15
            while not site.socket.exists():
                assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.stderr else ""
                time.sleep(0.0005)
            p.send_signal(signal.SIGTERM)
            assert p.wait(15) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stderr:
                p.stderr.close()
        assert not site.socket.exists() and not site.pidfile.exists()
    assert site.log().count("SIGTERM: stopping") == 5


def test_task_commands_errors(site):
    site.write(TICK)
    site.console("scheduler:start", check=True)
    r = site.console("task:state", "nope")
    assert r.returncode == 2 and "no task named 'nope'" in r.stderr
    r = site.console("task:start", "nope")
    assert r.returncode == 2 and "no task named 'nope'" in r.stderr
    r = site.console("no:such-command")
    assert r.returncode == 2


def test_log_tail_through_the_socket(site):
    site.write(TICK)
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("tick")["runs"] >= 1, what="a run")
    r = site.console("task:log", "tick", "-n", "5")
    assert r.returncode == 0 and "[tick]" in r.stdout
    r = site.console("scheduler:log", "-n", "3")
    assert r.returncode == 0 and "started" in site.log()
    site.console("scheduler:stop", check=True)
    r = site.console("task:log", "tick", "-n", "5")  # daemon down: reads the file
    assert r.returncode == 0 and "[tick]" in r.stdout


def test_log_follow_streams_new_lines(site):
    import subprocess
    from pathlib import Path

    site.write(TICK)
    site.console("scheduler:start", check=True)
    console = Path(__file__).resolve().parents[2] / "bin" / "console"
    proc = subprocess.Popen([str(console), "--config", str(site.config), "task:log", "tick", "-f", "-n", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # live lines, as iterations happen
        assert all("[tick]" in line for line in lines), lines
    finally:
        proc.kill()
        proc.wait()
    assert site.console("scheduler:state").returncode == 10  # the daemon shrugs off the dropped follower


def test_state_changing_commands_are_refused_while_the_daemon_drains(site, tmp_path):
    """issue 25 item 7: after scheduler:stop nothing restarts a task; the socket answers queries and
    refuses every state-changing command with SHUTTING_DOWN until the daemon is gone."""
    ran = tmp_path / "other-ran"
    site.write(f"""
[tasks.slow]
type = "command"
period = "1h"
argv = ["sh", "-c", "sleep 6"]

[tasks.other]
type = "command"
period = "1h"
argv = ["sh", "-c", "echo run >> {ran}"]
""", scheduler='stop_timeout = "10s"')  # the drain lasts while slow's iteration ends: ~6 s
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: ran.exists(), what="other's first run")
    site.console("task:stop", "other", check=True)
    site.wait_for(lambda: site.task("slow")["state"] == "running", what="slow's iteration")
    runs_before = ran.read_text().count("run")
    stop = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "scheduler:stop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        site.wait_for(lambda: "stopping: draining" in site.log(), what="the drain")
        for args in (("task:start", "other"), ("task:restart", "other"), ("task:run-now", "slow"),
                     ("task:stop", "slow"), ("scheduler:reload",)):
            r = site.console(*args)
            assert r.returncode == 1 and "shutting down" in r.stderr, (args, r.returncode, r.stderr)
        assert site.task("other")["state"] == "stopped"  # queries still answer
        assert stop.wait(30) == 0, stop.stderr.read() if stop.stderr else ""
    finally:
        if stop.poll() is None:
            stop.kill()
        stop.communicate()
    assert ran.read_text().count("run") == runs_before  # never restarted while draining
    snap = site.task("other")  # offline: the refused task:start changed nothing stored
    assert (snap["wanted"], snap["state"]) == ("stopped", "stopped")
    # the daemon's own start is said at debug level; a task:start would be a line at info level
    assert "state stopped -> starting" not in site.log("other")


def test_an_iteration_cut_at_stop_says_so_but_a_finished_one_is_no_error(site):
    """issue 25 item 8, the other side: a periodic iteration still running when the stop's grace
    runs out was cut short, and says how; one that finished within the grace leaves no error."""
    site.write("""
[tasks.work]
type = "command"
period = "1h"
argv = ["sh", "-c", "sleep 30"]

[tasks.quick]
type = "command"
period = "1h"
argv = ["sh", "-c", "sleep 1.5"]
""")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("work")["state"] == "running", what="work's iteration")
    site.wait_for(lambda: site.task("quick")["state"] == "running", what="quick's iteration")
    assert site.console("task:stop", "work", "--timeout", "0.5").returncode == 0
    assert site.console("task:stop", "quick").returncode == 0
    work, quick = site.task("work"), site.task("quick")
    assert work["last_run"]["outcome"] == "cancelled" and work["failures"] == 1
    assert "last error: cancelled at stop: still running after 0.5s" in site.console("task:state", "work").stdout
    assert quick["last_run"]["outcome"] == "ok" and "error" not in site.console("task:state", "quick").stdout


PROBE_MODULE = '''
from schedulerd.plugin import JobType, TaskType


class ProbeTask(TaskType):
    type_name = "probe"

    async def run_once(self, ctx):
        return "probe task ran"


class ProbeJob(JobType):
    type_name = "probe"

    async def run(self, ctx, payload):
        return "probe job ran"
'''


def scratch_checkout(root):
    """A checkout of its own (bin/console, the engine, a tasks/ directory of links to the real
    modules) so that a test may drop a module into tasks/ without touching the repository's."""
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (root / "bin").mkdir(parents=True)
    shutil.copy2(repo / "bin" / "console", root / "bin" / "console")
    (root / "schedulerd").symlink_to(repo / "schedulerd")
    if (repo / ".venv").exists():
        (root / ".venv").symlink_to(repo / ".venv")
    (root / "tasks").mkdir()
    for entry in (repo / "tasks").iterdir():
        if entry.name != "__pycache__":
            (root / "tasks" / entry.name).symlink_to(entry)
    return root


def test_reload_finds_a_task_and_a_job_type_dropped_into_tasks(site, tmp_path):
    """issue 25 item 12: scheduler:reload re-scans the task and job types, no restart needed."""
    import json

    checkout = scratch_checkout(tmp_path / "checkout")

    def console(*args):
        env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
        return subprocess.run([str(checkout / "bin" / "console"), "--config", str(site.config), *args],
                              capture_output=True, text=True, timeout=60, env=env, cwd=site.root)

    known = """
[jobs.types.noop]
max_attempts = 1
"""  # the daemon looks the job types up at start: what it found then must not be all it knows
    site.write(TICK + known)
    assert console("scheduler:start").returncode == 0
    pid = site.pid()
    site.wait_for(lambda: site.task("tick")["runs"] >= 1, what="tick's first run")
    (checkout / "tasks" / "probe.py").write_text(PROBE_MODULE)
    site.write(TICK + known + """
[tasks.p]
type = "probe"
period = "1h"

[jobs.types.probe]
max_attempts = 1
""")
    r = console("scheduler:reload")
    assert r.returncode == 0 and "added ['p']" in r.stdout, r.stdout + r.stderr
    snap = site.wait_for(lambda: (s := json.loads(console("task:state", "p", "--json").stdout))["runs"] and s,
                         what="the new task type's first run")
    assert snap["last_run"]["summary"] == "probe task ran"
    r = console("job:add", "probe")
    assert r.returncode == 0, r.stderr
    jid = r.stdout.strip()
    job = site.wait_for(lambda: (j := json.loads(console("job:show", jid, "--json").stdout))["state"]
                        in ("finished", "failed") and j, what="the new job type's job")
    assert (job["state"], job["summary"]) == ("finished", "probe job ran"), job
    assert site.pid() == pid  # the same daemon: no restart


def test_sigusr1_reopens_the_log_files_and_the_daemon_lives_on(site):
    """issue 25 item 22: after an external logrotate moved the logs, SIGUSR1 makes the daemon write
    to new files; it never kills the daemon."""
    site.write(TICK)
    site.console("scheduler:start", check=True)
    pid = site.pid()
    site.wait_for(lambda: "tick" in site.log("tick"), what="tick's log")
    logdir = site.var / "log"
    for name in ("scheduler.log", "task-tick.log"):
        (logdir / name).rename(logdir / f"{name}.1")
    os.kill(pid, signal.SIGUSR1)
    site.wait_for(lambda: "SIGUSR1: log files reopened" in site.log(), what="a new scheduler.log")
    site.wait_for(lambda: "tick" in site.log("tick"), what="a new task-tick.log")
    assert "SIGUSR1" not in (logdir / "scheduler.log.1").read_text()
    os.kill(pid, signal.SIGUSR1)  # twice: still alive, still the same daemon
    site.wait_for(lambda: site.log().count("SIGUSR1: log files reopened") == 2, what="the second reopen")
    assert site.console("scheduler:state").returncode == 10 and site.pid() == pid


def test_a_locked_state_store_delays_history_and_task_states_but_loses_none(site, tmp_path):
    """Issue 25 item 21: another process holds schedulerd.db's write lock longer than the busy timeout."""
    import sqlite3

    from tests.engine.conftest import hold_write_lock, ping_seconds

    ticks = tmp_path / "ticks"
    site.write(f"""
    [tasks.tick]
    type = "command"
    period = "200ms"
    argv = ["sh", "-c", "echo t >> {ticks}"]

    [tasks.bad]
    type = "command"
    period = "200ms"
    argv = ["false"]
    """, scheduler='store_busy_timeout = "2s"\nmax_crashes = 1000\n')
    site.console("scheduler:start", check=True)
    pid = site.pid()
    site.wait_for(lambda: ticks.exists(), what="the first tick")
    locker = hold_write_lock(site.var / "state" / "schedulerd.db", 6)
    try:
        site.wait_for(lambda: "writing the run history and task states: the store failed" in site.log(), 30,
                      what="the failed write")
        # store calls wait in threads, not on the loop: one on the loop would stall it for the
        # busy timeout (2 s) each time it meets the lock; half of that leaves room for a loaded machine
        assert max(ping_seconds(site) for _ in range(5)) < 1.0
        assert site.console("task:stop", "tick").returncode == 0  # its wanted state waits for the store
        assert site.console("task:history", "bad").returncode == 0
    finally:
        locker.wait(10)
    site.wait_for(lambda: "writing the run history and task states: the store answers again" in site.log(), 60,
                  what="the delayed write")
    assert site.pid() == pid and site.task("bad")["state"] in ("running", "backoff")
    assert site.console("scheduler:stop").returncode == 0
    log = site.log()
    assert log.count("the store failed (OperationalError: database is locked)") == 1 and "Traceback" not in log
    db = sqlite3.connect(site.var / "state" / "schedulerd.db")
    ok_ticks = db.execute("SELECT count(*) FROM runs WHERE task='tick' AND outcome='ok'").fetchone()[0]
    assert ok_ticks == len(ticks.read_text().splitlines())  # every run of the outage is in the history
    failed = db.execute("SELECT count(*) FROM runs WHERE task='bad' AND outcome='failed'").fetchone()[0]
    assert db.execute("SELECT crashes FROM tasks WHERE name='bad'").fetchone()[0] == failed > 10
    assert db.execute("SELECT wanted FROM tasks WHERE name='tick'").fetchone()[0] == "stopped"


def test_an_exception_that_ends_the_daemon_is_in_scheduler_log_with_its_traceback(site):
    site.write(TICK, scheduler=f'state_dir = "{site.root / "not-a-folder"}"\n')
    (site.root / "not-a-folder").write_text("a file where the state folder should be\n")
    r = site.console("scheduler:run", timeout=30)
    assert r.returncode != 0
    log = site.log()
    assert "schedulerd is ending on an unexpected error" in log
    assert "Traceback (most recent call last)" in log and "FileExistsError" in log
