"""What a person sees, in a real browser (Debian's `chromium`, driven by Selenium through
Debian's `chromium-driver`; never a downloaded browser): the Prefect UI asks for the
orchestrator's credential before it shows anything, and a person who gives it sees the
deployments; the page of an install run shows its eight phase
subflows. Screenshots are kept in test-output/ui/ and their paths printed. Run with
`./dev test-ui` (which installs chromium and chromium-driver when missing); `.ci/run` runs it too."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import new_sandbox_root
from tests.service.conftest import Service

pytestmark = [pytest.mark.postgres, pytest.mark.ui]
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "ui"     # kept with the test's output


def browser():
    """Headless Debian chromium through Debian's chromedriver, with a profile of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as Driver

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "needs Debian's chromium and chromium-driver (./dev test-ui installs them)"
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1500,1000", f"--user-data-dir={tempfile.mkdtemp(prefix='pcdb-chromium-')}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Driver(executable_path=driver), options=options)


def test_a_person_must_log_in_to_the_ui_and_then_sees_the_deployments():
    """The orchestration API asks for its credential; the UI asks a person for it (its login page)
    before showing a run, a deployment or a block."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    folder = new_sandbox_root()
    ui = Service(folder, name="login")
    driver = None
    try:
        ui.pcdb("server", "up", "--env", str(ui.spec))
        driver = browser()
        wait = WebDriverWait(driver, 60)
        driver.get(f"{ui.url.removesuffix('/api')}/deployments")
        password = wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "input[type=password]")))
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / "ui-login.png"))
        assert "install-login" not in driver.page_source          # nothing shown before the login
        password.send_keys("pcdb:not-the-credential")
        driver.find_element(By.CSS_SELECTOR, "button").click()
        wait.until(lambda d: "Authentication failed" in d.page_source or "Invalid" in d.page_source)
        password = wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "input[type=password]")))
        password.clear()
        password.send_keys(ui.auth)
        driver.find_element(By.CSS_SELECTOR, "button").click()
        driver.get(f"{ui.url.removesuffix('/api')}/deployments")
        wait.until(lambda d: "install-login" in d.page_source and "dr-drill-login" in d.page_source)
        driver.save_screenshot(str(SHOTS / "ui-deployments.png"))
        print(f"screenshots: {SHOTS / 'ui-login.png'} {SHOTS / 'ui-deployments.png'}")
    finally:
        if driver is not None:
            driver.quit()
        ui.pcdb("server", "down", "--env", str(ui.spec), check=False)


def logged_in(driver, ui):
    """Log in to the UI with the orchestrator's credential (its login page asks for it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(ui.url.removesuffix("/api"))
    password = WebDriverWait(driver, 60).until(seen.element_to_be_clickable((By.CSS_SELECTOR, "input[type=password]")))
    password.send_keys(ui.auth)
    driver.find_element(By.CSS_SELECTOR, "button").click()
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return localStorage.getItem('prefect-password')"))


def test_the_install_run_page_shows_the_eight_phase_subflows():
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = new_sandbox_root()
    ui = Service(folder, name="ui")
    driver = None
    try:
        ui.pcdb("server", "up", "--env", str(ui.spec))
        installed = ui.pcdb("install", "--env", str(ui.spec), "--deployed", "--json")
        run_url = re.search(r"run: (\S+)", installed.stderr).group(1)
        assert json.loads(installed.stdout)["status"] == "completed"
        driver = browser()
        logged_in(driver, ui)
        driver.get(run_url)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.XPATH, "//*[text()='Subflow Runs']"))[0].click()
        WebDriverWait(driver, 60).until(
            lambda d: all(f"Phase {n}" in d.find_element(By.TAG_NAME, "body").text for n in range(1, 9)))
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / "install-run.png"))
        print(f"screenshot: {SHOTS / 'install-run.png'}")
    finally:
        if driver is not None:
            driver.quit()
        ui.pcdb("server", "down", "--env", str(ui.spec), check=False)
        ui.pcdb("sandbox", "destroy", "--env", str(ui.spec), "--yes", check=False)
