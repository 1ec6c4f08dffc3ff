"""pcdb as a service: a real persistent Prefect server, a real process worker per environment,
every runbook deployed and run through its deployment, the server's automations notifying a
real local HTTP receiver, and every run in the hash-chained ledger on the managed server.

The CLI runs as a separate process, as an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pcdb import clock, ledger
from tests.conftest import Receiver, call_as_nobody, new_sandbox_root, read_as_nobody
from tests.service.conftest import Service, wait_until

pytestmark = pytest.mark.postgres


def save_blocks(service: Service, receiver: Receiver) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    with service.api():
        for channel in ("teams", "email", "sms"):
            CustomWebhookNotificationBlock(
                name=channel, url=f"{receiver.url}?channel={channel}",
                json_data={"channel": channel, "subject": "{{subject}}", "text": "{{body}}"},
            ).save(f"pcdb-svc-{channel}", overwrite=True)


# Short deadlines for the incident test: the P1 timeline of §8.2.2 in seconds.
INCIDENT = """operations:
  incident:
    p1_steps:
      - {key: triage, name: assess and confirm the outage, owner: ops team, within: 3s}
      - {key: call, name: management and developers called, owner: ops team, within: 0s}
      - {key: analysis, name: first analysis of the cause, owner: DBA, within: 10min}
      - {key: ha_check, name: automatic HA failover checked, owner: DBA, within: 10min}
      - {key: customer_notice, name: customer notice sent, owner: CS team, within: 6s, after: triage}
      - {key: status_update, name: status update, owner: ops team, every: 1h}
"""
# The connection-failure rule of §6.2.2 holding for 2 s instead of 1 min.
CONNECTION_RULE = """  alert_rules:
    - {name: database-connection-failure, title: database connection failure, duration: 2s, level: critical,
       condition: {metric: connection_failed, operator: ">", value: 0}, channels: [teams, sms]}
