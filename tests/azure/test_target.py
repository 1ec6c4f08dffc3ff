"""AzureTarget through the real SDK clients against the in-process ARM: ensure steps, plan, and the
operations the runbooks use (failover, promote, point-in-time restore, backups, delete)."""

from datetime import datetime, timedelta, timezone

import pytest

from pcdb import clock
from pcdb.config import load_environment
from pcdb.errors import TargetError
from pcdb.targets.factory import make_target
from tests.azure.fake_arm import FakeArm, FakeCredential

PROD = load_environment("prod")
SECRETS = {"azure-subscription": "11111111-2222-3333-4444-555555555555", "dbadmin": "Example-Only-Passw0rd!",
           "teams-webhook": "https://example.webhook.office.com/webhookb2/test-key"}


@pytest.fixture()
def arm():
    return FakeArm()


@pytest.fixture()
def target(arm):
    return make_target(PROD, lambda ref, owner: SECRETS[owner], credential=FakeCredential(), transport=arm,
                       polling_interval=0)


def install_infrastructure(target):
    return [target.ensure_resource_group(), target.ensure_network(), *target.ensure_server(),
            target.ensure_database(), target.ensure_replica(), target.ensure_parameters(),
            target.ensure_access_rules(), target.ensure_monitoring()]


def test_ensure_steps_create_once_and_then_change_nothing(arm, target):
    first = install_infrastructure(target)
    assert all(c.action in ("created", "updated") for c in first if c.resource != "access_rules")
    writes = len(arm.writes)
    second = install_infrastructure(target)
    assert {c.action for c in second} == {"unchanged"} and len(arm.writes) == writes
    assert {c.action for c in target.plan()} == {"unchanged"}


def test_access_rules_on_a_vnet_server_report_the_nsg_and_never_touch_the_firewall(arm, target):
    change = target.ensure_access_rules()
    assert change.action == "unchanged" and "NSG of subnet-database" in change.notes[0]
    assert "10.0.1.0/24 (aks)" in change.notes[0] and "10.0.4.0/24 (management)" in change.notes[0]
    assert not [r for r in arm.requests if "firewallrules" in r[1].lower()]


def test_forced_failover_is_a_restart_with_failover(arm, target):
    install_infrastructure(target)
    target.failover("forced")
    path, body = arm.bodies[-1]
    assert path.endswith("/flexibleServers/phonebill-postgresql-prod/restart")
    assert body == {"restartWithFailover": True, "failoverMode": "ForcedFailover"}


def test_replica_promotion_is_a_standalone_promote_patch(arm, target):
    install_infrastructure(target)
    target.promote_replica()
    path, body = arm.bodies[-1]
    assert path.endswith("/flexibleServers/phonebill-postgresql-replica")
    assert body["properties"]["replica"] == {"promoteMode": "standalone", "promoteOption": "forced"}


