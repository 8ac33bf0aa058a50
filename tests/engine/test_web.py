"""The web console without a browser: login, CSRF, headers, secrets, refusals, /metrics, the
non-loopback refusal at load, http:passwd."""

from __future__ import annotations

import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engine.conftest import CONSOLE
from tests.engine.webconsole import (
    FTP_PASSWORD,
    METRICS_TOKEN,
    PASSWORDS,
    Web,
    console_config,
    free_port,
    password_hash,
    start_env,
    wait_for_port,
)

ACTIONS = ["/tasks/chatty/stop", "/tasks/chatty/start", "/tasks/chatty/run-now", "/tasks/chatty/restart",
           "/jobs/1/retry", "/jobs/1/cancel", "/jobs/1/raise", "/jobs/1/lower", "/jobs/purge",
           "/queues/slow/pause", "/queues/slow/resume", "/logout"]


@pytest.fixture(autouse=True)
def probe_plugin(tmp_path, monkeypatch):
    """The plugin's task and job types on the path of the daemon and of every console command."""
    monkeypatch.setenv("PYTHONPATH", start_env(tmp_path)["PYTHONPATH"])


def start(site, tmp_path, port: int, **kw) -> None:
    site.write(console_config(port, **kw))
    p = subprocess.run([str(CONSOLE), "--config", str(site.config), "scheduler:start"], capture_output=True, text=True,
                       cwd=site.root, timeout=60)
    assert p.returncode == 0, p.stderr + p.stdout
    wait_for_port(port)


@pytest.fixture
def web(site, tmp_path):
    port = free_port()
    start(site, tmp_path, port)
    return Web(port)


def test_without_a_login_every_page_action_and_unknown_path_is_refused(site, web):
    for path in ["/", "/tasks", "/tasks/chatty", "/tasks/chatty/log", "/jobs", "/static/console.js", "/nowhere",
                 "/tasks/nosuch/explode"]:
        status, headers, page = web.get(path)
        assert status == 403, path
        assert 'href="/login"' in page
    for path in ACTIONS + ["/nowhere", "/tasks/chatty/explode"]:
        assert web.post(path, {"next": "/tasks"})[0] == 403, path
    assert site.task("chatty")["wanted"] == "started"  # the stop was refused: nothing changed
    assert web.login("alice", "wrong password") == 403
    assert web.login("mallory", "whatever-it-is") == 403
    assert web.get("/tasks")[0] == 403


def test_actions_need_the_csrf_token_and_headers_forbid_framing_and_inline_scripts(site, web):
    assert web.login() == 303
    status, headers, page = web.get("/tasks")
    assert status == 200 and "chatty" in page
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page and "onclick" not in page  # no inline script for the CSP to block
    assert web.post("/tasks/chatty/stop", {"next": "/tasks"})[0] == 403  # no token
    assert web.post("/tasks/chatty/stop", {"csrf": "forged", "next": "/tasks"})[0] == 403
    assert site.task("chatty")["wanted"] == "started"
    status, headers, _ = web.post("/tasks/chatty/stop", {"csrf": web.csrf(), "next": "/tasks"})
    assert status == 303 and headers["location"] == "/tasks"
    assert site.task("chatty")["wanted"] == "stopped"
    assert web.post("/tasks/nosuch/stop", {"csrf": web.csrf()})[0] == 404
    assert web.get("/nowhere")[0] == 404  # logged in: an unknown path is just not found


def test_no_secret_on_any_page(site, web):
    assert web.login() == 303
    web.post("/tasks/chatty/run-now", {"csrf": web.csrf()})
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.01}', check=True)
    pages = ["/login", "/tasks", "/tasks?fragment=rows", "/tasks/chatty", "/tasks/pull", "/jobs",
             "/jobs?state=finished", "/metrics", "/nowhere"]
    secrets = [*PASSWORDS.values(), FTP_PASSWORD, METRICS_TOKEN]
    hashes = [line.split('"')[1] for line in site.config.read_text().splitlines() if "scrypt$" in line]
    for path in pages:
        _, _, page = web.get(path)
        for secret in secrets + hashes:
            assert secret not in page, (path, secret)