"""

CHANNELS = ("notifications:\n  local_sink: false\n  channels:\n    teams: {block: custom-webhook/pcdb-svc-teams}\n"
            "    email: {block: custom-webhook/pcdb-svc-email}\n    sms: {block: custom-webhook/pcdb-svc-sms}\n")


@pytest.fixture(scope="module")
def service():
    """A persistent server (SQLite, the laptop default) with a worker for one environment whose
    notification channels post to a local receiver; installed through its deployment."""
    folder = new_sandbox_root()
    receiver = Receiver()
    svc = Service(folder, extra="  run_limits: {backup-verification: 12s}\n" + CHANNELS + INCIDENT,
                  health="    every: 0s\n" + CONNECTION_RULE)
    first = svc.json("server", "up", "--env", str(svc.spec))
    assert [c["notes"] for c in first if c["action"] == "conflict"][0][0].startswith(
        "no notification block for teams")  # told, not hidden
    save_blocks(svc, receiver)
    svc.pcdb("server", "up", "--env", str(svc.spec))
    installed = svc.pcdb("install", "--env", str(svc.spec), "--deployed", "--json")
    svc.install = json.loads(installed.stdout)
    svc.receiver = receiver
    yield svc
    svc.pcdb("server", "down", "--env", str(svc.spec), check=False)
    svc.pcdb("sandbox", "destroy", "--env", str(svc.spec), "--yes", check=False)


def test_server_up_brings_up_a_worker_and_every_deployment_and_a_second_call_changes_nothing(service):
    again = service.json("server", "up", "--env", str(service.spec))
    assert {c["action"] for c in again} == {"unchanged"}
    status = service.json("server", "status", "--env", str(service.spec))
    assert status["up"] and status["url"] == service.url and status["ui_url"] == service.url.removesuffix("/api")
    assert status["backend"] == "sqlite" and status["version"].startswith("3.")
    assert [p["name"] for p in status["work_pools"]] == ["pcdb-svc"]
    assert [w["status"] for w in status["workers"]] == ["ONLINE"]
    deployments = {d["name"]: d for d in status["deployments"]}
    assert set(deployments) == {"install-svc", "backup-verification-svc", "restore-test-svc", "dr-drill-svc",
                                "maintenance-svc", "health-svc", "daily-checklist-svc", "capacity-svc",
                                "sla-svc", "cost-svc", "incident-svc", "failover-svc", "recover-svc", "upgrade-svc"}
    assert deployments["health-svc"]["schedule"] == "manual"      # monitoring.health.every: 0s in these tests
    assert deployments["install-svc"]["schedule"] == "manual" and deployments["dr-drill-svc"]["next_runs"] == []
    daily = deployments["backup-verification-svc"]["next_runs"][0]
    assert daily.endswith("T04:30:00+09:00")  # 04:30 Asia/Seoul
    weekly = deployments["restore-test-svc"]
    assert weekly["schedule"] == "30 4 * * 0 (Asia/Seoul)"  # local.yaml's restore_test_weekday: sunday
    monthly = [datetime.fromisoformat(t) for t in deployments["maintenance-svc"]["next_runs"]]
    assert all(t.weekday() == 6 and t.day <= 7 and t.strftime("%H:%M%z") == "05:00+0900" for t in monthly)
    assert len({t.month for t in monthly}) == 3                  # once a month: the first Sunday
    capacity = [datetime.fromisoformat(t) for t in deployments["capacity-svc"]["next_runs"]]
    assert capacity and all(t.weekday() == 0 and t.strftime("%H:%M%z") == "08:00+0900" for t in capacity)


def test_server_status_says_plainly_when_production_runs_on_a_promoted_replica(service):
    """#25 item 1: after a real region failover the every-minute health run finds production on the
    promoted replica; `pcdb server status` repeats it from that run's result (JSON and text), and
    says nothing of the kind otherwise."""
    from pcdb import clock, health
    from pcdb.config import load_environment

    assert service.json("server", "status", "--env", str(service.spec))["serving"] == {}
    spec = load_environment(service.spec)
    said = ("production runs on the promoted replica phonebill-postgresql-replica in koreasouth since a real region "
            "failover; phonebill-postgresql-prod (koreacentral) is its former primary")
    path = service.home / "health" / f"{spec.name}.sqlite"     # where the service's own commands keep it
    store = health.Store(path)
    before = store.latest()
    at = clock.now().replace(microsecond=0)
    store.save_latest(at, {**(before[1] if before else {}), "status": "ok", "serving": said})
    store.close()
    try:
        status = service.json("server", "status", "--env", str(service.spec))
        assert status["serving"] == {spec.name: {"text": said, "at": at.isoformat(timespec="seconds")}}
        text = service.pcdb("server", "status", "--env", str(service.spec)).stdout
        assert f"SERVING {spec.name}: production runs on the promoted replica" in " ".join(text.split())
    finally:
        store = health.Store(path)
        if before:
            store.save_latest(*before)
        else:
            store.db.execute("DELETE FROM latest")
        store.close()


def test_the_install_ran_through_its_deployment_and_its_json_is_the_contract(service):
    result = service.install
    assert result["status"] == "completed" and Path(result["report"]).is_file()
    assert [p["number"] for p in result["phases"]] == list(range(1, 9))
    assert set(result["phases"][0]) >= {"number", "name", "state", "changes", "seconds"}
    assert result["phases"][6]["state"] == "passed" and result["checks"] == {"passed": 16, "total": 16}
    assert result["approval"] is None                       # this spec asks for none (prod: {approved_by, signed, at})


def test_a_verification_and_a_forced_zone_drill_run_as_deployments_and_land_in_the_ledger(service):
    from flows import service as svc_api

    with service.api():  # one after the other: the verification's run limit in this spec is 12 s
        drill = svc_api.start_deployment_run("dr-drill", "dr-drill-svc", {"scenario": "zone", "mode": "forced",
                                                                            "yes": True, "wait_seconds": 300})
        finished = svc_api.wait_for_runs([drill], timeout=600)
        verification = svc_api.start_deployment_run("backup-verification", "backup-verification-svc")
        finished |= svc_api.wait_for_runs([verification], timeout=600)
        watch = svc_api.start_deployment_run("health", "health-svc")   # what the scheduler starts every minute
        finished |= svc_api.wait_for_runs([watch], timeout=300)
    assert finished == {verification: ("Completed", None), drill: ("Completed", None),
                        watch: ("Completed", None)}, finished

    history = service.json("history", "--env", str(service.spec))
    rows = {r["run_id"]: r for r in history["runs"]}
    assert rows[verification]["flow"] == "backup-verification" and rows[verification]["state"] == "Completed"
    assert rows[verification]["deployment"] == "backup-verification-svc"
    assert rows[verification]["figures"]["checks"] == {"passed": 6, "total": 6}   # 5 backup checks + the partition guard
    assert watch not in rows                          # monitoring runs a minute: not runbooks of record
    zone = rows[drill]
    assert zone["figures"]["rpo_rows_lost"] == 0 and zone["figures"]["rto_seconds"] > 0
    assert zone["parameters"] == {"env": "svc", "spec_path": str(service.spec), "scenario": "zone", "mode": "forced",
                                  "yes": True, "wait_seconds": 300}
    assert zone["triggered_by"].startswith("claimed: deployment run by")   # a tag proves nobody
    for row in (rows[verification], zone):
        assert ledger.file_sha256(row["report_path"]) == row["report_sha256"]
        archived = Path(row["report_archive"])        # the read-only copy in the backup store
        assert ledger.file_sha256(archived) == row["report_sha256"] and archived.stat().st_mode & 0o777 == 0o400
    beats = deployed_heartbeats(service, drill)
    assert beats and {e.resource.get("pcdb.sender") for e in beats} == {"pcdb"}   # pcdb's own, none of Prefect's
    verified = service.json("history", "verify", "--env", str(service.spec))
    rows_now = len(service.json("history", "--env", str(service.spec), "--since", "1d")["runs"])
    assert verified["ok"] and verified["rows"] == rows_now and verified["first_broken"] is None
    assert verified["anchors"]["anchored"] == rows_now and verified["reports"]["checked"] >= 2   # archives compared


def deployed_heartbeats(service, run_id: str) -> list:
    """The heartbeat events the server stored for a run (stored a moment after they are sent)."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                         resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]))
    deadline = time.monotonic() + 60
    with service.api(), get_client(sync_client=True) as client:
        while True:
            events = client.read_events(wanted, limit=50).events   # the server allows at most 50
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def test_a_run_that_goes_silent_is_marked_crashed_by_the_servers_automation(service):
    """The automation that tells a run whose machine vanished from one still working: after three
    missed pcdb heartbeats (and no final state) the run is Crashed, which pages like any crash."""
    from prefect import get_client

    with service.api(), get_client(sync_client=True) as client:
        found = client.read_automations_by_name("pcdb-svc: run went silent")
    assert len(found) == 1 and found[0].enabled
    trigger, action = found[0].trigger, found[0].actions[0]
    assert trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.heartbeat" in trigger.expect
    assert {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Refused",
            "prefect.flow-run.Paused"} <= trigger.expect          # a run that ended or waits is not silent
    assert trigger.within.total_seconds() == 180 and trigger.for_each == {"prefect.resource.id"}
    assert action.type == "change-flow-run-state" and action.state.value == "CRASHED"


