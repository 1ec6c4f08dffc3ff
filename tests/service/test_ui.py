"""What a person sees, in a real browser (Debian's `chromium`, driven by Selenium through
Debian's `chromium-driver`; never a downloaded browser): the Prefect UI asks for the
orchestrator's credential before it shows anything, and a person who gives it sees the
deployments; the page of an install run shows its eight phases, and a phase's page what it
changed. Screenshots are kept in test-output/ui/ and their paths printed. Run with
`./dev test-ui` (which installs chromium and chromium-driver when missing); `.ci/run` runs it too."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from pcdb.config import DEPLOYMENTS
from tests.conftest import new_sandbox_root, sandbox_root
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
    ui.extra_env["PREFECT_LOGGING_LEVEL"] = "INFO"     # as `./dev up` runs them (the suite's default: WARNING)
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


def test_the_install_run_page_shows_the_eight_phases_and_a_phase_page_its_table():
    """The install run's Task Runs tab lists the eight phases by name; a phase's own page holds
    the table of what it changed (Phase 7: its checks)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with installed_in_a_browser("ui") as (_ui, driver, installed):
        run_url = re.search(r"run: (\S+)", installed.stderr).group(1)
        assert json.loads(installed.stdout)["status"] == "completed"
        driver.get(run_url)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.XPATH, "//*[text()='Task Runs']"))[0].click()
        WebDriverWait(driver, 60).until(
            lambda d: all(f"Phase {n} ·" in d.find_element(By.TAG_NAME, "body").text for n in range(1, 9)))
        driver.save_screenshot(str(SHOTS / "install-run.png"))
        link = WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.XPATH, "//a[contains(normalize-space(), 'Phase 7 ·')]"))[0]
        driver.get(link.get_attribute("href"))      # the list refreshes as it is polled: its link, not a click
        # The task run's own page (its Task inputs tab tells it from the run's): its logs say what
        # each step did, its Artifacts tab holds the phase's table.
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "li#task-inputs"))
        WebDriverWait(driver, 60).until(lambda d: "run verification checks: 16/16 checks passed" in d.find_element(
            By.TAG_NAME, "body").text)
        driver.save_screenshot(str(SHOTS / "install-phase-7-logs.png"))
        driver.find_element(By.CSS_SELECTOR, "li#artifacts").click()
        WebDriverWait(driver, 60).until(lambda d: "install-phase-7" in d.find_element(By.TAG_NAME, "body").text)
        driver.save_screenshot(str(SHOTS / "install-phase-7.png"))
        print(f"screenshots: {SHOTS / 'install-run.png'} {SHOTS / 'install-phase-7-logs.png'} "
              f"{SHOTS / 'install-phase-7.png'}")


def resume_in_the_ui(driver, base: str, run_id, signer: str, message: str, signature: str, reason: str, shot: str):
    """Answer a paused run in its page's resume form (the typed `Decide` input: its textareas
    are signer, message, signature and reason, each pasted; the decision is a select left on
    approve).

    The form is read back before Submit, and the dialog must close after it: a page that
    re-rendered while the answer was typed (a screenshot `<shot>-not-submitted-N.png` shows it)
    is answered again, at most three times, never twice once an answer went through."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    form = "[role=dialog] textarea.p-textarea__control"
    for attempt in range(1, 4):
        driver.get(f"{base}/runs/flow-run/{run_id}")
        WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Resume']"))[0].click()
        fields = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, form))
        assert len(fields) == 4, len(fields)
        texts = (signer, message, signature, reason)
        for field, text in zip(fields, texts, strict=True):
            # Pasted over what the field holds, as a person pastes a signature: the browser's own
            # text insertion (one trusted input event), not a key press per character, which
            # re-rendered the form hundreds of times (about 20 s per answer on 2 cores).
            driver.execute_script("arguments[0].focus(); arguments[0].select();", field)
            if text:
                driver.execute_cdp_cmd("Input.insertText", {"text": text})
            else:
                field.clear()
        typed = driver.execute_script("return Array.from(document.querySelectorAll(arguments[0]), f => f.value);",
                                      form) == [t or "" for t in texts]
        driver.save_screenshot(str(SHOTS / shot))
        if typed:
            driver.find_element(By.XPATH, "//div[@role='dialog']//button[normalize-space()='Submit']").click()
            try:
                WebDriverWait(driver, 30).until(lambda d: not d.find_elements(By.CSS_SELECTOR, form))
                return
            except TimeoutException:
                pass
        driver.save_screenshot(str(SHOTS / f"{Path(shot).stem}-not-submitted-{attempt}.png"))
    raise AssertionError(f"the resume form of run {run_id} was not submitted in three tries; see {SHOTS}")


def flow_run_pid(run_id) -> int | None:
    """The process running this flow run (the worker starts it with PREFECT__FLOW_RUN_ID set)."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return None


