"""The production request, planned offline: the document's values exactly as sent to Azure."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb.azure.desired import desired_resources
from pcdb.azure.plan import make_plan
from pcdb.config import load_environment, validate

PROD = load_environment("prod")


def by_name(items, kind, name):
    return next(i for i in items if i.type == kind and i.name == name)


@pytest.fixture(scope="module")
def empty_plan():
    return make_plan(desired_resources(PROD))


def test_everything_is_created_on_an_empty_subscription_in_install_order(empty_plan):
    assert {i.action for i in empty_plan} == {"create"}
    kinds = [i.type for i in empty_plan]
    assert kinds.index("resource_group") < kinds.index("virtual_network") < kinds.index("server") < \
        kinds.index("configuration") < kinds.index("metric_alert")


def test_the_server_request_carries_the_documents_values(empty_plan):
    server = by_name(empty_plan, "server", "phonebill-postgresql-prod").properties
    assert server["location"] == "koreacentral"
    assert server["sku"] == {"name": "Standard_D4s_v3", "tier": "GeneralPurpose"}
    props = server["properties"]
    assert props["version"] == "14" and props["administratorLogin"] == "dbadmin"
    assert props["storage"] == {"storageSizeGB": 256, "autoGrow": "Enabled"}
    assert props["highAvailability"] == {"mode": "ZoneRedundant", "standbyAvailabilityZone": "2"}
    assert props["availabilityZone"] == "1"
    assert props["backup"] == {"backupRetentionDays": 35, "geoRedundantBackup": "Enabled"}
    assert props["network"]["publicNetworkAccess"] == "Disabled"
    assert props["network"]["delegatedSubnetResourceId"].endswith("/virtualNetworks/vnet-phonebill-prod/subnets/subnet-database")
    assert props["network"]["privateDnsZoneArmResourceId"].endswith("phonebill-prod.private.postgres.database.azure.com")
    assert "administratorLoginPassword" not in props  # never in a plan


def test_the_replica_is_in_korea_south_from_the_primary(empty_plan):
    replica = by_name(empty_plan, "replica", "phonebill-postgresql-replica").properties
    assert replica["location"] == "koreasouth" and replica["sku"]["name"] == "Standard_D2s_v3"
    assert replica["properties"]["createMode"] == "Replica"
    assert replica["properties"]["sourceServerResourceId"].endswith("/flexibleServers/phonebill-postgresql-prod")


@pytest.mark.parametrize("name, value", [
    ("shared_buffers", "524288"),          # C-3: 4GB in 8kB pages, not the document's 4194304
    ("effective_cache_size", "1572864"),   # C-3: not 12582912
    ("work_mem", "32768"), ("max_connections", "200"), ("idle_in_transaction_session_timeout", "1800000"),
    ("require_secure_transport", "on"), ("ssl_min_protocol_version", "TLSv1.3"), ("log_statement", "all"),
])
def test_parameters_are_sent_in_their_own_unit(empty_plan, name, value):
    assert by_name(empty_plan, "configuration", name).properties["properties"] == {"source": "user-override", "value": value}


def test_no_log_slow_queries_and_no_firewall_rule_on_a_vnet_server(empty_plan):
    assert not [i for i in empty_plan if i.name == "log_slow_queries"]            # C-4
    assert not [i for i in empty_plan if i.type == "firewall_rule"]               # C-2


def test_a_public_server_gets_one_firewall_rule_per_allowed_subnet():
    data = PROD.model_dump(mode="json", by_alias=True)
    data["network"]["mode"] = "public"
    rules = [i for i in make_plan(desired_resources(validate(data))) if i.type == "firewall_rule"]
    assert [(r.name, r.properties["properties"]) for r in rules] == [
        ("allow-aks", {"startIpAddress": "10.0.1.0", "endIpAddress": "10.0.1.255"}),
        ("allow-management", {"startIpAddress": "10.0.4.0", "endIpAddress": "10.0.4.255"})]


def test_alerts_and_receivers(empty_plan):
    cpu = by_name(empty_plan, "metric_alert", "alert-high-cpu").properties["properties"]
    assert (cpu["severity"], cpu["windowSize"], cpu["evaluationFrequency"]) == (2, "PT5M", "PT1M")
    criterion = cpu["criteria"]["allOf"][0]
    assert (criterion["metricName"], criterion["operator"], criterion["threshold"]) == ("cpu_percent", "GreaterThan", 80)
    conns = by_name(empty_plan, "metric_alert", "alert-high-connections").properties["properties"]
    assert (conns["severity"], conns["windowSize"]) == (1, "PT1M")
    lag = by_name(empty_plan, "metric_alert", "alert-replica-lag").properties["properties"]
    assert lag["scopes"][0].endswith("/phonebill-postgresql-replica") and lag["windowSize"] == "PT2M"
    group = by_name(empty_plan, "action_group", "ag-phonebill-prod-email-sms-teams").properties["properties"]
    assert [r["emailAddress"] for r in group["emailReceivers"]] == ["dba-team@phonebill.com", "ops-team@phonebill.com"]
    assert [(r["countryCode"], r["phoneNumber"]) for r in group["smsReceivers"]] == [("82", "1012345678"), ("82", "1023456789")]
    assert "pcdb-prod-teams-webhook-url" in group["webhookReceivers"][0]["serviceUri"]  # the source, not the URL
    diag = by_name(empty_plan, "diagnostic_setting", "diagnostic-postgresql").properties["properties"]
    assert [c["category"] for c in diag["logs"]] == ["PostgreSQLLogs"] and diag["metrics"][0]["category"] == "AllMetrics"


def test_r_mon_2_deadlocks_alert_on_azure_and_enhanced_metrics_are_switched_on(empty_plan):
    """Deadlocks > 5/h is Azure Monitor's enhanced metric `deadlocks`; it (and the replica delay and
    IOPS-use alerts) are only emitted with metrics.collector_database_activity on: the plan sets it."""
    deadlocks = by_name(empty_plan, "metric_alert", "alert-deadlocks").properties["properties"]
    criterion = deadlocks["criteria"]["allOf"][0]
    assert (criterion["metricName"], criterion["timeAggregation"], criterion["threshold"]) == ("deadlocks", "Total", 5)
    assert (deadlocks["windowSize"], deadlocks["evaluationFrequency"]) == ("PT1H", "PT5M")
    warning = "-".join(sorted(PROD.notifications.routing["warning"]))               # a warning: its routing
    assert deadlocks["actions"][0]["actionGroupId"].endswith(f"/ag-phonebill-prod-{warning}")
    collector = by_name(empty_plan, "configuration", "metrics.collector_database_activity").properties["properties"]
    assert collector["value"] == "on"


def test_the_extensions_the_runbooks_create_are_allow_listed_in_azure_extensions(empty_plan):
    """Azure refuses CREATE EXTENSION for what azure.extensions does not list (Phase 6 creates
    pg_stat_statements, the restore test amcheck)."""
    allowed = by_name(empty_plan, "configuration", "azure.extensions").properties["properties"]
    assert allowed["value"] == "AMCHECK,PG_STAT_STATEMENTS"


def test_the_r_mon_4_rules_without_an_azure_metric_become_event_and_log_alerts(empty_plan):
    """Failover event -> Teams+SMS+email at once; slow queries > 10/min for 5 min -> Teams (§6.2.2)."""
    failover = by_name(empty_plan, "activity_log_alert", "alert-failover-event").properties
    assert failover["location"] == "Global"
    props = failover["properties"]
    assert props["scopes"][0].endswith("/flexibleServers/phonebill-postgresql-prod")
    assert props["condition"] == {"allOf": [{"field": "category", "equals": "ResourceHealth"}]}
    assert props["actions"]["actionGroups"][0]["actionGroupId"].endswith("/actionGroups/ag-phonebill-prod-email-sms-teams")
    slow = by_name(empty_plan, "log_alert", "alert-slow-queries").properties
    assert slow["kind"] == "LogAlert"
    props = slow["properties"]
    condition = props["criteria"]["allOf"][0]
    assert "PostgreSQLLogs" in condition["query"] and 'Message has "duration:"' in condition["query"]
    assert (condition["timeAggregation"], condition["operator"], condition["threshold"]) == ("Count", "GreaterThan", 10)
    assert (props["windowSize"], props["evaluationFrequency"]) == ("PT1M", "PT1M")
    assert condition["failingPeriods"] == {"numberOfEvaluationPeriods": 5, "minFailingPeriodsToAlert": 5}
    assert props["severity"] == 2 and props["actions"]["actionGroups"][0].endswith("/actionGroups/ag-phonebill-prod-teams")


def test_drift_shows_current_to_desired_and_immutable_changes_are_conflicts():
    desired = desired_resources(PROD)
    current = {d.id: d.body() for d in desired}
    current[next(d.id for d in desired if d.name == "shared_buffers")]["properties"]["value"] = "4194304"
    server_id = next(d.id for d in desired if d.type == "server")
    current[server_id]["properties"]["backup"]["geoRedundantBackup"] = "Disabled"
    current[server_id]["properties"]["state"] = "Ready"                  # extra fields ARM returns: not drift
    plan = make_plan(desired, lambda d: current[d.id])
    changed = {(i.type, i.name): i for i in plan if i.action != "unchanged"}
    assert set(changed) == {("configuration", "shared_buffers"), ("server", "phonebill-postgresql-prod")}
    assert changed[("configuration", "shared_buffers")].changes == {
        "properties.value": {"current": "4194304", "desired": "524288"}}
    server = changed[("server", "phonebill-postgresql-prod")]
    assert server.action == "conflict" and "restore the server into a new one" in server.notes[0]


def test_plan_cli_json_for_an_empty_subscription_needs_no_credentials():
    result = CliRunner().invoke(app, ["plan", "--env", "prod", "--assume-empty", "--json"], env={"AZURE_SUBSCRIPTION_ID": ""})
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    items = plan["items"]
    assert all(set(i) == {"type", "name", "action", "properties", "changes", "notes", "effects"} for i in items)
    assert len(items) == len(desired_resources(PROD)) and {i["action"] for i in items} == {"create"}
    assert plan["assumed_empty"] is True and plan["restarts"] == [] and plan["refused"] == []
    assert plan["cost"]["monthly_delta_usd"] == 820 + 290         # the primary's and the replica's rows
    assert [line["source"] for line in plan["cost"]["lines"]] == [
        "the price table's row 'primary server' (Standard_D4s_v3, 256GB, HA)",
        "the price table's row 'read replica' (Standard_D2s_v3, 256GB)"]


def test_plan_of_the_live_subscription_says_which_secret_is_missing():
    result = CliRunner().invoke(app, ["plan", "--env", "prod"], env={"AZURE_SUBSCRIPTION_ID": ""})
    assert result.exit_code == 1 and "AZURE_SUBSCRIPTION_ID is not set" in result.stderr


def test_fields_arm_adds_inside_lists_and_numbers_as_floats_are_not_drift():
    desired = desired_resources(PROD)
    current = {d.id: d.body() for d in desired}
    alert = next(d for d in desired if d.name == "alert-high-cpu")
    criterion = current[alert.id]["properties"]["criteria"]["allOf"][0]
    criterion.update({"dimensions": [], "skipMetricValidation": False, "threshold": 80.0})
    assert {i.action for i in make_plan(desired, lambda d: current[d.id])} == {"unchanged"}
    criterion["threshold"] = 90.0
    changed = [i for i in make_plan(desired, lambda d: current[d.id]) if i.action != "unchanged"]
    assert [(i.name, i.action) for i in changed] == [("alert-high-cpu", "update")]


def test_throwaway_servers_carry_the_servers_name_because_azure_names_are_global():
    from pcdb.targets.base import throwaway_name

    assert throwaway_name(PROD, "restore-test") == "phonebill-postgresql-prod-restore-test"
    data = PROD.model_dump(mode="json", by_alias=True)
    data["server"]["name"] = "a" * 49 + "-" + "b" * 12
    long = throwaway_name(validate(data), "restore-test")
    assert long == "a" * 49 + "-restore-test"   # 63 characters at most, the purpose kept whole: never the server's own name


@pytest.mark.parametrize("running, said", [
    ("15", 'the server runs PostgreSQL 15 (upgraded) and the spec still says 14: the spec\'s version is out of date: '
           'edit server.version to "15"'),
    ("13", "a major version upgrade is not a change a plan applies: run `pcdb upgrade --to 14`")])
def test_a_major_that_differs_is_a_conflict_never_a_put(running, said):
    """After `pcdb upgrade` the spec is out of date until edited; a spec ahead of the server is an
    upgrade to run, with its prechecks, rehearsal and decision, not a property to PUT."""
    desired = desired_resources(PROD)
    current = {d.id: d.body() for d in desired}
    server_id = next(d.id for d in desired if d.type == "server")
    current[server_id]["properties"]["version"] = running
    server = by_name(make_plan(desired, lambda d: current[d.id]), "server", "phonebill-postgresql-prod")
    assert server.action == "conflict" and said in " ".join(server.notes)


def test_upgrade_refuses_rehearse_and_without_rehearsal_together_before_anything_runs():
    result = CliRunner().invoke(app, ["upgrade", "--env", "prod", "--to", "15", "--rehearse", "--without-rehearsal"])
    assert result.exit_code != 0 and "--rehearse and --without-rehearsal exclude each other" in result.output


def test_the_plan_says_which_changes_restart_the_server_which_azure_refuses_and_what_they_cost():
    from pcdb.azure.plan import cost_delta

    desired = desired_resources(PROD)
    current = {d.id: d.body() for d in desired}
    server_id = next(d.id for d in desired if d.type == "server")
    replica_id = next(d.id for d in desired if d.type == "replica")
    current[server_id]["properties"]["storage"]["storageSizeGB"] = 128      # the spec grows it to 256
    current[replica_id]["sku"]["name"] = "Standard_D4s_v3"                 # the spec scales it down
    current[next(d.id for d in desired if d.name == "shared_buffers")]["properties"]["value"] = "262144"
    current[next(d.id for d in desired if d.name == "work_mem")]["properties"]["value"] = "8192"
    plan = make_plan(desired, lambda d: current[d.id])
    changed = {i.name: i for i in plan if i.action != "unchanged"}
    assert changed["shared_buffers"].restarts and "planned failover" in changed["shared_buffers"].effects[0]
    assert not changed["work_mem"].restarts                                  # dynamic: a reload
    assert changed["phonebill-postgresql-replica"].restarts
    assert "regular scaling" in changed["phonebill-postgresql-replica"].effects[0]
    server = changed["phonebill-postgresql-prod"]
    assert not server.restarts and server.effects == ("grows the storage online (no restart in most cases; it can "
                                                      "never shrink again)",)
    cost = cost_delta(plan, PROD.operations.cost.price_table, 0.115)
    assert cost["lines"] == [{"what": "phonebill-postgresql-prod: storage 128 to 256 GB (and its HA standby's)",
                              "usd": 29.44, "source": "operations.cost.storage_usd_per_gib_month (0.115)"}]
    assert cost["monthly_delta_usd"] is None and cost["known_usd"] == 29.44     # the SKU change is not guessed
    assert cost["unknown"][0].startswith("phonebill-postgresql-replica: sku.name Standard_D4s_v3 to Standard_D2s_v3")
    assert cost_delta(plan, PROD.operations.cost.price_table, None)["lines"] == []

    current[server_id]["properties"]["storage"]["storageSizeGB"] = 512        # bigger than the spec: cannot shrink
    shrink = by_name(make_plan(desired, lambda d: current[d.id]), "server", "phonebill-postgresql-prod")
    assert shrink.action == "conflict" and shrink.notes[0].startswith("storage cannot shrink (512 GB to 256 GB)")