def test_a_failed_run_is_notified_once_by_the_servers_automation(service):
    from flows import service as svc_api

    before = len(service.receiver.received)
    with service.api():
        run = svc_api.start_deployment_run("install", "install-svc", {"phases": [9]})
        assert svc_api.wait_for_runs([run], timeout=300)[run][0] == "Failed"
    alert = service.receiver.wait_for(lambda m: run in m.get("text", "") or "install Failed" in m.get("subject", ""),
                                      timeout=120)
    deadline = time.monotonic() + 60        # the automation's three actions arrive one after the other
    while {m["channel"] for m in service.receiver.received[before:] if "install Failed" in m["subject"]} != \
            {"teams", "email", "sms"} and time.monotonic() < deadline:
        time.sleep(0.1)
    new = service.receiver.received[before:]
    assert {m["channel"] for m in new if "install Failed" in m["subject"]} == {"teams", "email", "sms"}  # critical
    assert not [m for m in new if "FAILED" in m["subject"]]  # the flow's own hook stayed quiet: told once
    assert alert[0]["text"].count("phases must be between 1 and 8") == 1


def test_a_run_past_its_limit_is_cancelled_notified_and_recorded(service):
    from prefect.concurrency.sync import concurrency

    from flows import service as svc_api

    with service.api():
        # Another mutating runbook holds the environment's slot: the verification waits, Running.
        with concurrency("pcdb-svc-mutating", occupy=1, strict=True):
            run = svc_api.start_deployment_run("backup-verification", "backup-verification-svc")
            state, _ = svc_api.wait_for_runs([run], timeout=300)[run]
    assert state == "Cancelled"
    service.receiver.wait_for(lambda m: "backup-verification cancelled after" in m.get("subject", ""), timeout=60)
    history = service.json("history", "--env", str(service.spec), "--flow", "backup-verification")
    assert [r["state"] for r in history["runs"] if r["run_id"] == run] == ["Cancelled"]


def test_the_server_dying_mid_run_fails_the_run_clearly_and_the_next_run_resumes(service):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    # The runs begun since the install was launched, newest first. Not every run: the server's page
    # holds 200 and sorts by a random id, and this module's every-minute health runs alone fill it
    # on a slow machine, so the install's runs could fall off the page.
    launched = clock.wall() - timedelta(seconds=1)     # the server stamps runs with its own clock

    def runs(flows: FlowFilterName):
        begun = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=launched))
        with service.api(), get_client(sync_client=True) as client:
            return client.read_flow_runs(flow_filter=FlowFilter(name=flows), flow_run_filter=begun,
                                         sort=FlowRunSort.START_TIME_DESC)

    cli = subprocess.Popen([sys.executable, "-m", "cli", "install", "--env", str(service.spec)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**service.env(), "PREFECT_CLIENT_MAX_RETRIES": "1"},  # fail fast: a test
                           cwd=service.folder)

    def phases_begun() -> list:
        begun = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=launched))
        with service.api(), get_client(sync_client=True) as client:
            return client.read_task_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["install"])),
                                         flow_run_filter=begun,
                                         task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="Phase ")))

    def between_its_phases() -> bool:
        # A phase has begun and the install is still running. (Phases of an installed sandbox are
        # "unchanged" in a moment: a poll could miss every one of them Running under load.)
        return bool(phases_begun()) and any(r.state_name == "Running" for r in runs(FlowFilterName(any_=["install"])))
    wait_until(between_its_phases, "the install's phases started", timeout=120, interval=0.1)
    os.kill(service.server_pid(), signal.SIGKILL)
    _, stderr = cli.communicate(timeout=600)
    assert cli.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: the Prefect server at") and "stopped answering during the run" in last

    service.pcdb("server", "up", "--env", str(service.spec))
    resumed = service.json("install", "--env", str(service.spec))
    assert resumed["status"] == "completed"
    assert [p["state"] for p in resumed["phases"][:6]] == ["unchanged"] * 6


