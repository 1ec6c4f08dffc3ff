"""The runbooks against the production spec on Azure: the real SDK clients talk to the in-process
ARM, whose flexible servers are real sandbox servers (tests/azure/sandbox_arm.py). So the install's
failover and PITR checks, the DR drills and the restore test act through Azure's API on real
PostgreSQL, and their database work goes where the FQDN leads."""

from __future__ import annotations

import threading

import pytest
from prefect import flow

import flows.backup_verification
import flows.capacity
import flows.dr_drill
import flows.maintenance
from flows.install import run_install
from pcdb import clock
from pcdb.config import load_environment
from tests.azure.harness import ROLE_SECRETS, azure_on_sandbox, production_spec
from tests.conftest import new_target, next_request, paused_run_id, phase_summaries

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def azure(prefect_harness):
    """The prod spec over a sandbox-backed ARM (tests/azure/harness.py); the sandbox starts empty:
    the install creates its servers through ARM."""
    with azure_on_sandbox(new_target(), flows.dr_drill, flows.backup_verification, flows.capacity,
                          flows.maintenance) as made:
        yield made


def install(azure):
    spec, _, context = azure

    @flow(name="install")
    def install_on_fake_arm() -> dict:
        return run_install(context(load_environment(spec)), list(range(1, 9)))
    return install_on_fake_arm(return_state=True)


@pytest.fixture(scope="module")
def on_azure(azure):
    """The environment installed once through ARM; the drills and verifications run on it."""
    first = install(azure)
    assert first.is_completed(), first.message
    return (*azure, first)


