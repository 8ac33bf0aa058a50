"""Children of the daemon and of `task:run` (schedulerd.process) through the real daemon and CLI:
the environment they inherit, and their process groups across `kill -9` of their owner."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from .conftest import CONSOLE, PY

# One attempt of a job: notes start, a tick every 50 ms, then end, each line with its pid and time.
# Started under `sh -c "...; true"`, so the shell stays its parent: killing only the group's
# leader (the shell) leaves the worker ticking, as a real job's tree would.
WORKER = r"""
import os, sys, time
log, seconds = sys.argv[1], float(sys.argv[2])
def note(what):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{os.getpid()} {what} {time.time():.6f}\n".encode())
    os.close(fd)
note("start")
until = time.time() + seconds
while time.time() < until:
    note("tick")
    time.sleep(0.05)
note("end")
"""


def worker_argv(tmp_path: Path, log: Path, seconds: float) -> list[str]:
    worker = tmp_path / "worker.py"
    if not worker.exists():
        worker.write_text(WORKER)
    return ["sh", "-c", f"{PY} {worker} {log} {seconds}; true"]


def attempts(log: Path) -> list[tuple[float, float, list[str]]]:
    """(first, last, what) of each attempt (pid) written in a job's log, by start."""
    spans: dict[str, list] = {}
    for line in log.read_text().splitlines():
        pid, what, at = line.split()
        span = spans.setdefault(pid, [float(at), float(at), []])
        span[0], span[1] = min(span[0], float(at)), max(span[1], float(at))
        span[2].append(what)
    return sorted((a, b, w) for a, b, w in spans.values())


def assert_never_two_at_once(log: Path) -> None:
    spans = attempts(log)
    for (_, last, _), (first, _, _) in zip(spans, spans[1:], strict=False):
        assert last < first, f"{log.name}: an attempt still wrote at {last:.3f}, after the next began at {first:.3f}"


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def kill_as_a_child_starts(pid: int, timeout: float = 5.0) -> bool:
    """SIGKILL `pid` the moment a new child of it appears (polled without pause); False if none did."""
    known = children(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = children(pid)
        if now - known:
            os.kill(pid, signal.SIGKILL)
            return True
        known = now
    return False


# The daemon's children die with it, not at the instant kill(2) returns: the kernel tears the
# daemon down, which closes its end of each group's gate pipe, whose watcher then kills the group
# (process.GATE). A job may write within that moment after the kill, never later.
DEATH_LAG = 0.25


def kill_daemon(site, rng: random.Random, at_child_start: bool) -> float:
    """kill -9 the daemon; returns when (just after kill(2) returned)."""
    pid = site.pid()
    assert pid
    if not (at_child_start and kill_as_a_child_starts(pid)):
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(pid, signal.SIGKILL)
    killed = time.time()
    site.wait_for(lambda: site.console("scheduler:state").returncode == 11, what="the daemon to be dead")
    return killed


def test_kill_9_at_random_moments_and_as_children_start_never_runs_two_attempts_of_a_job(site, tmp_path):
    site.write("""
[jobs.types.command]
max_attempts = 20
retry_delay = "100ms"

[queues.default]
workers = 5
""")
    logs = tmp_path / "runs"
    logs.mkdir()
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    ids = {}
    for i in range(20):
        log = logs / f"job{i}"
        payload = {"argv": worker_argv(tmp_path, log, rng.uniform(0.4, 1.0))}
        r = site.console("job:add", "command", "--payload", json.dumps(payload), check=True)
        ids[int(r.stdout)] = log
    site.console("scheduler:start", check=True)
    down = []  # (killed, restarted)
    for n in range(6):
        killed = kill_daemon(site, rng, at_child_start=n % 2 == 0)
        site.console("scheduler:start", check=True)
        down.append((killed, time.time()))
    site.wait_for(lambda: all(j["state"] == "finished" for j in site.json("job:list")), timeout=40,
                  what=f"every job to finish (seed {seed})")
    for jid, log in ids.items():
        assert_never_two_at_once(log)
        ends = sorted(float(line.split()[2]) for line in log.read_text().splitlines() if " end " in line)
        assert ends, f"job {jid} never completed (seed {seed})"
        # nothing of a job works on while the daemon is down (the orphans completed then) ...
        assert not [e for e in ends for killed, restarted in down if killed + DEATH_LAG < e < restarted], \
            (jid, ends, down, seed)
        # ... and a job completes once, unless the daemon died in the instant between an attempt's end
        # and the save of its outcome (at least once: then that attempt is run again)
        for e in ends[:-1]:
            assert any(-DEATH_LAG < killed - e < 0.1 for killed, _ in down), f"job {jid} completed at {ends} (seed {seed})"


def group_members(pgid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if fields[2] == str(pgid) and fields[0] != "Z":
            found[int(entry.name)] = name
    return found


def test_a_group_that_outlives_a_killed_daemon_is_ended_before_the_next_attempt(site, tmp_path):
    """The recorded group is the guarantee when the group's own watcher is gone: here it is
    killed first, so the worker outlives the daemon and only the next daemon can end it."""
    site.write("""
[jobs.types.command]
max_attempts = 3
""")
    log = tmp_path / "job"
    payload = {"argv": worker_argv(tmp_path, log, 4.0)}
    site.console("job:add", "command", "--payload", json.dumps(payload), check=True)
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: log.exists() and "tick" in log.read_text(), what="the worker to tick")
    (pgid,) = [int(p.name) for p in (site.var / "state" / "children").iterdir()]
    watchers = [pid for pid, name in group_members(pgid).items() if name == "cat"]
    assert watchers, group_members(pgid)
    for pid in watchers:  # the subshell that would kill the group when cat ends, then cat
        os.kill(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]), signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    os.kill(site.pid(), signal.SIGKILL)
    site.wait_for(lambda: site.console("scheduler:state").returncode == 11, what="the daemon to be dead")
    ticks = log.read_text().count("tick")
    site.wait_for(lambda: log.read_text().count("tick") > ticks + 2, what="the orphaned worker to tick on")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.json("job:list")[0]["state"] == "finished", timeout=20, what="the job to finish")
    assert_never_two_at_once(log)
    assert sum(w.count("end") for *_, w in attempts(log)) == 1
    assert f"ending orphaned process group {pgid} of job-1" in site.log()
    assert not group_members(pgid)


