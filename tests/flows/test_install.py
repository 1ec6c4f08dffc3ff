"""The install runbook end to end on real sandboxes, through a real Prefect API."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from pcdb import clock
from tests.conftest import (
    Receiver,
    Signers,
    installed_target,
    new_target,
    next_request,
    paused_run_id,
    phase_summaries,
    production_spec,
    wait_until,
)

pytestmark = pytest.mark.postgres

APPROVERS = ["김기획", "이개발", "정테스트", "최운영"]


def prefect_database() -> Path:
    """The SQLite file the test harness's Prefect server writes (flow runs, logs, artifacts)."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())
    return Path(url.split("///", 1)[1])


def run_install(target, **kwargs):
    return install(target.env_path, **kwargs)


@contextmanager
def run_logs_at(level: int):
    """The runs' loggers at ``level`` for the block: the suite runs at WARNING (tests/conftest.py),
    which ships none of an install's INFO lines; a DBA's runs ship them all. Prefect's setting too:
    the first import of ``prefect.main`` in the process (``from prefect import flow``, as
    flows/install.py does) configures Prefect's logging again, from that setting."""
    from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

    logger = logging.getLogger("prefect")      # prefect.flow_runs and prefect.task_runs inherit it
    before = logger.level
    try:
        with temporary_settings({PREFECT_LOGGING_LEVEL: logging.getLevelName(level)}):
            logger.setLevel(level)
            yield
    finally:
        logger.setLevel(before)


def shipped_lines(target, contains: str) -> list[str]:
    """The log lines the server holds for the install of ``target`` (polled until one of them
    holds ``contains``: the run's last lines are sent from a thread, in batches)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = [r.id for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["install"])))
                if r.parameters.get("spec_path") == str(target.env_path)]
        assert runs, "the install's run is not on the server"

        def lines():
            said = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs)))]
            return said if any(contains in line for line in said) else None
        return wait_until(lines, f"a line with {contains!r} in the install's run logs", timeout=60)


def install(spec, **kwargs):
    from flows.install import install as flow

    return flow(spec_path=str(spec), return_state=True, **kwargs)


@pytest.fixture(scope="module")
def installed(prefect_harness):
    """One full install on a fresh sandbox, shared by the read-only checks below. Its run logs at
    INFO, as a DBA's runs do, so that the secret scan reads every line a run ships."""
    target = new_target()
    with run_logs_at(logging.INFO):
        state = run_install(target)
    assert state.is_completed(), state.message
    yield target, state.result()
    target.sandbox.destroy()


def test_a_full_install_passes_every_phase_and_check(installed):
    target, result = installed
    assert set(phase_summaries(result)) == {1, 2, 3, 4, 5, 6, 7, 8}
    assert phase_summaries(result)[7] == "16/16 checks passed"
    report = Path(result["report"]).read_text()
    assert "| HA failover test | R-DR-1 | PASS |" in report
    assert "| point-in-time restore test | R-DR-3 | PASS |" in report
    assert "supported by checks" in report and "needs human review" in report
    assert target.sandbox.status()["restores"] == []          # the PITR test's server is gone