def test_the_whole_install_against_the_prod_spec_then_a_second_run_writes_nothing(on_azure):
    _, arm, _, first = on_azure
    phases = phase_summaries(first.result())
    assert all(phases[n] != "unchanged" for n in (1, 2, 3, 4, 5, 6))
    assert phases[7] == "16/16 checks passed"  # the failover and PITR checks ran through ARM on real servers
    assert "failover planned" in arm.operations_run and "restore phonebill-postgresql-prod-verify-pitr" in arm.operations_run
    server = next(v for k, v in arm.resources.items() if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    assert server["sku"]["name"] == "Standard_D4s_v3" and server["properties"]["highAvailability"]["mode"] == "ZoneRedundant"
    shared_buffers = next(v for k, v in arm.resources.items() if k.endswith("/configurations/shared_buffers"))
    assert shared_buffers["properties"]["value"] == "524288"
    # the two of the document, five more of R-MON-1/4, deadlocks (R-MON-2)
    assert len([k for k in arm.resources if "/metricalerts/" in k]) == 8
    assert [k.rsplit("/", 2)[1:] for k in arm.resources if "/activitylogalerts/" in k or "/scheduledqueryrules/" in k] \
        == [["activitylogalerts", "alert-failover-event"], ["scheduledqueryrules", "alert-slow-queries"]]
    assert not [r for r in arm.requests if "firewallrules" in r[1].lower()]
    report = open(first.result()["report"]).read()
    assert "| HA failover test | R-DR-1 | PASS |" in report
    for secret in [*ROLE_SECRETS.values(), arm.local.admin_password()]:
        assert secret not in report

    writes = len(arm.writes)
    second = install(on_azure[:3])
    assert second.is_completed(), second.message
    assert [phase_summaries(second.result())[n] for n in range(1, 7)] == ["unchanged"] * 6
    # Nothing written to Azure but Phase 7's own failovers and its throw-away restore.
    assert [w for w in arm.writes[writes:] if not w[1].endswith(("/restart", "/phonebill-postgresql-prod-verify-pitr"))] == []


def drill(on_azure, scenario: str, **options) -> dict:
    spec = on_azure[0]
    return flows.dr_drill.dr_drill(scenario, spec_path=str(spec), yes=True, **options)


def test_azure_refuses_an_extension_azure_extensions_does_not_list_and_the_install_lists_its_own(on_azure):
    """Azure's rule, enforced by the in-process ARM's servers: CREATE EXTENSION of anything not in
    azure.extensions is refused. The install passed (Phase 6 made pg_stat_statements, Phase 7's PITR
    check ran amcheck on the restored server) because the plan allow-lists exactly those two."""
    import psycopg

    spec, arm, context, _ = on_azure
    allowed = next(v for k, v in arm.resources.items() if k.endswith("/configurations/azure.extensions"))
    assert allowed["properties"]["value"] == "AMCHECK,PG_STAT_STATEMENTS"
    ctx = context(load_environment(spec))
    with ctx.connect() as conn:
        with pytest.raises(psycopg.errors.RaiseException, match='"pgcrypto" is not allow-listed for "azure.extensions"'):
            conn.execute("CREATE EXTENSION pgcrypto")
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()


def test_zone_drill_on_azure_is_a_forced_restart_with_failover_and_loses_nothing(on_azure):
    arm = on_azure[1]
    before = next(v for k, v in arm.resources.items() if k.endswith("/phonebill-postgresql-prod"))["properties"]
    zone = before["availabilityZone"]
    result = drill(on_azure, "zone", mode="forced")
    assert [b for p, b in arm.bodies if p.endswith("/restart")][-1] == {"restartWithFailover": True,
                                                                      "failoverMode": "ForcedFailover"}
    assert result["rpo_rows_lost"] == 0 and result["rows_acknowledged"] > 50 and result["met"] is True
    assert 0 < result["rto_seconds"] <= result["target_rto_seconds"]
    assert result["topology_restored"] is True
    after = next(v for k, v in arm.resources.items() if k.endswith("/phonebill-postgresql-prod"))["properties"]
    assert after["availabilityZone"] != zone  # the standby's zone is primary now
    assert any(f"zone {after['availabilityZone']} promoted" in a["action"] for a in result["timeline"])


def test_region_drill_on_azure_stops_the_primary_promotes_a_tagged_replica_and_rebuilds_it(on_azure):
    arm = on_azure[1]
    first = len(arm.operations_run)
    result = drill(on_azure, "region")
    assert arm.operations_run[first:] == ["stop region", "promote replica", "start region", "delete replica",
                                          "create replica"]
    promote = next(body for path, body in reversed(arm.bodies) if path.endswith("/phonebill-postgresql-replica")
                   and "replica" in body.get("properties", {}))
    assert promote["properties"]["replica"] == {"promoteMode": "standalone", "promoteOption": "forced"}
    assert "pcdb-drill" in promote["tags"]  # only a server a drill promoted is ever replaced by pcdb
    assert result["met"] is True and result["rto_seconds"] > 0 and result["topology_restored"] is True
    assert any("no geo-redundant backup" in n for n in open(result["report"]).read().splitlines())
    assert [a["action"] for a in result["timeline"] if a["action"].startswith("confirmed: undo")] == [
        "confirmed: undo update the DNS records (network team)",
        "confirmed: undo update the application connection strings (dev team)"]


def test_corruption_drill_on_azure_restores_into_a_new_server_that_is_deleted(on_azure):
    arm = on_azure[1]
    result = drill(on_azure, "corruption")
    assert result["met"] is True and result["rpo_rows_lost"] == 0
    assert {"restore phonebill-postgresql-prod-drill-restore",
            "delete phonebill-postgresql-prod-drill-restore"} <= set(arm.operations_run)
    assert not [k for k in arm.resources if k.endswith("/phonebill-postgresql-prod-drill-restore")]
    assert arm.sb.state.restores == {}


def test_backup_verification_on_azure_restores_the_latest_point_and_proves_it(on_azure):
    spec, arm = on_azure[:2]
    outcome = flows.backup_verification.verify_backups(spec_path=str(spec), restore=True)
    assert outcome["retention_days"] == 35 and outcome["geo_redundant"] is True and outcome["archive_ok"] is True
    assert outcome["latest_backup_age_hours"] < 1
    test = outcome["restore_test"]
    assert test["passed"] and test["amcheck_ok"] and test["server_deleted"], test["detail"]
    assert test["tables_compared"] == 3 and test["mismatches"] == []
    assert "restore phonebill-postgresql-prod-restore-test" in arm.operations_run and arm.sb.state.restores == {}


def test_the_capacity_analysis_on_azure_reads_azure_monitor_and_snapshots_the_real_tables(on_azure):
    """§8.1.2 through the SDK: Azure Monitor's hourly history (a metrics endpoint of the in-process
    ARM) and the SQL snapshot of the service database the install created on real PostgreSQL."""
    from datetime import timedelta

    spec, arm = on_azure[:2]
    now = clock.now().replace(minute=0, second=0, microsecond=0)
    hours = [now - timedelta(hours=h) for h in range(21 * 24, 0, -1)]
    stamp = {t: t.isoformat().replace("+00:00", "Z") for t in hours}
    used = {t: (40 + 2 * (t - hours[0]).total_seconds() / 86400) * 2**30 for t in hours}    # 2 GiB a day
    arm.metrics.update({"storage_used": [(stamp[t], v) for t, v in used.items()],
                        "storage_percent": [(stamp[t], 100 * v / (256 * 2**30)) for t, v in used.items()],
                        "active_connections": [(stamp[t], 30.0) for t in hours]})
    result = flows.capacity.capacity_analysis(spec_path=str(spec))
    s = result["storage"]
    assert result["history_source"].startswith("Azure Monitor") and s["limit_bytes"] == 256 * 2**30
    assert abs(s["growth_bytes_per_day"] / 2**30 - 2) < 0.05
    assert abs(s["days_to_warning"] - (192 - 82) / 2) <= 0.1 * (192 - 82) / 2
    tables = {t["name"] for t in result["tables"]}
    assert {"product_change.pc_product_change_history", "product_change.pc_kos_integration_log"} <= tables


def test_a_restore_azure_fails_is_reported_and_the_half_made_server_deleted(on_azure):
    spec, arm = on_azure[:2]
    arm.fail["/phonebill-postgresql-prod-restore-test"] = ("InternalServerError", "the restore failed")
    try:
        state = flows.backup_verification.verify_backups(spec_path=str(spec), restore=True, return_state=True)
    finally:
        del arm.fail["/phonebill-postgresql-prod-restore-test"]
    assert state.is_failed() and "restore test" in state.message
    assert not [k for k in arm.resources if k.endswith("/phonebill-postgresql-prod-restore-test")]
    assert arm.sb.state.restores == {}


def test_a_drill_killed_halfway_on_azure_is_cleaned_up_by_the_next_one(on_azure):
    from pcdb import drills

    spec, arm, context = on_azure[:3]
    target = context(load_environment(spec)).target
    target.stop_primary_region()                      # a region drill killed after the promotion
    target.promote_replica(drill="killed-run")
    target.start_primary_region()                     # (restore needs the primary; the next drill starts it anyway)
    target.restore_point_in_time(clock.now(), drills.restore_server(target.env))
    target.stop_primary_region()
    result = drill(on_azure, "zone", mode="planned")
    notes = "\n".join(result["notes"])
    assert "cleaned up: deleted throw-away server phonebill-postgresql-prod-drill-restore" in notes
    assert "cleaned up: the primary region was left stopped" in notes and "rebuilt from the primary" in notes
    assert "the application and DNS point at the primary" in notes  # asked before the promoted server went
    assert result["met"] is True and result["topology_restored"] is True
    assert arm.sb.state.restores == {} and not target.replica_diverged()


@pytest.fixture(scope="module")
def production(on_azure):
    """The same servers under a spec marked production: drills need confirm=True and a decision
    signed by an approver (keys made for the test's people)."""
    return production_spec(on_azure[0])


@pytest.mark.parametrize("options, message", [({}, "needs confirm=True"),
                                              ({"confirm": True, "yes": True}, "approvals by flag are for the sandbox")])
def test_a_production_drill_without_confirmation_or_with_flag_approvals_changes_nothing(on_azure, production,
                                                                                        options, message):
    arm = on_azure[1]
    writes = len(arm.writes)
    state = flows.dr_drill.dr_drill("zone", spec_path=str(production[0]), return_state=True, **options)
    assert state.is_failed() and message in state.message
    assert len(arm.writes) == writes


def test_a_production_drill_waits_for_an_approvers_signed_decision(on_azure, production):
    from flows.runbook import answer
    from pcdb.decisions import Request

    arm = on_azure[1]
    spec, signers = production
    writes = len(arm.writes)
    approver = load_environment(spec).approvers()[0]
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("state", flows.dr_drill.dr_drill(
        "zone", spec_path=str(spec), confirm=True, mode="planned", return_state=True)))
    worker.start()
    run_id = paused_run_id()
    assert len(arm.writes) == writes                 # paused before anything changed
    waiting = next_request(run_id)
    request = Request.from_json({k: waiting[k] for k in Request.__dataclass_fields__})
    typed = answer(run_id, waiting, "mallory", request.message("mallory"), "")      # a typed name, no signature
    assert typed["result"] == "refused" and "is not an owner" in typed["detail"]
    assert len(arm.writes) == writes                 # refused: nothing changed, the run waits on
    waiting = next_request(run_id, waiting["attempt"])   # it asks again once it has paused again (polled)
    message = request.message(approver)
    accepted = answer(run_id, waiting, approver, message, signers.sign(approver, message), reason="quarterly drill")
    assert accepted["result"] == "accepted", accepted
    worker.join(timeout=300)
    state = outcome["state"]
    assert state.is_completed(), state.message
    assert state.result()["met"] is True and state.result()["rpo_rows_lost"] == 0


