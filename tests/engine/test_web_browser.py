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


Locator = tuple[str, str]


def css(selector: str) -> Locator:
    return ("css selector", selector)


def until(driver, condition, timeout: float = 20):
    """Polls condition(driver) until it is truthy. The console replaces its tables' rows every refresh,
    so a condition finds its elements again at each poll (never holds one across a refresh): an
    element missing, or replaced between its find and its use, is one more poll."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(condition)


def click(driver, locator: Locator) -> None:
    """Clicks the element at locator, found again while a refresh replaced it. Retrying never clicks
    twice: WebDriver's Element Click checks the element is attached before dispatching the events."""
    until(driver, lambda d: d.find_element(*locator).click() or True)


def type_into(driver, locator: Locator, text: str) -> None:
    """Types text into the field at locator (cleared first: a retry types it whole, once)."""
    def typed(d) -> bool:
        field = d.find_element(*locator)
        field.clear()
        field.send_keys(text)
        return True
    until(driver, typed)


def text_when(driver, locator: Locator, wanted) -> str:
    """The text of the element at locator once wanted(text) holds, read from one find."""
    def read(d) -> list[str] | None:
        text = d.find_element(*locator).text
        return [text] if wanted(text) else None
    return until(driver, read)[0]


def log_in(driver, console: str) -> None:
    driver.get(console + "/login")
    type_into(driver, ("id", "user"), "alice")
    type_into(driver, ("id", "password"), PASSWORDS["alice"])
    click(driver, ("id", "login"))
    until(driver, lambda d: d.current_url.endswith("/tasks"))


def test_an_operator_drives_tasks_and_jobs_from_the_browser(site, console, browser, tmp_path):
    b = browser
    b.get(console + "/tasks")
    assert "Login required" in b.page_source
    log_in(b, console)
    chatty = 'tr[data-task="chatty"]'
    text_when(b, css(chatty + " .state"), lambda t: t.startswith(("waiting", "running")))

    # stop and start a task: its state changes in the table
    click(b, css(chatty + ' button[name="stop"]'))
    text_when(b, css(chatty + " .state"), lambda t: t.startswith("stopped"))
    assert site.task("chatty")["wanted"] == "stopped"
    click(b, css(chatty + ' button[name="start"]'))
    text_when(b, css(chatty + " .state"), lambda t: t.startswith(("waiting", "running")))
    b.save_screenshot(str(tmp_path / "tasks.png"))

    # the task's page follows its log: a line written after the page loaded arrives
    click(b, ("link text", "chatty"))
    log = text_when(b, css("#log"), lambda t: "chatty line" in t)
    last = max(int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "chatty line" in line)
    text_when(b, css("#log"), lambda t: f"chatty line {last + 2}" in t)

    # a job's progress bar fills without reloading the page
    b.get(console + "/jobs")
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.4, "name": "one"}', check=True)
    row = 'tr[data-job="1"]'
    text_when(b, css(row + " .state"), lambda t: t == "running")
    seen = set()

    def filling(d) -> bool:
        seen.add(float(d.find_element(*css(row + " progress")).get_attribute("value")))
        return d.find_element(*css(row + " .state")).text == "finished"

    until(b, filling)
    assert len([v for v in seen if 0 < v < 10]) >= 2, seen  # in between values, refreshed in place
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.01, "name": "two"}', check=True)
    text_when(b, css('tr[data-job="2"] .state'), lambda t: t == "finished")
    b.save_screenshot(str(tmp_path / "jobs.png"))

    # delete finished jobs
    click(b, ("id", "purge-finished"))
    text_when(b, css("#jobs tbody"), lambda t: "no jobs" in t)
    assert site.json("job:list") == []

    # pause a queue: a job added then waits
    click(b, css('tr[data-queue="slow"] button'))
    text_when(b, css('tr[data-queue="slow"] .queue-status'), lambda t: t == "paused")
    site.console("job:add", "slow", "--queue", "slow", "--payload", '{"step": 0.01}', check=True)
    text_when(b, css('tr[data-job="3"] .state'), lambda t: t == "waiting")
    assert site.json("job:show", "3")["state"] == "waiting"
    assert (tmp_path / "tasks.png").stat().st_size > 0 and (tmp_path / "jobs.png").stat().st_size > 0


LATENCY_MS = 3000  # the network latency of every request while the test emulates a slow link
# A refresh that took the whole latency has arrived.
SLOW_REFRESH_ARRIVED = """
return performance.getEntriesByType("resource").some(
    (e) => e.name.includes("fragment=rows") && e.responseEnd - e.startTime >= arguments[0]);
"""
# A refresh whose response arrives after t1 although it left before t0: in flight across [t0, t1].
REFRESH_IN_FLIGHT = """
return performance.getEntriesByType("resource").some(
    (e) => e.name.includes("fragment=rows") && e.startTime < arguments[0] && e.responseEnd > arguments[1]);
"""


def slow_refreshes(driver) -> None:
    """Waits until a refresh slowed by LATENCY_MS has arrived. One leaves every 300 ms and Chrome's
    emulated link sends them one after another (they arrive LATENCY_MS apart): from then on a backlog
    of refreshes that left earlier is in flight, for longer than the test runs."""
    until(driver, lambda d: d.execute_script(SLOW_REFRESH_ARRIVED, LATENCY_MS))


def press(driver, locator: Locator) -> bool:
    """Presses the mouse on the element at locator and holds it there until a refresh that was in flight
    at the press has arrived; says whether the pressed element is still in the page."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains

    def pressed(d):
        element, t0 = d.find_element(*locator), d.execute_script("return performance.now()")
        ActionChains(d).move_to_element(element).click_and_hold().perform()
        return element, t0, d.execute_script("return performance.now()")

    element, t0, t1 = until(driver, pressed)
    until(driver, lambda d: d.execute_script(REFRESH_IN_FLIGHT, t0, t1))
    try:
        return element.is_displayed()  # the one element held across a refresh: that is the check
    except StaleElementReferenceException:  # the refresh replaced the rows under the pointer
        return False


def test_a_refresh_never_replaces_the_rows_under_a_pressed_pointer(site, console, browser):
    """The rows' refresh is a fetch (slow here: a 3 s network latency); one that left before the
    operator pressed a button used to replace the rows when it arrived, under the pressed pointer, and
    the click was lost. A press on text (selecting an error to copy) is kept too: a cell is not focusable."""
    from selenium.webdriver.common.action_chains import ActionChains

    b = browser
    log_in(b, console)
    chatty = 'tr[data-task="chatty"]'
    text_when(b, css(chatty + " .state"), lambda t: t.startswith(("waiting", "running")))
    b.execute_script("performance.setResourceTimingBufferSize(100000)")
    b.set_network_conditions(latency=LATENCY_MS, download_throughput=1_000_000, upload_throughput=1_000_000)
    slow_refreshes(b)
    assert press(b, css(chatty + " .state")), "a refresh replaced the rows under the pointer pressed on a cell"
    ActionChains(b).release().perform()
    assert press(b, css(chatty + ' button[name="stop"]')), "a refresh replaced the rows under a pressed button"
    b.set_network_conditions(latency=0, download_throughput=1_000_000, upload_throughput=1_000_000)
    ActionChains(b).release().perform()  # the click counts: the task stops
    text_when(b, css(chatty + " .state"), lambda t: t.startswith("stopped"))
    assert site.task("chatty")["wanted"] == "stopped"
