"""Every runbook's policy against the in-memory target (pcdb.targets.memory), seen only through the
roles the runbook declares (``PORT``, a RoleView): what it changes, in which order, what it refuses
before anything changes, and what it concludes from what the platform says. No server: the
whole file runs in about a second. The drills' policy is in test_drill_policy.py; the incident
runbook asks nothing of a target, and its policy is in test_incident.py."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from pcdb import backups, capacity, checklist, clock, cost, failover, health, install, maintenance, recovery, sla, upgrade
from pcdb.billing import DayCost
from pcdb.config import load_environment
from pcdb.context import RunbookContext
from pcdb.errors import PcdbError, TargetError
from pcdb.runbooks import RUNBOOKS
from pcdb.sql import query
from pcdb.targets.base import BackupInfo, MaintenanceWindow, MetricsSample, PlannedMaintenance, RoleView
from pcdb.targets.memory import MemoryPlane, MemoryTarget

ENV = load_environment("local")
NOW = datetime(2026, 3, 18, 10, 30, tzinfo=timezone.utc)     # a fixed moment: nothing here reads the clock

# The policy tests of each runbook of the registry: a runbook added without one fails below.
POLICIES = {
    "install": ["test_install_creates_in_order_changes_only_what_differs_and_plans_without_changing",
                "test_the_install_preflight_reads_only_and_names_each_failing_check_with_what_to_do"],
    "backup-verification": ["test_backup_verification_judges_what_the_platform_says_of_its_backups"],
    "maintenance": ["test_maintenance_never_starts_inside_the_platforms_maintenance"],
    "health": ["test_health_with_the_primary_unreachable_is_critical_at_once_on_the_critical_channels"],
    "daily-checklist": ["test_the_checklist_names_the_node_that_is_down_and_reads_failed_logins_where_it_can"],
    "capacity": ["test_capacity_forecasts_from_the_platforms_history_or_waits_for_enough_of_it"],
    "sla": ["test_sla_counts_the_platforms_down_minutes_exactly_and_alerts_on_the_budget"],
    "cost": ["test_cost_projects_the_month_from_the_bill_and_alerts_on_both_thresholds"],
    "dr-drill": ["tests/unit/test_drill_policy.py"],
    "incident": ["tests/unit/test_incident.py"],
    "failover": ["test_a_zone_failover_is_refused_without_a_running_standby_and_promotes_it_otherwise",
                 "test_a_region_failover_is_refused_while_the_primary_answers_and_done_once",
                 "test_a_failback_is_refused_while_the_region_is_down_then_brings_everything_back",
                 "test_a_failback_resumed_after_a_killed_run_switched_back_measures_the_outage_from_that_switch"],
    "recover": ["test_a_recovery_time_in_the_future_or_before_the_retention_is_refused_before_anything_is_made"],
    "upgrade": ["test_each_upgrade_precheck_fails_on_what_pg_upgrade_or_azure_refuses_and_says_what_to_do",
                "test_production_relies_only_on_a_passing_rehearsal_of_the_same_upgrade_from_the_last_7_days",
                "test_azure_says_which_extensions_its_in_place_upgrade_refuses_and_what_to_do"],
}


def test_every_registered_runbook_has_a_policy_test():
    assert set(POLICIES) == {r.name for r in RUNBOOKS}
    root = Path(__file__).resolve().parents[2]
    for names in POLICIES.values():
        for name in names:
            assert name in globals() or (name.startswith("tests/unit/") and (root / name).is_file()), name


@pytest.fixture(autouse=True)
def fixed_clock():
    with clock.fixed(NOW):
        yield


def context(fake: MemoryTarget, module, env=ENV) -> RunbookContext:
    """A runbook's context whose target answers only the roles ``module`` declares."""
    return RunbookContext(env, RoleView(fake, module.PORT))


class Unreachable(RunbookContext):
    """The primary does not answer: every connection is refused."""

    def connect(self, *args, **kwargs):
        raise psycopg.OperationalError("connection refused")


# -- install ---------------------------------------------------------------------------------

PROVISIONING = [install.resource_group, install.network, install.server, install.database, install.replica,
                install.server_parameters, install.tls, install.access_rules, install.alert_rules]