def test_a_team_that_has_not_switched_back_keeps_the_promoted_server_until_the_next_drill_asks(on_azure):
    from pcdb import drills

    spec, arm, context = on_azure[:3]
    ctx = context(load_environment(spec))
    password = ctx.admin_password()

    def confirm(step, what: str) -> None:
        if what.startswith("undo: update the DNS records"):
            raise RuntimeError("network team: the DNS still points at the replica")
    first = len(arm.operations_run)
    result = drills.region_drill(ctx.target, ctx.env, password, lambda facts: None, confirm, drill_id="kept")
    assert result.topology_restored is False            # said at once, not after waiting for it
    assert any("the promoted server was kept" in note for note in result.notes)
    assert "delete replica" not in arm.operations_run[first:] and ctx.target.replica_diverged()
    asked = []
    drills.cleanup(ctx.target, ctx.env, password, lambda step, what: asked.append(step.owner))
    assert asked == ["dev team"] and not ctx.target.replica_diverged()
    assert drills.wait_topology_whole(ctx.target, timeout=120)


def test_a_real_region_failover_on_azure_promotes_the_replica_for_good_and_points_the_record_at_it(on_azure, tmp_path):
    """§12.2.1 on Azure through the sandbox-backed ARM: refused while the primary answers; then the
    primary stops, the replica is promoted with no drill tag (never to be rebuilt by pcdb), the
    application's CNAME names it and the service takes writes through it. Health, the backup
    verification (restore test included), the capacity analysis and the maintenance then run on
    the promoted server. The failback is refused while the region is down; once it is back, the
    failback runs, killed at four points, until the end state is the spec's (failback_on_azure)."""
    from pcdb import failover as real
    from pcdb import health
    from pcdb.errors import TargetError

    spec, arm, context = on_azure[:3]
    record_spec = tmp_path / "prod-record.yaml"
    record_spec.write_text(f"extends: {spec}\ndr:\n  application_record: pcdb-app\n")
    env = load_environment(record_spec)
    ctx = context(env)
    target, password = ctx.target, ctx.admin_password()
    assert target.switch_application("primary").action == "created"
    try:
        with pytest.raises(TargetError, match="the primary region answers"):
            real.region_failover(target, env, password, lambda facts: None, lambda step, owner: None)
        first = len(arm.operations_run)
        target.stop_primary_region()                                   # Korea Central is lost
        facts, owners = [], []
        report = real.region_failover(target, env, password, facts.append, lambda step, what: owners.append(step.owner))
        assert arm.operations_run[first:first + 2] == ["stop region", "promote replica"]
        assert report.application == "replica" and report.met is True and report.recovery_seconds > 0
        assert report.as_dict()["serving"].startswith("production runs on the promoted replica phonebill-postgresql-replica")
        assert facts[0]["primary_region_missing"] == ["phonebill-postgresql-prod (state Stopped)"]
        assert owners == ["dev team", "network team"]
        record = next(v for k, v in arm.resources.items() if k.endswith("/cname/pcdb-app"))
        assert record["properties"]["cnameRecord"]["cname"] == "phonebill-postgresql-replica.postgres.database.azure.com"
        # Every runbook now reads the promoted server (#25): its endpoint, its state, its health.
        replica_name = "phonebill-postgresql-replica"
        assert target.active_server() == replica_name
        assert target.endpoint("primary").conninfo("x") == arm.endpoint(replica_name).conninfo("x")
        state = target.server_state()
        assert state.name == replica_name and [(n.name, n.role) for n in state.nodes] == [
            (replica_name, "primary"), ("phonebill-postgresql-prod", "former primary")]
        assert not state.nodes[1].running
        checked = health.preview(ctx, health.Store(tmp_path / "health.db"))
        assert checked.metrics["up"] == 1 and checked.metrics["writable_primary"] == 1   # its SQL reached the promoted one
        assert checked.serving.startswith(f"production runs on the promoted replica {replica_name} in koreasouth")
        # The failover set the promoted server's retention to the spec's (Azure gives a replica 7
        # days) and Azure backed it up; the nightly verification, restore test included, then
        # passes on it: the restore is of the promoted server, from its own backup and WAL (the
        # restore test's marker, written on the promoted server, is found in the restored copy).
        assert arm.operations_run[first + 2:] == ["back up promoted server"]
        assert server_resource(arm, replica_name)["properties"]["backup"]["backupRetentionDays"] == 35
        assert any(line.endswith("backup phonebill-postgresql-replica: updated") for _, line in report.timeline)
        before = (len(arm.operations_run), len(arm.bodies), len(arm.requests))
        verified = flows.backup_verification.verify_backups(spec_path=str(record_spec), restore=True)
        assert verified["retention_days"] == 35 and verified["latest_backup_age_hours"] < 1
        assert verified["restore_test"]["passed"] and verified["restore_test"]["mismatches"] == [], verified
        assert "restore phonebill-postgresql-prod-restore-test" in arm.operations_run[before[0]:]
        restores = [b for p, b in arm.bodies[before[1]:] if p.endswith("-restore-test")
                    and b.get("properties", {}).get("createMode") == "PointInTimeRestore"]
        assert len(restores) == 1 and restores[0]["properties"]["sourceServerResourceId"].endswith(f"/{replica_name}")
        assert restores[0]["location"] == "koreasouth"          # a restore stays in its source's region
        # The weekly capacity analysis reads the promoted server's Azure Monitor history and its tables.
        capacity = flows.capacity.capacity_analysis(spec_path=str(record_spec))
        metrics = [p for m, p in arm.requests[before[2]:] if p.lower().endswith("/providers/microsoft.insights/metrics")]
        assert metrics and all(f"/flexibleServers/{replica_name}/" in p for p in metrics), metrics
        assert "product_change.pc_product_change_history" in {t["name"] for t in capacity["tables"]}
        # The monthly maintenance plans its work on the promoted server (a dry run: the former
        # primary is stopped, so reaching it would fail every step).
        planned = flows.maintenance.maintenance(spec_path=str(record_spec), dry_run=True,
                                                only=["partitions", "statistics", "accounts"])
        assert planned["problems"] == [] and planned["partitions"], planned
        text = open(verified["report"]).read()
        assert "| geo-redundant backup | R-BAK-1 | PASS | no geo copy, accepted until the failback: Azure sets" in text
        replica = next(v for k, v in arm.resources.items() if k.endswith("/flexibleservers/phonebill-postgresql-replica"))
        assert "pcdb-drill" not in (replica.get("tags") or {}) and not target.replica_diverged()
        with pytest.raises(TargetError, match="still down"):
            real.failback(target, env, password, lambda facts: None, lambda step, owner: None)
        with ctx.connect() as conn:       # the service's writes on the promoted server, to be kept
            conn.execute("CREATE TABLE pcdb_failback_probe AS SELECT g AS id FROM generate_series(1, 500) g")
        target.start_primary_region()                                  # Korea Central is back
        failback_on_azure(ctx, arm, env, password)
    finally:
        arm.sb.start_region()
        arm.sb.rebuild_replica()
        for key in [k for k in arm.resources if k.endswith("/cname/pcdb-app")]:
            del arm.resources[key]