def test_a_taken_port_and_an_unknown_environment_are_refused_in_one_line_with_nothing_started(service):
    folder = new_sandbox_root()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = Service(folder, name="taken", port=blocker.getsockname()[1])
        result = taken.pcdb("server", "up", "--env", str(taken.spec), check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") <= 2 and "Traceback" not in result.stderr
    assert f"port {taken.port} on 127.0.0.1 is already taken by pid {os.getpid()}" in " ".join(result.stderr.split())
    assert not (taken.home / "server.json").exists()

    unknown = service.pcdb("server", "up", "--env", "no-such-env", check=False)
    assert unknown.returncode == 1 and "no such environment spec" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_fleet_is_verified_in_parallel_one_worker_per_environment(service):
    second = Service(service.folder, name="svc2", port=service.port, parent=service.spec)
    up = service.json("server", "up", "--env", str(service.spec), "--env", str(second.spec))
    started = {(c["resource"], c["name"]) for c in up if c["action"] != "unchanged"}
    assert ("work_pool", "pcdb-svc2") in started and ("prefect_worker", "pcdb-svc2") in started
    second.pcdb("install", "--env", str(second.spec), "--deployed", "--phases", "1,2,3")  # servers and backups
    fleet = service.json("verify-backups", "--env", str(service.spec), "--env", str(second.spec))
    assert {name: item["state"] for name, item in fleet.items()} == {"svc": "Completed", "svc2": "Completed"}
    from prefect import get_client

    with service.api(), get_client(sync_client=True) as client:
        pools = {name: client.read_flow_run(item["run_id"]).work_pool_name for name, item in fleet.items()}
    assert pools == {"svc": "pcdb-svc", "svc2": "pcdb-svc2"}
    second.pcdb("sandbox", "destroy", "--env", str(second.spec), "--yes")


def test_no_completed_verification_or_health_run_in_time_is_a_critical_alert_the_dead_mans_switch(service):
    """An environment whose worker takes nothing (its pool paused right after `server up`): no backup
    verification within max_age and no health run within dead_man_after each fire their automation,
    on the critical routing, while the other environment's stay quiet."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    quiet = Service(service.folder, name="svc3", port=service.port, parent=service.spec,
                    extra="backup:\n  verification:\n    max_age: 15s\n",
                    health="    every: 1min\n    dead_man_after: 15s\n")
    quiet.pcdb("server", "up", "--env", str(quiet.spec))
    with quiet.api(), get_client(sync_client=True) as client:
        client.update_work_pool("pcdb-svc3", WorkPoolUpdate(is_paused=True))   # scheduled health runs stay queued
    alerts = service.receiver.wait_for(lambda m: m.get("subject") == "pcdb svc3: backups NOT verified", timeout=180)
    assert {m["channel"] for m in alerts} <= {"teams", "email", "sms"} and "pcdb-svc3" in alerts[0]["text"]
    silent = service.receiver.wait_for(lambda m: m.get("subject") == "pcdb svc3: NO health report", timeout=180)
    assert "nothing is watching the database" in silent[0]["text"] and "pcdb-svc3" in silent[0]["text"]
    assert not [m for m in service.receiver.received if m.get("subject") in ("pcdb svc: backups NOT verified",
                                                                              "pcdb svc: NO health report")]


def test_pcdb_health_answers_from_the_scheduled_runs_latest_result_and_runs_only_when_asked(service):
    """With the every-minute deployment on, `pcdb health` reads its latest result from the health
    store (no flow run, about half a second as a process: ./dev bench cli); --now runs one."""
    ran = service.json("health", "--env", str(service.spec), check=False)      # this spec: no schedule
    assert ran["source"]["kind"] == "run"
    scheduled = service.folder / "scheduled.yaml"                              # the same environment, scheduled
    scheduled.write_text(f"extends: {service.spec}\nmonitoring:\n  health:\n    every: 1min\n")
    answered = service.json("health", "--env", str(scheduled), check=False)
    assert answered["source"]["kind"] == "scheduled" and "--now" in answered["source"]["text"]
    assert (answered["checked_at"], answered["status"], answered["alerts"]) == \
        (ran["checked_at"], ran["status"], ran["alerts"])
    again = service.json("health", "--env", str(scheduled), "--now", check=False)
    assert again["source"]["kind"] == "run" and again["checked_at"] >= ran["checked_at"]


def test_pcdb_ui_prints_the_address_of_the_running_server_or_starts_it(service):
    running = service.pcdb("ui", "--env", str(service.spec)).stdout
    assert f"Prefect UI: {service.url.removesuffix('/api')}" in running and "already running" in running
    fresh = Service(new_sandbox_root(), name="uionly")
    try:
        started = fresh.pcdb("ui", "--env", str(fresh.spec)).stdout
        assert "started" in started
        import urllib.request

        with urllib.request.urlopen(f"{fresh.url}/health", timeout=10) as reply:
            assert reply.status == 200
        with urllib.request.urlopen(fresh.url.removesuffix("/api"), timeout=10) as page:
            assert b"<html" in page.read().lower()              # the UI itself is served
    finally:
        fresh.pcdb("server", "down", "--env", str(fresh.spec), check=False)


def test_a_run_started_from_the_cli_is_under_the_same_automations(service):
    from flows.exclusion import mutating_slot

    before = len(service.receiver.received)
    with service.api(), mutating_slot("svc", "region drill"):     # refused: expected, a Refused run, no page
        refused = service.pcdb("drill", "zone", "--env", str(service.spec), "--yes", check=False)
    assert refused.returncode == 1 and "holds svc: region drill run" in " ".join(refused.stderr.split())
    failed = service.pcdb("recover", "--env", str(service.spec), "--to", "2001-01-01T00:00:00Z", "--yes", check=False)
    assert failed.returncode == 1 and "retention" in failed.stderr  # a run that fails: before the retention

    def told() -> set[str] | None:      # the automation's three notices come one by one
        channels = {m["channel"] for m in service.receiver.received[before:] if m.get("subject") == "pcdb svc: recover Failed"}
        return channels if channels == {"teams", "email", "sms"} else None
    wait_until(told, "the failed recover's notice on every channel", timeout=120)
    new = service.receiver.received[before:]
    assert not [m for m in new if "FAILED" in m.get("subject", "")]  # the hook stayed quiet: told once
    assert not [m for m in new if "dr-drill" in m.get("subject", "")]  # the refusal paged nobody


def test_what_a_cli_run_still_had_to_send_when_it_returned_is_on_the_server_after_it_exits(service):
    """The CLI ends without Python's teardown (cli/main.py, ``leave``). What the run had not sent
    yet when it returned, its last log lines and its task runs' final states, still reaches the
    server, and its JSON is whole."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    done = subprocess.run([sys.executable, "-m", "cli", "install", "--env", str(service.spec), "--json"],
                          capture_output=True, text=True, env={**service.env(), "PREFECT_LOGGING_LEVEL": "INFO"},
                          cwd=service.folder, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["status"] == "completed"
    run_id = done.stderr.split("/runs/flow-run/")[-1].split()[0]
    with service.api(), get_client(sync_client=True) as client:
        def last_lines():
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            said = [log.message for log in logs if log.task_run_id is None]
            return said if "Finished in state Completed()" in said else None

        def task_runs_ended():
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            return tasks if len(tasks) >= 27 and all(t.state and t.state.is_completed() for t in tasks) else None
        said = wait_until(last_lines, "the run's last log line on the server", timeout=60)
        tasks = wait_until(task_runs_ended, "the run's task runs completed on the server", timeout=60)
    assert any(line.startswith("install of svc finished") for line in said)
    assert "Hook '_on_completion' finished running successfully" in said
    assert sum(t.name.startswith("Phase ") for t in tasks) == 8


def cancel_run(service: Service, run_id: str) -> str:
    from prefect import get_client
    from prefect.states import Cancelling

    with service.api(), get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Cancelling(), force=True)
        wait_until(lambda: client.read_flow_run(run_id).state.is_final(), "the run cancelled", timeout=60)
    return run_id


