"""The REST-specification check of the fake ARM finds each kind of difference it claims to find
(a check that cannot fail would let the fake drift from Azure unseen)."""

from __future__ import annotations

from tests.azure.arm_spec import ArmSpec

SERVER = ("https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/"
          "flexibleServers/pg?api-version=2024-08-01")
GOOD = {"location": "koreacentral", "sku": {"name": "Standard_D4s_v3", "tier": "GeneralPurpose"},
        "properties": {"version": "14", "createMode": "Create", "administratorLogin": "pcdbadmin",
                       "storage": {"storageSizeGB": 256, "autoGrow": "Enabled"},
                       "highAvailability": {"mode": "ZoneRedundant", "standbyAvailabilityZone": "2"}}}


def test_a_request_as_the_specification_has_it_passes():
    spec = ArmSpec.load()
    assert spec.covers(SERVER)
    assert spec.check_request("PUT", SERVER, GOOD) == []
    assert spec.check_response("PUT", SERVER, 202, None, {"Location": "x", "Azure-AsyncOperation": "y"}) == []


def test_each_kind_of_difference_is_named():
    spec = ArmSpec.load()
    bad = {"sku": {"tier": "Premium"},
           "properties": {"version": "18", "state": "Ready", "storage": {"storageSizeGb": 256},
                          "replica": {"promoteMode": "Standalone"}}}
    found = spec.check_request("PUT", SERVER.replace("2024-08-01", "2026-10-01"), bad)
    assert found == [
        "PUT /subscriptions/s/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg "
        "(Servers_Create): api-version 2026-10-01, the specification checked is 2024-08-01",
        "Servers_Create request.sku.tier: 'Premium' is not one of ['Burstable', 'GeneralPurpose', 'MemoryOptimized']",
        "Servers_Create request.sku: required property 'name' missing",
        "Servers_Create request.properties.version: '18' is not one of ['16', '15', '14', '13', '12', '11']",
        "Servers_Create request.properties: read-only property 'state' sent",
        "Servers_Create request.properties.storage: property 'storageSizeGb' is not in the specification",
        "Servers_Create request.properties.replica.promoteMode: 'Standalone' is not one of ['standalone', 'switchover']",
        "Servers_Create request: required property 'location' missing",
    ]
    assert spec.check_response("PUT", SERVER, 202, None, {"Location": "x"}) == [
        "Servers_Create answer 202: final state via azure-async-operation, but no Azure-AsyncOperation header"]
    assert spec.check_response("PUT", SERVER, 204, None, {}) == [
        "Servers_Create answer 204: the operation answers 200, 201, 202, not 204"]
    assert spec.check_response("GET", SERVER, 200, {**GOOD, "properties": {"provisioningState": "Succeeded"}}, {}) == [
        "Servers_Get answer 200.properties: property 'provisioningState' is not in the specification"]
    assert spec.check_response("GET", SERVER, 404, {"message": "not found"}, {}) == [
        "Servers_Get answer 404: an error without ARM's error object"]
    assert spec.check_request("POST", SERVER.replace("/pg?", "/pg/failover?"), None) == [
        "POST /subscriptions/s/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg/failover: "
        "no operation of the specification 2024-08-01 has this path and method"]