class Killed(BaseException):
    """A kill -9 at a crash point: nothing of the run's own clean-up runs (not an Exception)."""


def failback_on_azure(ctx, arm, env, password):
    """#25 item 2: the failback on Azure through ARM, killed at three steps, each next run going on
    from what exists, until the end state is the spec's; the former primary deleted only after
    its approval (a rejection first changes nothing)."""
    from pcdb import crash, install
    from pcdb import failover as real
    from pcdb.errors import ApprovalError

    target = ctx.target
    server, replica = "phonebill-postgresql-prod", "phonebill-postgresql-replica"
    verify = lambda: install.verification(ctx)          # noqa: E731 - Phase 7, as the flow passes it
    approvals, confirmed = [], []

    def approve(facts):
        approvals.append(facts)

    def confirm(step, what):
        confirmed.append(step.owner)

    def reject(facts):
        raise ApprovalError("rejected by the test")
    first = len(arm.requests)
    with pytest.raises(ApprovalError):
        real.failback(target, env, password, reject, confirm, verify=verify)
    assert not [r for r in arm.requests[first:] if r[0] == "DELETE" or (r[0] == "PUT" and server in r[1])]
    assert target.active_server() == replica and "delete former primary" not in arm.operations_run
    killed_at = []

    def kill_at(point: str):
        def point_reached(name, where=None):
            if f"{name}:{where}" == point:
                killed_at.append(point)
                raise Killed(point)
        return point_reached
    from pcdb.steps import Steps
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        # after step 1's create; step 3's intent recorded, before the switchover; right after the
        # switchover, before the CNAME points back (the write outage has begun); step 6's intent
        # recorded, when the CNAME points back (only the record says a failback is under way)
        for point in ("azure-failback-done:1", "azure-failback:3", "azure-failback-done:3", "azure-failback:6"):
            mp.setattr(crash, "point", kill_at(point))
            runs[point] = Steps()
            with pytest.raises(Killed):
                real.failback(target, env, password, approve, confirm, verify=verify, step=runs[point])
            intent = (server_resource(arm, replica).get("tags") or {}).get("pcdb-failback", "")
            assert intent, f"killed at {point}: the step under way is recorded on {replica}"
    assert killed_at == ["azure-failback-done:1", "azure-failback:3", "azure-failback-done:3", "azure-failback:6"]
    # The run killed right after the switchover never saw the application's path take a write;
    # the next run measured that outage from the switchover's recorded time, right after the
    # CNAME pointed back.
    made = [r.name.split(" (")[0] for r in runs["azure-failback-done:3"].records]
    assert "watch the application's path take a write" not in made
    switched = [r.name.split(" (")[0] for r in runs["azure-failback:6"].records]
    assert "3. promote phonebill-postgresql-prod with Azure's planned switchover" in switched
    assert switched.index("4. point the application's CNAME back") + 1 == switched.index(
        "watch the application's path take a write")
    watched = runs["azure-failback:6"].records[switched.index("watch the application's path take a write")]
    assert watched.outcome == "done"
    steps = Steps()
    report = real.failback(target, env, password, approve, confirm, verify=verify, step=steps)
    assert report.timeline[0][1].startswith("an interrupted failback goes on")
    assert [a["delete"] for a in approvals if "delete" in a] == [server]          # approved once, then deleted
    ops = arm.operations_run
    assert ops.index("delete former primary") < ops.index("create failback replica") < ops.index("switchover")
    # Each step measured (the report's step table); the steps done before the kills are read again
    # and found done ("unchanged"), the rest done now.
    names = [s["name"].split(" (")[0].split(":")[0] for s in steps.as_dicts()]
    assert names == ["delete the former primary phonebill-postgresql-prod", "1. create phonebill-postgresql-prod in "
                     "koreacentral as a read replica of the promoted phonebill-postgresql-replica",
                     "2. wait for phonebill-postgresql-prod to catch up with phonebill-postgresql-replica",
                     "3. promote phonebill-postgresql-prod with Azure's planned switchover",
                     "4. point the application's CNAME back", "5. zone-redundant HA on phonebill-postgresql-prod, "
                     "standby in zone 2", "6. the read replica phonebill-postgresql-replica in koreasouth as the spec says",
                     "7. re-apply what a promotion does not carry over", "8. run Phase 7's checks on the new primary",
                     "the failback's record removed"]
    assert all(s["outcome"] == "done" and s["seconds"] >= 0 for s in steps.as_dicts())
    assert any("Phase 7: HA failover test: passed" in n for n in report.notes)
    # The switch's outage ended (and was measured) in an earlier run: nothing to measure now.
    assert report.application == "primary" and report.recovery_seconds is None
    # The end state is the spec's: the primary in Korea Central with zone-redundant HA (standby in
    # the spec's zone), the replica in Korea South following it, the CNAME back, nothing recorded.
    primary, follower = server_resource(arm, server), server_resource(arm, replica)
    assert primary["location"] == "koreacentral" and primary["properties"]["replicationRole"] == "Primary"
    ha = primary["properties"]["highAvailability"]
    assert (ha["mode"], ha["state"]) == ("ZoneRedundant", "Healthy")
    # the spec's pair of zones (Phase 7's HA failover test swapped which one is primary)
    assert {primary["properties"]["availabilityZone"], ha["standbyAvailabilityZone"]} == {"1", "2"}
    assert primary["properties"]["backup"]["backupRetentionDays"] == 35
    assert follower["location"] == "koreasouth" and follower["properties"]["replica"]["replicationState"] == "Active"
    assert "pcdb-failback" not in (follower.get("tags") or {})
    record = next(v for k, v in arm.resources.items() if k.endswith("/cname/pcdb-app"))
    assert record["properties"]["cnameRecord"]["cname"] == f"{server}.postgres.database.azure.com"
    assert target.active_server() == server and target.serving() is None and target.application_target() == "primary"
    with ctx.connect() as conn:       # the writes taken on the promoted server are on the new primary
        assert conn.execute("SELECT count(*) FROM pcdb_failback_probe").fetchone()[0] == 500
        conn.execute("DROP TABLE pcdb_failback_probe")
    again = real.failback(target, env, password, approve, confirm, verify=verify)
    assert again.changed is False