def test_metrics_parse_and_count_as_tasks_and_jobs_run(site, web):
    def scrape(**kw) -> dict:
        status, headers, text = web.get("/metrics", **kw)
        assert status == 200, text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    first = scrape()  # from loopback, without a login
    runs = first.get(("schedulerd_task_iterations_total", (("outcome", "ok"), ("task", "chatty"))), 0)
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.01}', check=True)
    site.wait_for(lambda: site.json("job:list", "--state", "finished"), what="the job to finish")
    time.sleep(2.5)  # two more iterations of chatty
    m = scrape(headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert m[("schedulerd_task_iterations_total", (("outcome", "ok"), ("task", "chatty")))] >= runs + 2
    assert m[("schedulerd_task_iteration_seconds_count", (("type", "chatty"),))] >= runs + 2
    assert m[("schedulerd_tasks", (("state", "waiting"),))] + m[("schedulerd_tasks", (("state", "running"),))] >= 2
    assert m[("schedulerd_jobs", (("queue", "slow"), ("state", "finished")))] == 1
    assert m[("schedulerd_job_run_seconds_count", (("outcome", "finished"), ("queue", "slow")))] == 1
    assert m[("schedulerd_job_wait_seconds_count", (("queue", "slow"),))] == 1


def test_metrics_from_elsewhere_need_the_token_or_a_login(site, tmp_path):
    """Bound to 127.0.0.2 (loopback too), with metrics_public_on_loopback off: as a remote peer."""
    port = free_port()
    start(site, tmp_path, port, extra="metrics_public_on_loopback = false")
    web = Web(port)
    assert web.get("/metrics")[0] == 403
    assert web.get("/metrics", headers={"Authorization": "Bearer wrong"})[0] == 403
    assert web.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[0] == 200
    assert web.login() == 303
    assert web.get("/metrics")[0] == 200


def test_a_non_loopback_address_without_tls_is_refused_at_load(site):
    site.write(f"""
[http]
listen = "0.0.0.0:8021"
[http.users]
alice = "{password_hash('long-enough-pw')}"
""")
    p = site.console("config:check")
    assert p.returncode == 2
    assert "http.listen: 0.0.0.0:8021 is not a loopback address and no TLS is set" in p.stderr
    assert "in clear" in p.stderr


def test_a_proxy_header_only_on_a_unix_socket_and_a_plain_password_is_refused(site):
    site.write("""
[http]
listen = "127.0.0.1:8021"
proxy_user_header = "X-Remote-User"
""")
    p = site.console("config:check")
    assert p.returncode == 2 and "http.proxy_user_header: is accepted only when listening on a Unix socket" in p.stderr
    site.write("""
[http]
listen = "127.0.0.1:8021"
[http.users]
alice = "plain-password"
""")
    p = site.console("config:check")
    assert p.returncode == 2 and "http.users.alice: expected a password hash" in p.stderr


def test_http_passwd_hashes_with_scrypt_and_the_hash_checks():
    from schedulerd.web.auth import check_password

    h = password_hash("correct horse")
    assert h.startswith("scrypt$16384$8$1$") and "correct horse" not in h
    assert check_password("correct horse", h) and not check_password("correct horsE", h)
    p = subprocess.run([str(CONSOLE), "http:passwd", "alice"], input="short\n", capture_output=True, text=True)
    assert p.returncode == 2 and "at least 8 characters" in p.stderr


def test_actions_are_refused_while_the_daemon_shuts_down(site, tmp_path):
    """The console calls the control commands: during the drain they answer SHUTTING_DOWN (503)."""
    port = free_port()
    start(site, tmp_path, port, tasks="""
[tasks.sleeper]
type = "command"
period = "1h"
argv = ["sleep", "30"]
""".replace('period = "1h"', 'period = "1h"\ntimeout = "1m"'))
    site.write(site.config.read_text().replace('stop_timeout = "3s"', 'stop_timeout = "6s"'))
    web = Web(port)
    assert web.login() == 303
    token = web.csrf()
    site.wait_for(lambda: site.task("sleeper")["state"] == "running", what="sleeper running")
    stopper = subprocess.Popen([str(CONSOLE), "--config", str(site.config), "scheduler:stop", "--timeout", "20"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        site.wait_for(lambda: "stopping: draining tasks" in site.log(), what="the drain")
        status, _, page = web.post("/tasks/chatty/stop", {"csrf": token})
        assert status == 503 and "shutting down" in page
    finally:
        stopper.communicate(timeout=30)
