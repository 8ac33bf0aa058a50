"""The web console without a browser: login, CSRF, headers, secrets, refusals, /metrics, the
non-loopback refusal at load, http:passwd."""

from __future__ import annotations

import html
import re
import subprocess
from urllib.parse import urlencode

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

    def two_more() -> dict | None:  # two more iterations of chatty, counted in both metrics
        m = scrape(headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        done = (m.get(("schedulerd_task_iterations_total", (("outcome", "ok"), ("task", "chatty"))), 0) >= runs + 2
                and m.get(("schedulerd_task_iteration_seconds_count", (("type", "chatty"),)), 0) >= runs + 2)
        return m if done else None

    m = site.wait_for(two_more, 20, "two more iterations of chatty in /metrics")
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


def test_failed_logins_are_refused_per_address_and_per_user_without_locking_out_the_others(site, web):
    """Defaults: 5 failures within 1 minute. Each client is another loopback address."""
    attacker = Web(web.port, source="127.0.0.2")
    guesses = [f"guess-{i}-Secret" for i in range(5)]
    for guess in guesses:
        assert attacker.login("alice", guess) == 403
    status, headers, page = attacker.try_login("alice")  # the right password: not even checked
    assert status == 429 and "too many failed logins" in page
    assert 1 <= int(headers["retry-after"]) <= 60
    assert Web(web.port, source="127.0.0.3").try_login("alice")[0] == 429  # the user, from anywhere
    assert Web(web.port, source="127.0.0.3").login("bob") == 303  # another user: unaffected
    assert attacker.try_login("bob")[0] == 429  # the address, for any user
    assert web.login("bob") == 303 and web.get("/tasks")[0] == 200
    log = site.log()
    assert log.count("5 failed logins for address 127.0.0.2 within 1m") == 1, log
    assert log.count("5 failed logins for user alice within 1m") == 1
    assert "WARNING" in next(line for line in log.splitlines() if "failed logins for user alice" in line)
    assert not any(secret in log for secret in [*guesses, *PASSWORDS.values()])


def test_wrong_passwords_sent_at_once_get_at_most_the_limit_checked(site, web):
    """20 logins at once from one address, one CSRF pair: each is counted before its password
    check, so at most 5 (the limit) are checked, the others refused; another user logs in."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    _, _, page = web.get("/login")
    token, cookies = re.search(r'name="csrf" value="([^"]+)"', page).group(1), dict(web.cookies)
    barrier = threading.Barrier(20)

    def guess(i: int) -> str:
        client = Web(web.port, source="127.0.0.2")
        client.cookies = dict(cookies)
        barrier.wait(20)
        status, _, text = client.post("/login", {"csrf": token, "user": "alice", "password": f"guess-{i}"})
        return {403: "checked", 429: "refused"}[status] if "form expired" not in text else "expired"

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(guess, range(20)))
    assert 1 <= outcomes.count("checked") <= 5 and outcomes.count("refused") == 20 - outcomes.count("checked"), outcomes
    assert Web(web.port, source="127.0.0.3").login("bob") == 303
    assert Web(web.port, source="127.0.0.3").login("alice") == 429  # the per-user limit (docs/console.md)


def test_without_a_per_user_limit_wrong_passwords_lock_out_the_address_only(site, tmp_path):
    port = free_port()
    start(site, tmp_path, port, extra="login_user_max_failures = 0")
    attacker = Web(port, source="127.0.0.2")
    for i in range(5):
        assert attacker.login("alice", f"guess-{i}") == 403
    assert attacker.try_login("alice")[0] == 429
    assert Web(port, source="127.0.0.3").login("alice") == 303


def test_the_login_throttle_forgets_old_failures_and_holds_a_bounded_number_of_addresses():
    from schedulerd.web.ratelimit import FailureWindow, LoginLimiter

    w = FailureWindow(max_failures=3, window=10.0, max_keys=100)
    assert [w.fail("a", t) for t in (0.0, 1.0, 2.0)] == [False, False, True]  # the third reaches it: logged
    assert w.blocked_for("a", 5.0) == 5.0  # until the first is 10 s old
    assert w.blocked_for("a", 10.0) == 0.0  # a sliding window: one more try
    for i in range(10_000):  # a flood from many addresses
        w.fail(f"10.0.{i // 256}.{i % 256}", 3.0)
    assert len(w) == 100
    limiter = LoginLimiter(3, 10.0, frozenset({"alice"}), max_keys=100)
    for i in range(1_000):  # user names that are no user are not counted
        limiter.failed(f"10.1.{i // 256}.{i % 256}", f"nosuch{i}")
    assert len(limiter.by_user) == 0 and len(limiter.by_address) == 100


def test_the_jobs_table_shows_a_page_at_a_time_with_links_to_older_and_newest(site, web):
    from schedulerd.jobstore import SqliteJobStore

    site.console("queue:pause", "slow", check=True)
    store = SqliteJobStore(next(site.root.rglob("jobs.db")), 10.0)  # beside the running daemon, as job:add
    try:
        ids = store.add_many([("slow", "slow", {"i": i}, f"paged job {i}") for i in range(250)])
    finally:
        store.close()
    assert web.login() == 303

    def shown(path: str) -> tuple[list[int], str]:
        status, _, page = web.get(path)
        assert status == 200, page
        return [int(i) for i in re.findall(r'data-job="(\d+)"', page)], page

    first, page = shown("/jobs")
    assert first == ids[::-1][:100] and 'id="newest"' not in page
    older = html.unescape(re.search(r'href="([^"]+)" id="older"', page).group(1))
    assert older == f"/jobs?before={ids[150]}"
    second, page = shown(older)
    assert second == ids[::-1][100:200] and "slow/waiting: 250" in page
    third, page = shown(html.unescape(re.search(r'href="([^"]+)" id="older"', page).group(1)))
    assert third == ids[::-1][200:] and 'id="older"' not in page and 'href="/jobs" id="newest"' in page
    rows, _ = shown(f"/jobs?state=waiting&queue=slow&before={ids[10]}&fragment=rows")  # a page's refresh
    assert rows == ids[:10][::-1]
    assert web.get("/jobs?before=x1")[0] == 400
    for odd in ("²", "١٢", "１"):  # digits to str.isdigit, not job ids: 400, not 500
        status, _, page = web.get("/jobs?" + urlencode({"before": odd}))
        assert status == 400 and "before: expected a job id" in page, (odd, status)


def test_the_tasks_table_shows_a_page_at_a_time_and_filters_by_name(site, tmp_path):
    port = free_port()
    start(site, tmp_path, port, tasks="".join(f'\n[tasks.many{i:03d}]\ntype = "noop"\nperiod = "1h"\n'
                                              for i in range(230)))
    web = Web(port)
    assert web.login() == 303

    def shown(path: str) -> tuple[list[str], str]:
        status, _, page = web.get(path)
        assert status == 200, page
        return re.findall(r'<tr data-task="([^"]+)"', page), page

    first, page = shown("/tasks")  # chatty, pull, then many000..many229: 232 tasks
    assert first == ["chatty", "pull", *[f"many{i:03d}" for i in range(98)]]
    assert "page 1 of 3 (232 tasks)" in page and 'id="previous"' not in page
    assert re.search(r'href="([^"]+)" id="next"', page).group(1) == "/tasks?page=2"
    last, page = shown("/tasks?page=3&fragment=rows")  # the refresh of page 3
    assert last == [f"many{i:03d}" for i in range(198, 230)] and 'id="next"' not in page
    found, page = shown("/tasks?match=many1")
    assert found == [f"many{i:03d}" for i in range(100, 200)] and "(100 tasks matching many1)" in page
    assert 'data-live="/tasks?match=many1&amp;fragment=rows"' in page
    assert shown("/tasks?match=nosuch")[1].count("no tasks matching nosuch") == 1
    assert web.get("/tasks?page=0")[0] == 400 and web.get("/tasks?page=" + "9" * 5000)[0] == 400
    for odd in ("²", "١٢", "１"):  # digits to str.isdigit, not page numbers: 400, not 500
        status, _, page = web.get("/tasks?" + urlencode({"page": odd}))
        assert status == 400 and "page: expected a page number" in page, (odd, status)
    scraped = web.get("/metrics")[2]  # every task counted, not only a page of them
    assert sum(float(line.split()[-1]) for line in scraped.splitlines() if line.startswith("schedulerd_tasks{")) == 232
