"""The web console's page load at size: the tasks table with 1,000 tasks, the jobs table with
10,000 jobs in the store. Server time from the console's `Server-Timing` header (request in to
rendered page out) and the client's wall time over loopback, p50/p99 over N loads.

Run: .venv/bin/python bench/bench_console.py [--tasks 1000] [--jobs 10000] [--loads 100]
"""

from __future__ import annotations

import argparse
import http.client
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlencode

from _common import CONSOLE, REPO, child_env, percentile

sys.path.insert(0, str(REPO))
PASSWORD = "bench-Pa55word"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site(root: Path, tasks: int, port: int) -> Path:
    from schedulerd.web.auth import hash_password

    config = root / "etc" / "schedulerd.toml"
    config.parent.mkdir(parents=True)
    body = textwrap.dedent(f"""
        [scheduler]
        socket = "{root}/var/run/s.sock"
        log_dir = "{root}/var/log"
        state_dir = "{root}/var/state"
        pidfile = "{root}/var/run/schedulerd.pid"

        [http]
        listen = "127.0.0.1:{port}"

        [http.users]
        bench = "{hash_password(PASSWORD)}"

        [queues.bulk]
        workers = 1
        """)
    body += "".join(f'\n[tasks.t{i:04d}]\ntype = "noop"\nperiod = "1h"\n' for i in range(tasks))
    config.write_text(body)
    return config


def fill_jobs(root: Path, n: int) -> None:
    """n jobs in a paused queue (they stay waiting), written straight to the store before the start."""
    from schedulerd.jobstore import open_job_store

    store = open_job_store(root / "var" / "state")
    store.set_paused("bulk", True)
    store.add_many([("noop", "bulk", {"i": i}, f"bench job {i}") for i in range(n)])
    store.close()


class Client:
    def __init__(self, port: int):
        self.port = port
        self.cookie = ""

    def request(self, method: str, path: str, body: str | None = None,
                cookie: str = "") -> tuple[http.client.HTTPResponse, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": cookie or self.cookie}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        c.request(method, path, body, headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r, data

    def login(self) -> None:
        r, page = self.request("GET", "/login")
        token = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
        login_cookie = r.getheader("set-cookie").split(";")[0]
        r, _ = self.request("POST", "/login", urlencode({"csrf": token, "user": "bench", "password": PASSWORD}),
                            cookie=login_cookie)
        self.cookie = r.getheader("set-cookie").split(";")[0]


def measure(client: Client, path: str, loads: int) -> tuple[list[float], list[float], int]:
    server, wall, size = [], [], 0
    for _ in range(loads):
        t0 = time.perf_counter()
        r, data = client.request("GET", path)
        wall.append((time.perf_counter() - t0) * 1000)
        assert r.status == 200, (path, r.status)
        server.append(float(r.getheader("server-timing").split("dur=")[1]))
        size = len(data)
    return server, wall, size


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--loads", type=int, default=100)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        root, port = Path(tmp), free_port()
        config = site(root, a.tasks, port)
        fill_jobs(root, a.jobs)
        env = child_env()
        subprocess.run([str(CONSOLE), "--config", str(config), "scheduler:start", "--wait", "120"], check=True, env=env)
        try:
            deadline = time.monotonic() + 60
            client = Client(port)
            while True:
                try:
                    client.login()
                    break
                except (OSError, AttributeError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            print(f"{a.tasks} tasks, {a.jobs} jobs, {a.loads} loads each")
            print(f"{'page':<28}{'server p50':>12}{'server p99':>12}{'wall p50':>10}{'wall p99':>10}{'bytes':>10}")
            for label, path in (("tasks table", "/tasks"), ("tasks rows (refresh)", "/tasks?fragment=rows"),
                                ("jobs table", "/jobs"), ("jobs rows (refresh)", "/jobs?fragment=rows"),
                                ("jobs, state=waiting", "/jobs?state=waiting&queue=bulk"), ("metrics", "/metrics")):
                client.request("GET", path)  # warm
                server, wall, size = measure(client, path, a.loads)
                print(f"{label:<28}{percentile(server, 50):>10.1f}ms{percentile(server, 99):>10.1f}ms"
                      f"{percentile(wall, 50):>8.1f}ms{percentile(wall, 99):>8.1f}ms{size:>10}")
        finally:
            subprocess.run([str(CONSOLE), "--config", str(config), "scheduler:stop"], env=env, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