def test_each_phase_is_a_task_run_holding_its_steps_and_its_table_and_the_progress_is_full(installed):
    """Each phase is a task run of the install's run ("Phase 3 · PostgreSQL server") whose steps
    are its children; what it changed is a table on it, the handover on Phase 8's; the install's
    run holds the preflight and its progress at 100 %."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    target, result = installed
    run_id = Path(result["report"]).read_text().split("- Prefect flow run: `", 1)[1].split("`", 1)[0]
    with get_client(sync_client=True) as client:
        def recorded():       # task runs reach the server as events, a moment after the flow returns
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            done = sum(t.name.startswith("Phase ") and t.state.is_completed() for t in tasks)
            return tasks if done == 8 and all(t.state.is_completed() for t in tasks) else None
        tasks = wait_until(recorded, "eight completed phase task runs", timeout=60)
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert subflows == []                     # one flow run: the phases are its task runs
    phase_of = {t.id: t.name.split(" ·")[0] for t in tasks if t.name.startswith("Phase ")}
    assert sorted(phase_of.values()) == [f"Phase {n}" for n in range(1, 9)]
    parents = {t.name: {p.id for p in t.task_inputs.get("__parents__", [])} for t in tasks}
    step_phases = {t.name: {phase_of.get(p) for p in parents[t.name]} for t in tasks if t.id not in phase_of}
    assert step_phases["ensure grants"] == {"Phase 5"} and step_phases["run verification checks"] == {"Phase 7"}
    assert step_phases["preflight: what must hold before Phase 1"] == set()     # the flow's own, before Phase 1
    where = {a.key: a for a in artifacts}
    for n in range(1, 8):
        table = where[f"install-phase-{n}"]
        assert phase_of[table.task_run_id] == f"Phase {n}", (n, table.task_run_id)
    assert phase_of[where[f"handover-{target.env.name}"].task_run_id] == "Phase 8"
    progress = where[f"install-progress-{target.env.name}"]
    assert str(progress.flow_run_id) == run_id and float(progress.data) == 100.0
    assert str(where[f"install-preflight-{target.env.name}"].flow_run_id) == run_id


def test_phase_6_names_a_channel_whose_notification_block_is_missing(installed):
    """R-MON-5: every channel of the routing has its Prefect block; one that is gone is a conflict
    saying which block to create and for whom (as is one of another type under the same name), and
    one whose block exists is unchanged."""
    from types import SimpleNamespace

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from flows.install import notification_channels

    target, _ = installed
    CustomWebhookNotificationBlock(name="pcdb test", url="http://127.0.0.1:9/hook").save("pcdb-test-phase-6",
                                                                                         overwrite=True)
    notifications = target.env.notifications
    (there, one), (gone, other), (other_type, third) = list(notifications.channels.items())[:3]
    channels = {there: one.model_copy(update={"block": "custom-webhook/pcdb-test-phase-6"}),
                gone: other.model_copy(update={"block": "custom-webhook/pcdb-no-such-block"}),
                other_type: third.model_copy(update={"block": "email-server-credentials/pcdb-test-phase-6"})}
    spec = target.env.model_copy(update={"notifications": notifications.model_copy(update={"channels": channels})})
    found = {c.name: c for c in notification_channels(SimpleNamespace(env=spec))}
    assert found[there].action == "unchanged" and found[there].notes == ("block custom-webhook/pcdb-test-phase-6",)
    assert found[gone].action == "conflict"
    assert found[other_type].action == "conflict"        # the name exists, as a block of another type
    assert found[gone].notes[0] == (f"block custom-webhook/pcdb-no-such-block is missing; create it in Prefect so "
                                    f"{other.purpose} reach {', '.join(other.audience)}")


def test_the_progress_bar_moves_at_most_once_a_second_and_ends_at_its_last_value(prefect_harness):
    """Artifacts go beside the run (tasks/artifacts.py); a progress bar moved within a second of
    its last move waits for the next move or the run's end, and is never left behind."""
    from unittest import mock

    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks import artifacts as sent

    now = [0.0]
    moves: list[float] = []
    real = sent.update_progress_artifact

    def recorded(artifact_id, percent):
        moves.append(percent)
        return real(artifact_id, percent)

    @flow(name="pcdb-test-progress")
    def moving() -> None:
        with sent.Artifacts(clock=lambda: now[0]) as artifacts:
            bar = artifacts.progress(key="pcdb-test-progress", description="moved by a test")
            for percent, at in ((10, 0.2), (20, 0.4), (30, 1.5), (40, 1.6)):
                now[0] = at
                artifacts.move(bar, percent)

    with mock.patch.object(sent, "update_progress_artifact", recorded):
        moving()
    with get_client(sync_client=True) as client:
        [bar] = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pcdb-test-progress"])))
    assert moves == [30, 40] and float(bar.data) == 40.0


def test_a_second_run_changes_nothing(installed):
    target, _ = installed
    state = run_install(target, phases=[1, 2, 3, 4, 5, 6])
    assert state.is_completed(), state.message
    assert phase_summaries(state.result()) == {n: "unchanged" for n in range(1, 7)}