@pytest.fixture(scope="module")
def drill_ui():
    """One server, worker, installed sandbox and logged-in browser for the drill tests below."""
    with installed_in_a_browser("drillui") as (ui, driver, installed):
        with ui.api():
            from prefect import get_client

            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name("dr-drill/dr-drill-drillui")
        yield ui, driver, deployment


@pytest.mark.timeout(900)
def test_a_zone_drill_started_from_the_custom_run_form_is_decided_in_the_resume_form_and_shows_its_steps(drill_ui):
    """A DR drill started by hand in the UI, as the brief says people start them: the dr-drill
    deployment's Custom run form (the scenario and the mode are selects), the drill's decision
    answered in the run page's resume form (not inside a task: the run is paused between its
    steps), then at least six named step task runs and the steps artifact on the run page."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from flows.runbook import pending_request
    from pcdb.config import load_environment
    from pcdb.decisions import Request
    from tests.service.conftest import wait_until

    ui, driver, deployment = drill_ui
    approver = load_environment(ui.spec).approvers()[0]
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
        with ui.api(), get_client(sync_client=True) as client:   # the deployment's runs only: a page holds 200
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
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
    resume_in_the_ui(driver, base, run.id, approver, request.message(approver), "",   # the sandbox: unsigned
                     "drill started and decided in the UI", "drill-resume-form.png")

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


@pytest.mark.timeout(900)
def test_a_killed_drill_shows_where_it_stopped_and_the_next_runs_cleanup_says_what_it_finished(drill_ui):
    """A zone drill's flow process killed (SIGKILL: no `finally` runs) while it waits on its
    decision, its probe table still there: its run page shows it crashed after the steps it
    finished; the next drill takes over the slot the dead run held, and its first step, the
    cleanup, says in its own log what the killed one left and it removed."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from flows.runbook import pending_request
    from tests.service.conftest import wait_until

    ui, driver, deployment = drill_ui
    base = ui.url.removesuffix("/api")

    def state_of(run_id):
        with ui.api(), get_client(sync_client=True) as client:
            return client.read_flow_run(run_id).state

    with ui.api(), get_client(sync_client=True) as client:
        killed = client.create_flow_run_from_deployment(deployment.id, parameters={"scenario": "zone", "mode": "forced"})

    def waiting():
        with ui.api():
            return pending_request(killed.id)

    wait_until(waiting, "the drill to wait on its decision", timeout=240)
    pid = wait_until(lambda: flow_run_pid(killed.id), "the drill's flow process", timeout=30)
    os.kill(pid, signal.SIGKILL)
    crashed = wait_until(lambda: (s := state_of(killed.id)).is_crashed() and s, "the worker to see the crash",
                         timeout=120)
    with ui.api(), get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[killed.id])))
    finished = sorted(t.name for t in tasks if t.state.is_completed())
    assert finished == ["check the HA pair and the replica, repair what differs", "clean up after earlier drills",
                        "start the probe writer"], finished
    assert not any(t.name == "forced failover of the HA pair" for t in tasks)  # stopped before failing over

    driver.get(f"{base}/runs/flow-run/{killed.id}")
    WebDriverWait(driver, 60).until(lambda d: "Crashed" in d.find_element(By.TAG_NAME, "body").text)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='Task Runs']"))[0].click()
    WebDriverWait(driver, 60).until(lambda d: all(
        s in d.find_element(By.TAG_NAME, "body").text for s in ("clean up after earlier drills", "start the probe writer")))
    driver.save_screenshot(str(SHOTS / "killed-drill.png"))
    assert crashed.message

    # The next drill: its cleanup step finishes what the killed one left, and says so.
    with ui.api(), get_client(sync_client=True) as client:
        after = client.create_flow_run_from_deployment(deployment.id, parameters={"scenario": "zone", "mode": "forced",
                                                                                  "yes": True})
    state = wait_until(lambda: (s := state_of(after.id)).is_final() and s, "the next drill to finish", timeout=300)
    assert state.is_completed(), state.message
    with ui.api(), get_client(sync_client=True) as client:
        cleanup = next(t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[after.id])))
                       if t.name == "clean up after earlier drills")
        from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

        said = [entry.message for entry in client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[cleanup.id])))]
    assert "left over by an earlier drill: dropped leftover table pcdb_drill_probe" in said, said
    driver.get(f"{base}/runs/task-run/{cleanup.id}")
    WebDriverWait(driver, 60).until(lambda d: "dropped leftover table pcdb_drill_probe" in
                                    d.find_element(By.TAG_NAME, "body").text)
    driver.save_screenshot(str(SHOTS / "killed-drill-next-cleanup.png"))
    print(f"screenshots: {SHOTS / 'killed-drill.png'} {SHOTS / 'killed-drill-next-cleanup.png'}")


