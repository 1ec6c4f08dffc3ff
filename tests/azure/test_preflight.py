"""`pcdb preflight` (#25 item 4) through the sandbox-backed ARM: read only, before Phase 1; each of
its checks fails on a subscription made to lack what it checks, names itself and says what to do;
the install runs it first and stops before Phase 1. The fake answers the Capabilities (2024-08-01)
and QuotaUsages and name-availability (2025-08-01) reads as Microsoft's specification shows
(tests/azure/arm_spec.py checks every answer)."""

from __future__ import annotations

import json

import pytest
from prefect import flow
from typer.testing import CliRunner

import flows.runbook
from cli.main import app
from flows.install import run_install
from pcdb.config import load_environment
from tests.azure.harness import azure_on_sandbox
from tests.conftest import new_target

pytestmark = pytest.mark.prefect
SERVER = "phonebill-postgresql-prod"
RG = "/subscriptions/11111111-2222-3333-4444-555555555555/resourcegroups/rg-phonebill-prod"


@pytest.fixture(scope="module")
def subscription(prefect_harness):
    """The prod spec over the sandbox-backed ARM, nothing made yet (no server is started here)."""
    with azure_on_sandbox(new_target(), flows.runbook) as made:
        yield made


def preflight(spec) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["preflight", "--env", str(spec), "--json"])
    return result.exit_code, json.loads(result.stdout)


def _sku(cap: dict, tier: str, name: str) -> dict:
    edition = next(e for e in cap["supportedServerEditions"] if e["name"] == tier)
    return next(s for s in edition["supportedServerSkus"] if s["name"] == name)


def _drop_sku(cap: dict, tier: str, name: str) -> None:
    edition = next(e for e in cap["supportedServerEditions"] if e["name"] == tier)
    edition["supportedServerSkus"] = [s for s in edition["supportedServerSkus"] if s["name"] != name]