def test_a_real_outage_opens_a_p1_that_tells_each_owner_at_its_deadline_and_closes_with_its_times(service):
    """§8.2: the primary region is stopped (no standby to fail over to); the health runbook's
    critical connection-failure alert opens a P1 on the worker by itself. Its deadlines are
    told to their owners when they pass; a step confirmed by someone who is not its owner is
    refused; the closing report's times go to the ledger."""
    spec = str(service.spec)
    subjects = lambda: [m.get("subject", "") for m in service.receiver.received]  # noqa: E731
    service.pcdb("sandbox", "region", "down", "--env", spec)
    try:
        def opened():
            service.pcdb("health", "--env", spec, check=False)          # what the schedule runs every minute
            found = service.json("incident", "status", "--env", spec)
            return found[0] if found else None
        incident = wait_until(opened, "a P1 opened by the health alert", timeout=120, interval=0)
        # Writes are down: the first health run sees no writable primary (critical at once) and opens
        # the P1; the connection-failure alert that fires 2 s later belongs to the same outage.
        assert incident["severity"] == "P1" and incident["opened_by"] == "health alert no-writable-primary"
        assert incident["began"] <= incident["opened_at"]
        iid = incident["id"]
        wait_until(lambda: any(a["rule"] == "database-connection-failure" and a["state"] == "firing"
                               for a in service.json("health", "--env", spec, check=False)["alerts"]),
                   "the connection alert firing", timeout=60, interval=0.5)
        assert [i["id"] for i in service.json("incident", "status", "--env", spec)] == [iid]   # one outage, one P1
        opening = service.receiver.wait_for(lambda m: f"INCIDENT {iid} opened: P1" in m.get("subject", ""))
        assert {m["channel"] for m in opening} == {"teams", "email", "sms"}  # P1: every channel
        assert "call management at once" in opening[0]["text"]

        refused = service.pcdb("incident", "step", "--env", spec, "--id", iid, "-n", "1", "--by", "dba-oncall",
                               check=False)
        assert refused.returncode == 1 and "owned by ops team" in refused.stderr
        service.receiver.wait_for(lambda m: m.get("subject", "").endswith(f"{iid} OVERDUE: step 1"))
        service.pcdb("incident", "ack", "--env", spec, "--id", iid, "--by", "ops-lead")
        for number, by in ((1, "ops-oncall"), (2, "ops-oncall"), (3, "dba-oncall")):
            service.pcdb("incident", "step", "--env", spec, "--id", iid, "-n", str(number), "--by", by)
        cancelled_run = cancel_run(service, incident["run_id"])         # its worker's run is killed halfway
        took_over = service.pcdb("incident", "step", "--env", spec, "--id", iid, "-n", "4", "--by", "dba-lead")
        assert "a new run takes it over" in took_over.stderr              # the record goes on where it stopped
        assert service.json("incident", "status", "--env", spec, "--id", iid)["run_id"] != cancelled_run
        service.receiver.wait_for(lambda m: m.get("subject", "").endswith(f"{iid} OVERDUE: step 5"))  # the notice
        service.pcdb("incident", "step", "--env", spec, "--id", iid, "-n", "5", "--by", "cs-oncall",
                     "--note", "status page")
    finally:
        service.pcdb("sandbox", "region", "up", "--env", spec)
    closed = service.json("incident", "close", "--env", spec, "--id", iid, "--by", "ops-lead", "--note", "region back")
    assert closed["result"] == "applied"
    record = wait_until(lambda: next((r for r in service.json("history", "--env", spec)["runs"]
                                      if r["flow"] == "incident" and r["figures"].get("incident") == iid), None),
                        "the incident in the ledger", timeout=60)
    figures = record["figures"]
    assert record["state"] == "Completed"
    assert figures["detect_seconds"] >= 0 and figures["respond_seconds"] > 0 and figures["responded_in_time"] is True
    assert figures["recover_seconds"] >= figures["notify_seconds"] > figures["detect_seconds"]
    events = [t["event"] for t in figures["timeline"]]
    assert any(e.startswith("overdue: step 1; ops team notified") for e in events)
    assert any("refused: step by dba-oncall" in e for e in events)
    assert len([s for s in subjects() if s.endswith(f"{iid} OVERDUE: step 1")]) == 3  # told once, on each channel
    final = service.json("incident", "status", "--env", spec, "--id", iid)
    assert final["closed_by"] == "ops-lead" and all(s["done_at"] for s in final["steps"][:5])
    assert any(e.startswith("followed again by run") for e in events)
    text = open(record["report_path"]).read()
    assert "time to detect" in text and "time to notify customers" in text

    by_hand = service.json("incident", "open", "--env", spec, "--severity", "P3", "--summary", "slow reports",
                           "--by", "ops-oncall")                        # opened by a person, on the worker
    assert by_hand["severity"] == "P3" and by_hand["opened_by"] == "ops-oncall" and by_hand["steps"] == []
    assert list(by_hand["due"]) == ["ack"]                                # P3: respond within 4 h
    bad = service.pcdb("incident", "open", "--env", spec, "--severity", "P9", "--summary", "x", check=False)
    assert bad.returncode == 1 and "use one of P1, P2, P3, P4" in bad.stderr
    service.pcdb("incident", "close", "--env", spec, "--id", by_hand["id"], "--by", "ops-oncall")
    assert service.json("incident", "status", "--env", spec) == []


