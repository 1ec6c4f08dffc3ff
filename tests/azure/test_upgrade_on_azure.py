"""The major version upgrade on Azure (#27), through the sandbox-backed ARM: the prod spec's servers
are a sandbox at production's 14, and Azure's in-place upgrade (a PATCH of the server's version)
runs pg_upgrade on them after Azure's documented precheck. The rehearsal upgrades a
point-in-time restore with the same PATCH; the upgrade records its rollback point on the server,
deletes the read replica Azure refuses, and creates it again after, on whichever version the
server is then."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from prefect import flow

import flows.upgrade
from flows.install import run_install
from pcdb import clock, ledger
from pcdb.config import load_environment
from pcdb.errors import TargetError
from pcdb.probe import ProbeWriter
from pcdb.schema import LEDGER_SCHEMA
from tests.azure.harness import azure_on_sandbox, production_spec
from tests.conftest import new_target, next_request, paused_run_id

pytestmark = pytest.mark.postgres
SERVER, REPLICA = "phonebill-postgresql-prod", "phonebill-postgresql-replica"


@pytest.fixture(scope="module")
def at_14(prefect_harness):
    """Production's servers at PostgreSQL 14 on the sandbox-backed ARM, installed through it
    (Phases 1-6)."""
    with azure_on_sandbox(new_target(extra='server:\n  version: "14"\n'), flows.upgrade) as (spec, arm, context):
        @flow(name="install")
        def install_through_arm() -> dict:
            return run_install(context(load_environment(spec)), [1, 2, 3, 4, 5, 6])
        state = install_through_arm(return_state=True)
        assert state.is_completed(), state.message
        yield spec, arm, context


def server(arm, name: str = SERVER) -> dict:
    return next(v for k, v in arm.resources.items() if k.endswith(f"/flexibleservers/{name}"))


def test_production_refuses_without_a_rehearsal_and_azure_refuses_what_its_precheck_finds(at_14):
    from flows.runbook import answer
    from pcdb.decisions import Request

    spec, arm, context = at_14
    marked, signers = production_spec(spec)
    writes = len(arm.writes)
    refused = flows.upgrade.upgrade_major(15, spec_path=str(marked), rehearse_only=False, return_state=True)
    assert refused.is_failed()
    assert "no passing rehearsal of the upgrade from 14 to 15 on prod in the last 7 days" in refused.message
    assert "--rehearse" in refused.message and len(arm.writes) == writes          # read only so far

    # The override: the plan to sign says that no rehearsal vouches for it; this approver rejects it.
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("state", flows.upgrade.upgrade_major(
        15, spec_path=str(marked), rehearse_only=False, without_rehearsal=True, return_state=True)))
    worker.start()
    run_id = paused_run_id()
    waiting = next_request(run_id)
    assert waiting["plan"]["rehearsal"] == "NONE in the last 7 days: upgraded without a rehearsal"
    assert "**No rehearsal vouches for it**" in waiting["shown"]
    approver = load_environment(marked).approvers()[0]
    message = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__}).message(approver, "reject")
    answer(run_id, waiting, approver, message, signers.sign(approver, message), decision="reject",
           reason="rehearse first")
    worker.join(timeout=120)
    assert outcome["state"].is_failed() and "rejected by" in outcome["state"].message
    assert len(arm.writes) == writes

    # Not production: the run rehearses first (a point-in-time restore, upgraded by Azure's own
    # PATCH), then upgrades. Meanwhile, between its prechecks and the version's PATCH, a deployment
    # tool puts an event trigger on the primary: Azure's precheck refuses the upgrade.
    ctx = context(load_environment(spec))

    def event_trigger_meanwhile() -> None:
        with ctx.connect() as conn:
            conn.execute("CREATE FUNCTION ddl_audit() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$")
            conn.execute("CREATE EVENT TRIGGER ddl_audit ON ddl_command_end EXECUTE FUNCTION ddl_audit()")
    arm.meanwhile[("DELETE", f"/{REPLICA}")] = event_trigger_meanwhile
    first = len(arm.operations_run)
    try:
        state = flows.upgrade.upgrade_major(15, spec_path=str(spec), rehearse_only=False, return_state=True)
    finally:
        arm.meanwhile.clear()
        with ctx.connect() as conn:
            conn.execute("DROP EVENT TRIGGER IF EXISTS ddl_audit")
            conn.execute("DROP FUNCTION IF EXISTS ddl_audit()")
    assert state.is_failed()
    said = " ".join(state.message.split())
    assert f"Azure refused to upgrade {SERVER} to PostgreSQL 15: InternalServerError: Major version upgrade " \
           "precheck failed" in said and "event trigger ddl_audit" in said
    assert f"Azure's state now: {SERVER} is Ready, PostgreSQL 14; the read replica created again from it" in said
    assert "point-in-time restore to 20" in said and f"--source-server {SERVER}" in said      # the rollback
    ran = arm.operations_run[first:]
    rehearsal = f"{SERVER}-upgrade-rehearsal"
    assert ran[:3] == [f"restore {rehearsal}", f"upgrade {rehearsal} to 15", f"delete {rehearsal}"]
    assert ran[3:] == ["delete replica", "create replica"]              # the version PATCH never started
    assert server(arm)["properties"]["version"] == "14" and "pcdb-upgrade" not in (server(arm).get("tags") or {})
    assert server(arm, REPLICA)["properties"]["replicationRole"] == "AsyncReplica"
    assert {n["version"].split(".")[0] for n in arm.sb.status()["nodes"]} == {"14"}
    report = Path(re.search(r"Report: (\S+\.md)", state.message)[1]).read_text()
    assert "## The upgrade FAILED" in report and "event trigger ddl_audit" in report
    assert f"{SERVER} is Ready, PostgreSQL 14" in report and "--restore-time" in report   # Azure's state, the rollback


def test_on_production_the_upgrade_relies_on_a_recorded_rehearsal_and_a_signed_decision(at_14):
    from flows.runbook import answer
    from pcdb.decisions import Request

    spec, arm, context = at_14
    marked, signers = production_spec(spec)
    rehearsed = flows.upgrade.upgrade_major(15, spec_path=str(marked))       # rehearse_only: no decision asked
    assert rehearsed["rehearsal"]["passed"] and rehearsed["rehearsal"]["to_version"] == "15"
    assert server(arm)["properties"]["version"] == "14"
    ctx = context(load_environment(marked))
    with ctx.connect() as conn:
        rehearsal_run = ledger.rows(conn, LEDGER_SCHEMA, clock.now() - timedelta(hours=1), flow="upgrade")[0]["run_id"]

    application = lambda: ctx.target.endpoint("application").conninfo(ctx.env.server.admin.user,  # noqa: E731
                                                                      ctx.admin_password())
    probe = ProbeWriter(application(), table="azure_upgrade_probe", resolve=application).start()
    probe.wait_for_rows(20)
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("state", flows.upgrade.upgrade_major(
        15, spec_path=str(marked), rehearse_only=False, return_state=True)))
    writes = len(arm.writes)
    worker.start()
    run_id = paused_run_id()
    waiting = next_request(run_id)
    assert len(arm.writes) == writes                               # paused before anything changed
    plan = waiting["plan"]
    assert plan["rehearsal"]["run_id"] == rehearsal_run and plan["from"] == 14 and plan["to"] == 15
    assert any(s.startswith(f"delete the read replica {REPLICA}") for s in plan["steps"])
    approver = load_environment(marked).approvers()[0]
    request = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__})
    message = request.message(approver)
    first = len(arm.operations_run)       # before the answer: the run goes on the moment it is accepted
    accepted = answer(run_id, waiting, approver, message, signers.sign(approver, message),
                      reason="PostgreSQL 14 left standard support")
    assert accepted["result"] == "accepted", accepted
    worker.join(timeout=600)
    state = outcome["state"]
    assert state.is_completed(), state.message
    result = state.result()
    done = result["upgrade"]
    assert (done["from"], done["to"]) == ("14", "15") and not done["resumed"]
    assert done["downtime_seconds"] > 0 and done["probe_rows_lost"] == 0 and done["probe_rows_acknowledged"] > 10
    assert "point-in-time restore to " in done["rollback"] and f"{SERVER}-pre15-" in done["rollback"]
    assert done["replica"].startswith("deleted before the upgrade and created again")
    assert [b for p, b in arm.bodies if p.endswith(f"/{SERVER}") and "version" in b.get("properties", {})][-1] == \
        {"properties": {"version": "15"}}                          # the version alone in its PATCH
    ran = arm.operations_run[first:]
    assert ran[:3] == ["delete replica", "upgrade to 15", "create replica"]
    assert "failover planned" in ran and f"restore {SERVER}-verify-pitr" in ran      # Phase 7 on 15
    assert [c["name"] for c in result["checks"] if not c["passed"]] == []
    assert server(arm)["properties"]["version"] == "15" and "pcdb-upgrade" not in (server(arm).get("tags") or {})
    status = arm.sb.status()
    assert status["problems"] == [] and {n["version"].split(".")[0] for n in status["nodes"]} == {"15"}
    assert [n.sync_state for n in ctx.target.server_state().nodes if n.role == "replica"] == ["async"]
    probe.wait_for_rows(20, timeout=60)
    probe.stop()
    assert probe.missing() == [], "acknowledged rows lost across Azure's upgrade"
    probe.drop_table()
    with ctx.connect() as conn:
        row = ledger.row_of_run(conn, LEDGER_SCHEMA, str(run_id))
        assert conn.execute("SELECT to_regclass('pcdb_upgrade_probe')").fetchone()[0] is None   # the run's own, dropped
    figures = row["figures"]
    assert figures["downtime_seconds"] == done["downtime_seconds"] and figures["rehearsal_relied_on"] == rehearsal_run
    assert figures["version_after"] == "15" and figures["checks_failed"] == []
    assert [d["signer"] for d in row["decisions"]] == [approver]
    # The spec still says 14: the plan says it is out of date, and changes nothing.
    conflict = next(c for c in ctx.target.plan() if c.resource == "server")
    assert conflict.action == "conflict" and any('edit server.version to "15"' in n for n in conflict.notes)


def test_arm_refuses_a_version_it_does_not_offer_and_azure_a_server_that_has_a_read_replica(at_14):
    """ARM's own validation, synchronous: a major that is not later than the server's. Then
    Azure's precheck, as Microsoft documents it: a server with a read replica is refused (which is
    why pcdb deletes the replica first and creates it again after)."""
    spec, arm, context = at_14
    target = context(load_environment(spec)).target
    ran, version = len(arm.operations_run), server(arm)["properties"]["version"]
    with pytest.raises(TargetError, match=r"ParameterOutOfRange: The value of the 'Version' should be in: \[") as caught:
        target._update_version(SERVER, "13")
    assert "13" not in str(caught.value).split("should be in:")[1]
    assert len(arm.operations_run) == ran and server(arm)["properties"]["version"] == version
    assert server(arm, REPLICA)["properties"]["replicationRole"] == "AsyncReplica"
    with pytest.raises(TargetError, match=f"Major version upgrade precheck failed for server {SERVER}: read replica "
                                          f"{REPLICA}: delete the read replica"):
        target._update_version(SERVER, "16")
    assert len(arm.operations_run) == ran and server(arm)["properties"]["version"] == version