def test_a_run_from_the_cli_carries_its_environments_tag_and_its_steps_carry_none(installed):
    """The server's automations find a run by its environment's tag. Its steps must not inherit
    it: Prefect asks the server for a concurrency slot per tag of every tagged task run, a round
    trip per step that no pcdb limit needs (flows/runbook.py, ``untagged_steps``)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from typer.testing import CliRunner

    from cli.main import app
    from flows.service import env_tag

    target, _ = installed
    result = CliRunner().invoke(app, ["install", "--env", str(target.env_path), "--phases", "1,2"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["install"])),
                                      sort=FlowRunSort.START_TIME_DESC, limit=1)
        run_id = str(run.id)
        def recorded():       # task runs reach the server as events, a moment after the flow returns
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            return tasks if sum(t.name.startswith("Phase ") and t.state.is_completed() for t in tasks) == 2 else None
        tasks = wait_until(recorded, "the two phases' task runs", timeout=60)
    assert env_tag(target.env) in run.tags
    assert len(tasks) > 2 and {t.name: t.tags for t in tasks if t.tags} == {}


def test_a_no_change_rerun_of_phase_7_fails_nothing_over_and_relies_on_the_last_verification(installed):
    """Phase 7's failover and PITR checks disrupt production (write outages, a new server): a re-run
    on an unchanged configuration relies on the install that passed them, and says so; --reverify
    runs them again."""
    target, _ = installed

    def timeline():
        with psycopg.connect(target.endpoint().conninfo(target.admin, target.admin_password())) as conn:
            return conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
    before, primary = timeline(), target.sandbox.primary().name
    again = run_install(target, phases=[7])
    assert again.is_completed(), again.message
    assert phase_summaries(again.result())[7] == "16/16 checks passed"
    assert timeline() == before and target.sandbox.primary().name == primary    # nothing failed over
    with psycopg.connect(target.endpoint().conninfo(target.admin, target.admin_password())) as conn:
        row = conn.execute("SELECT figures FROM pcdb.run_ledger WHERE flow = 'install' ORDER BY seq DESC LIMIT 1"
                           ).fetchone()[0]
    assert "verified_configuration" not in row and "planned_failovers" not in row   # it verified nothing itself
    from pcdb.context import RunbookContext
    from pcdb.install import verification

    relied = {r.name: r for r in verification(RunbookContext(target.env, target))}
    for name in ("HA failover test", "point-in-time restore test"):
        assert relied[name].passed and relied[name].evidence.startswith("not repeated: passed on")
        assert "`pcdb install --reverify` runs it again" in relied[name].evidence
    assert timeline() == before
    reverified = run_install(target, phases=[7], reverify=True)
    assert reverified.is_completed(), reverified.message
    assert timeline() == before + 2                                             # --reverify: there and back again
    with psycopg.connect(target.endpoint().conninfo(target.admin, target.admin_password())) as conn:
        row = conn.execute("SELECT figures FROM pcdb.run_ledger WHERE flow = 'install' ORDER BY seq DESC LIMIT 1"
                           ).fetchone()[0]
    # the timelines it made on purpose, which the health rule reads so as not to page them
    assert row["planned_failovers"] == {"check": "Phase 7's HA failover test", "timelines": [before + 1, before + 2]}


def test_a_new_server_with_the_same_spec_runs_its_own_failover_and_pitr_checks(installed):
    """Evidence belongs to one server: a new sandbox made from the same spec, whose ledger carries
    the first one's passed install (as a spooled record or a restored ledger would), relies on
    nothing and fails over and restores itself."""
    from pcdb import ledger
    from pcdb.context import RunbookContext
    from pcdb.install import disruptive_checks, last_verification, verified_configuration
    from pcdb.schema import LEDGER_SCHEMA

    first, _ = installed
    with psycopg.connect(first.endpoint().conninfo(first.admin, first.admin_password())) as conn:
        (passed,) = [r for r in ledger.rows(conn, LEDGER_SCHEMA, clock.now() - timedelta(days=1),
                                            flow="install") if r["figures"].get("verified_configuration")][-1:]
    assert passed["figures"]["verified_server"] == first.server_identity()
    second = installed_target()
    ctx = RunbookContext(second.env, second)
    assert verified_configuration(ctx) == passed["figures"]["verified_configuration"]    # the same configuration
    assert second.server_identity()["system_identifier"] != first.server_identity()["system_identifier"]
    with ctx.connect() as conn:
        ledger.append(conn, LEDGER_SCHEMA, ledger.RunRecord(**{k: passed[k] for k in ledger.RunRecord.__dataclass_fields__}))
    assert last_verification(ctx, passed["figures"]["verified_configuration"], second.server_identity()) is None
    def timeline():
        with ctx.connect() as conn:
            return conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
    before = timeline()
    checks = {r.name: r for r in disruptive_checks(ctx)}
    for name in ("HA failover test", "point-in-time restore test"):
        assert checks[name].passed and not checks[name].evidence.startswith("not repeated"), checks[name].evidence
    assert timeline() > before                                  # it failed over (and back) itself
    second.sandbox.destroy()


def test_no_secret_in_the_report_the_prefect_database_or_the_server_logs(installed):
    target, result = installed
    secrets = [p.read_text().strip() for p in target.sandbox.secrets_dir.glob("*.password")]
    assert len(secrets) >= 5  # admin, replication and the three roles
    # The run's INFO lines (the preflight's, each step's, each check's) are on the server, so the
    # scan below reads them too.
    shipped = shipped_lines(target, "16/16 checks passed")
    assert any(line.startswith("preflight secrets: ok") for line in shipped)
    database = prefect_database()
    wal = database.with_name(database.name + "-wal")     # SQLite's write-ahead log: the latest writes
    places = [Path(result["report"]), database, *([wal] if wal.exists() else []),
              *(p for n in target.sandbox.nodes() for p in n.log_dir.glob("*"))]
    for place in places:
        content = place.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"a secret appears in {place}"


def test_roles_can_do_exactly_what_section_4_1_2_grants(installed):
    target, _ = installed
    endpoint = target.endpoint()
    app = endpoint.conninfo("product_change_app", target.sandbox.password("product_change_app"))
    with psycopg.connect(app) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM product_change.pc_product_change_history")


def test_a_bad_spec_is_rejected_before_any_phase(prefect_harness):
    from flows.install import install
    from tests.conftest import make_spec, new_sandbox_root, sandbox_root

    folder = new_sandbox_root()
    root = sandbox_root(folder)
    spec = make_spec(folder, "parameters:\n  log_slow_queries: on\n")
    state = install(spec_path=str(spec), return_state=True)
    assert state.is_failed()
    assert "parameters.log_slow_queries" in state.message and "MySQL" in state.message
    assert not root.exists()


def test_a_missing_or_weak_secret_stops_before_phase_1_and_a_phase_5_failure_is_notified_then_resumed(
        prefect_harness, monkeypatch):
    import os
    import subprocess
    import sys

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL

    import pcdb.install
    from pcdb.errors import TargetError

    receiver = Receiver()
    CustomWebhookNotificationBlock(name="teams", url=receiver.url,
                                   json_data={"subject": "{{subject}}", "text": "{{body}}"}
                                   ).save("pcdb-test-teams", overwrite=True)
    CustomWebhookNotificationBlock(name="broken", url="http://127.0.0.1:9/closed").save("pcdb-test-broken", overwrite=True)
    target = new_target(
        "security:\n  roles:\n    product_change_app: {password: {env: PCDB_TEST_APP_PASSWORD}}\n"
        "    product_change_readonly: {password: {env: PCDB_TEST_RO_PASSWORD}}\n"
        "notifications:\n  local_sink: false\n  channels:\n    teams: {block: custom-webhook/pcdb-test-teams}\n"
        "    email: {block: custom-webhook/pcdb-test-broken}\n")
    monkeypatch.delenv("PCDB_TEST_APP_PASSWORD", raising=False)
    monkeypatch.setenv("PCDB_TEST_RO_PASSWORD", "short")

    # The command as a user types it, so everything Prefect's console handler prints is seen too.
    refused = subprocess.run([sys.executable, "-m", "cli", "install", "--env", str(target.env_path)],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, check=False)
    assert refused.returncode == 1, refused.stderr
    error = refused.stderr.split("error: ", 1)[1]
    assert ("the preflight found 1 problem(s) before Phase 1; nothing was changed: secrets: 2 of 4 secret(s) "
            "missing or too weak") in error
    assert "PCDB_TEST_APP_PASSWORD is not set" in error and "too weak" in error
    assert "short" not in error.split("weak")[1]
    assert "Traceback" not in refused.stdout + refused.stderr, refused.stderr   # a user error: its message only
    assert not target.sandbox.root.exists()                    # before Phase 1: not even the resource group
    alert = receiver.wait_for(lambda m: "FAILED" in m.get("subject", ""))[0]
    assert "before Phase 1" in alert["text"]

    monkeypatch.setenv("PCDB_TEST_APP_PASSWORD", "Str0ng-Enough-Passw0rd!")
    monkeypatch.setenv("PCDB_TEST_RO_PASSWORD", "An0ther-Str0ng-Passw0rd!")
    real_grants = pcdb.install.security.ensure_grants

    def grants_fail_once(*args, **kwargs):
        monkeypatch.setattr(pcdb.install.security, "ensure_grants", real_grants)
        raise TargetError("the grants could not be applied (injected once)")
    monkeypatch.setattr(pcdb.install.security, "ensure_grants", grants_fail_once)
    failed = run_install(target, phases=[1, 2, 3, 4, 5])
    assert failed.is_failed()
    assert "Phase 5 · Security, step 'ensure grants' failed" in failed.message and "continues at phase 5" in failed.message
    assert f"(pcdb install --env {target.env_path})" in failed.message      # the spec file given, not 'local'
    alert = receiver.wait_for(lambda m: "ensure grants" in m.get("text", ""))[0]
    assert "Phase 5" in alert["text"]

    resumed = run_install(target, phases=[1, 2, 3, 4, 5])
    assert resumed.is_completed(), resumed.message
    phases = phase_summaries(resumed.result())
    assert [phases[n] for n in (1, 2, 3, 4)] == ["unchanged"] * 4 and phases[5] != "unchanged"
    app = target.endpoint().conninfo("product_change_app", "Str0ng-Enough-Passw0rd!")
    psycopg.connect(app).close()
    target.sandbox.destroy()


def test_on_production_the_install_waits_for_every_approver_to_sign_the_plan(prefect_harness):
    """§13.2 on a production-mode spec: each of the four approvers signs the plan's SHA-256;
    the install waits until all have, and changes nothing before."""
    from flows.runbook import answer
    from pcdb.decisions import Request

    target = new_target("install:\n  approval:\n    required: true\n    timeout: 2min\n")
    signers = Signers([*target.env.approvers(), *target.env.team_members(list(target.env.operations.incident.teams))])
    spec = production_spec(Path(target.env_path), signers)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("state", install(spec, phases=[1, 2])))
    worker.start()
    run_id = paused_run_id()
    answered = 0
    for n, approver in enumerate(APPROVERS):
        assert not target.sandbox.root.exists()               # nothing before the last signature
        waiting = next_request(run_id, answered)
        answered = waiting["attempt"]
        request = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__})
        assert request.step == "install-approval" and approver in request.owners and len(request.owners) == 4 - n
        message = request.message(approver)
        verdict = answer(run_id, waiting, approver, message, signers.sign(approver, message), reason="reviewed")
        assert verdict["result"] == "accepted", verdict
    worker.join(timeout=120)
    state = outcome["state"]
    assert state.is_completed(), state.message
    approval = state.result()["approval"]
    assert sorted(approval["approved_by"]) == sorted(APPROVERS) and approval["signed"] is True
    assert target.sandbox.root.exists()
    target.sandbox.destroy()


def test_a_rejection_holds_the_install_and_changes_nothing(prefect_harness):
    from flows.runbook import answer
    from pcdb.decisions import Request

    target = new_target("install:\n  approval:\n    required: true\n    timeout: 2min\n")
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("state", run_install(target, phases=[1, 2])))
    worker.start()
    run_id = paused_run_id()
    waiting = next_request(run_id)
    message = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__}).message("정테스트", "reject")
    answer(run_id, waiting, "정테스트", message, "", "reject", "the security policy is not applied")  # the sandbox: unsigned
    worker.join(timeout=120)
    state = outcome["state"]
    assert state.is_failed() and "rejected by 정테스트" in state.message and "nothing was changed" in state.message
    assert not target.sandbox.root.exists()


def test_a_dry_run_shows_the_whole_plan_and_changes_and_notifies_nothing(installed, tmp_path, monkeypatch):
    """On an installed sandbox whose spec has moved on: parameters with their values, access rules,
    secrets, roles and grants are all in the plan; nothing changes and nothing is notified."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from typer.testing import CliRunner

    from cli.main import app

    target, _ = installed
    receiver = Receiver()
    CustomWebhookNotificationBlock(name="teams", url=receiver.url,
                                   json_data={"subject": "{{subject}}", "text": "{{body}}"}).save("pcdb-test-dry", overwrite=True)
    moved = tmp_path / "moved.yaml"
    moved.write_text(f"extends: {target.env_path}\n"
                     "parameters:\n  work_mem: 8MB\n"
                     "network:\n  allowed_subnets:\n    - {name: ops, cidr: 10.9.0.0/24}\n"
                     "security:\n  roles:\n    product_change_readonly:\n      connection_limit: 5\n"
                     "      grants: {database: [CONNECT], schema: [USAGE], all_tables: [], tables: "
                     "{pc_product_change_history: [SELECT]}}\n"
                     "notifications:\n  local_sink: false\n  channels:\n    teams: {block: custom-webhook/pcdb-test-dry}\n"
                     "    email: {block: custom-webhook/pcdb-test-dry}\n    sms: {block: custom-webhook/pcdb-test-dry}\n")
    hba = (target.sandbox.primary().data / "pg_hba.conf").read_text()
    result = CliRunner().invoke(app, ["install", "--env", str(moved), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = {(c["resource"], c["name"]): c for c in __import__("json").loads(result.stdout)["plan"]}
    assert plan[("parameters", target.env.server.name)]["diff"]["work_mem"] == {"current": "4096", "desired": "8192"}
    assert plan[("access_rules", "pg_hba")]["action"] == "updated"
    assert {plan[("secret", r.name)]["action"] for r in target.env.security.roles} == {"unchanged"}
    readonly = plan[("role", "product_change_readonly")]
    assert readonly["action"] == "updated" and readonly["diff"]["connection_limit"] == {"current": 20, "desired": 5}
    grants = plan[("grants", target.env.service.schema_name)]
    assert grants["action"] == "updated" and any("product_change_readonly on table pc_kos_integration_log" in k
                                                 for k in grants["diff"])
    assert not any(c["action"] == "conflict" for c in plan.values())
    from cli import common

    monkeypatch.setattr(common.out, "_width", 400)   # the console is made at import: a wide one, so no cell wraps
    text = CliRunner().invoke(app, ["install", "--env", str(moved), "--dry-run"]).output
    assert "work_mem: 4096 -> 8192" in text and "connection_limit: 20 -> 5" in text
    # nothing changed, nothing notified
    assert (target.sandbox.primary().data / "pg_hba.conf").read_text() == hba
    with psycopg.connect(target.endpoint().conninfo(target.admin, target.admin_password())) as conn:
        assert conn.execute("SHOW work_mem").fetchone()[0] == "4MB"
        assert conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'product_change_readonly'").fetchone() == (20,)
    assert receiver.received == []


def test_a_dry_run_of_a_new_sandbox_creates_nothing(prefect_harness):
    target = new_target()
    state = run_install(target, dry_run=True)
    assert state.is_completed(), state.message
    plan = state.result()["plan"]
    assert {(c["resource"], c["action"]) for c in plan} >= {("server", "created"), ("database", "created"),
                                                            ("role", "created"), ("schema", "created")}
    assert not target.sandbox.root.exists()


def test_an_approval_that_never_comes_is_told_in_words_and_nothing_changes(prefect_harness):
    from typer.testing import CliRunner

    from cli.main import app

    target = new_target("install:\n  approval:\n    required: true\n    timeout: 3s\n")
    result = CliRunner().invoke(app, ["install", "--env", str(target.env_path), "--phases", "1"])
    assert result.exit_code == 1
    assert "no approval came within 3s" in result.output and "nothing was changed" in result.output, result.output
    assert not target.sandbox.root.exists()