def test_nobody_else_on_the_machine_can_read_the_history_reports_incidents_stores_or_archives(service):
    """Prefect's database, reports, incident records, the health store, the report archives and the
    ledger's anchors: 0600/0400 in 0700 folders, so another local user reads none of them."""
    spec = str(service.spec)
    sandbox = Path(json.loads(service.pcdb("sandbox", "status", "--env", spec, "--json", check=False).stdout)["root"])
    service.pcdb("health", "--env", spec, check=False)                 # the health store, whatever ran before
    opened = service.json("incident", "open", "--env", spec, "--severity", "P4", "--summary", "a record to read",
                          "--by", "ops-oncall")
    service.pcdb("incident", "close", "--env", spec, "--id", opened["id"], "--by", "ops-oncall")
    kinds = {"prefect": [service.home / "prefect.db"], "report": [Path(service.install["report"])],
             "incidents": sorted((service.home / "incidents" / "svc").glob("*.json")),
             "health": [service.home / "health" / "svc.sqlite"],
             "archived reports": sorted((sandbox / "backups" / "reports").rglob("*.md")),
             "ledger": sorted((sandbox / "backups" / "evidence" / "ledger").glob("*"))}
    assert all(files and all(f.is_file() for f in files) for files in kinds.values()), kinds
    private = [f for files in kinds.values() for f in files]
    assert set(read_as_nobody(private).values()) == {"PermissionError"}
    status = service.json("server", "status", "--env", str(service.spec))
    assert status["problems"] == []
    loosened = Path(service.install["report"])
    os.chmod(loosened, 0o644)                               # someone loosens a report: status says so
    try:
        again = service.pcdb("server", "status", "--env", str(service.spec), "--json", check=False)
        assert again.returncode == 2 and any(str(loosened) in p for p in json.loads(again.stdout)["problems"])
    finally:
        os.chmod(loosened, 0o600)


