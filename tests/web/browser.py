"""Debian's headless Chromium driven by selenium through Debian's chromium-driver, for the
dashboard's browser tests. Nothing is downloaded: the browser and its driver are the
machine's (scripts/setup installs them); selenium is pointed at both."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Where screenshots are kept after the run (gitignored), besides the test's tmp dir.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# As root Chromium needs --no-sandbox; the rest keeps it from reaching out anywhere.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
         "--disable-default-apps", "--no-default-browser-check", "--mute-audio",
         "--window-size=1400,1800", "--force-device-scale-factor=1")


def need_browser() -> None:
    """Fail (with the fix) where Debian's chromium or chromium-driver is missing: a
    browser test that skips proves nothing."""
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.fail(f"{path} missing: apt-get install {pkg} (scripts/setup does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium (own profile directory) as a selenium WebDriver; quit
    on exit, and its processes ended by the driver's PID if quitting fails."""
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="dashboard-chromium-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, port=free_port(),
                      log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            proc = service.process
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
            shutil.rmtree(profile, ignore_errors=True)


def wait_until(cond: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """``cond()``'s first truthy value within ``timeout`` s, else AssertionError(what)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} (within {timeout} s; last seen: {last!r})")


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """A PNG of the whole page in the test's tmp dir, copied to test-artifacts/."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, min(int(height) + 40, 6000)))
    shot = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(shot)), f"no screenshot {shot}"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy2(shot, ARTIFACTS / shot.name)
    return shot


def open_dashboard(driver: Any, base: str, token: str, query: str = "") -> None:
    """Open the page and give it the token as an operator would (the login form)."""
    from selenium.webdriver.common.by import By

    driver.get(base + "/dashboard" + query)
    box = wait_until(lambda: driver.find_element(By.ID, "token"), 10, "no token field")
    box.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_until(lambda: driver.find_element(By.ID, "main").is_displayed(), 10,
               "the dashboard did not open")


def table_rows(driver: Any, table: str) -> dict[str, dict[str, str]]:
    """A table of the page as the operator sees it: row key (its call ref, else its first
    cell) -> column heading -> text."""
    return driver.execute_script("""
        const t = document.getElementById(arguments[0]);
        const heads = [...t.querySelectorAll('thead th')].map(th => th.textContent);
        const out = {};
        for (const tr of t.querySelectorAll('tbody tr')) {
            const cells = [...tr.cells].map(td => td.textContent);
            if (cells.length !== heads.length) continue;  // "no call ..." placeholders
            out[tr.dataset.callRef || cells[0]] =
                Object.fromEntries(heads.map((h, i) => [h, cells[i]]));
        }
        return out;""", table)


def live_rows(driver: Any) -> dict[str, dict[str, str]]:
    """The live-calls table: call ref -> column -> text."""
    return table_rows(driver, "live-calls")


def recent_rows(driver: Any) -> dict[str, dict[str, str]]:
    """The "just ended" table: call ref -> column -> text."""
    return table_rows(driver, "recent")
