"""The webhook job type against a real HTTP server started here, through the real daemon."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.engine.conftest import Site

SECRET = "s3cr3t-hook"


class Hook:
    """Answers `codes` in turn (then 200) and keeps every body and signature it got."""

    def __init__(self, codes: list[int]):
        self.codes = list(codes)
        self.got: list[tuple[bytes, str]] = []
        self.asked: list[tuple[str, str]] = []  # (path with its query, Authorization header) of each POST
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.got.append((body, self.headers.get("X-Webhook-Signature", "")))
                hook.asked.append((self.path, self.headers.get("Authorization", "")))
                code = hook.codes.pop(0) if hook.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook_factory() -> Iterator[type[Hook]]:
    made: list[Hook] = []

    def make(codes: list[int]) -> Hook:
        h = Hook(codes)
        made.append(h)
        return h

    yield make  # type: ignore[misc]
    for h in made:
        h.server.shutdown()
        h.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configure(site: Site, url: str, attempts: int = 3) -> None:
    site.write(f"""
        [jobs.types.webhook]
        urls = ["{url}"]
        secret = "{SECRET}"
        timeout = "2s"
        max_attempts = {attempts}
        retry_delay = "100ms"
        retry_backoff = false
        """)


def _run_job(site: Site, payload: dict) -> dict:
    site.console("scheduler:start", check=True)
    jid = site.console("job:add", "webhook", "--payload", json.dumps(payload), check=True).stdout.strip()
    return site.wait_for(lambda: (j := site.json("job:show", jid)) and j["state"] in ("finished", "failed") and j,
                         timeout=30, what="the webhook job to end")


def test_fails_twice_then_delivered_once_signed(site: Site, hook_factory) -> None:  # noqa: F811
    hook = hook_factory([503, 500])
    _configure(site, hook.url)
    job = _run_job(site, {"event": "record.deleted", "databox": "main", "records": [7]})
    assert job["state"] == "finished", job
    assert job["attempts"] == 3
    accepted = hook.got[-1]
    assert len(hook.got) == 3  # two refused, one accepted: delivered once
    body, sig = accepted
    assert sig == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert json.loads(body)["event"] == "record.deleted"
    assert json.loads(body)["data"] == {"databox": "main", "records": [7]}
    assert SECRET not in site.console("job:show", str(job["id"]), "-v").stdout


def test_unreachable_retried_per_attempts_then_failed_with_reason(site: Site) -> None:  # noqa: F811
    _configure(site, f"http://127.0.0.1:{_free_port()}/nothing-listens", attempts=2)
    job = _run_job(site, {"event": "record.deleted"})
    assert job["state"] == "failed", job
    assert job["attempts"] == 2
    assert "unreachable" in job["error"] and "refused" in job["error"].lower()


def test_a_400_is_not_retried(site: Site, hook_factory) -> None:  # noqa: F811
    hook = hook_factory([400])
    _configure(site, hook.url, attempts=5)
    job = _run_job(site, {"event": "record.deleted"})
    assert job["state"] == "failed", job
    assert job["attempts"] == 1 and len(hook.got) == 1
    assert "400" in job["error"]


def test_run_service_exit_codes(site: Site, hook_factory) -> None:  # noqa: F811
    hook = hook_factory([503])
    _configure(site, hook.url)
    payload = json.dumps({"event": "record.deleted"})
    failed = site.console("worker:run-service", "webhook", "--payload", payload)
    assert failed.returncode == 1, failed.stderr
    assert "503" in failed.stderr
    ok = site.console("worker:run-service", "webhook", "--payload", payload)
    assert ok.returncode == 0, ok.stderr
    assert "delivered" in ok.stdout
    assert site.console("worker:run-service", "nosuchtype").returncode == 2
    assert site.console("worker:run-service", "webhook", "--payload", "{}").returncode == 2
    assert site.console("worker:run-service", "webhook", "--payload", "[").returncode == 2


def test_a_webhook_urls_credentials_and_token_show_nowhere(site: Site, hook_factory, tmp_path, monkeypatch) -> None:  # noqa: F811
    """URLs with `user:password@` and `?token=`: the user and password go as Basic authentication,
    the query as given; no log, job view, state file or console page shows them."""
    import base64
    import re

    from tests.engine.webconsole import Web, console_config, free_port, start_env, wait_for_port

    monkeypatch.setenv("PYTHONPATH", start_env(tmp_path)["PYTHONPATH"])  # the console's probe plugin
    hook = hook_factory([503])  # the first attempt refused: the retry's warning names the URLs
    port = hook.server.server_address[1]
    good = f"http://hookuser:hookpass@127.0.0.1:{port}/services/T0001/B0002/PATHTOKENyyyy?token=SECRETVALUE&v=2"
    dead = f"http://deaduser:deadpass@127.0.0.1:{_free_port()}/gone?token=DEADTOKEN"
    web_port = free_port()
    site.write(console_config(web_port, tasks=f"""
        [jobs.types.webhook]
        urls = ["{good}", "{dead}"]
        secret = "{SECRET}"
        timeout = "2s"
        max_attempts = 2
        retry_delay = "100ms"
        """))
    job = _run_job(site, {"event": "record.deleted"})
    wait_for_port(web_port)
    assert job["state"] == "failed" and job["attempts"] == 2, job
    assert hook.asked[-1] == ("/services/T0001/B0002/PATHTOKENyyyy?token=SECRETVALUE&v=2",
                              "Basic " + base64.b64encode(b"hookuser:hookpass").decode())
    shown = site.console("job:show", str(job["id"]), "-v").stdout
    assert f"delivered to http://127.0.0.1:{port}/… #{hashlib.sha256(good.encode()).hexdigest()[:8]}" in shown, shown
    assert re.search(r"http://127\.0\.0\.1:\d+/… #[0-9a-f]{8} unreachable", job["error"]), job["error"]
    web = Web(web_port)
    assert web.login() == 303
    pages = [web.get(path)[2] for path in ("/jobs", "/jobs?state=failed", "/tasks", "/metrics")]
    files = [p.read_bytes().decode(errors="replace") for p in site.var.rglob("*") if p.is_file() and not p.is_socket()]
    assert "webhook-delivered.json" in " ".join(str(p) for p in site.var.rglob("*"))  # the state is among them
    for text in [shown, site.console("job:list", "--json").stdout, *pages, *files]:
        for secret in ("hookuser", "hookpass", "PATHTOKENyyyy", "T0001/B0002", "SECRETVALUE", "deaduser", "deadpass",
                       "DEADTOKEN", "/gone"):
            assert secret not in text, (secret, text[:3000])


def test_a_common_word_in_a_webhook_query_stays_readable_in_other_log_lines(site: Site, hook_factory) -> None:  # noqa: F811
    """`?wait=true` (Discord's): the URL and `wait=true` are hidden, the word 'true' of another
    task's output is not starred."""
    hook = hook_factory([])
    url = f"{hook.url}/api/webhooks/42/DiscordTOKENzz?wait=true"
    site.write(f"""
        [jobs.types.webhook]
        urls = ["{url}"]
        secret = "{SECRET}"
        [tasks.says]
        type = "command"
        period = "1h"
        argv = ["sh", "-c", "echo the answer is true; echo posting to {url}"]
        """)
    job = _run_job(site, {"event": "record.deleted"})
    assert job["state"] == "finished", job
    log = site.wait_for(lambda: (text := site.log("says")) and "posting to" in text and text, what="the task's output")
    assert "the answer is true" in log, log
    assert "DiscordTOKENzz" not in log and "wait=true" not in log, log
