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
from contextlib import contextmanager
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


@contextmanager
def installed_in_a_browser(name: str):
    """A server, worker and installed sandbox of their own, and a logged-in browser; all of it
    stopped and removed afterwards. Yields (service, driver, the install's JSON and stderr)."""
    folder = new_sandbox_root()
    ui = Service(folder, name=name)
    driver = None
    try:
        ui.pcdb("server", "up", "--env", str(ui.spec))
        installed = ui.pcdb("install", "--env", str(ui.spec), "--deployed", "--json")
        driver = browser()
        logged_in(driver, ui)
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield ui, driver, installed
    finally:
        if driver is not None:
            driver.quit()
        ui.pcdb("server", "down", "--env", str(ui.spec), check=False)
        ui.pcdb("sandbox", "destroy", "--env", str(ui.spec), "--yes", check=False)


def test_the_install_run_page_shows_the_eight_phase_subflows():
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with installed_in_a_browser("ui") as (_ui, driver, installed):
        run_url = re.search(r"run: (\S+)", installed.stderr).group(1)
        assert json.loads(installed.stdout)["status"] == "completed"
        driver.get(run_url)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.XPATH, "//*[text()='Subflow Runs']"))[0].click()
        WebDriverWait(driver, 60).until(
            lambda d: all(f"Phase {n}" in d.find_element(By.TAG_NAME, "body").text for n in range(1, 9)))
        driver.save_screenshot(str(SHOTS / "install-run.png"))
        print(f"screenshot: {SHOTS / 'install-run.png'}")


def test_a_zone_drill_started_from_the_custom_run_form_is_decided_in_the_resume_form_and_shows_its_steps():
    """A DR drill started by hand in the UI, as the brief says people start them: the dr-drill
    deployment's Custom run form (the scenario and the mode are selects), the drill's decision
    answered in the run page's resume form (not inside a task: the run is paused between its
    steps), then at least six named step task runs and the steps artifact on the run page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from flows.runbook import pending_request
    from pcdb.config import load_environment
    from pcdb.decisions import Request
    from tests.service.conftest import wait_until

    with installed_in_a_browser("drillui") as (ui, driver, _installed):
        approver = load_environment(ui.spec).approvers()[0]
        with ui.api():
            from prefect import get_client

            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name("dr-drill/dr-drill-drillui")
        base = ui.url.removesuffix("/api")
        wait = WebDriverWait(driver, 60)

        # 1. The deployment, then its Custom run form: the scenario and the mode chosen in it.
        driver.get(f"{base}/deployments/deployment/{deployment.id}")
        wait.until(lambda d: "dr-drill-drillui" in d.find_element(By.TAG_NAME, "body").text)
        driver.get(f"{base}/deployments/deployment/{deployment.id}/run")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "select.p-native-select__control")) >= 2)
        chosen = {}
        for select in driver.find_elements(By.CSS_SELECTOR, "select.p-native-select__control"):
            values = [o.get_attribute("value") for o in select.find_elements(By.TAG_NAME, "option")]
            for value in ("zone", "planned"):         # the mode is not the deployment's default (forced)
                if value in values:
                    Select(select).select_by_value(value)
                    chosen[value] = True
        assert chosen == {"zone": True, "planned": True}, chosen
        driver.save_screenshot(str(SHOTS / "drill-custom-run.png"))
        submit = driver.find_element(By.XPATH, "//button[@type='submit']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", submit)
        submit.click()

        def run_of_the_form():
            with ui.api(), get_client(sync_client=True) as client:
                runs = client.read_flow_runs()
            return next((r for r in runs if r.deployment_id == deployment.id and r.parameters.get("mode") == "planned"),
                        None)

        run = wait_until(run_of_the_form, "the run the form started", timeout=60)
        assert run.parameters["scenario"] == "zone" and not run.parameters.get("yes")

        # 2. The decision, answered in the run page's resume form.
        def paused():
            with ui.api():
                return pending_request(run.id)

        request = Request.from_json({k: v for k, v in wait_until(paused, "the drill's decision", timeout=240).items()
                                     if k in Request.__dataclass_fields__})
        assert request.step == "drill-decision"
        driver.get(f"{base}/runs/flow-run/{run.id}")
        wait.until(lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Resume']"))[0].click()
        dialog = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[role=dialog] textarea.p-textarea__control"))
        assert len(dialog) == 4, len(dialog)              # signer, message, signature, reason
        signer, message, _signature, reason = dialog
        signer.send_keys(approver)
        message.clear()
        message.send_keys(request.message(approver))
        reason.send_keys("drill started and decided in the UI")
        driver.save_screenshot(str(SHOTS / "drill-resume-form.png"))
        driver.find_element(By.XPATH, "//div[@role='dialog']//button[normalize-space()='Submit']").click()

        def finished():
            with ui.api(), get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            return state if state.is_final() else None

        state = wait_until(finished, "the drill to finish", timeout=300)
        assert state.is_completed(), state.message

        # 3. The run page: its name says what it did; six or more named steps; the steps artifact.
        with ui.api(), get_client(sync_client=True) as client:
            done = client.read_flow_run(run.id)
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            artifacts = [a.key for a in client.read_artifacts() if a.flow_run_id == run.id]
        assert done.name.startswith("zone drill · planned · 0 lost · RTO"), done.name
        steps = [t.name for t in tasks]
        assert {"clean up after earlier drills", "start the probe writer", "planned failover of the HA pair",
                "measure the probe writer", "check the topology is whole", "drop the probe table"} <= set(steps), steps
        assert "steps" in artifacts, artifacts
        driver.get(f"{base}/runs/flow-run/{run.id}?tab=Task+Runs")
        wait.until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='Task Runs']"))[0].click()
        WebDriverWait(driver, 60).until(lambda d: all(
            s in d.find_element(By.TAG_NAME, "body").text for s in ("planned failover of the HA pair",
                                                                   "measure the probe writer")))
        driver.save_screenshot(str(SHOTS / "drill-task-runs.png"))
        wait.until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='Artifacts']"))[0].click()
        WebDriverWait(driver, 60).until(lambda d: "steps" in d.find_element(By.TAG_NAME, "body").text)
        driver.save_screenshot(str(SHOTS / "drill-artifacts.png"))
        print(f"screenshots: {SHOTS}/drill-*.png")
