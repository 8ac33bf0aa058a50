"""The web console's page load at size: the tasks table with 1,000 tasks, the jobs table with
10,000 jobs in the store. Server time from the console's `Server-Timing` header (request in to
rendered page out) and the client's wall time over loopback, p50/p99 over N loads, and the
daemon's CPU per load (utime+stime from /proc: what the load average cannot inflate).
Then N headless Chromium browsers (Debian's chromium and chromedriver, through Selenium) log in
and keep the tasks page open, refreshing itself every `[http] refresh`; the daemon's CPU over
`--seconds` beside the same daemon idle.

Run: .venv/bin/python bench/bench_console.py [--tasks 1000] [--jobs 10000] [--loads 100]
                                             [--browsers 5] [--seconds 60] [--refresh 5s]
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

from _common import CONSOLE, REPO, child_env, cpu_seconds, machine, percentile, ping

sys.path.insert(0, str(REPO))
PASSWORD = "bench-Pa55word"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site(root: Path, tasks: int, port: int, refresh: str) -> Path:
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
        refresh = "{refresh}"

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


PAGES = (("tasks table, page 1", "/tasks"), ("tasks rows (the refresh)", "/tasks?fragment=rows"),
         ("tasks table, page 10", "/tasks?page=10"), ("tasks, name filter", "/tasks?match=t05"),
         ("jobs table", "/jobs"), ("jobs rows (the refresh)", "/jobs?fragment=rows"),
         ("jobs, state+queue filter", "/jobs?state=waiting&queue=bulk"), ("jobs, page 50", "/jobs?before=5000"),
         ("metrics", "/metrics"))


def measure(client: Client, pid: int, path: str, loads: int) -> tuple[list[float], list[float], float, int]:
    """Server and wall times of `loads` loads (ms), the daemon's CPU per load (ms), the page's size."""
    server, wall, size = [], [], 0
    cpu = cpu_seconds(pid)
    for _ in range(loads):
        t0 = time.perf_counter()
        r, data = client.request("GET", path)
        wall.append((time.perf_counter() - t0) * 1000)
        assert r.status == 200, (path, r.status)
        server.append(float(r.getheader("server-timing").split("dur=")[1]))
        size = len(data)
    return server, wall, (cpu_seconds(pid) - cpu) * 1000 / loads, size


def page_loads(client: Client, pid: int, loads: int) -> None:
    print(f"{'page':<28}{'server p50':>12}{'server p99':>12}{'wall p50':>10}{'wall p99':>10}"
          f"{'CPU/load':>10}{'bytes':>10}")
    for label, path in PAGES:
        client.request("GET", path)  # warm
        server, wall, cpu, size = measure(client, pid, path, loads)
        print(f"{label:<28}{percentile(server, 50):>10.1f}ms{percentile(server, 99):>10.1f}ms"
              f"{percentile(wall, 50):>8.1f}ms{percentile(wall, 99):>8.1f}ms{cpu:>8.1f}ms{size:>10}", flush=True)


def browser(port: int, profile: Path) -> object:
    """A headless Chromium logged in, showing the tasks page (it refreshes its rows itself)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    driver.get(f"http://127.0.0.1:{port}/login")
    driver.find_element("id", "user").send_keys("bench")
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("id", "login").click()
    deadline = time.monotonic() + 60
    while "/tasks" not in driver.current_url:
        if time.monotonic() > deadline:
            raise RuntimeError(f"a browser did not reach /tasks: {driver.current_url}")
        time.sleep(0.1)
    return driver


def daemon_cpu(pid: int, seconds: float) -> float:
    """The daemon's CPU over `seconds`, in % of one core."""
    cpu, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - t0) * 100


def browsers_open(port: int, pid: int, root: Path, count: int, seconds: float) -> None:
    idle = daemon_cpu(pid, min(seconds, 20))
    print(f"daemon CPU idle (no page open), {min(seconds, 20):.0f} s: {idle:.1f} % of one core", flush=True)
    drivers: list = []
    try:
        for i in range(count):
            drivers.append(browser(port, root / f"chromium-{i}"))
        time.sleep(2)  # every page loaded; now only their refreshes
        busy = daemon_cpu(pid, seconds)
        print(f"daemon CPU with {count} browsers on the tasks page, {seconds:.0f} s: {busy:.1f} % of one core "
              f"({machine()})", flush=True)
    finally:
        for d in drivers:
            d.quit()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--loads", type=int, default=100)
    p.add_argument("--browsers", type=int, default=5, help="0: no browser phase")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the browsers keep the page open")
    p.add_argument("--refresh", default="5s", help="[http] refresh: how often each open page refreshes")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        root, port = Path(tmp), free_port()
        config = site(root, a.tasks, port, a.refresh)
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
            pid = ping(root / "var" / "run" / "s.sock")["pid"]
            print(machine())
            print(f"{a.tasks} tasks, {a.jobs} jobs, {a.loads} loads each, refresh {a.refresh}")
            page_loads(client, pid, a.loads)
            if a.browsers:
                browsers_open(port, pid, root, a.browsers, a.seconds)
            print(machine())
        finally:
            subprocess.run([str(CONSOLE), "--config", str(config), "scheduler:stop"], env=env, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
