"""systemd notify datagrams from `scheduler:run`, and secrets kept out of every log line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CONSOLE = Path(__file__).resolve().parents[2] / "bin" / "console"


def test_scheduler_run_notifies_systemd(site, tmp_path):
    site.write('[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n')
    addr = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(addr)
    rx.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "400000"}
    env.pop("SCHEDULERD_CONFIG", None)
    proc = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "scheduler:run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        got = []
        while not any(m.startswith("READY=1") for m in got):
            got.append(rx.recv(4096).decode())
        assert f"MAINPID={proc.pid}" in next(m for m in got if m.startswith("READY=1"))
        while sum(m == "WATCHDOG=1" for m in got) < 2:  # pings every WATCHDOG_USEC / 2
            got.append(rx.recv(4096).decode())
        assert site.console("scheduler:state").returncode == 10
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got.append(rx.recv(4096).decode())
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        rx.close()


def test_secrets_never_reach_the_logs(site, tmp_path):
    secret = "pw-Zx81-very-secret"
    site.write(f"""
[tasks.leaky]
type = "command"
period = "1h"
argv = ["sh", "-c", "echo connecting with $DB_PASSWORD; echo --password={secret} >&2; exit 1"]
env = {{ DB_PASSWORD = "{secret}" }}
""", scheduler="max_crashes = 1\n")
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("leaky")["state"] == "crashed", what="the iteration")
    log = site.log("leaky")
    assert "connecting with ********" in log
    assert secret not in log
    assert secret not in site.log()
    r = site.console("task:run", "leaky")
    assert r.returncode == 1 and secret not in r.stderr + r.stdout
    assert secret not in site.console("task:state", "leaky", "--json").stdout
    assert secret not in site.console("config:check", "--json").stdout


def test_run_history_retention(tmp_path):
    from schedulerd.store import Run, SqliteStateStore

    store = SqliteStateStore(tmp_path / "s.db")
    now = time.time()
    runs = [Run("a", now - 10 * 86400, now - 10 * 86400, "ok")] + [Run("a", now - i, now - i, "ok") for i in range(5)]
    runs += [Run("a", now - i, now - i, "failed", "boom") for i in range(4)] + [Run("b", now, now, "ok")]
    store.record_runs(runs)
    assert store.task("a").runs == 10 and store.task("a").failures == 4
    store.purge_history(keep_ok=3, keep_failed=10, max_age_ok=7 * 86400, max_age_failed=30 * 86400)
    hist = store.history("a", 100)
    assert sum(r.outcome == "ok" for r in hist) == 3
    assert sum(r.outcome == "failed" for r in hist) == 4
    assert len(store.history("b")) == 1  # counted per task
    store.close()


# --- the redactor hides values, not the words of a message (issue 25 item 28) --------------------

import pytest  # noqa: E402

from schedulerd.logs import Redactor  # noqa: E402


@pytest.mark.parametrize("text", [
    "tasks.p.password: expected a string",
    "ftp_destinations.d.proxy_password: set only with proxy",
    "tasks.x.api_token: environment variable TOK is not set",
    "password: cannot read password file /etc/pw: No such file or directory",
])
def test_redactor_keeps_messages_about_secret_keys_readable(text):
    assert Redactor().redact(text) == text


@pytest.mark.parametrize("text,shown", [
    ("sh -c run --password=pw-123 --x", "sh -c run --password=******** --x"),
    ("PASSWORD = pw-123", "PASSWORD = ********"),
    ("token:pw-123 next", "token:******** next"),
    ('{"password": "pw 123", "user": "bob"}', '{"password": "********", "user": "bob"}'),
    ("db_secret: 'pw 123'", "db_secret: '********'"),
])
def test_redactor_still_hides_values_given_to_secret_keys(text, shown):
    assert Redactor().redact(text) == shown


def test_redactor_hides_a_known_secret_anywhere():
    r = Redactor()
    r.add(["pw-Zx81"])
    assert r.redact("tasks.p.password: expected a string, not pw-Zx81") == \
        "tasks.p.password: expected a string, not ********"


def test_refused_reload_logs_the_key_path_readably(site):
    site.write('[ftp_destinations.d]\nhost = "ftp.example.org"\npassword = "pw-Zx81-kept"\n'
               '[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n')
    site.console("scheduler:start", check=True)
    site.write('[ftp_destinations.d]\nhost = "ftp.example.org"\npassword = 5\n'
               '[tasks.t]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n')
    r = site.console("scheduler:reload")
    assert r.returncode == 2 and "ftp_destinations.d.password: expected a string" in r.stderr
    log = site.log()
    assert "ftp_destinations.d.password: expected a string" in log
    assert "pw-Zx81-kept" not in log


@pytest.mark.parametrize("url, shown, secrets", [
    ("https://u:p%40ss@hooks.example.org:8443/a/b?token=T0K&x=1#frag", "https://hooks.example.org:8443/…",
     ["p%40ss", "T0K"]),
    ("https://hooks.slack.com/services/T0001/B0002/XXXXsecretTOKENyyyy", "https://hooks.slack.com/…",
     ["XXXXsecretTOKENyyyy", "T0001/B0002"]),
    ("https://discord.com/api/webhooks/123456789/DiscordTok_en-42?wait=true", "https://discord.com/…",
     ["DiscordTok_en-42", "123456789"]),
    ("http://[::1]:9000/hook", "http://[::1]:9000/…", ["/hook"]),
    ("https://hooks.example.org", "https://hooks.example.org", []),
    ("https://hooks.example.org/", "https://hooks.example.org/", []),
])
def test_display_url_shows_scheme_host_and_port_and_a_hash_only(url: str, shown: str, secrets: list[str]) -> None:
    """A webhook's token may be in its user:password, its path or its query: none is shown, and the
    redactor hides the whole URL, its path and its query wherever they appear."""
    import hashlib

    from schedulerd.logs import display_url, url_secrets

    assert display_url(url) == f"{shown} #{hashlib.sha256(url.encode()).hexdigest()[:8]}"
    r = Redactor()
    r.add(url_secrets(url))
    path = url.split("/", 3)[3] if url.count("/") > 2 else ""
    for text in (f"posting to {url}", f"POST /{path} failed", display_url(url)):
        for secret in secrets:
            assert secret not in r.redact(text), (secret, r.redact(text))


def test_display_url_tells_urls_apart_and_says_when_one_does_not_parse() -> None:
    from schedulerd.logs import display_url

    a, b = "https://hooks.slack.com/services/T1/B1/aaaa", "https://hooks.slack.com/services/T1/B1/bbbb"
    assert display_url(a) != display_url(b) and display_url(a) == display_url(a)
    assert display_url("http://host:notaport/x") == "<a URL that does not parse>"


def test_a_query_value_that_is_a_common_word_is_not_starred_elsewhere() -> None:
    """`?wait=true`: the URL, its query and `wait=true` are hidden, the word 'true' elsewhere is not."""
    from schedulerd.logs import url_secrets

    r = Redactor()
    r.add(url_secrets("https://discord.com/api/webhooks/1/tok?wait=true&x=1"))
    assert r.redact("argv: ['true'] exited 0; retry = true") == "argv: ['true'] exited 0; retry = true"
    assert "true" not in r.redact("posted with ?wait=true&x=1 and wait=true")