def test_another_local_user_can_start_resume_send_or_read_nothing_and_the_credential_can(service):
    """The API asks every request for its credential (Prefect's basic auth), which only pcdb's
    user can read: `nobody` gets 401 for a run, a resume, an input and a secret block."""
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.states import Scheduled

    with service.api():
        Secret(value="s3cret-for-the-test").save("pcdb-svc-probe", overwrite=True)
        with get_client(sync_client=True) as client:
            (health,) = client.read_deployments(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["health-svc"])))
            run = client.read_flow_runs(limit=1)[0]
            block = client.read_block_document_by_name("pcdb-svc-probe", "secret", include_secrets=False)
    api = service.url
    calls = [("POST", f"{api}/deployments/{health.id}/create_flow_run", {}),
             ("POST", f"{api}/flow_runs/{run.id}/resume", {"run_input": {"approve": True}}),
             ("POST", f"{api}/flow_runs/{run.id}/input", {"key": "pcdb-probe", "value": "1"}),
             ("GET", f"{api}/block_documents/{block.id}?include_secrets=true", None),
             ("POST", f"{api}/block_documents/filter", {"include_secrets": True}),
             ("POST", f"{api}/flow_runs/filter", {})]
    assert call_as_nobody(calls) == [401] * len(calls)
    assert read_as_nobody([service.home / "secrets" / "prefect-auth"]) == \
        {str(service.home / "secrets" / "prefect-auth"): "PermissionError"}
    assert call_as_nobody([("GET", f"{api}/health", None)]) == [200]           # liveness needs nothing

    # With the credential: a block reads back, and a run the server schedules runs on the worker.
    with service.api():
        assert Secret.load("pcdb-svc-probe").get() == "s3cret-for-the-test"
        with get_client(sync_client=True) as client:
            scheduled = client.create_flow_run_from_deployment(health.id, state=Scheduled())
        final = wait_until(lambda: (lambda s: s if s.is_final() else None)(_state(scheduled.id)),
                           "the scheduled health run to finish on the worker", timeout=180)
    assert final.is_completed(), final.message