@pytest.mark.timeout(1200)   # five answers typed into the form, each a new pause
def test_an_install_on_a_production_spec_is_approved_by_signatures_pasted_in_the_resume_form():
    """Production: the install waits for its four approvers, each answering in the run page's
    resume form with an OpenSSH signature of the message the run shows (ssh-keygen -Y sign).
    A signature made by someone else's key is refused there and the run asks again; nothing is
    created before the last signature."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from pcdb.config import load_environment
    from pcdb.decisions import Request
    from tests.conftest import Signers, production_spec
    from tests.service.conftest import wait_until

    folder = new_sandbox_root()
    base_spec = folder / "base.yaml"
    base_spec.write_text(f"extends: {DEPLOYMENTS / 'local.yaml'}\nname: produi\n"
                         f"sandbox:\n  root: {sandbox_root(folder, 'sb-produi')}\n"
                         "install:\n  approval:\n    required: true\n    timeout: 10min\n")
    env = load_environment(base_spec)
    approvers = env.approvers()
    signers = Signers([*approvers, *env.team_members(list(env.operations.incident.teams))])
    ui = Service(folder, name="produi", parent=production_spec(base_spec, signers), auth_file=folder / "orchestrator-auth")
    driver, install = None, None
    try:
        ui.pcdb("server", "up", "--env", str(ui.spec))
        install = subprocess.Popen([sys.executable, "-m", "cli", "install", "--env", str(ui.spec), "--deployed",
                                    "--json"],   # every phase: the approval is read back from the ledger
                                   stdout=(folder / "install.json").open("w"), stderr=(folder / "install.err").open("w"),
                                   env=ui.env(), cwd=folder)
        driver = browser()
        logged_in(driver, ui)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page = ui.url.removesuffix("/api")

        def the_run():
            with ui.api(), get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name("install/install-produi")
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                return next((r for r in runs if r.deployment_id == deployment.id), None)

        run = wait_until(the_run, "the install's run", timeout=120)

        def asking(answered: int):
            def new_request():
                with ui.api():
                    from flows.runbook import pending_request

                    waiting = pending_request(run.id)
                return waiting if waiting and waiting["attempt"] > answered else None
            waiting = wait_until(new_request, "the install's next approval", timeout=240)
            return waiting, Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__})

        waiting, request = asking(0)
        first, other = approvers[0], approvers[1]
        message = request.message(first)
        resume_in_the_ui(driver, page, run.id, first, message, signers.sign(other, message),   # the wrong key
                         "reviewed", "install-approval-wrong-key.png")
        waiting, request = asking(waiting["attempt"])
        assert first in request.owners and len(request.owners) == 4      # refused: nobody has approved yet
        for n, approver in enumerate(approvers):
            assert not sandbox_root(folder, "sb-produi").exists()                     # nothing before the last signature
            assert approver in request.owners and len(request.owners) == 4 - n, request.owners
            message = request.message(approver)
            resume_in_the_ui(driver, page, run.id, approver, message, signers.sign(approver, message),
                             "the plan matches the client's document", f"install-approval-{n + 1}.png")
            if n < len(approvers) - 1:
                waiting, request = asking(waiting["attempt"])
        assert install.wait(timeout=600) == 0, (folder / "install.err").read_text()[-3000:]
        result = json.loads((folder / "install.json").read_text())
        assert result["status"] == "completed"
        approval = result["approval"]
        assert sorted(approval["approved_by"]) == sorted(approvers) and approval["signed"] is True
        assert sandbox_root(folder, "sb-produi").exists()
        driver.get(f"{page}/runs/flow-run/{run.id}")
        wait_for_text(driver, "Completed")
        driver.save_screenshot(str(SHOTS / "install-approved.png"))
        print(f"screenshots: {SHOTS}/install-approval-*.png {SHOTS / 'install-approved.png'}")
    finally:
        if install is not None and install.poll() is None:
            install.kill()
        if driver is not None:
            driver.quit()
        ui.pcdb("server", "down", "--env", str(ui.spec), check=False)
        ui.pcdb("sandbox", "destroy", "--env", str(ui.spec), "--yes", check=False)


def wait_for_text(driver, text: str, timeout: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