def test_install_creates_in_order_changes_only_what_differs_and_plans_without_changing():
    fake = MemoryTarget(ENV)
    ctx = context(fake, install)
    planned = ctx.target.plan()
    assert {c.action for c in planned} == {"created", "updated"} and fake.calls == []   # plan before apply
    first = [c for step in PROVISIONING for c in step(ctx)]
    assert sorted(c.resource for c in first if c.changed) == sorted(c.resource for c in planned if c.changed)
    assert fake.calls[:3] == ["created resource_group", "created network", "created server"]
    again = [c for step in PROVISIONING for c in step(ctx)]
    assert [c.action for c in again] == ["unchanged"] * len(again)                      # idempotent
    assert all(not c.changed for c in ctx.target.plan())

    bigger = ENV.model_copy(update={"server": ENV.server.model_copy(update={"sku": "Standard_D8ds_v5"})})
    fake.env = bigger
    changed = [c for step in PROVISIONING for c in step(context(fake, install, bigger)) if c.changed]
    assert [(c.resource, c.diff) for c in changed] == [("server", {"sku": (ENV.server.sku, "Standard_D8ds_v5")})]


def test_the_install_preflight_reads_only_and_names_each_failing_check_with_what_to_do():
    from pcdb.preflight import Check, as_json, refusal

    fake = MemoryTarget(ENV)
    ctx = context(fake, install)
    found = install.preflight(ctx)
    assert [(c.name, c.ok) for c in found] == [("memory", True), ("secrets", True)] and refusal(found) is None
    fake.preflight_checks = [Check("zone-redundant-ha", False, "zone 2 is not offered", "use zone 3"),
                             Check("quota", True, "8 needed, 100 free")]
    found = install.preflight(ctx)
    assert as_json(found)["ok"] is False and [c["fix"] for c in as_json(found)["checks"]] == ["use zone 3", None, None]
    assert refusal(found) == ("the preflight found 1 problem(s) before Phase 1; nothing was changed: "
                              "zone-redundant-ha: zone 2 is not offered; what to do: use zone 3")
    assert fake.calls == []                                             # read only