def server_resource(arm, name: str) -> dict:
    return next(v for k, v in arm.resources.items() if k.endswith(f"/flexibleservers/{name}"))


def test_a_corruption_recovery_on_azure_restores_through_arm_and_puts_back_only_the_damaged_rows(on_azure):
    """§12.2.2 on Azure: the recovery is the port's point-in-time restore (a new server through
    ARM, deleted afterwards) and SQL through the servers' names."""
    from pcdb import recovery

    spec, arm, context = on_azure[:3]
    ctx = context(load_environment(spec))
    with ctx.connect() as conn:
        conn.execute("CREATE TABLE pcdb_recover_probe (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO pcdb_recover_probe SELECT g, 'v' || g FROM generate_series(1, 50) g")
        before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute("DELETE FROM pcdb_recover_probe WHERE id <= 5")
        conn.execute("UPDATE pcdb_recover_probe SET v = 'bad' WHERE id BETWEEN 6 AND 8")
    approvals = []
    try:
        report = recovery.recover(ctx.target, ctx.env, ctx.admin_password(), before, ["pcdb_recover_probe"], None,
                                  approvals.append, spec.parent / "recoveries")
        assert report.put_back == 8 and report.verified and report.met
        assert approvals == [{"put_back": {"pcdb_recover_probe": 8}, "export": report.export}]
        server = "phonebill-postgresql-prod-recover"
        assert {f"restore {server}", f"delete {server}"} <= set(arm.operations_run)
        assert not [k for k in arm.resources if k.endswith(f"/{server}")]
        with ctx.connect() as conn:
            assert conn.execute("SELECT count(*), count(*) FILTER (WHERE v = 'v' || id) "
                                "FROM pcdb_recover_probe").fetchone() == (50, 50)
    finally:
        with ctx.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS pcdb_recover_probe")
