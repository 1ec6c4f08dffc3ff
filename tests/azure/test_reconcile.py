"""The production resources reconciled through the real Azure SDK clients against an in-process ARM."""

import pytest

from pcdb.azure.apply import Reconciler, make_clients
from pcdb.azure.desired import desired_resources
from pcdb.azure.plan import make_plan
from pcdb.config import load_environment
from pcdb.errors import TargetError
from tests.azure.fake_arm import FakeArm, FakeCredential

PROD = load_environment("prod")
SUB = "11111111-2222-3333-4444-555555555555"
PASSWORD = "Example-Only-Passw0rd!"  # a test value, not the client's


@pytest.fixture()
def arm():
    return FakeArm()


@pytest.fixture()
def reconciler(arm):
    clients = make_clients(FakeCredential(), SUB, transport=arm, polling_interval=0)
    return Reconciler(clients, lambda: PASSWORD)


def apply_all(reconciler):
    return [reconciler.apply(d)[1] for d in desired_resources(PROD, SUB)]


def stored(arm, suffix):
    return next(body for key, body in arm.resources.items() if key.endswith(suffix.lower()))


def test_the_install_creates_everything_with_the_documents_values(arm, reconciler):
    changes = apply_all(reconciler)
    assert {c.action for c in changes} == {"created"}
    server = stored(arm, "/flexibleServers/phonebill-postgresql-prod")
    assert server["sku"] == {"name": "Standard_D4s_v3", "tier": "GeneralPurpose"}
    assert server["properties"]["storage"] == {"storageSizeGB": 256, "autoGrow": "Enabled"}
    assert server["properties"]["highAvailability"] == {"mode": "ZoneRedundant", "standbyAvailabilityZone": "2"}
    assert server["properties"]["backup"] == {"backupRetentionDays": 35, "geoRedundantBackup": "Enabled"}
    assert stored(arm, "/configurations/shared_buffers")["properties"]["value"] == "524288"
    assert stored(arm, "/configurations/require_secure_transport")["properties"]["value"] == "on"
    replica = stored(arm, "/flexibleServers/phonebill-postgresql-replica")
    assert replica["location"] == "koreasouth" and replica["properties"]["createMode"] == "Replica"
    subnet = stored(arm, "/subnets/subnet-database")
    assert subnet["properties"]["delegations"][0]["properties"]["serviceName"] == "Microsoft.DBforPostgreSQL/flexibleServers"


def test_the_admin_password_is_sent_once_at_creation_and_never_reported(arm, reconciler):
    changes = apply_all(reconciler)
    server_puts = [b for p, b in arm.bodies if p.endswith("/phonebill-postgresql-prod")]
    assert [b["properties"].get("administratorLoginPassword") for b in server_puts] == [PASSWORD]
    assert PASSWORD not in repr(changes)
    assert PASSWORD not in repr([i.as_dict() for i in make_plan(desired_resources(PROD, SUB), reconciler.read)])


def test_a_second_run_makes_no_write_call(arm, reconciler):
    apply_all(reconciler)
    before = len(arm.writes)
    changes = apply_all(reconciler)
    assert {c.action for c in changes} == {"unchanged"} and len(arm.writes) == before


def test_drift_is_planned_property_by_property_and_only_it_is_written(arm, reconciler):
    apply_all(reconciler)
    stored(arm, "/configurations/shared_buffers")["properties"]["value"] = "4194304"  # someone used kB (C-3)
    plan = make_plan(desired_resources(PROD, SUB), reconciler.read)
    drift = [i for i in plan if i.action != "unchanged"]
    assert [(i.type, i.name, i.changes) for i in drift] == [
        ("configuration", "shared_buffers", {"properties.value": {"current": "4194304", "desired": "524288"}})]
    before = len(arm.writes)
    apply_all(reconciler)
    assert [p for _, p in arm.writes[before:]] == [next(d.id for d in desired_resources(PROD, SUB)
                                                        if d.name == "shared_buffers")]


def test_an_immutable_change_is_a_conflict_not_a_recreation(arm, reconciler):
    apply_all(reconciler)
    stored(arm, "/flexibleServers/phonebill-postgresql-prod")["properties"]["backup"]["geoRedundantBackup"] = "Disabled"
    before = len(arm.writes)
    changes = {c.name: c for c in apply_all(reconciler)}
    assert changes["phonebill-postgresql-prod"].action == "conflict"
    assert "restore the server into a new one" in changes["phonebill-postgresql-prod"].notes[0]
    assert len(arm.writes) == before


def test_throttling_is_retried_after_the_delay_arm_asks_for(arm, reconciler):
    arm.throttle["/resourcegroups/rg-phonebill-prod"] = 1
    change = reconciler.apply(desired_resources(PROD, SUB)[0])[1]
    assert change.action == "created" and 7 in [round(s) for s in arm.sleeps]


def test_a_failed_operation_names_the_code_the_resource_and_what_to_do(arm, reconciler):
    arm.fail["/flexibleServers/phonebill-postgresql-prod"] = (
        "QuotaExceeded", "Operation results in exceeding approved Total Regional Cores quota")
    desired = desired_resources(PROD, SUB)
    for d in desired[:5]:
        reconciler.apply(d)
    with pytest.raises(TargetError) as caught:
        reconciler.apply(next(d for d in desired if d.type == "server"))
    message = str(caught.value)
    assert "QuotaExceeded" in message and "phonebill-postgresql-prod" in message and "quota increase" in message


def test_the_firewall_api_is_never_called_on_a_vnet_integrated_server(arm, reconciler):
    apply_all(reconciler)
    apply_all(reconciler)
    assert not [r for r in arm.requests if "firewallrules" in r[1].lower()]


def test_a_public_server_gets_one_firewall_rule_per_allowed_subnet_as_the_specification_has_it(arm, reconciler,
                                                                                               tmp_path):
    """Public network mode: each allowed subnet a firewall rule (its first and last address); the
    requests and the fake's answers are checked against the 2025-08-01 specification (the autouse
    check in tests/conftest.py), and a second run changes nothing."""
    spec = tmp_path / "public.yaml"
    spec.write_text("extends: prod\nnetwork:\n  mode: public\n")
    env = load_environment(spec)
    desired = [d for d in desired_resources(env, SUB) if d.type in ("resource_group", "server", "firewall_rule")]
    assert [c.action for c in (reconciler.apply(d)[1] for d in desired)] == ["created"] * len(desired)
    rules = {k.rsplit("/", 1)[1]: v["properties"] for k, v in arm.resources.items() if "/firewallrules/" in k}
    assert rules and all(set(r) == {"startIpAddress", "endIpAddress"} for r in rules.values())
    assert [c.action for c in (reconciler.apply(d)[1] for d in desired)] == ["unchanged"] * len(desired)