def test_the_azure_preflight_applies_azures_permission_rule_and_names_quota_families():
    from pcdb.azure.desired import desired_resources
    from pcdb.azure.preflight import allowed, quota_family, required_actions

    contributor = [{"actions": ["*"], "notActions": ["Microsoft.Authorization/*/Write"]},
                   {"actions": ["Microsoft.Authorization/roleAssignments/write"], "notActions": []}]
    assert allowed("Microsoft.DBforPostgreSQL/flexibleServers/restart/action", contributor)
    assert allowed("microsoft.authorization/roleassignments/write", contributor)   # another assignment grants it
    assert not allowed("Microsoft.Authorization/roleDefinitions/write", contributor)
    assert not allowed("Microsoft.Insights/Metrics/Write", contributor, data=True)  # data actions are separate
    reader = [{"actions": ["*/read"], "notActions": []}]
    assert allowed("Microsoft.Network/virtualNetworks/read", reader)
    assert not allowed("Microsoft.Network/virtualNetworks/write", reader)
    assert [quota_family(s) for s in ("Standard_D4s_v3", "Standard_D4ds_v5", "Standard_E8ads_v5", "Standard_B1ms")] == [
        "standardDSv3Family", "standardDDSv5Family", "standardEADSv5Family", "standardBSFamily"]
    prod = load_environment("prod")
    actions, data = required_actions(prod, desired_resources(prod))
    assert {"Microsoft.DBforPostgreSQL/flexibleServers/write", "Microsoft.Network/virtualNetworks/subnets/write",
            "Microsoft.Network/privateDnsZones/virtualNetworkLinks/write", "Microsoft.Consumption/budgets/write",
            "Microsoft.Insights/metricAlerts/write", "Microsoft.DBforPostgreSQL/flexibleServers/configurations/write",
            "Microsoft.Network/virtualNetworks/subnets/join/action",
            "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies/write"} <= set(actions)
    assert data == ["Microsoft.Insights/Metrics/Write",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"]


# -- backup verification ---------------------------------------------------------------------

def test_backup_verification_judges_what_the_platform_says_of_its_backups():
    fake = MemoryTarget(ENV)
    target = RoleView(fake, backups.PORT)
    verdict = {r.name: r.passed for r in backups.daily_checks(target, ENV, NOW)[0]}
    assert verdict["latest backup is fresh"] is False                  # no backup at all

    fake.backups.append(BackupInfo("b1", "automatic", NOW - timedelta(hours=30)))
    results = {r.name: r for r in backups.daily_checks(target, ENV, NOW)[0]}
    assert results["latest backup is fresh"].passed is False and "30.0 h old" in results["latest backup is fresh"].evidence

    fake.backups.append(BackupInfo("b2", "automatic", NOW - timedelta(hours=2)))
    fake.archive_ok = False
    results = {r.name: r.passed for r in backups.daily_checks(target, ENV, NOW)[0]}
    assert results["latest backup is fresh"] and results["WAL archiving current"] is False

    # What only a restore proves (the files) is judged by the last restore test in the ledger.
    fake.archive_ok = True
    stale = {r.name: r for r in backups.daily_checks(target, ENV, NOW, last_restore=NOW - timedelta(days=40))[0]}
    assert stale["backup integrity"].passed is False and "deferred to the restore test" in stale["backup integrity"].evidence
    fresh = {r.name: r.passed for r in backups.daily_checks(target, ENV, NOW, last_restore=NOW - timedelta(days=1))[0]}
    assert all(fresh.values())
    assert fake.calls == []                                             # read only


def test_the_restore_budget_counts_steps_beside_each_other_once():
    """The source's read runs beside the restore: the projection is the test's time end to end,
    not the sum of its steps' (which would count the overlap twice)."""
    test = backups.RestoreTest(bytes=2**30, steps=[
        {"name": "mark the moment on the source", "began": "2026-12-05T04:30:00.000+09:00", "seconds": 0.5},
        {"name": "fingerprint the source at that moment", "began": "2026-12-05T04:30:00.500+09:00", "seconds": 40.0},
        {"name": "restore …", "began": "2026-12-05T04:30:00.500+09:00", "seconds": 60.0},
        {"name": "amcheck every B-tree index", "began": "2026-12-05T04:31:00.500+09:00", "seconds": 20.0},
        {"name": "compare fingerprints, objects and roles", "began": "2026-12-05T04:31:20.500+09:00", "seconds": 39.5}])
    planned = backups.budget(test, ENV, (256 * 2**30, "the capacity analysis of 2026-12-01"))
    assert planned.seconds_per_gb == 120.0 and planned.projected_seconds == 120.0 * 256
    assert planned.window_seconds == 3.5 * 3600 and not planned.fits


# -- maintenance -----------------------------------------------------------------------------

def test_maintenance_never_starts_inside_the_platforms_maintenance():
    fake = MemoryTarget(ENV)
    ctx = context(fake, maintenance)
    maintenance.refuse_inside_maintenance_window(ctx, NOW)            # nothing announced: it starts
    fake.window = MaintenanceWindow(NOW - timedelta(minutes=10), 60, "Wednesday patching")
    with pytest.raises(PcdbError, match="inside its Azure maintenance window .* Wednesday patching"):
        maintenance.refuse_inside_maintenance_window(ctx, NOW)
    maintenance.refuse_inside_maintenance_window(ctx, NOW + timedelta(minutes=51))   # after the window
    fake.announced = [PlannedMaintenance("minor version upgrade", NOW - timedelta(minutes=5), None)]
    with pytest.raises(PcdbError, match=r"planned maintenance is under way on the server \(minor version upgrade"):
        maintenance.refuse_inside_maintenance_window(ctx, NOW + timedelta(hours=2))
    assert fake.calls == []


# -- health ----------------------------------------------------------------------------------

def test_health_with_the_primary_unreachable_is_critical_at_once_on_the_critical_channels(tmp_path):
    fake = MemoryTarget(ENV)
    ctx = Unreachable(ENV, RoleView(fake, health.PORT))
    sent = []
    store = health.Store(tmp_path / "health.sqlite")
    try:
        report = health.run(ctx, store, lambda severity, subject, body, channels: sent.append(
            (severity, subject, tuple(channels))) or {"sent": channels}, now=NOW)
    finally:
        store.close()
    firing = {a["rule"]: a for a in report.alerts if a["state"] == "firing"}
    assert report.status == "critical" and firing["no-writable-primary"]["severity"] == "critical"
    assert "database-connection-failure" not in firing            # it holds for its duration first
    critical = tuple(ENV.notifications.routing["critical"])
    assert ("critical", f"pcdb {ENV.name} FIRING [critical] {firing['no-writable-primary']['title']}", critical) in sent
    assert report.metrics["up"] == 0.0 and fake.calls == []


# -- daily checklist -------------------------------------------------------------------------

def test_the_checklist_names_the_node_that_is_down_and_reads_failed_logins_where_it_can():
    fake = MemoryTarget(ENV)
    target = RoleView(fake, checklist.PORT)
    assert checklist.pair_item(target).passed
    fake.nodes["node2"].running = False
    item = checklist.pair_item(target)
    assert not item.passed and "node2 standby (DOWN)" in item.evidence and "HA Degraded" in item.evidence

    bound = ENV.security.connection_policy.max_failed_attempts
    fake.logins_failed = [NOW - timedelta(hours=1)] * (bound + 1) + [NOW - timedelta(days=2)] * 50
    item = checklist.failed_logins_item(target, ENV, NOW - timedelta(days=1))
    assert not item.passed and item.details["failed"] == bound + 1       # the older ones are not today's
    fake.logins_failed = None                                           # Azure: in Log Analytics
    item = checklist.failed_logins_item(target, ENV, NOW - timedelta(days=1))
    assert item.details["available"] is False and "not read here" in item.evidence


# -- capacity --------------------------------------------------------------------------------

def test_capacity_forecasts_from_the_platforms_history_or_waits_for_enough_of_it(tmp_path):
    fake = MemoryTarget(ENV)
    target = RoleView(fake, capacity.PORT)
    quota = float(ENV.server.storage.size)
    growth = 0.004 * quota                                             # 0.4 % of the quota a day
    start = NOW - timedelta(weeks=8)
    hours = int((NOW - start).total_seconds() // 3600)
    fake.history = {"storage_used": [(start + timedelta(hours=h), 0.2 * quota + growth * h / 24,
                                      0.2 * quota + growth * h / 24) for h in range(hours)]}
    store = capacity.Store(tmp_path / "capacity.sqlite")
    empty_health = health.Store(tmp_path / "health.sqlite")
    try:
        history, source = capacity.load_history(target, empty_health.db, NOW, 8)
        assert source.startswith("Azure Monitor")
        result = capacity.analyse(ENV, history, store, NOW, quota_bytes=quota)
        s = result["storage"]
        used_now = 0.2 * quota + growth * hours / 24
        truth = (s["warning_percent"] / 100 * quota - used_now) / growth
        assert abs(s["days_to_warning"] - truth) <= 1.0, (s["days_to_warning"], truth)
        low, high = s["interval"]                                      # days, to a tenth
        assert low - 0.1 <= truth <= high + 0.1

        fake.history = None                                            # no platform history: the health store
        history, source = capacity.load_history(target, empty_health.db, NOW, 8)
        assert "health runbook" in source
        assert "insufficient_history" in capacity.analyse(ENV, history, store, NOW, quota_bytes=quota)
    finally:
        store.close()
        empty_health.close()


# -- SLA -------------------------------------------------------------------------------------

def test_sla_counts_the_platforms_down_minutes_exactly_and_alerts_on_the_budget():
    fake = MemoryTarget(ENV)
    target = RoleView(fake, sla.PORT)
    start, _end, _name = sla.month_bounds(ENV, "2026-02", NOW)
    minutes = int(timedelta(days=28).total_seconds() // 60)
    down = set(range(1000, 1043))                                      # 43 minutes down in one outage
    fake.availability = [(start + timedelta(minutes=m), 0.0 if m in down else 1.0) for m in range(minutes)]
    result = sla.measure(target, ENV, "2026-02", NOW)
    assert result["minutes_down"] == 43 and result["minutes_unobserved"] == 0
    assert result["availability_percent"] == pytest.approx(100 * (minutes - 43) / minutes, abs=1e-4)
    assert [o["minutes"] for o in result["outages"]] == [43]
    # 99.9 % of 28 days allows 40.3 min: spent; 99.95 % allows 20.2: spent too
    assert all(not t["met"] for t in result["targets"].values()) and len(result["alerts"]) == 2


# -- cost ------------------------------------------------------------------------------------

def test_cost_projects_the_month_from_the_bill_and_alerts_on_both_thresholds():
    fake = MemoryTarget(ENV)
    today = date(2026, 3, 11)                                          # 10 whole days of March
    cfg = ENV.operations.cost
    per_day_before = cfg.alert_monthly_usd / 31 * 0.7                  # February well under the alert
    per_day_now = cfg.alert_monthly_usd / 31 * 1.1                     # March over it, and > 27 % more
    fake.costs = [DayCost(date(2026, 2, 1) + timedelta(days=d), "server", "compute", per_day_before) for d in range(28)]
    fake.costs += [DayCost(date(2026, 3, 1) + timedelta(days=d), "server", "compute", per_day_now) for d in range(11)]
    result = cost.review(ENV, cost.month_costs(RoleView(fake, cost.PORT), today), today)
    assert result["days_elapsed"] == 10                                # today's cost is not complete yet
    assert result["projected_usd"] == pytest.approx(per_day_now * 31, rel=1e-6)
    threshold, rise = result["alerts"]
    assert "alert threshold" in threshold and "more than last month" in rise

    fake.costs = [c for c in fake.costs if c.day.month == 2] + [
        DayCost(date(2026, 3, 1) + timedelta(days=d), "server", "compute", per_day_before) for d in range(11)]
    assert cost.review(ENV, cost.month_costs(RoleView(fake, cost.PORT), today), today)["alerts"] == []


# -- failover and failback -------------------------------------------------------------------

def decide(facts: dict) -> None:
    decide.seen = facts


def confirmed(step, what: str) -> None:
    confirmed.asked.append((what, step.owner))


confirmed.asked = []


def test_a_zone_failover_is_refused_without_a_running_standby_and_promotes_it_otherwise():
    fake = MemoryTarget(ENV)
    target, plane = RoleView(fake, failover.PORT), MemoryPlane(fake)
    fake.nodes["node2"].running = False
    with pytest.raises(TargetError, match="HA standby .* is not running"):
        failover.zone_failover(target, ENV, "pw", decide, plane=plane)
    assert fake.calls == []                                            # refused before the decision
    fake.nodes["node2"].running = True
    report = failover.zone_failover(target, ENV, "pw", decide, plane=plane)
    assert fake.calls == ["failover forced"] and fake.nodes["node2"].role == "primary"
    assert report.recovery_seconds is not None and report.met


def test_a_region_failover_is_refused_while_the_primary_answers_and_done_once():
    fake = MemoryTarget(ENV)
    target, plane = RoleView(fake, failover.PORT), MemoryPlane(fake)
    with pytest.raises(TargetError, match="the primary region answers"):
        failover.region_failover(target, ENV, "pw", decide, confirmed, plane=plane)
    assert fake.calls == []
    fake.stop_primary_region()
    fake.calls.clear()
    report = failover.region_failover(target, ENV, "pw", decide, confirmed, plane=plane)
    # the promoted replica's first backup, as Azure takes it (its retention as the spec's on Azure)
    assert fake.calls == ["promote_replica None", "switch_application replica", "take_backup"]
    assert decide.seen["primary_region_missing"] == ["node1", "node2"] and report.met
    assert [owner for _, owner in confirmed.asked[-2:]] == [ENV.dr.step("switch_application").owner,
                                                           ENV.dr.step("switch_dns").owner]
    again = failover.region_failover(target, ENV, "pw", decide, confirmed, plane=plane)
    assert again.changed is False and fake.calls == ["promote_replica None", "switch_application replica",
                                                     "take_backup"]
    # killed after the switch, before the backups step: the next run finishes it, and only it
    fake.promoted_backup = None
    finished = failover.region_failover(target, ENV, "pw", decide, confirmed, plane=plane)
    assert fake.calls[-1] == "take_backup" and fake.calls.count("promote_replica None") == 1
    assert finished.changed is False and "finished the last step (backup replica: created)" in finished.notes[0]


def test_a_failback_is_refused_while_the_region_is_down_then_brings_everything_back():
    fake = MemoryTarget(ENV)
    target, plane = RoleView(fake, failover.PORT), MemoryPlane(fake)
    assert failover.failback(target, ENV, "pw", decide, confirmed, plane=plane).changed is False   # nothing to do
    fake.stop_primary_region()
    failover.region_failover(target, ENV, "pw", decide, confirmed, plane=plane)
    with pytest.raises(TargetError, match="still down: node1, node2 do not answer"):
        failover.failback(target, ENV, "pw", decide, confirmed, plane=plane)
    fake.start_primary_region()
    fake.calls.clear()
    report = failover.failback(target, ENV, "pw", decide, confirmed, plane=plane)
    assert fake.calls == ["reverse_replication", "switch_back", "rebuild_replica"]
    assert report.application == "primary" and fake.nodes["node1"].role == "primary"
    assert fake.nodes["replica"].role == "replica" and report.recovery_seconds is not None


def test_a_failback_resumed_after_a_killed_run_switched_back_measures_the_outage_from_that_switch():
    """The write outage of the switch back began in the run that made it; a run killed before
    the application's path took writes again leaves it to the next, which measures it from the
    switch's recorded time, not from its own start."""
    fake = MemoryTarget(ENV)
    target, plane = RoleView(fake, failover.PORT), MemoryPlane(fake)
    fake.stop_primary_region()
    failover.region_failover(target, ENV, "pw", decide, confirmed, plane=plane)
    fake.start_primary_region()
    with clock.fixed(NOW):
        fake.switch_began = NOW - timedelta(seconds=90)
        report = failover.failback(target, ENV, "pw", decide, confirmed, plane=plane)
    assert report.recovery_seconds >= 90
    assert any("the switch back began in an interrupted run at" in text for _, text in report.timeline)


# -- recovery --------------------------------------------------------------------------------

def test_a_recovery_time_in_the_future_or_before_the_retention_is_refused_before_anything_is_made():
    fake = MemoryTarget(ENV)
    target = RoleView(fake, recovery.PORT)
    with pytest.raises(PcdbError, match="has no backup to restore from"):
        recovery.check_time(target, ENV, NOW - timedelta(hours=1))
    fake.backups = [BackupInfo("b1", "automatic", NOW - ENV.backup.retention - timedelta(days=3)),
                    BackupInfo("b2", "automatic", NOW - timedelta(days=1))]
    with pytest.raises(PcdbError, match="is in the future"):
        recovery.check_time(target, ENV, NOW + timedelta(minutes=1))
    with pytest.raises(PcdbError, match="before the retention: the earliest point"):
        recovery.check_time(target, ENV, NOW - ENV.backup.retention - timedelta(hours=1))
    with pytest.raises(PcdbError, match="has no time zone"):
        recovery.check_time(target, ENV, datetime(2026, 3, 18, 9, 0))
    recovery.check_time(target, ENV, NOW - timedelta(hours=1))          # inside the retention: accepted
    assert fake.calls == [] and fake.servers == {}


# -- upgrade ---------------------------------------------------------------------------------

class Answers:
    """A connection that answers pcdb's named queries (sql/upgrade.sql) with the rows given."""

    def __init__(self, **rows):
        self.rows = {query("upgrade.sql", name): value for name, value in rows.items()}

    def execute(self, text, *args):
        rows = self.rows[text]

        class Cursor:
            def fetchall(self):
                return rows

            def fetchone(self):
                return rows[0]
        return Cursor()


def test_each_upgrade_precheck_fails_on_what_pg_upgrade_or_azure_refuses_and_says_what_to_do():
    fake = MemoryTarget(ENV)
    target = RoleView(fake, upgrade.PORT)
    fake.sample = MetricsSample(NOW, 5, 900, 1000, 90.0, None, None, 0)
    clean = Answers(server_major=[(14,)], installed_extensions=[("plpgsql", "1.0"), ("amcheck", "1.3")],
                    reg_columns=[], prepared_transactions=[], logical_slots=[], databases_size=[(50,)])
    passed = upgrade.prechecks(target, ENV, clean, 15)
    assert [c.name for c in passed if not c.passed] == [] and len(passed) == 7

    fake.missing_extensions = {"15": {"amcheck"}}
    bad = Answers(server_major=[(14,)], installed_extensions=[("plpgsql", "1.0"), ("amcheck", "1.3")],
                  reg_columns=[("product_change.t.fn", "regproc")], prepared_transactions=[("tx1", "app", "db", NOW)],
                  logical_slots=[("cdc", "pgoutput", "db")], databases_size=[(500,)])
    failed = {c.name: c for c in upgrade.prechecks(target, ENV, bad, 15) if not c.passed}
    assert set(failed) == {"extensions exist for the target", "no reg* data types in user tables",
                           "no prepared transactions", "no logical replication slots", "free storage"}
    assert failed["extensions exist for the target"].details["fix"].startswith("amcheck: DROP EXTENSION amcheck")
    assert "product_change.t.fn (regproc)" in failed["no reg* data types in user tables"].evidence
    assert "COMMIT PREPARED or ROLLBACK PREPARED" in failed["no prepared transactions"].details["fix"]
    assert "Azure's upgrade refuses" in failed["no logical replication slots"].details["fix"]
    assert "100 bytes free for 500 bytes" in failed["free storage"].evidence
    assert all(c.details.get("fix") for c in failed.values())

    older = {c.name: c for c in upgrade.prechecks(target, ENV, clean, 14)}
    assert not older["target version"].passed and "not newer than 14" in older["target version"].evidence
    absent = {c.name: c for c in upgrade.prechecks(target, ENV, clean, 17)}
    assert absent["target version"].details["fix"] == "no PostgreSQL 17 in this fake"
    assert fake.calls == []                                              # prechecks change nothing


def test_production_relies_only_on_a_passing_rehearsal_of_the_same_upgrade_from_the_last_7_days():
    def row(run_id, days_ago, environment="prod", **figures):
        figures = {"to": 15, "rehearsal_passed": True, "from_version": "14.23", "to_version": "15.18",
                   "rehearsal_seconds": 9.5, **figures}
        return {"run_id": run_id, "environment": environment, "ended_at": NOW - timedelta(days=days_ago),
                "figures": figures}
    not_this_one = [row("other-env", 1, environment="staging"), row("to-16", 1, to=16),
                    row("from-13", 1, from_version="13.9"), row("failed", 1, rehearsal_passed=False),
                    row("prechecks-failed", 1, rehearsal_passed=None)]
    assert upgrade.recent_rehearsal(not_this_one, "prod", 15, 14, NOW) is None
    found = upgrade.recent_rehearsal([*not_this_one, row("newest", 2), row("older", 3)], "prod", 15, 14, NOW)
    assert found["run_id"] == "newest" and found["from_version"] == "14.23" and found["seconds"] == 9.5
    assert upgrade.recent_rehearsal([row("day-7", 7)], "prod", 15, 14, NOW)["run_id"] == "day-7"
    assert upgrade.recent_rehearsal([row("too-old", 7.01)], "prod", 15, 14, NOW) is None


def test_azure_says_which_extensions_its_in_place_upgrade_refuses_and_what_to_do():
    from pcdb.targets.azure import AzureTarget

    azure = AzureTarget.__new__(AzureTarget)           # the rules read nothing from Azure
    assert azure.extension_problem("pg_stat_statements", "15") is None
    assert azure.extension_problem("plpgsql", "16") is None
    assert "refuses a server that has it: DROP EXTENSION postgres_fdw before" in azure.extension_problem(
        "postgres_fdw", "15")
    assert azure.extension_problem("hll", "16").startswith("not in the spec's azure.extensions allow-list")
    assert "refuses a server that has it" in azure.extension_problem("hll", "17")
    assert "CREATE EXTENSION it after" in azure.extension_problem("pg_repack", "15")
