"""The install runbook end to end on real sandboxes, through a real Prefect API."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Receiver, new_target, paused_run_id, phase_summaries

pytestmark = pytest.mark.integration

APPROVERS = ["김기획", "이개발", "정테스트", "최운영"]


def prefect_database() -> Path:
    """The SQLite file the test harness's Prefect server writes (flow runs, logs, artifacts)."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())
    return Path(url.split("///", 1)[1])


def run_install(target, **kwargs):
    from flows.install import install

    return install(spec_path=str(target.env_path), return_state=True, **kwargs)


@pytest.fixture(scope="module")
def installed(prefect_harness):
    """One full install on a fresh sandbox, shared by the read-only checks below."""
    target = new_target()
    state = run_install(target)
    assert state.is_completed(), state.message
    yield target, state.result()
    target.sandbox.destroy()


def test_a_full_install_passes_every_phase_and_check(installed):
    target, result = installed
    assert set(phase_summaries(result)) == {1, 2, 3, 4, 5, 6, 7, 8}
    assert phase_summaries(result)[7] == "15/15 checks passed"
    report = Path(result["report"]).read_text()
    assert "| HA failover test | R-DR-1 | PASS |" in report
    assert "| point-in-time restore test | R-DR-3 | PASS |" in report
    assert "supported by checks" in report and "needs human review" in report
    assert target.sandbox.status()["restores"] == []          # the PITR test's server is gone


def test_a_second_run_changes_nothing(installed):
    target, _ = installed
    state = run_install(target, phases=[1, 2, 3, 4, 5, 6])
    assert state.is_completed(), state.message
    assert phase_summaries(state.result()) == {n: "unchanged" for n in range(1, 7)}


def test_no_secret_in_the_report_the_prefect_database_or_the_server_logs(installed):
    target, result = installed
    secrets = [p.read_text().strip() for p in target.sandbox.secrets_dir.glob("*.password")]
    assert len(secrets) >= 5  # admin, replication and the three roles
    places = [Path(result["report"]), prefect_database(),
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
    from tests.conftest import make_spec, new_sandbox_root

    folder = new_sandbox_root()
    root = folder / "sb"
    spec = make_spec(folder, "parameters:\n  log_slow_queries: on\n")
    state = install(spec_path=str(spec), return_state=True)
    assert state.is_failed()
    assert "parameters.log_slow_queries" in state.message and "MySQL" in state.message
    assert not root.exists()


def test_a_failure_in_phase_5_is_notified_then_the_fixed_rerun_resumes_at_phase_5(prefect_harness, monkeypatch):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    receiver = Receiver()
    CustomWebhookNotificationBlock(name="teams", url=receiver.url,
                                   json_data={"subject": "{{subject}}", "text": "{{body}}"}).save("pcdb-test-teams", overwrite=True)
    CustomWebhookNotificationBlock(name="broken", url="http://127.0.0.1:9/closed").save("pcdb-test-broken", overwrite=True)
    target = new_target(
        "security:\n  roles:\n    product_change_app: {password: {env: PCDB_TEST_APP_PASSWORD}}\n"
        "notifications:\n  channels:\n    teams: {block: custom-webhook/pcdb-test-teams}\n"
        "    email: {block: custom-webhook/pcdb-test-broken}\n")
    monkeypatch.delenv("PCDB_TEST_APP_PASSWORD", raising=False)

    failed = run_install(target, phases=[1, 2, 3, 4, 5])
    assert failed.is_failed()
    assert "Phase 5 · Security, step 'ensure roles' failed" in failed.message
    assert "PCDB_TEST_APP_PASSWORD is not set" in failed.message and "continues at phase 5" in failed.message
    with psycopg.connect(target.endpoint().conninfo(target.admin, target.admin_password())) as conn:
        roles = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'product_change%'")]
    assert roles == []  # every secret is resolved before any role is touched
    alert = receiver.wait_for(lambda m: "FAILED" in m.get("subject", ""))[0]
    assert "Phase 5" in alert["text"] and "ensure roles" in alert["text"]

    monkeypatch.setenv("PCDB_TEST_APP_PASSWORD", "short")
    weak = run_install(target, phases=[5])
    assert weak.is_failed() and "too weak" in weak.message and "short" not in weak.message.split("weak")[1]

    monkeypatch.setenv("PCDB_TEST_APP_PASSWORD", "Str0ng-Enough-Passw0rd!")
    resumed = run_install(target, phases=[1, 2, 3, 4, 5])
    assert resumed.is_completed(), resumed.message
    phases = phase_summaries(resumed.result())
    assert [phases[n] for n in (1, 2, 3, 4)] == ["unchanged"] * 4 and phases[5] != "unchanged"
    app = target.endpoint().conninfo("product_change_app", "Str0ng-Enough-Passw0rd!")
    psycopg.connect(app).close()
    target.sandbox.destroy()


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_the_approval_gate_holds_the_install_until_a_typed_approval(prefect_harness, decision):
    from prefect.flow_runs import resume_flow_run

    target = new_target("install:\n  approval:\n    required: true\n    timeout: 2min\n")
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("state", run_install(target, phases=[1, 2])))
    worker.start()
    run_id = paused_run_id()
    assert not target.sandbox.root.exists()                   # paused before Phase 1 changed anything
    answer = {"approve": decision == "approve", "approved_by": APPROVERS if decision == "approve" else ["정테스트"],
              "comment": "reviewed the plan"}
    resume_flow_run(run_id, run_input=answer)
    worker.join(timeout=120)
    state = outcome["state"]
    if decision == "approve":
        assert state.is_completed(), state.message
        assert state.result()["approval"]["approved_by"] == APPROVERS
        assert target.sandbox.root.exists()
    else:
        assert state.is_failed() and "rejected" in state.message and "nothing was changed" in state.message
        assert not target.sandbox.root.exists()


def test_a_dry_run_shows_the_plan_and_changes_nothing(prefect_harness):
    target = new_target()
    state = run_install(target, dry_run=True)
    assert state.is_completed(), state.message
    plan = state.result()["plan"]
    assert {(c["resource"], c["action"]) for c in plan} >= {("server", "created"), ("database", "created")}
    assert not target.sandbox.root.exists()