def _state(run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_what_a_stopped_worker_left_is_settled_when_server_up_starts_a_new_one(service):
    """The worker and its runs killed at once (a machine that restarted): the incident's run would
    look Running for good, and an action on the incident would wait two minutes on nobody; a run
    it had taken would stay Pending; the runs the schedule made meanwhile would all start at once.
    `server up`, before its new worker starts, marks the dead run Crashed, cancels the one that
    never started and every missed run but the latest of its deployment, and says so; the
    incident's next action is then taken over by a new run."""
    from uuid import UUID

    from prefect import get_client
    from prefect.states import Paused, Pending, Scheduled, Suspended

    from pcdb.process import alive

    spec = str(service.spec)
    iid = service.json("incident", "open", "--env", spec, "--severity", "P3", "--summary", "the machine restarts",
                       "--by", "ops-oncall")["id"]
    run_id = service.json("incident", "status", "--env", spec, "--id", iid)["run_id"]
    worker = json.loads((service.home / "workers" / "pcdb-svc.json").read_text())["pid"]
    with service.api(), get_client(sync_client=True) as client:
        process = int(wait_until(lambda: client.read_flow_run(UUID(run_id)).infrastructure_pid,
                                 "the incident run's process", timeout=60))
    for pid in (worker, process):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(worker) and not alive(process), "the worker and its run gone", timeout=30)
    with service.api(), get_client(sync_client=True) as client:
        cost = client.read_deployment_by_name("cost/cost-svc")
        now = clock.now()
        missed = [client.create_flow_run_from_deployment(cost.id, state=Scheduled(scheduled_time=now - timedelta(hours=h)))
                  for h in (3, 2, 1)]
        taken = client.create_flow_run_from_deployment(cost.id, state=Pending())
        # Waiting for a decision in its process (an install's approval), which died with it; and one
        # suspended on purpose, out of any process, which a resume schedules again: left alone.
        waiting = client.create_flow_run_from_deployment(cost.id, state=Paused(timeout_seconds=3600))
        client.update_flow_run(waiting.id, infrastructure_pid=str(process))
        suspended = client.create_flow_run_from_deployment(cost.id, state=Suspended(timeout_seconds=3600))
    up = service.json("server", "up", "--env", spec)
    crashed = [c for c in up if c["resource"] == "flow_run"]
    assert sorted((c["name"].split()[-1], c["action"]) for c in crashed) == sorted(
        [(run_id, "crashed"), (str(waiting.id), "crashed")]), crashed
    assert all("ended with the worker of pcdb-svc" in c["notes"][0] for c in crashed)
    [never] = [c for c in up if c["resource"] == "flow_runs"]
    assert (never["name"], never["action"], never["diff"]["never started"]["current"]) == ("cost-svc", "cancelled", 1)
    [late] = [c for c in up if c["resource"] == "missed_runs"]
    assert (late["name"], late["diff"]["runs"]) == ("cost-svc", {"current": 3, "desired": 1})
    with service.api(), get_client(sync_client=True) as client:
        state = lambda run: client.read_flow_run(run).state.name   # noqa: E731
        assert state(UUID(run_id)) == state(waiting.id) == "Crashed" and state(taken.id) == "Cancelled"
        assert state(suspended.id) == "Suspended"
        assert [state(r.id) for r in missed[:2]] == ["Cancelled", "Cancelled"] and state(missed[2].id) != "Cancelled"
    acked = service.pcdb("incident", "ack", "--env", spec, "--id", iid, "--by", "ops-oncall", timeout=120)
    assert "ended (Crashed) with the incident open: a new run takes it over" in " ".join(acked.stderr.split())
    assert service.json("incident", "status", "--env", spec, "--id", iid)["run_id"] != run_id
    service.pcdb("incident", "close", "--env", spec, "--id", iid, "--by", "ops-oncall")


def log_of(home: Path) -> str:
    """The warm process's log, in the HOME it was started with."""
    return next((home / ".cache" / "pcdb" / "warm").glob("*.log")).read_text()


def test_server_up_starts_the_warm_start_an_install_through_it_is_recorded_and_server_down_stops_it(service):
    """P2's path as a DBA meets it (cli/warm.py): `server up` returns with the warm process
    answering; `pcdb install` is forked from it, says what a cold one says and is a run on the
    server; `server down` stops the warm process too. (The other tests here run their commands cold: tests/conftest.py.) The
    module's last test: it leaves the server down, as the module's end would."""
    import shutil
    import tempfile

    from pcdb.process import alive

    home = Path(tempfile.mkdtemp(prefix="pcdb-warm-", dir="/tmp"))     # a unix socket's path is short
    saved = dict(service.extra_env)
    service.extra_env |= {"HOME": str(home), "PCDB_WARM": "1"}
    try:
        up = service.json("server", "up", "--env", str(service.spec))
        assert [(c["resource"], c["action"]) for c in up if c["action"] != "unchanged"] == [("warm_start", "started")]
        # `server up` returns once the warm process answers: the very next command is forked.
        status = service.json("server", "status", "--env", str(service.spec))["warm_start"]
        assert status["ready"], (up, status)
        pid = status["pid"]
        kept = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        assert not {k for k in kept if k.startswith(("PREFECT_API", "PREFECT_SERVER"))}, kept   # no credential
        assert service.auth not in Path(f"/proc/{pid}/environ").read_text()
        result = service.json("install", "--env", str(service.spec))
        assert result["status"] == "completed" and [p["changes"] for p in result["phases"]] == [0] * 8
        assert "not repeated" in Path(result["report"]).read_text()         # Phase 7 read-only, as P2 asks
        assert "runs `install`" in log_of(home)
        history = service.json("history", "--env", str(service.spec), "--flow", "install")
        assert history["runs"][0]["state"] == "Completed" and history["runs"][0]["report_path"] == result["report"]
        # What `./dev up` runs next: a forked command that talks to the server with no flow of its
        # own must read the server's address from its own environment (it once started a
        # temporary server instead, and found no deployment on it).
        deployed = service.json("install", "--env", str(service.spec), "--deployed")
        assert deployed["status"] == "completed" and [p["changes"] for p in deployed["phases"]] == [0] * 8
        assert log_of(home).count("runs `install`") == 2
        down = service.pcdb("server", "down", "--env", str(service.spec))
        assert f"warm start (pid {pid})" in down.stdout
        wait_until(lambda: not alive(pid), "the warm process ends", timeout=60, interval=0.05)
    finally:
        service.extra_env = saved
        shutil.rmtree(home, ignore_errors=True)
