"""Tasks that need something another task creates (a databox) wait for it: no failure, no
traceback, the state says what they wait for, and they run as soon as it is there.
Also: the shipped etc/schedulerd.toml starts without one ERROR line."""

from __future__ import annotations

import re
import socket

from tests.engine.conftest import ROOT

NEEDS_DATABOX = """
[databoxes.main]
path = "var/databoxes/main.sqlite"
storage = "var/databoxes/main"

[tasks.expiry]
type = "record_mover"
period = "1h"

[[tasks.expiry.rules]]
name = "mark expired"
databox = "main"
from = { date = { field = "ExpiresOn", direction = "before", delta_days = 0 }, status = "x0xxxx" }
to = { status = "x1xxxx" }

[tasks.thumbs]
type = "subdefs"
period = "1h"
databox = "main"
"""


def _errors(site) -> list[str]:
    logs = sorted((site.var / "log").glob("*.log"))
    return [line for f in logs for line in f.read_text().splitlines() if " ERROR " in line or "Traceback" in line]


def test_tasks_wait_for_their_databox_then_run_once_it_exists(site):
    site.write(NEEDS_DATABOX)
    site.console("scheduler:start", check=True)
    box = site.root / "var/databoxes/main.sqlite"
    what = f"databox main to be created ({box})"
    for name in ("expiry", "thumbs"):
        st = site.wait_for(lambda n=name: (s := site.task(n))["runs"] >= 1 and s["state"] == "waiting" and s,
                           what=f"{name}'s first run")
        assert st["info"]["waiting_for"] == what and st["crashes"] == 0
        assert st["last_run"]["outcome"] == "ok" and st["last_run"]["summary"].endswith(f"waiting for {what}")
        assert 0 < st["next_run_in"] <= 5  # retried soon, not after its period of an hour
    shown = site.console("task:state", "expiry").stdout
    assert f"waiting for {what}" in shown
    # a retry (5 s later) while it is still missing: said once in the log, no failure
    site.wait_for(lambda: site.task("expiry")["runs"] >= 2, 20, "expiry's retry")
    assert site.log("expiry").count(f"waiting for {what}") == 1 and site.task("expiry")["failures"] == 0
    assert site.console("databox:create").returncode == 0
    for name in ("expiry", "thumbs"):
        st = site.wait_for(lambda n=name: "waiting_for" not in (s := site.task(n))["info"] and s, timeout=15,
                           what=f"{name} to run on the new databox")
        assert st["next_run_in"] > 3000 and st["failures"] == 0  # back to its period
        assert f"done waiting for {what}" in site.log(name)
    assert site.task("expiry")["last_run"]["summary"] == "mark expired: 0 updated"
    assert _errors(site) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_shipped_config_starts_without_an_error_line(site):
    shipped = (ROOT / "etc" / "schedulerd.toml").read_text()
    body = re.sub(r"(?m)^socket = 25200$", f"socket = {_free_port()}", shipped)  # the indexer's port
    body = re.sub(r'(?m)^socket = "var/run/schedulerd.sock"$', f'socket = "{site.socket}"', body)
    assert body != shipped
    site.config.write_text(body)
    site.console("scheduler:start", check=True)
    names = ("heartbeat", "inbox", "subdefs", "indexer", "expiry")
    site.wait_for(lambda: all(site.task(n)["runs"] >= 1 for n in names if n != "indexer"), timeout=30,
                  what="a first run of every periodic task")
    site.wait_for(lambda: "waiting_for" not in site.task("expiry")["info"], timeout=15, what="expiry to stop waiting")
    (site.var / "hotfolders/inbox/hello.txt").write_text("hello")
    assert site.console("task:run-now", "inbox").returncode == 0
    site.wait_for(lambda: "hello.txt" in site.console("record:list").stdout, timeout=30, what="the dropped file")
    assert _errors(site) == []
    for n in names:
        st = site.task(n)
        assert st["state"] in ("waiting", "running") and st["failures"] == 0, st
