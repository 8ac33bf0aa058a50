"""What task:list/task:state show and what an iteration records are one thing whether the daemon
or the CLI made them (issue 19): one snapshot builder, one iteration-outcome helper; a command's
non-zero exit is an expected failure (TaskFailed), logged on one line without a traceback."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from tests.engine.conftest import plugin_dir, running

PY = sys.executable


def test_offline_and_daemon_snapshots_have_the_same_keys(site):
    site.write('[tasks.t]\ntype = "command"\nperiod = "1h"\ntimeout = "5m"\nargv = ["true"]\n')
    site.console("task:run", "t", check=True)  # a last run to show
    offline = site.json("task:list")[0]
    offline_one = site.json("task:state", "t")
    site.console("scheduler:start", check=True)
    online = site.json("task:list")[0]
    daemon = site.json("scheduler:state")["tasks"][0]
    site.console("scheduler:stop", check=True)
    assert offline["state"] == "stopped" and online["state"] != "stopped"
    assert offline["timeout"] == online["timeout"] == 300
    assert set(offline) == set(online) == set(daemon) == set(offline_one)
    assert set(offline["last_run"]) == set(online["last_run"])


def test_task_run_and_the_daemon_record_the_same_failure_text(site, tmp_path):
    """A failure whose message is longer than 2,000 characters: both cut it the same way."""
    deep = tmp_path
    for i in range(12):
        deep = deep / (f"{i:02}" + "d" * 198)
    deep.mkdir(parents=True)
    prog = deep / "fails"
    prog.write_text("#!/bin/sh\nexit 7\n")
    prog.chmod(0o755)
    site.write(f'[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["{prog}"]\n')
    assert site.console("task:run", "t").returncode == 1
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("t")["runs"] >= 2, what="the daemon's iteration")
    site.console("scheduler:stop", check=True)
    by = {r["source"]: r for r in site.json("task:history", "t")}
    assert by["cli"]["outcome"] == by["daemon"]["outcome"] == "failed"
    assert by["cli"]["error"] == by["daemon"]["error"]
    assert len(by["cli"]["error"]) == 2000 and by["cli"]["error"].startswith("CommandFailed: /")


def test_a_command_exit_is_logged_on_one_line_without_a_traceback(site):
    site.write(f'[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["{PY}", "-c", "raise SystemExit(4)"]\n'
               '[jobs.types.command]\nmax_attempts = 1\n')
    assert site.console("task:run", "t").returncode == 1
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("t")["runs"] >= 2, what="the daemon's iteration")
    r = site.console("job:add", "command", "--payload", json.dumps({"argv": [PY, "-c", "raise SystemExit(5)"]}))
    jid = r.stdout.strip()
    site.wait_for(lambda: site.json("job:show", jid)["state"] == "failed", what="the job to fail")
    site.console("scheduler:stop", check=True)
    task_log = site.log("t")
    assert task_log.count("iteration failed: CommandFailed:") >= 2 and "exited with status 4" in task_log
    assert "Traceback" not in task_log
    lines = [e["line"] for e in site.json("job:show", jid)["log"]]
    assert any("attempt failed: CommandFailed:" in line and "exited with status 5" in line for line in lines)
    assert not any("Traceback" in line for line in lines), lines


MISBEHAVING = '''
import dataclasses
import sys

from schedulerd.plugin import JobType, TaskType


@dataclasses.dataclass(frozen=True)
class PickySettings:
    broken: bool = False


class Picky(TaskType):
    """Its check of the configuration raises (not a ConfigError) when `broken`."""
    type_name = "picky"
    Settings = PickySettings

    def check(self, config):
        if self.settings.broken:
            raise RuntimeError("picky could not check its settings")

    async def run_once(self, ctx):
        return None


class Unanswered(TaskType):
    """Its server does not answer: the TimeoutError a socket raises."""
    type_name = "unanswered"

    async def run_once(self, ctx):
        raise TimeoutError("the server did not answer in 5s")


class UnansweredJob(JobType):
    type_name = "unanswered_job"

    async def run(self, ctx, payload):
        raise TimeoutError("the server did not answer in 5s")


class Quits(TaskType):
    type_name = "quits"

    async def run_once(self, ctx):
        sys.exit(3)


class QuitsJob(JobType):
    type_name = "quits_job"

    async def run(self, ctx, payload):
        sys.exit(3)


class Mute(Exception):
    def __str__(self):
        raise ValueError("no text")


class Unsayable(TaskType):
    """Raises an error that cannot say its message."""
    type_name = "unsayable"

    async def run_once(self, ctx):
        raise Mute()


class TitleQuits(JobType):
    type_name = "title_quits"

    def title(self, payload):
        sys.exit(4)

    async def run(self, ctx, payload):
        return None


class Unprintable(TaskType):
    """Returns a summary whose text cannot be made."""
    type_name = "unprintable"

    async def run_once(self, ctx):
        class Summary:
            def __str__(self):
                raise ValueError("no text")
        return Summary()
'''
ENTRY_POINTS = ("[schedulerd.tasks]\nunanswered = misbehaving:Unanswered\nquits = misbehaving:Quits\npicky = misbehaving:Picky\n"
                "unprintable = misbehaving:Unprintable\nunsayable = misbehaving:Unsayable\n\n[schedulerd.jobs]\n"
                "unanswered_job = misbehaving:UnansweredJob\nquits_job = misbehaving:QuitsJob\n"
                "title_quits = misbehaving:TitleQuits\n")


def test_a_timeout_error_the_work_raises_itself_is_a_failure_with_its_own_message(site, tmp_path, monkeypatch):
    """What a socket raises when its server does not answer (TimeoutError) is the task or the job
    failing, in its own words; only the time an iteration or attempt was given (`timeout`) is
    "timed out after ...". With no `timeout` set, that text was made from None: the TypeError
    ended the task's runner, and the daemon with it."""
    monkeypatch.setenv("PYTHONPATH", str(plugin_dir(tmp_path, "misbehaving", MISBEHAVING, ENTRY_POINTS)))
    site.write('[tasks.free]\ntype = "unanswered"\nperiod = "1h"\n'
               '[tasks.bounded]\ntype = "unanswered"\nperiod = "1h"\ntimeout = "1m"\n'
               '[jobs.types.unanswered_job]\nmax_attempts = 1\n'
               '[jobs.types.command]\nmax_attempts = 1\ntimeout = "500ms"\n')
    own = "TimeoutError: the server did not answer in 5s"
    r = site.console("task:run", "free")
    assert r.returncode == 1 and own in r.stderr, r.stderr
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("free")["runs"] >= 2 and site.task("bounded")["runs"] >= 1, what="the daemon's runs")
    jid = site.console("job:add", "unanswered_job", check=True).stdout.strip()
    slow = site.console("job:add", "command", "--payload", json.dumps({"argv": ["sleep", "30"]}), check=True).stdout.strip()
    for job in (jid, slow):
        site.wait_for(lambda job=job: site.json("job:show", job)["state"] == "failed", what=f"job {job} to fail")
    assert running(site.pid()) and site.console("scheduler:state").returncode == 10  # started: the daemon still runs
    for name in ("free", "bounded"):
        runs = site.json("task:history", name)
        assert runs and all(r["outcome"] == "failed" and r["error"] == own for r in runs), runs
        assert site.task(name)["state"] in ("backoff", "running", "crashed"), site.task(name)
    assert own in site.json("job:show", jid)["error"]
    assert site.json("job:show", slow)["error"] == "timed out after 0.5s"  # the type's timeout
    assert "Traceback" not in site.log()


