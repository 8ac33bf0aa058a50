"""The web console in a real browser: Debian's chromium driven by Selenium through chromedriver."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.engine.conftest import CONSOLE
from tests.engine.webconsole import PASSWORDS, console_config, free_port, start_env, wait_for_port

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs the Debian packages chromium and chromium-driver")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # given, with the driver: Selenium Manager downloads nothing
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def console(site, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", start_env(tmp_path)["PYTHONPATH"])
    port = free_port()
    site.write(console_config(port, refresh="300ms"))
    p = subprocess.run([str(CONSOLE), "--config", str(site.config), "scheduler:start"], capture_output=True,
                       text=True, cwd=site.root, timeout=60)
    assert p.returncode == 0, p.stderr
    wait_for_port(port)
    return f"http://127.0.0.1:{port}"


def wait(driver, condition, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def text_of(driver, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_an_operator_drives_tasks_and_jobs_from_the_browser(site, console, browser, tmp_path):
    b = browser
    b.get(console + "/tasks")
    assert "Login required" in b.page_source
    b.get(console + "/login")
    b.find_element("id", "user").send_keys("alice")
    b.find_element("id", "password").send_keys(PASSWORDS["alice"])
    b.find_element("id", "login").click()
    wait(b, lambda d: d.current_url.endswith("/tasks"))
    wait(b, lambda d: text_of(d, 'tr[data-task="chatty"] .state').startswith(("waiting", "running")))

    # stop and start a task: its state changes in the table
    b.find_element("css selector", 'tr[data-task="chatty"] button[name="stop"]').click()
    wait(b, lambda d: text_of(d, 'tr[data-task="chatty"] .state').startswith("stopped"))
    assert site.task("chatty")["wanted"] == "stopped"
    b.find_element("css selector", 'tr[data-task="chatty"] button[name="start"]').click()
    wait(b, lambda d: text_of(d, 'tr[data-task="chatty"] .state').startswith(("waiting", "running")))
    b.save_screenshot(str(tmp_path / "tasks.png"))

    # the task's page follows its log: a line written after the page loaded arrives
    b.find_element("link text", "chatty").click()
    wait(b, lambda d: "chatty line" in text_of(d, "#log"))
    last = max(int(line.rsplit(" ", 1)[1]) for line in text_of(b, "#log").splitlines() if "chatty line" in line)
    wait(b, lambda d: f"chatty line {last + 2}" in text_of(d, "#log"))

    # a job's progress bar fills without reloading the page
    b.get(console + "/jobs")
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.4, "name": "one"}', check=True)
    row = 'tr[data-job="1"]'
    wait(b, lambda d: text_of(d, row + " .state") == "running")
    seen = set()

    def filling(d) -> bool:
        try:
            value = d.find_element("css selector", row + " progress").get_attribute("value")
        except Exception:
            return False
        seen.add(float(value))
        return text_of(d, row + " .state") == "finished"

    wait(b, filling)
    assert len([v for v in seen if 0 < v < 10]) >= 2, seen  # in between values, refreshed in place
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.01, "name": "two"}', check=True)
    wait(b, lambda d: text_of(d, 'tr[data-job="2"] .state') == "finished")
    b.save_screenshot(str(tmp_path / "jobs.png"))

    # delete finished jobs
    b.find_element("id", "purge-finished").click()
    wait(b, lambda d: "no jobs" in text_of(d, "#jobs tbody"))
    assert site.json("job:list") == []

    # pause a queue: a job added then waits
    b.find_element("css selector", 'tr[data-queue="slow"] button').click()
    wait(b, lambda d: text_of(d, 'tr[data-queue="slow"] .queue-status') == "paused")
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.01}', check=True)
    wait(b, lambda d: text_of(d, 'tr[data-job="3"] .state') == "waiting")
    assert site.json("job:show", "3")["state"] == "waiting"
    assert (tmp_path / "tasks.png").stat().st_size > 0 and (tmp_path / "jobs.png").stat().st_size > 0