def _subnet_of_another_service(arm) -> None:
    vnet = f"{RG}/providers/microsoft.network/virtualnetworks/vnet-phonebill-prod"
    arm.resources[RG] = {"id": RG, "name": "rg-phonebill-prod", "location": "koreacentral"}
    arm.resources[vnet] = {"id": vnet, "name": "vnet-phonebill-prod", "location": "koreacentral",
                           "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}}}
    arm.resources[f"{vnet}/subnets/subnet-database"] = {
        "id": f"{vnet}/subnets/subnet-database", "name": "subnet-database",
        "properties": {"addressPrefix": "10.0.2.0/24", "delegations": [
            {"name": "web", "properties": {"serviceName": "Microsoft.Web/serverFarms"}}]}}


# Each check, failing: what is taken away from the subscription, and what the answer must say.
FAILING = {
    "providers": (lambda arm: arm.unregistered.update({"Microsoft.DBforPostgreSQL": "NotRegistered"}),
                  "Microsoft.DBforPostgreSQL (NotRegistered)", "az provider register --namespace Microsoft.DBforPostgreSQL"),
    "sku": (lambda arm: _drop_sku(arm.capabilities["koreacentral"], "GeneralPurpose", "Standard_D4s_v3"),
            "does not offer Standard_D4s_v3", "choose a SKU the region offers"),
    "zone-redundant-ha": (lambda arm: _sku(arm.capabilities["koreacentral"], "GeneralPurpose", "Standard_D4s_v3")
                          .update(supportedZones=["1", "3"]),
                          "Standard_D4s_v3 is not offered in zone(s) 2 of koreacentral (zones offered: 1, 3)",
                          "set server.high_availability.standby_zone to one of 3"),
    "storage": (lambda arm: [e["supportedStorageEditions"][0].update(supportedStorageMb=[
                    m for m in e["supportedStorageEditions"][0]["supportedStorageMb"] if m["storageSizeMb"] != 262144])
                    for e in arm.capabilities["koreacentral"]["supportedServerEditions"]],
                "256GB is not a storage size koreacentral offers", "set server.storage.size to an offered size, e.g. 512GB"),
    "version": (lambda arm: arm.capabilities["koreacentral"].update(supportedServerVersions=[
                    {"name": "16", "status": "Available"}]),
                "PostgreSQL 14 is not offered in koreacentral (offered: 16)", "set server.version to one of 16"),
    "geo-backup": (lambda arm: arm.capabilities["koreacentral"].update(zoneRedundantHaAndGeoBackupSupported="Disabled"),
                   "is not offered in koreacentral", "Azure cannot add it after creation"),
    "replica-region": (lambda arm: _drop_sku(arm.capabilities["koreasouth"], "GeneralPurpose", "Standard_D2s_v3"),
                       "koreasouth does not offer Standard_D2s_v3", "choose a SKU the region offers"),
    "quota": (lambda arm: arm.quota_used.update({"koreacentral": {"standardDSv3Family": 46}}),
              "koreacentral standardDSv3Family: 8 vCores needed, 4 free (46 used of 50)", "request a quota increase"),
    "server-name": (lambda arm: arm.taken_names.add(SERVER),
                    f"{SERVER} cannot be used: AlreadyExists", "choose another server.name"),
    "network": (_subnet_of_another_service, "subnet subnet-database is delegated to Microsoft.Web/serverFarms",
                "use a subnet delegated to Microsoft.DBforPostgreSQL/flexibleServers"),
    "permissions": (lambda arm: arm.permissions.__setitem__(slice(None), [
                        {"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}]),
                    "Microsoft.DBforPostgreSQL/flexibleServers/write", "assign the runbooks' identity Contributor"),
    "budget-scope": (lambda arm: setattr(arm, "budget_refusal", (
                         400, "BadRequest", "Budgets are not supported for this subscription offer type")),
                     "Budgets are not supported for this subscription offer type", "Enterprise Agreement"),
}


def test_a_subscription_that_offers_what_the_spec_needs_passes_every_check_and_nothing_is_written(subscription):
    spec, arm, _ = subscription
    code, answer = preflight(spec)
    assert code == 0 and answer["ok"] is True, answer
    names = [c["name"] for c in answer["checks"]]
    assert names == ["providers", "sku", "zone-redundant-ha", "storage", "version", "geo-backup", "replica-region",
                     "quota", "server-name", "replica-name", "network", "permissions", "budget-scope", "secrets"]
    assert all(set(c) == {"name", "ok", "detail", "fix"} and c["fix"] is None for c in answer["checks"])
    quota = next(c for c in answer["checks"] if c["name"] == "quota")["detail"]
    assert "koreacentral standardDSv3Family: 8 needed" in quota      # 4 vCores, and as many for the HA standby
    assert not arm.writes and not arm.spec_problems


def test_before_the_resource_group_exists_only_roles_assigned_on_the_subscription_or_above_count(subscription):
    """The published API lists a caller's permissions only on a resource group or a resource:
    before the group is made, the preflight reads the caller's role assignments on the
    subscription and their definitions. Contributor assigned on another resource group does not
    let the runbooks' identity make this one, and the check says so."""
    spec, arm, _ = subscription
    assert RG not in arm.resources           # nothing made yet: the subscription's assignments are read
    try:
        arm.assignment_scopes[0] = RG.replace("rg-phonebill-prod", "rg-another-service")
        code, answer = preflight(spec)
        failed = [c for c in answer["checks"] if not c["ok"]]
        assert code == 1 and [c["name"] for c in failed] == ["permissions"], failed
        assert "Microsoft.Resources/subscriptions/resourceGroups/write" in failed[0]["detail"]
        assert "Microsoft.DBforPostgreSQL/flexibleServers/write" in failed[0]["detail"]
        assert not arm.writes and not arm.spec_problems
        reads = [p.lower() for m, p in arm.requests if "microsoft.authorization" in p.lower()]
        assert reads and all("/roleassignments" in p or "/roledefinitions/" in p for p in reads)
    finally:
        arm.assignment_scopes.clear()


@pytest.mark.parametrize("name", FAILING)
def test_each_check_fails_on_a_subscription_that_lacks_it_and_says_what_to_do(subscription, name):
    spec, arm, _ = subscription
    saved = json.dumps([arm.capabilities, arm.quota_used, arm.unregistered, sorted(arm.taken_names), arm.permissions,
                        arm.budget_refusal])
    resources = dict(arm.resources)
    break_it, found, fix = FAILING[name]
    try:
        break_it(arm)
        code, answer = preflight(spec)
        failed = [c for c in answer["checks"] if not c["ok"]]
        assert code == 1 and answer["ok"] is False
        assert [c["name"] for c in failed] == [name], failed
        assert found in failed[0]["detail"] and fix in failed[0]["fix"], failed[0]
        assert not arm.writes and not arm.spec_problems
    finally:
        caps, used, unregistered, taken, permissions, refusal = json.loads(saved)
        arm.capabilities, arm.quota_used, arm.unregistered, arm.taken_names = caps, used, unregistered, set(taken)
        arm.permissions, arm.budget_refusal = permissions, refusal
        arm.resources.clear()
        arm.resources.update(resources)


def test_secrets_are_read_where_the_spec_keeps_them_a_missing_key_vault_secret_is_named(subscription):
    spec, arm, _ = subscription
    vaulted = spec.with_name("prod-vault.yaml")
    vaulted.write_text(spec.read_text().replace(
        "azure:\n  evidence_archive: null\n",
        "azure:\n  evidence_archive: null\n  action_group:\n    name: ag-phonebill-prod\n    short_name: phonebill\n"
        "    teams_webhook: {key_vault: {vault: kv-phonebill-prod, secret: teams-webhook}}\n"))
    code, answer = preflight(vaulted)
    secrets = next(c for c in answer["checks"] if c["name"] == "secrets")
    assert code == 1 and not secrets["ok"]
    assert "Key Vault kv-phonebill-prod has no secret teams-webhook" in secrets["detail"]
    assert "a Key Vault secret" in secrets["fix"]
    arm.vault_secrets[("kv-phonebill-prod", "teams-webhook")] = "https://example.webhook.office.com/webhookb2/vault-key"
    try:
        code, answer = preflight(vaulted)
        assert code == 0 and answer["ok"], answer
        assert "vault-key" not in json.dumps(answer)                    # present, never shown
    finally:
        arm.vault_secrets.clear()


def test_the_install_runs_the_preflight_first_and_stops_before_phase_1(subscription):
    """The must-show: no zone-redundant HA in zone 2 for the SKU; `pcdb preflight` names the check
    and its fix, and the install ends before Phase 1 with the same words, having written nothing."""
    spec, arm, context = subscription
    sku = _sku(arm.capabilities["koreacentral"], "GeneralPurpose", "Standard_D4s_v3")
    sku["supportedZones"] = ["1", "3"]
    try:
        code, answer = preflight(spec)
        failed = [c for c in answer["checks"] if not c["ok"]]
        assert code == 1 and [c["name"] for c in failed] == ["zone-redundant-ha"]

        @flow(name="install")
        def install_through_arm() -> dict:
            return run_install(context(load_environment(spec)), [1, 2, 3, 4, 5, 6])
        state = install_through_arm(return_state=True)
        assert state.is_failed()
        assert "the preflight found 1 problem(s) before Phase 1; nothing was changed" in state.message
        assert "zone-redundant-ha: Standard_D4s_v3 is not offered in zone(s) 2" in state.message
        assert "set server.high_availability.standby_zone to one of 3" in state.message
        assert not arm.writes and not arm.spec_problems
    finally:
        sku["supportedZones"] = ["1", "2", "3"]


def test_without_usable_credentials_it_says_so_once_and_reads_nothing_else():
    from azure.core.exceptions import ClientAuthenticationError

    from pcdb.targets.factory import make_target
    from tests.azure.fake_arm import FakeArm

    class NoCredential:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    arm = FakeArm()
    target = make_target(load_environment("prod"), lambda ref, owner: "11111111-2222-3333-4444-555555555555",
                         credential=NoCredential(), transport=arm, polling_interval=0)
    found = target.preflight()
    assert [(c.name, c.ok) for c in found] == [("credentials", False)]
    assert "no usable Azure credentials" in found[0].detail and "az login" in found[0].fix
    assert arm.requests == []