def test_a_plugin_that_calls_sys_exit_or_cannot_say_its_summary_or_error_fails_and_the_daemon_goes_on(
        site, tmp_path, monkeypatch):
    """No exception of a task's or job's own may end the daemon: a plugin's sys.exit() is that
    iteration's or attempt's failure ("SystemExit: 3"), as is a summary or an error whose str()
    raises. Before, each left the daemon not answering on its socket."""
    monkeypatch.setenv("PYTHONPATH", str(plugin_dir(tmp_path, "misbehaving", MISBEHAVING, ENTRY_POINTS)))
    site.write('[tasks.quits]\ntype = "quits"\nperiod = "1h"\n'
               '[tasks.unprintable]\ntype = "unprintable"\nperiod = "1h"\n'
               '[tasks.unsayable]\ntype = "unsayable"\nperiod = "1h"\n'
               '[tasks.fine]\ntype = "noop"\nperiod = "200ms"\n'
               '[jobs.types.quits_job]\nmax_attempts = 1\n')
    site.console("scheduler:start", check=True)
    jid = site.console("job:add", "quits_job", check=True).stdout.strip()
    site.wait_for(lambda: site.json("job:show", jid)["state"] == "failed", what="the job to fail")
    site.wait_for(lambda: all(site.task(t)["runs"] >= 1 for t in ("quits", "unprintable", "unsayable")),
                  what="the tasks' first runs")
    runs = site.task("fine")["runs"]
    site.wait_for(lambda: site.task("fine")["runs"] > runs + 2, what="the other task going on")
    assert running(site.pid()) and site.console("scheduler:state").returncode == 10  # started: the daemon still runs
    assert site.json("task:history", "quits")[0]["error"] == "SystemExit: 3"
    assert site.json("task:history", "unprintable")[0]["error"] == "ValueError: no text"
    assert site.json("task:history", "unsayable")[0]["error"] == "Mute (its message could not be made)"
    assert site.json("job:show", jid)["error"] == "SystemExit: 3"
    # a job type's own title, run by the daemon at a `job.add` on its socket (the web console's)
    from schedulerd.client import Client
    from schedulerd.protocol import ControlError

    with pytest.raises(ControlError, match="SystemExit: 4"):
        Client(site.socket, 10).call("job.add", type="title_quits", payload={})
    assert running(site.pid()) and site.console("scheduler:state").returncode == 10


def test_a_reload_whose_plugin_check_raises_is_refused_and_the_daemon_goes_on(site, tmp_path, monkeypatch):
    """A task type's own `check` that raises something else than a ConfigError (a bug of the
    plugin) refuses the reload as a bad configuration does, from the CLI and on SIGHUP; the
    running configuration stays. Before, the SIGHUP's error ended the daemon."""
    monkeypatch.setenv("PYTHONPATH", str(plugin_dir(tmp_path, "misbehaving", MISBEHAVING, ENTRY_POINTS)))
    site.write('[tasks.picky]\ntype = "picky"\nperiod = "200ms"\n')
    site.console("scheduler:start", check=True)
    site.write('[tasks.picky]\ntype = "picky"\nperiod = "200ms"\nbroken = true\n[tasks.other]\ntype = "noop"\n')
    r = site.console("scheduler:reload")
    assert r.returncode != 0 and "picky could not check its settings" in r.stderr, (r.returncode, r.stderr)
    os.kill(site.pid(), signal.SIGHUP)
    site.wait_for(lambda: site.log().count("reload refused") >= 2, what="the SIGHUP's reload refused")
    runs = site.task("picky")["runs"]
    site.wait_for(lambda: site.task("picky")["runs"] > runs + 2, what="the task going on")
    assert running(site.pid()) and [t["name"] for t in site.json("task:list")] == ["picky"]