def test_the_sla_counts_each_minute_on_the_server_that_was_production_then(arm, target):
    """A read replica answering while its primary is down is not production up. A real
    promotion tags its time on the promoted server (a drill's does not), and so does the
    failback's switchover; the availability of a month that spans both reads the spec's server
    until the promotion, the promoted replica until the switchover, and the spec's server after."""
    from datetime import datetime, timedelta, timezone

    from pcdb import clock, sla

    install_infrastructure(target)
    day = datetime(2026, 11, 10, tzinfo=timezone.utc)
    minute = lambda m: day + timedelta(minutes=m)                       # noqa: E731
    iso = lambda m: minute(m).isoformat().replace("+00:00", "Z")        # noqa: E731
    primary, replica = "phonebill-postgresql-prod", "phonebill-postgresql-replica"
    # The primary dies at minute 60; the replica keeps answering; it is promoted at minute 90;
    # the failback switches production back at minute 240.
    arm.server_metrics[(primary, "is_db_alive")] = [(iso(m), 1.0 if m < 60 or m >= 200 else 0.0) for m in range(300)]
    arm.server_metrics[(replica, "is_db_alive")] = [(iso(m), 1.0) for m in range(300)]
    with clock.fixed(minute(90)):
        target.promote_replica()
    tags = next(v for k, v in arm.resources.items() if k.endswith(f"/flexibleservers/{replica}"))["tags"]
    assert tags == {"pcdb-promoted": "2026-11-10T01:30:00+00:00"}
    assert target.serving_periods(minute(0), minute(300)) == [(primary, minute(0), minute(90)),
                                                             (replica, minute(90), minute(300))]
    server = next(v for k, v in arm.resources.items() if k.endswith(f"/flexibleservers/{primary}"))
    server["tags"] = {"pcdb-promoted": minute(240).isoformat(timespec="seconds")}   # the failback's switchover
    assert target.serving_periods(minute(0), minute(300))[1:] == [(replica, minute(90), minute(240)),
                                                                 (primary, minute(240), minute(300))]
    samples = target.availability_samples(minute(0), minute(300))
    assert [t for t, v in samples if v == 0] == [minute(m) for m in range(60, 90)]    # the outage until the promotion
    assert len(samples) == 300
    result = sla.measure(target, PROD, "2026-11", minute(300))
    assert result["minutes_down"] == 30
    # A drill's promotion is not production's: it is never a period of its own.
    server["tags"], replica_resource = {}, next(v for k, v in arm.resources.items() if k.endswith(f"/flexibleservers/{replica}"))
    replica_resource["tags"] = {"pcdb-drill": "region"}
    assert target.serving_periods(minute(0), minute(300)) == [(primary, minute(0), minute(300))]
    replica_resource["tags"] = {"pcdb-promoted": "last tuesday"}                  # edited by hand
    with pytest.raises(TargetError, match="the tag pcdb-promoted on phonebill-postgresql-replica is not a time"):
        target.serving_periods(minute(0), minute(300))