def test_task_run_killed_leaves_no_group_running_beside_the_next_iteration(site, tmp_path):
    log = tmp_path / "ticks"
    argv = json.dumps(worker_argv(tmp_path, log, 3.0))
    site.write(f"""
[tasks.work]
type = "command"
period = "1h"
argv = {argv}
""")
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    cli = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "task:run", "work"], cwd=site.root,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        site.wait_for(lambda: log.exists() and "tick" in log.read_text(), what="task:run's worker to tick")
    finally:
        cli.kill()
        cli.wait()
    killed = time.time()
    # the daemon's first iteration of the same task, at once: what the dead task:run started is gone
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: sum(w.count("start") for *_, w in attempts(log)) == 2, what="the daemon's iteration")
    time.sleep(0.5)
    assert_never_two_at_once(log)
    first_last = attempts(log)[0][1]
    assert first_last < killed + 0.2  # task:run's worker died with task:run, it did not work on


def test_secrets_taken_from_the_environment_are_not_inherited_by_children(site, tmp_path, monkeypatch):
    monkeypatch.setenv("SCHEDULERD_TEST_FTP_PASS", "s3cr3t-from-env")
    monkeypatch.setenv("SCHEDULERD_TEST_PLAIN", "plain-value")
    task_out, job_out = tmp_path / "task-env", tmp_path / "job-env"
    site.write(f"""
[ftp_destinations.client]
host = "ftp.example.org"
password = "env:SCHEDULERD_TEST_FTP_PASS"

[tasks.envdump]
type = "command"
period = "1h"
argv = ["sh", "-c", "env > {task_out}"]

[tasks.passes]
type = "command"
period = "1h"
argv = ["sh", "-c", "echo \\"given=$FTP_PASS\\" > {tmp_path / 'passed'}"]
env = {{ FTP_PASS = "env:SCHEDULERD_TEST_FTP_PASS" }}
""")
    site.console("scheduler:start", check=True)
    payload = {"argv": ["sh", "-c", f"env > {job_out}"]}
    site.console("job:add", "command", "--payload", json.dumps(payload), check=True)
    outs = (task_out, job_out, tmp_path / "passed")
    site.wait_for(lambda: all(p.exists() and p.read_text().endswith("\n") for p in outs),
                  what="the children to write their environment")
    for out in (task_out, job_out):
        text = out.read_text()
        assert "SCHEDULERD_TEST_PLAIN=plain-value" in text  # the rest of the environment is inherited
        assert "SCHEDULERD_TEST_FTP_PASS" not in text and "s3cr3t-from-env" not in text
    assert (tmp_path / "passed").read_text() == "given=s3cr3t-from-env\n"  # asked for by the task's env
    # the daemon itself keeps it: a reload reads the config (and the secret) again
    assert site.console("scheduler:reload").returncode == 0
