"""Tasks on a schedule (`schedule = "0 3 * * *"` or an ISO interval) in the real daemon: a start
waited for, shown on the wall clock, caught up once after a downtime when `catch_up = true`;
and the keys refused at load with their path."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import pytest

from schedulerd.schedule import local_text, zone


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def task(site, schedule: str, *, catch_up: bool | None = None) -> None:
    out = site.root / "runs"
    extra = "" if catch_up is None else f"catch_up = {str(catch_up).lower()}\n"
    site.write(f"""
        [tasks.nightly]
        type = "command"
        schedule = "{schedule}"
        argv = ["sh", "-c", "date +%s.%N >> {out}"]
        {extra}""", scheduler='timezone = "Europe/Paris"\n')


def runs(site) -> list[float]:
    out = site.root / "runs"
    return [float(line) for line in out.read_text().split()] if out.exists() else []


def test_a_scheduled_task_waits_for_its_start_and_shows_it_on_the_wall_clock(site):
    t0 = math.ceil(time.time()) + 8
    task(site, f"R/{iso(t0)}/PT1H")
    site.console("scheduler:start", check=True)
    assert f"next at {local_text(t0, zone('Europe/Paris'))}" in site.console("task:list").stdout
    st = site.task("nightly")
    assert st["schedule"] == f"R/{iso(t0)}/PT1H" and st["state"] == "waiting"
    assert st["next_run_at"] == local_text(t0, zone("Europe/Paris"))
    site.wait_for(lambda: runs(site), timeout=15, what="the scheduled run")
    assert len(runs(site)) == 1 and runs(site)[0] >= t0 - 0.05  # not at the daemon's start
    st = site.wait_for(lambda: (s := site.task("nightly"))["state"] == "waiting" and s, what="waiting again")
    assert st["next_run_at"] == local_text(t0 + 3600, zone("Europe/Paris"))
    assert "next at" in site.console("scheduler:state").stdout


@pytest.mark.parametrize("catch_up", [True, False])
def test_a_start_missed_while_the_daemon_was_down_runs_once_only_with_catch_up(site, catch_up):
    t0 = math.ceil(time.time()) + 4
    task(site, f"R/{iso(t0)}/PT1H", catch_up=catch_up)
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("nightly")["state"] == "waiting", what="waiting")
    site.console("scheduler:stop", check=True)
    time.sleep(max(0.0, t0 + 0.5 - time.time()))  # down over the due time
    assert runs(site) == []
    site.console("scheduler:start", check=True)
    if catch_up:
        site.wait_for(lambda: runs(site), timeout=10, what="the start caught up")
    else:
        time.sleep(2)
    assert len(runs(site)) == (1 if catch_up else 0)
    st = site.wait_for(lambda: (s := site.task("nightly"))["state"] == "waiting" and s, what="waiting")
    assert st["next_run_at"] == local_text(t0 + 3600, zone("Europe/Paris"))
    site.console("scheduler:stop", check=True)
    site.console("scheduler:start", check=True)  # and only once: nothing is missed any more
    time.sleep(2)
    assert len(runs(site)) == (1 if catch_up else 0)


@pytest.mark.parametrize("body, path, words", [
    ('period = "1h"\nschedule = "0 3 * * *"', "tasks.t:", "period and schedule are both given"),
    ('schedule = "0 3 * *"', "tasks.t.schedule:", "5 fields"),
    ('schedule = "0 25 * * *"', "tasks.t.schedule:", "bad cron expression"),
    ('schedule = "R/2026-01-01T03:00:00Z/P1M"', "tasks.t.schedule:", "years and months"),
    ('schedule = 3', "tasks.t.schedule:", "expected a string"),
    ('period = "1h"\ncatch_up = true', "tasks.t.catch_up:", "only a task with a schedule"),
])
def test_bad_schedules_are_refused_at_load_with_the_key_path(site, body, path, words):
    site.write(f'[tasks.t]\ntype = "command"\nargv = ["true"]\n{body}\n')
    p = site.console("config:check")
    assert p.returncode == 2, p.stdout
    assert path in p.stderr and words in p.stderr and str(site.config) in p.stderr


def test_an_unknown_time_zone_is_refused(site):
    site.write('[tasks.t]\ntype = "command"\nargv = ["true"]\nschedule = "0 3 * * *"\n',
               scheduler='timezone = "Mars/Olympus"\n')
    p = site.console("config:check")
    assert p.returncode == 2 and "scheduler.timezone: unknown time zone 'Mars/Olympus'" in p.stderr