def test_the_failbacks_last_step_puts_back_the_authentication_and_pgbouncer_as_the_spec_has_them(arm, target):
    """Azure's promotion does not carry authentication or PgBouncer over: step 7 turns Entra ID
    authentication off again (the spec's roles use SCRAM passwords, it names no Entra admin),
    says PgBouncer is off as the spec, and stops on a PgBouncer someone turned on outside it."""
    install_infrastructure(target)
    server = next(v for k, v in arm.resources.items() if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    server["properties"]["authConfig"] = {"activeDirectoryAuth": "Enabled", "passwordAuth": "Enabled"}
    changes = {c.resource: c for c in target._fb_reapply()}
    assert changes["authentication"].action == "updated"
    assert changes["authentication"].diff == {"passwordAuth": ("Enabled", "Enabled"),
                                              "activeDirectoryAuth": ("Enabled", "Disabled")}
    assert server["properties"]["authConfig"] == {"activeDirectoryAuth": "Disabled", "passwordAuth": "Enabled"}
    assert changes["pgbouncer"].notes == ("pgbouncer.enabled=false",)
    writes = len(arm.writes)
    again = {c.resource: c for c in target._fb_reapply()}
    assert again["authentication"].action == "unchanged" and len(arm.writes) == writes
    key = next(k for k in arm.resources if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    arm.resources[f"{key}/configurations/pgbouncer.enabled"] = {
        "id": "c", "name": "pgbouncer.enabled", "properties": {"value": "true", "source": "system-default"}}
    with pytest.raises(TargetError, match="PgBouncer is on on phonebill-postgresql-prod"):
        target._fb_reapply()


def test_point_in_time_restore_creates_a_new_server_that_is_then_deleted(arm, target):
    install_infrastructure(target)
    when = datetime(2026, 11, 26, 1, 0, tzinfo=timezone.utc)
    endpoint = target.restore_point_in_time(when, "phonebill-postgresql-test")
    path, body = arm.bodies[-1]
    assert path.endswith("/flexibleServers/phonebill-postgresql-test")
    assert body["properties"]["createMode"] == "PointInTimeRestore"
    assert body["properties"]["pointInTimeUTC"].startswith("2026-11-26T01:00:00")
    assert body["properties"]["sourceServerResourceId"].endswith("/phonebill-postgresql-prod")
    assert endpoint.host == "phonebill-postgresql-test.postgres.database.azure.com" and endpoint.sslmode == "verify-full"
    assert target.delete_server("phonebill-postgresql-test").action == "deleted"
    assert target.delete_server("phonebill-postgresql-test").action == "unchanged"
    with pytest.raises(TargetError, match="part of the production topology"):
        target.delete_server("phonebill-postgresql-prod")


def test_backups_are_listed_oldest_first(arm, target):
    install_infrastructure(target)
    server = "/subscriptions/11111111-2222-3333-4444-555555555555/resourcegroups/rg-phonebill-prod/providers/" \
             "microsoft.dbforpostgresql/flexibleservers/phonebill-postgresql-prod"
    for name, when, kind in (("b2", "2026-11-26T02:10:00Z", "Full"), ("b1", "2026-11-25T02:10:00Z", "Full"),
                             ("pcdb-x", "2026-11-26T03:00:00Z", "Customer On-Demand")):
        arm.resources[f"{server}/backups/{name}"] = {"id": f"{server}/backups/{name}", "name": name,
                                                      "properties": {"backupType": kind, "completedTime": when}}
    backups = target.list_backups()
    assert [(b.id, b.kind) for b in backups] == [("b1", "automatic"), ("b2", "automatic"), ("pcdb-x", "on-demand")]


def test_the_database_endpoint_is_the_servers_fqdn_with_tls(target):
    primary, replica = target.endpoint("primary"), target.endpoint("replica")
    assert primary.host == "phonebill-postgresql-prod.postgres.database.azure.com" and primary.port == 5432
    assert replica.host == "phonebill-postgresql-replica.postgres.database.azure.com"
    assert primary.sslmode == "verify-full" and primary.connect_timeout == 30


def test_metrics_come_from_azure_monitor_in_the_sandbox_shape(arm, target):
    install_infrastructure(target)
    now = clock.now().replace(second=0, microsecond=0)
    before, last = ((now - timedelta(minutes=m)).isoformat().replace("+00:00", "Z") for m in (2, 1))
    arm.metrics = {"active_connections": [(before, 12.0), (last, 15.0)],
                   "storage_percent": [(last, 41.5)], "tps": [(last, 120.0)],
                   "storage_used": [(last, 110 * 2**30)],
                   "physical_replication_delay_in_seconds": [(last, 3.0)]}
    sample = target.metrics()
    assert (sample.connections, sample.storage_percent, sample.tps) == (15, 41.5, 120.0)
    assert sample.storage_quota_bytes == 256 * 2**30 and sample.replication[0]["lag_seconds"] == 3.0
    query = next(r for r in arm.requests if r[1].endswith("/metrics"))
    assert "/flexibleServers/phonebill-postgresql-prod/providers/Microsoft.Insights/metrics" in query[1]


def test_a_private_server_out_of_reach_says_where_to_run_from():
    import psycopg

    from pcdb.context import unreachable

    error = psycopg.OperationalError('could not translate host name "phonebill-postgresql-prod.postgres.'
                                     'database.azure.com" to address: Name or service not known')
    message = str(unreachable(PROD, "phonebill-postgresql-prod.postgres.database.azure.com", error))
    assert "private access only" in message and "10.0.1.0/24 (aks)" in message and "VPN/bastion" in message
    assert unreachable(PROD, "h", psycopg.OperationalError("password authentication failed")) is None


def test_a_verified_certificate_means_verify_full_against_azures_roots_and_scram_bound_to_the_channel():
    import ssl

    from pcdb.config import validate
    from pcdb.paths import AZURE_ROOTS

    endpoint = make_target(PROD, lambda ref, owner: SECRETS[owner], credential=FakeCredential(),
                           transport=FakeArm()).endpoint()
    assert (endpoint.sslmode, endpoint.sslrootcert) == ("verify-full", str(AZURE_ROOTS))
    info = endpoint.conninfo("dbadmin", "x")
    assert "require_auth=scram-sha-256" in info and "channel_binding=require" in info
    roots = ssl.create_default_context(cafile=str(AZURE_ROOTS)).get_ca_certs()
    names = {dict(x[0] for x in cert["subject"])["commonName"] for cert in roots}
    assert {"DigiCert Global Root G2", "Microsoft RSA Root Certificate Authority 2017"} <= names   # Microsoft's minimum
    data = PROD.model_dump(mode="json", by_alias=True)
    data["server"]["connection"]["ca_bundle"] = "/etc/ssl/azure-root.pem"   # a bundle of the client's own
    assert make_target(validate(data), lambda ref, owner: SECRETS[owner], credential=FakeCredential(),
                       transport=FakeArm()).endpoint().sslrootcert == "/etc/ssl/azure-root.pem"


def test_a_static_parameter_is_applied_with_a_planned_failover_restart(arm, target):
    install_infrastructure(target)
    config = next(v for k, v in arm.resources.items() if k.endswith("/configurations/shared_buffers"))
    config["properties"]["value"] = "4194304"
    change = target.ensure_parameters()
    assert change.diff == {"shared_buffers": ("4194304", "524288")}
    assert change.notes == ("restarted with a planned failover for shared_buffers",)
    path, body = arm.bodies[-1]
    assert path.endswith("/restart") and body["failoverMode"] == "PlannedFailover"
    assert target.ensure_parameters().action == "unchanged"


def test_a_parameter_the_spec_no_longer_names_goes_back_to_azures_default(arm, target, tmp_path):
    """Parameters both ways: one set earlier (by a spec, or by hand in the portal) that the spec does
    not name is planned, then reset with source system-default; a second run changes nothing."""
    install_infrastructure(target)
    hand_set = f"{next(k for k in arm.resources if k.endswith('/flexibleservers/phonebill-postgresql-prod'))}" \
               "/configurations/log_min_error_statement"
    arm.resources[hand_set] = {"name": "log_min_error_statement", "properties": {
        "value": "warning", "defaultValue": "error", "source": "user-override"}}
    planned = {(c.resource, c.name): c for c in target.plan()}
    assert planned[("configuration", "log_min_error_statement")].diff == {"properties.value": ("warning", "error")}
    assert target.parameter_differences()[PROD.server.name]["log_min_error_statement"] == ("warning", "error")
    change = target.ensure_parameters()
    assert change.diff == {"log_min_error_statement": ("warning", "error (default: removed from the spec)")}
    path, body = next((p, b) for p, b in reversed(arm.bodies) if p.endswith("/log_min_error_statement"))
    assert body["properties"] == {"value": "error", "source": "system-default"}
    arm.resources[hand_set]["properties"]["source"] = "system-default"   # what Azure reports after a reset
    assert target.ensure_parameters().action == "unchanged"


def test_an_existing_vnet_or_subnet_is_never_rewritten(arm, target):
    install_infrastructure(target)
    subnet = next(v for k, v in arm.resources.items() if k.endswith("/subnets/subnet-database"))
    subnet["properties"]["delegations"] = []                  # someone removed the delegation
    before = len(arm.writes)
    change = target.ensure_network()
    assert len(arm.writes) == before
    assert "subnet subnet-database: conflict" in change.notes


def test_the_teams_webhook_is_sent_but_never_planned_or_compared(arm):
    hook = "https://example.webhook.office.com/webhookb2/secret-key"
    secrets = {**SECRETS, "teams-webhook": hook}
    target = make_target(PROD, lambda ref, owner: secrets[owner], credential=FakeCredential(), transport=arm,
                         polling_interval=0)
    install_infrastructure(target)
    sent = next(b for p, b in arm.bodies if p.endswith("/actionGroups/ag-phonebill-prod-teams"))
    assert sent["properties"]["webhookReceivers"][0]["serviceUri"] == hook
    plan = target.plan()
    assert hook not in repr(plan) and {c.action for c in plan} == {"unchanged"}


def test_a_parameter_azure_does_not_hold_as_sent_is_an_error(arm, target):
    install_infrastructure(target)
    config = next(v for k, v in arm.resources.items() if k.endswith("/configurations/work_mem"))
    config["properties"]["value"] = "1024"
    original_put = arm._put

    def put_that_stores_kilobytes_wrongly(request, path, key):
        response = original_put(request, path, key)
        if key.endswith("/configurations/work_mem"):
            arm.resources[key]["properties"]["value"] = "33554432"   # as if the unit were bytes
        return response
    arm._put = put_that_stores_kilobytes_wrongly
    with pytest.raises(TargetError, match="read back differ.*work_mem"):
        target.ensure_parameters({"work_mem"})


def test_daily_backup_checks_on_azure_read_the_server_and_its_backups(arm, target):
    from datetime import timedelta

    from pcdb import backups

    install_infrastructure(target)
    server_key = next(k for k in arm.resources if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    recent = (clock.now() - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    arm.resources[f"{server_key}/backups/b1"] = {"id": f"{server_key}/backups/b1", "name": "b1",
                                                  "properties": {"backupType": "Full", "completedTime": recent}}
    last_restore = clock.now() - timedelta(days=3)
    results, summary = backups.daily_checks(target, PROD, last_restore=last_restore)
    assert all(r.passed for r in results), [r.evidence for r in results if not r.passed]
    assert summary["retention_days"] == 35 and summary["geo_redundant"] is True
    assert 2.9 < summary["latest_backup_age_hours"] < 3.1
    arm.resources[server_key]["properties"]["backup"]["geoRedundantBackup"] = "Disabled"
    results, _ = backups.daily_checks(target, PROD, last_restore=last_restore)
    assert [r.name for r in results if not r.passed] == ["geo-redundant backup"]


def test_azure_backup_integrity_and_wal_are_deferred_to_the_restore_test_and_fail_when_it_is_old(arm, target):
    """Azure shows neither the WAL nor the backup files: a backup that merely exists proves nothing.
    Both checks say they are the restore test's, with its date, and fail past 8 days or without one."""
    from datetime import timedelta

    from pcdb import backups

    install_infrastructure(target)
    server_key = next(k for k in arm.resources if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    recent = (clock.now() - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    arm.resources[f"{server_key}/backups/b1"] = {"id": f"{server_key}/backups/b1", "name": "b1",
                                                  "properties": {"backupType": "Full", "completedTime": recent}}
    deferred = ("WAL archiving current", "backup integrity")

    never, _ = backups.daily_checks(target, PROD)
    assert [r.name for r in never if not r.passed] == list(deferred)          # a backup exists: not enough
    assert all("no passing restore test is in the run ledger" in r.evidence for r in never if r.name in deferred)
    old, _ = backups.daily_checks(target, PROD, last_restore=clock.now() - timedelta(days=9))
    assert [r.name for r in old if not r.passed] == list(deferred)
    assert all("9.0 days ago, bound 8 days" in r.evidence for r in old if r.name in deferred)
    fresh, _ = backups.daily_checks(target, PROD, last_restore=clock.now() - timedelta(days=6))
    assert all(r.passed for r in fresh) and all("deferred to the restore test: the last one passed on" in r.evidence
                                                for r in fresh if r.name in deferred)
    now, _ = backups.daily_checks(target, PROD, restore_now=True)           # this run restores: it proves them
    assert all(r.passed for r in now)


def test_after_an_ha_failover_the_swapped_zones_are_not_drift(arm, target):
    install_infrastructure(target)
    target.failover("planned")
    server = next(v for k, v in arm.resources.items() if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    props = server["properties"]
    props["availabilityZone"], props["highAvailability"]["standbyAvailabilityZone"] = "2", "1"  # what Azure reports
    item = next(c for c in target.plan() if c.resource == "server")
    assert item.action == "unchanged" and "zone 2 is primary after an HA failover" in item.notes[0]
    props["highAvailability"]["standbyAvailabilityZone"] = "3"   # a different pair is a real difference
    assert next(c for c in target.plan() if c.resource == "server").action == "conflict"


def test_only_a_replica_a_drill_promoted_is_ever_replaced(arm, target):
    install_infrastructure(target)
    assert not target.replica_diverged()
    assert target.rebuild_replica().action == "unchanged"            # still a replica: nothing to do
    replica = next(v for k, v in arm.resources.items() if k.endswith("/phonebill-postgresql-replica"))
    replica["properties"]["replicationRole"] = "Primary"             # promoted by someone, for real
    assert not target.replica_diverged()
    with pytest.raises(TargetError, match="promoted outside a drill"):
        target.rebuild_replica()
    replica["tags"] = {"pcdb-drill": "run-1"}
    assert target.replica_diverged()
    assert target.rebuild_replica().action == "created"
    assert ("DELETE", next(p for m, p in arm.requests if p.endswith("/phonebill-postgresql-replica"))) in arm.requests


def test_a_stalled_replica_drill_is_refused_on_azure_before_anything_changes(arm, target):
    from pcdb import drills

    install_infrastructure(target)
    writes = len(arm.writes)
    with pytest.raises(TargetError, match="sandbox only"):
        drills.region_drill(target, PROD, "unused", lambda facts: None, lambda step, owner: None, stall_replica=True)
    assert len(arm.writes) == writes


def test_maintenance_refuses_to_start_inside_the_servers_custom_maintenance_window(arm, target):
    from datetime import timedelta

    from pcdb import maintenance
    from pcdb.context import RunbookContext
    from pcdb.errors import PcdbError

    install_infrastructure(target)
    server = next(r for k, r in arm.resources.items() if k.endswith("/flexibleservers/phonebill-postgresql-prod"))
    now = clock.now()
    ctx = RunbookContext(PROD, target)
    assert target.maintenance_window() is None                    # system-managed: nothing to avoid here
    maintenance.refuse_inside_maintenance_window(ctx, now)
    # ARM's dayOfWeek counts from Sunday = 0; the window began this hour.
    server["properties"]["maintenanceWindow"] = {"customWindow": "Enabled", "dayOfWeek": (now.weekday() + 1) % 7,
                                                 "startHour": now.hour, "startMinute": 0}
    with pytest.raises(PcdbError, match="inside its Azure maintenance window"):
        maintenance.refuse_inside_maintenance_window(ctx, now)
    server["properties"]["maintenanceWindow"]["dayOfWeek"] = (now.weekday() + 3) % 7   # two days from now
    maintenance.refuse_inside_maintenance_window(ctx, now)
    # Azure announced planned maintenance (Resource Health), under way now: refused too.
    events = next(k for k in arm.resources if k.endswith("/flexibleservers/phonebill-postgresql-prod")) \
        + "/providers/microsoft.resourcehealth/events"
    arm.resources[events] = {"value": [{"name": "pm-1", "properties": {
        "eventType": "PlannedMaintenance", "status": "Active", "title": "Minor version upgrade",
        "impactStartTime": (now - timedelta(minutes=10)).isoformat(),
        "impactMitigationTime": (now + timedelta(minutes=50)).isoformat()}}]}
    assert target.planned_maintenance()[0].title == "Minor version upgrade"
    with pytest.raises(PcdbError, match="planned maintenance is under way"):
        maintenance.refuse_inside_maintenance_window(ctx, now)


def test_each_azure_alert_goes_to_the_channels_its_rule_names_and_a_cpu_warning_never_texts(arm, target):
    install_infrastructure(target)
    groups = {p.rsplit("/", 1)[1]: b["properties"] for p, b in arm.bodies if "/actionGroups/" in p}

    def receivers(alert_path: str) -> set[str]:
        body = next(b for p, b in arm.bodies if p.endswith(alert_path))
        actions = body["properties"]["actions"]
        group = (actions[0]["actionGroupId"] if isinstance(actions, list) else
                 (actions.get("actionGroups") or [None])[0])
        group = group if isinstance(group, str) else group["actionGroupId"]
        props = groups[group.rsplit("/", 1)[1]]
        return ({"teams"} if props.get("webhookReceivers") else set()) | \
               ({"email"} if props.get("emailReceivers") else set()) | ({"sms"} if props.get("smsReceivers") else set())

    assert receivers("/metricAlerts/alert-high-cpu") == {"teams"}                       # §6.2.2: Teams only
    assert receivers("/metricAlerts/alert-high-storage") == {"teams", "email"}
    assert receivers("/metricAlerts/alert-connection-failed") == {"teams", "sms"}
    assert receivers("/metricAlerts/alert-replica-lag") == {"teams", "email"}
    assert receivers("/activityLogAlerts/alert-failover-event") == {"teams", "email", "sms"}
    assert receivers("/scheduledQueryRules/alert-slow-queries") == {"teams"}
    assert all(len(p["groupShortName"]) <= 12 for p in groups.values())


def test_business_rates_are_published_to_azure_monitor_and_the_workbook_charts_them(arm, target):
    """R-MON-3/7 on Azure: the health runbook's rates become custom metrics of the server, and the
    §6.3 workbook (a desired resource) charts them by day, week and month beside the platform's."""
    import json as _json

    install_infrastructure(target)
    at = datetime(2026, 11, 27, 1, 0, tzinfo=timezone.utc)
    sent = target.publish_business_metrics({"product_change_success_rate": 97.5, "kos_success_rate": None,
                                            "avg_processing_seconds": 2.25}, at)
    assert sent == 2
    posted = [(p, b) for p, b in arm.bodies if ".monitoring.azure.com" in p]
    assert [p.split("/")[0] for p, _ in posted] == ["koreacentral.monitoring.azure.com"] * 2
    assert all(p.endswith("/flexibleServers/phonebill-postgresql-prod/metrics") for p, _ in posted)
    assert {b["data"]["baseData"]["metric"]: b["data"]["baseData"]["series"][0]["sum"] for _, b in posted} == \
        {"product_change_success_rate": 97.5, "avg_processing_seconds": 2.25}
    book = next(v for k, v in arm.resources.items() if "/microsoft.insights/workbooks/" in k)
    items = {i["name"]: i["content"] for i in _json.loads(book["properties"]["serializedData"])["items"]}
    assert {"alive", "connections", "replica-lag", "cpu-memory", "iops", "query-time", "top-slow", "business-day",
            "business-week", "business-month", "error-trend", "activity-per-user"} <= set(items)
    assert [m["metric"] for m in items["business-week"]["metrics"]] == [
        "pcdb/business--product_change_success_rate", "pcdb/business--kos_success_rate"]
    assert "top 10 by avg_ms" in items["top-slow"]["query"]
    assert target.ensure_monitoring().action == "unchanged"          # the same dashboard is no drift


def test_a_503_from_any_azure_call_is_transient_and_the_runbooks_retry_it(arm):
    """One translator for every Azure call (was: the target's own turned a 503 from the backups list
    into a plain TargetError that no retry policy would repeat)."""
    from pcdb.errors import TransientError, is_transient

    quick = make_target(PROD, lambda ref, owner: SECRETS[owner], credential=FakeCredential(), transport=arm,
                        polling_interval=0, retry_total=0)   # the SDK's own retries off: the runbook's are judged
    install_infrastructure(quick)
    arm.unavailable["/backups"] = 1
    with pytest.raises(TransientError, match="ServiceUnavailable") as caught:
        quick.list_backups()
    assert is_transient(caught.value)
    assert quick.list_backups() == []                     # the next try gets through


def test_the_capacity_analysis_reads_azure_monitors_hourly_history(arm, target, tmp_path):
    """§8.1.2 on Azure: 30 days of hourly averages and maxima from Azure Monitor (PT1H, not 1-minute:
    93 days of minutes are beyond one metrics query), with a three-day gap, become the forecast."""
    from pcdb import capacity

    now = clock.now().replace(minute=0, second=0, microsecond=0)
    hours = [now - timedelta(hours=h) for h in range(30 * 24, 0, -1)]
    gap = (now - timedelta(days=12)).replace(hour=0)
    hours = [t for t in hours if not (gap <= t < gap + timedelta(days=3))]   # three whole days missing

    def z(t):
        return t.isoformat().replace("+00:00", "Z")

    used = {t: (100 + (t - hours[0]).total_seconds() / 86400) * 2**30 for t in hours}   # 1 GiB a day
    arm.metrics = {"storage_used": [(z(t), v) for t, v in used.items()],
                   "storage_percent": [(z(t), 100 * v / (256 * 2**30)) for t, v in used.items()],
                   "active_connections": [(z(t), 40.0 + t.hour) for t in hours],
                   "cpu_percent": [(z(t), 30.0) for t in hours], "memory_percent": [(z(t), 60.0) for t in hours],
                   "iops": [(z(t), 640.0) for t in hours], "txlogs_storage_used": [(z(t), 3 * 2**30) for t in hours],
                   "maximum_used_transactionIDs": [(z(t), 1e8 + 1e6 * (t - hours[0]).total_seconds() / 86400)
                                                   for t in hours]}
    points = target.metric_history(now - timedelta(days=31), now)
    query = next(r for r in arm.requests if r[1].endswith("/metrics"))
    assert "/flexibleServers/phonebill-postgresql-prod/providers/Microsoft.Insights/metrics" in query[1]
    assert points["iops_percent"][0][1] == 50.0 and "xid_age" in points      # 640 of the spec's 1280 IOPS
    store = capacity.Store(tmp_path / "capacity.sqlite")
    result = capacity.analyse(PROD, capacity.history_from_points(points), store, now)
    s = result["storage"]
    assert s["limit_bytes"] == 256 * 2**30 and abs(s["growth_bytes_per_day"] / 2**30 - 1) < 0.02
    truth = (0.75 * 256 - (100 + 30 - 1 / 24)) / 1.0
    assert abs(s["days_to_warning"] - truth) <= 0.1 * truth
    assert s["days_without_data"] == 3 and result["connections"]["peak"] == 63 and s["txlogs_bytes"] == 3 * 2**30
    assert result["iops"]["p95_percent"] == 50.0
    assert 0.95e6 < result["wraparound"]["consumption_per_day"] < 1.05e6
    assert result["verdict"].startswith(f"storage reaches 75 % in {s['days_to_warning']:.0f} days")


def test_the_application_record_is_a_cname_that_a_region_failover_points_at_the_promoted_replica(arm, tmp_path):
    spec = tmp_path / "prod-record.yaml"
    spec.write_text("extends: prod\ndr:\n  application_record: pcdb-app\n")
    env = load_environment(spec)
    target = make_target(env, lambda ref, owner: SECRETS[owner], credential=FakeCredential(), transport=arm,
                         polling_interval=0)
    install_infrastructure(target)
    assert target.application_target() == "primary"
    first = target.switch_application("primary")
    assert first.action == "created" and first.diff == {"CNAME": (None, "phonebill-postgresql-prod.postgres.database.azure.com")}
    assert target.switch_application("primary").action == "unchanged"        # read first, written only when it differs
    assert target.switch_application("replica").diff == {"CNAME": ("phonebill-postgresql-prod.postgres.database.azure.com",
                                                                   "phonebill-postgresql-replica.postgres.database.azure.com")}
    record = next(v for k, v in arm.resources.items() if k.endswith("/privatednszones/phonebill-prod.private.postgres."
                                                                     "database.azure.com/cname/pcdb-app"))
    assert record["properties"]["ttl"] == 30
    assert target.application_target() == "replica"
    assert target.endpoint("application").host == "phonebill-postgresql-replica.postgres.database.azure.com"
    assert target.primary_region_missing() == []
    arm.resources[next(k for k in arm.resources if k.endswith("/phonebill-postgresql-prod"))]["properties"]["state"] = "Stopped"
    assert target.primary_region_missing() == ["phonebill-postgresql-prod (state Stopped)"]
    # The failback's plan on Azure: the former primary's deletion (gated), then steps 1-7, Phase 7
    # after; nothing is under way before it starts.
    plan = target.failback_plan()
    assert plan.under_way is None and plan.verify
    assert [(s.name.split(" ")[0], s.gate) for s in plan.steps] == [
        ("delete", "delete"), ("1.", None), ("2.", None), ("3.", "switch"), ("4.", None), ("5.", None), ("6.", None),
        ("7.", None)]


def test_without_an_application_record_the_switch_is_the_owners_confirmed_step(arm, target):
    install_infrastructure(target)
    writes = len(arm.writes)
    change = target.switch_application("replica")
    assert change.action == "unchanged" and "dr.application_record" in change.notes[0]
    assert arm.writes[writes:] == []
    replica = next(v for k, v in arm.resources.items() if k.endswith("/phonebill-postgresql-replica"))
    replica["properties"]["replicationRole"] = "Primary"                      # promoted for real, no drill tag
    assert target.application_target() == "replica"
