"""The REST-specification check of the fake ARM finds each kind of difference it claims to find
(a check that cannot fail would let the fake drift from Azure unseen)."""

from __future__ import annotations

import base64
import json

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


REGION = "https://management.azure.com/subscriptions/s/providers/Microsoft.DBforPostgreSQL/locations/koreacentral"


def test_the_preflight_reads_are_checked_each_against_the_version_it_is_first_published_in():
    """Capabilities at 2024-08-01; quota usages and name availability at 2025-08-01 (the fake's
    answers as the specification has them pass; a misspelt property, a wrong enum value or the
    other version is named)."""
    from tests.azure.fake_arm import QUOTA_LIMITS, region_capability

    spec = ArmSpec.load()
    caps = f"{REGION}/capabilities?api-version=2024-08-01"
    usages = f"{REGION}/resourceType/flexibleServers/usages?api-version=2025-08-01"
    names = f"{REGION}/checkNameAvailability?api-version=2025-08-01"
    assert all(spec.covers(u) for u in (caps, usages, names))
    capability = region_capability("koreacentral")
    assert spec.check_request("GET", caps, None) == []
    assert spec.check_response("GET", caps, 200, {"value": [capability]}, {}) == []
    sku = capability["supportedServerEditions"][1]["supportedServerSkus"][0]
    sku["supportedZone"] = sku.pop("supportedZones")                      # planted: a misspelt property
    capability["zoneRedundantHaSupported"] = "Yes"                        # planted: a value not in the enum
    assert spec.check_response("GET", caps, 200, {"value": [capability]}, {}) == [
        "LocationBasedCapabilities_Execute answer 200.value[0].zoneRedundantHaSupported: 'Yes' is not one of "
        "['Enabled', 'Disabled']",
        "LocationBasedCapabilities_Execute answer 200.value[0].supportedServerEditions[1].supportedServerSkus[0]: "
        "property 'supportedZone' is not in the specification"]
    good = {"value": [{"name": {"value": n, "localizedValue": n}, "limit": v, "unit": "Count", "currentValue": 0,
                       "id": f"{usages}/{n}"} for n, v in QUOTA_LIMITS.items()]}
    assert spec.check_response("GET", usages, 200, good, {}) == []
    good["value"][0]["currentvalue"] = good["value"][0].pop("currentValue")          # planted
    assert spec.check_response("GET", usages, 200, good, {}) == [
        "QuotaUsages_List answer 200.value[0]: property 'currentvalue' is not in the specification"]
    assert spec.check_request("GET", usages.replace("2025-08-01", "2024-08-01"), None) == [
        "GET /subscriptions/s/providers/Microsoft.DBforPostgreSQL/locations/koreacentral/resourceType/flexibleServers/"
        "usages (QuotaUsages_List): api-version 2024-08-01, the specification checked is 2025-08-01"]
    ask = {"name": "phonebill-postgresql-prod", "type": "Microsoft.DBforPostgreSQL/flexibleServers"}
    assert spec.check_request("POST", names, ask) == []
    assert spec.check_request("POST", names, {**ask, "nameAvailable": True}) == [
        "NameAvailability_CheckWithLocation request: property 'nameAvailable' is not in the specification"]
    assert spec.check_response("POST", names, 200, {**ask, "nameAvailable": False, "reason": "Taken"}, {}) == [
        "NameAvailability_CheckWithLocation answer 200.reason: 'Taken' is not one of ['Invalid', 'AlreadyExists']"]


def test_the_private_dns_calls_are_checked_and_a_misspelt_record_is_named():
    spec = ArmSpec.load()
    record = ("https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/privateDnsZones/"
              "phonebill-prod.private.postgres.database.azure.com/CNAME/pcdb-app?api-version=2024-06-01")
    link = record.replace("/CNAME/pcdb-app", "/virtualNetworkLinks/vnet-phonebill-prod-link")
    assert spec.covers(record) and spec.operation("PUT", link)["id"] == "VirtualNetworkLinks_CreateOrUpdate"
    cname = {"properties": {"ttl": 30, "cnameRecord": {"cname": "x.postgres.database.azure.com"}}}
    assert spec.check_request("PUT", record, cname) == []
    assert spec.check_request("PUT", record, {"properties": {"ttl": 30, "cnameRecords": [{"cname": "x"}]}}) == [
        "RecordSets_CreateOrUpdate request.properties: property 'cnameRecords' is not in the specification"]
    assert spec.check_response("GET", record, 200, {"name": "pcdb-app", "properties": {
        "ttl": 30, "provisioningState": "Succeeded"}}, {}) == [
        "RecordSets_Get answer 200.properties: property 'provisioningState' is not in the specification"]
    assert spec.check_request("PUT", link, {"location": "global", "properties": {
        "virtualNetwork": {"id": "/subscriptions/s/x"}, "registrationEnabled": False,
        "virtualNetworkLinkState": "Completed"}}) == [
        "VirtualNetworkLinks_CreateOrUpdate request.properties: read-only property 'virtualNetworkLinkState' sent"]


def test_the_failback_switchover_and_its_virtual_endpoints_are_checked():
    """#25 item 2: Azure's switchover needs virtual endpoints on the current primary; their create,
    and the switchover's PATCH of the replica, are checked against VirtualEndpoints.json and
    FlexibleServers.json (2024-08-01). Planted: a misspelt member list, an endpoint type Azure
    does not have, the read-only names sent, a promote mode not in the enum."""
    spec = ArmSpec.load()
    server = ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/"
              "phonebill-postgresql-replica")
    endpoint = f"{server}/virtualendpoints/phonebill-postgresql-prod-ve?api-version=2024-08-01"
    assert spec.covers(endpoint)
    body = {"properties": {"endpointType": "ReadWrite", "members": ["phonebill-postgresql-prod"]}}
    assert spec.check_request("PUT", endpoint, body) == []
    assert spec.check_response("PUT", endpoint, 202, None, {"Azure-AsyncOperation": "https://x/op",
                                                            "Location": "https://x/op"}) == []
    answer = {"id": endpoint.split("?")[0], "name": "phonebill-postgresql-prod-ve", "type": "x",
              "properties": {**body["properties"], "virtualEndpoints": ["ve.writer.postgres.database.azure.com"]}}
    assert spec.check_response("GET", endpoint, 200, answer, {}) == []
    planted = {"properties": {"endpointType": "ReadOnly", "member": ["phonebill-postgresql-prod"],
                              "virtualEndpoints": ["x"]}}
    assert sorted(spec.check_request("PUT", endpoint, planted)) == sorted([
        "VirtualEndpoints_Create request.properties.endpointType: 'ReadOnly' is not one of ['ReadWrite']",
        "VirtualEndpoints_Create request.properties: property 'member' is not in the specification",
        "VirtualEndpoints_Create request.properties: read-only property 'virtualEndpoints' sent"])
    switch = f"{server}?api-version=2024-08-01"
    assert spec.check_request("PATCH", switch, {"properties": {"replica": {"promoteMode": "switchover",
                                                                           "promoteOption": "planned"}}}) == []
    assert spec.check_request("PATCH", switch, {"properties": {"replica": {"promoteMode": "Switchover",
                                                                           "promoteOption": "planned"}}}) == [
        "Servers_Update request.properties.replica.promoteMode: 'Switchover' is not one of ['standalone', 'switchover']"]


def test_the_backups_and_firewall_rules_are_checked_at_the_version_pcdb_speaks_for_them():
    """2025-08-01: the 2024-08-01 files for these two are not in the stored specification, so pcdb
    speaks the version it is checked against; a misspelt property, an IP address that is none, the
    old upper-case backup type and the other version are each named."""
    spec = ArmSpec.load()
    rule = SERVER.replace("/pg?api-version=2024-08-01", "/pg/firewallRules/allow-app?api-version=2025-08-01")
    backups = SERVER.replace("/pg?api-version=2024-08-01", "/pg/backups?api-version=2025-08-01")
    assert spec.covers(rule) and spec.covers(backups)
    assert spec.check_request("PUT", rule, {"properties": {"startIpAddress": "10.0.1.0", "endIpAddress": "10.0.1.255"}}) == []
    assert spec.check_response("PUT", rule, 202, None, {"Location": "x", "Azure-AsyncOperation": "y"}) == []
    ip = r"^(([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])\.){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])$"
    assert spec.check_request("PUT", rule, {"properties": {"startIPAddress": "10.0.1.0", "endIpAddress": "10.0.1.300"}}) == [
        "FirewallRules_CreateOrUpdate request.properties: property 'startIPAddress' is not in the specification",
        f"FirewallRules_CreateOrUpdate request.properties.endIpAddress: '10.0.1.300' does not match {ip}",
        "FirewallRules_CreateOrUpdate request.properties: required property 'startIpAddress' missing"]
    listed = {"value": [{"id": "b", "name": "b", "properties": {"backupType": "Full", "completedTime": "2026-12-01T02:00:00Z",
                                                                 "source": "Automatic"}}]}
    assert spec.check_response("GET", backups, 200, listed, {}) == []
    listed["value"][0]["properties"]["backupType"] = "FULL"     # what the fake answered before
    assert spec.check_response("GET", backups, 200, listed, {}) == [
        "BackupsAutomaticAndOnDemand_ListByServer answer 200.value[0].properties.backupType: 'FULL' is not one of "
        "['Full', 'Customer On-Demand']"]
    assert spec.check_request("GET", backups.replace("2025-08-01", "2024-08-01"), None) == [
        "GET /subscriptions/s/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg/backups "
        "(BackupsAutomaticAndOnDemand_ListByServer): api-version 2024-08-01, the specification checked is 2025-08-01"]


def test_a_servers_azure_monitor_metrics_are_checked_with_the_resource_id_as_one_path_parameter():
    """Metrics_List at 2024-02-01 (azure-mgmt-monitor's metrics client): {resourceUri} is a whole
    resource id; a wrong unit, a misspelt timeStamp and the missing required one are named."""
    spec = ArmSpec.load()
    url = SERVER.replace("/pg?api-version=2024-08-01", "/pg/providers/Microsoft.Insights/metrics?api-version=2024-02-01"
                         "&timespan=2026-12-01T00:00:00Z/2026-12-01T01:00:00Z&metricnames=cpu_percent")
    assert spec.covers(url) and spec.check_request("GET", url, None) == []
    metric = {"id": "m", "type": "Microsoft.Insights/metrics", "name": {"value": "cpu_percent"}, "unit": "Percent",
              "timeseries": [{"data": [{"timeStamp": "2026-12-01T00:00:00Z", "average": 12.5, "maximum": 30.0}]}]}
    assert spec.check_response("GET", url, 200, {"timespan": "a/b", "interval": "PT1M", "value": [metric]}, {}) == []
    metric |= {"unit": "Percentage", "timeseries": [{"data": [{"timestamp": "2026-12-01T00:00:00Z"}]}]}
    assert spec.check_response("GET", url, 200, {"timespan": "a/b", "value": [metric]}, {}) == [
        "Metrics_List answer 200.value[0].unit: 'Percentage' is not one of ['Count', 'Bytes', 'Seconds', "
        "'CountPerSecond', 'BytesPerSecond', 'Percent', 'MilliSeconds', 'ByteSeconds', 'Unspecified', 'Cores', "
        "'MilliCores', 'NanoCores', 'BitsPerSecond']",
        "Metrics_List answer 200.value[0].timeseries[0].data[0]: property 'timestamp' is not in the specification",
        "Metrics_List answer 200.value[0].timeseries[0].data[0]: required property 'timeStamp' missing"]


def test_the_write_once_archives_container_and_immutability_policy_are_checked():
    """Microsoft.Storage blob.json at 2023-05-01: a misspelt retention (the archives would not be
    write-once) is named, and so are the answers the fake gave before it was checked (201 for a
    policy, provisioningState and systemData on a v1 resource)."""
    spec = ArmSpec.load()
    account = ("https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/"
               "storageAccounts/st/blobServices/default/containers/pcdb-run-reports")
    policy = account + "/immutabilityPolicies/default?api-version=2023-05-01"
    container = account + "?api-version=2023-05-01"
    assert spec.covers(policy) and spec.covers(container)
    good = {"properties": {"immutabilityPeriodSinceCreationInDays": 1095, "allowProtectedAppendWrites": False}}
    assert spec.check_request("PUT", policy, good) == []
    assert spec.check_request("PUT", policy, {"properties": {"immutabilityPeriodSinceCreationInDay": 1095}}) == [
        "BlobContainers_CreateOrUpdateImmutabilityPolicy request.properties: property "
        "'immutabilityPeriodSinceCreationInDay' is not in the specification"]
    answer = {"id": "p", "name": "default", "type": "t", "etag": '"1"',
              "properties": {**good["properties"], "state": "Unlocked"}}
    assert spec.check_response("PUT", policy, 200, answer, {"ETag": '"1"'}) == []
    assert spec.check_response("PUT", policy, 201, answer, {}) == [
        "BlobContainers_CreateOrUpdateImmutabilityPolicy answer 201: the operation answers 200, not 201"]
    before = {"id": "c", "name": "c", "type": "t", "systemData": {"createdAt": "2026-12-01T00:00:00Z"},
              "properties": {"publicAccess": "None", "provisioningState": "Succeeded"}}
    assert spec.check_request("PUT", container, {"properties": {"publicAccess": "None"}}) == []
    assert spec.check_response("PUT", container, 201, before, {}) == [
        "BlobContainers_Create answer 201: property 'systemData' is not in the specification",
        "BlobContainers_Create answer 201.properties: property 'provisioningState' is not in the specification"]


def test_the_resource_group_and_a_providers_registration_are_checked():
    """Microsoft.Resources at 2025-04-01 (azure-mgmt-resource's version): a group without its
    location, and the systemData the fake gave a group before it was checked, are named."""
    spec = ArmSpec.load()
    group = "https://management.azure.com/subscriptions/s/resourcegroups/rg-phonebill-prod?api-version=2025-04-01"
    provider = "https://management.azure.com/subscriptions/s/providers/Microsoft.DBforPostgreSQL?api-version=2025-04-01"
    assert spec.covers(group) and spec.covers(provider)
    assert spec.check_request("PUT", group, {"location": "koreacentral", "tags": {"service": "phonebill"}}) == []
    assert spec.check_request("PUT", group, {"tags": {"service": "phonebill"}}) == [
        "ResourceGroups_CreateOrUpdate request: required property 'location' missing"]
    answer = {"id": "g", "name": "rg", "type": "Microsoft.Resources/resourceGroups", "location": "koreacentral",
              "properties": {"provisioningState": "Succeeded"}}
    assert spec.check_response("PUT", group, 201, answer, {}) == []
    assert spec.check_response("GET", group, 200, {**answer, "systemData": {}}, {}) == [
        "ResourceGroups_Get answer 200: property 'systemData' is not in the specification"]
    assert spec.check_response("GET", provider, 200, {"id": "p", "namespace": "Microsoft.DBforPostgreSQL",
                                                      "registrationState": "Registered"}, {}) == []


def test_the_virtual_network_and_its_delegated_subnet_are_checked():
    """Microsoft.Network at 2026-03-01 (azure-mgmt-network 33.1.0): a misspelt address prefix or
    delegation, and the systemData the fake gave them before it was checked, are named."""
    spec = ArmSpec.load()
    vnet = ("https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/"
            "virtualNetworks/vnet-phonebill?api-version=2026-03-01")
    subnet = vnet.replace("?api", "/subnets/subnet-database?api")
    assert spec.covers(vnet) and spec.covers(subnet)
    assert spec.check_request("PUT", vnet, {"location": "koreacentral",
                                            "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}}}) == []
    delegation = {"name": "postgresql", "properties": {"serviceName": "Microsoft.DBforPostgreSQL/flexibleServers"}}
    assert spec.check_request("PUT", subnet, {"properties": {"addressPrefix": "10.0.1.0/24",
                                                             "delegations": [delegation]}}) == []
    assert spec.check_request("PUT", subnet, {"properties": {"addressPrefixe": "10.0.1.0/24", "delegations": [
        {"name": "postgresql", "properties": {"service": "Microsoft.DBforPostgreSQL/flexibleServers"}}]}}) == [
        "Subnets_CreateOrUpdate request.properties: property 'addressPrefixe' is not in the specification",
        "Subnets_CreateOrUpdate request.properties.delegations[0].properties: property 'service' is not in the "
        "specification"]
    answer = {"id": "v", "name": "vnet-phonebill", "type": "Microsoft.Network/virtualNetworks", "location": "koreacentral",
              "etag": 'W/"1"', "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                                              "provisioningState": "Succeeded"}}
    assert spec.check_response("PUT", vnet, 201, answer, {}) == []
    assert spec.check_response("GET", vnet, 200, {**answer, "systemData": {}}, {}) == [
        "VirtualNetworks_Get answer 200: property 'systemData' is not in the specification"]


def _phase_6(spec: ArmSpec) -> dict[str, tuple[str, dict]]:
    """Phase 6's resources (and the archives' account) as pcdb sends them: type -> (url, body)."""
    from pcdb.azure.desired import desired_resources
    from pcdb.config import load_environment

    out = {}
    for d in desired_resources(load_environment("prod"), "11111111-2222-3333-4444-555555555555"):
        if d.type in ("log_analytics_workspace", "diagnostic_setting", "workbook", "action_group", "metric_alert",
                      "activity_log_alert", "log_alert", "budget", "storage_account") and d.type not in out:
            url = f"https://management.azure.com{d.id}"
            version = spec.operation("PUT", url)["api_version"]
            out[d.type] = (f"{url}?api-version={version}", d.body())
    return out


def test_every_phase_6_body_pcdb_sends_is_as_the_specification_has_it():
    """The workspace, the server's diagnostic setting, the workbook, the action groups, the metric,
    activity-log and log alerts, the budget and the storage account: each at the API version the
    SDK (or the generic client) speaks, each body without a difference."""
    spec = ArmSpec.load()
    bodies = _phase_6(spec)
    assert len(bodies) == 9
    for kind, (url, body) in bodies.items():
        assert spec.covers(url), kind
        assert spec.check_request("PUT", url, body) == [], kind
    assert {k: spec.operation("PUT", u)["api_version"] for k, (u, _) in bodies.items()} == {
        "log_analytics_workspace": "2025-07-01", "diagnostic_setting": "2021-05-01-preview",
        "workbook": "2022-04-01", "action_group": "2023-01-01", "metric_alert": "2018-03-01",
        "activity_log_alert": "2020-10-01", "log_alert": "2023-12-01", "budget": "2021-10-01",
        "storage_account": "2023-05-01"}


def test_each_planted_difference_in_the_monitoring_and_archive_bodies_is_named():
    """A misspelt or unknown polymorphic kind, a value outside an enum or a length, a required
    property left out (the budget's contactEmails, which pcdb did not send before it was
    checked), a read-only property sent, and a property whose definition the extract leaves out."""
    import copy

    spec = ArmSpec.load()
    bodies = copy.deepcopy(_phase_6(spec))
    url, alert = bodies["metric_alert"]
    alert["properties"]["criteria"]["allOf"][0] |= {"timeAggregation": "Avg", "metricNamespaces": "x"}
    assert spec.check_request("PUT", url, alert) == [
        "MetricAlerts_CreateOrUpdate request.properties.criteria.allOf[0].timeAggregation: 'Avg' is not one of "
        "['Average', 'Count', 'Minimum', 'Maximum', 'Total']",
        "MetricAlerts_CreateOrUpdate request.properties.criteria.allOf[0]: property 'metricNamespaces' is not in "
        "the specification"]
    alert["properties"]["criteria"]["odata.type"] = "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriterion"
    assert spec.check_request("PUT", url, alert) == [
        "MetricAlerts_CreateOrUpdate request.properties.criteria: odata.type "
        "'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriterion' is not a kind the specification extracts "
        "describe"]
    url, budget = bodies["budget"]
    for notification in budget["properties"]["notifications"].values():
        del notification["contactEmails"]
    assert spec.check_request("PUT", url, budget) == [
        "Budgets_CreateOrUpdate request.properties.notifications.actual-over-budget: required property "
        "'contactEmails' missing",
        "Budgets_CreateOrUpdate request.properties.notifications.forecast-over-alert: required property "
        "'contactEmails' missing"]
    url, account = bodies["storage_account"]
    account["sku"]["tier"] = "Standard"
    account["properties"] |= {"minimumTlsVersion": "TLS1_3", "encryption": {"keySource": "Microsoft.Storage"}}
    assert spec.check_request("PUT", url, account) == [
        "StorageAccounts_Create request.sku: read-only property 'tier' sent",
        "StorageAccounts_Create request.properties.minimumTlsVersion: 'TLS1_3' is not one of "
        "['TLS1_0', 'TLS1_1', 'TLS1_2']",
        "StorageAccounts_Create request.properties.encryption: its definition Storage.Encryption is not in the "
        "extracts (left out as never used)"]
    url, group = bodies["action_group"]
    group["properties"]["groupShortName"] = "phonebill-prod"
    assert spec.check_request("PUT", url, group) == [
        "ActionGroups_CreateOrUpdate request.properties.groupShortName: 'phonebill-prod' is longer than 12"]
    url, rule = bodies["log_alert"]
    rule["properties"]["severity"] = 5
    assert spec.check_request("PUT", url, rule) == [
        "ScheduledQueryRules_CreateOrUpdate request.properties.severity: 5 is not one of [0, 1, 2, 3, 4]"]
    url, setting = bodies["diagnostic_setting"]
    del setting["properties"]["logs"][0]["enabled"]
    assert spec.check_request("PUT", url, setting) == [
        "DiagnosticSettings_CreateOrUpdate request.properties.logs[0]: required property 'enabled' missing"]
    url, workbook = bodies["workbook"]
    del workbook["properties"]["serializedData"]
    assert spec.check_request("PUT", url, workbook) == [
        "Workbooks_CreateOrUpdate request.properties: required property 'serializedData' missing"]


def test_the_answers_the_fake_gave_before_the_monitoring_calls_were_checked_are_named():
    """systemData and provisioningState where the specification has none (an action group), a
    201 where a storage account answers 200 or 202, a 202 without the Location to poll, and a
    workspace state outside the enum."""
    spec = ArmSpec.load()
    bodies = _phase_6(spec)
    url, group = bodies["action_group"]
    answer = {**group, "id": "g", "name": "g", "type": "Microsoft.Insights/actionGroups"}
    assert spec.check_response("PUT", url, 201, answer, {}) == []
    answer = {**answer, "systemData": {}, "properties": {**group["properties"], "provisioningState": "Succeeded"}}
    assert spec.check_response("PUT", url, 200, answer, {}) == [
        "ActionGroups_CreateOrUpdate answer 200.properties: property 'provisioningState' is not in the specification",
        "ActionGroups_CreateOrUpdate answer 200: property 'systemData' is not in the specification"]
    url, account = bodies["storage_account"]
    assert spec.check_response("PUT", url, 202, None, {"Location": "https://management.azure.com/o/1"}) == []
    assert spec.check_response("PUT", url, 202, None, {}) == [
        "StorageAccounts_Create answer 202: a long-running operation's 202 without a Location header"]
    assert spec.check_response("PUT", url, 201, account, {}) == [
        "StorageAccounts_Create answer 201: the operation answers 200, 202, not 201"]
    url, workspace = bodies["log_analytics_workspace"]
    answer = {**workspace, "id": "w", "name": "w", "type": "t", "properties": {"provisioningState": "Done"}}
    assert spec.check_response("GET", url, 200, answer, {}) == [
        "Workspaces_Get answer 200.properties.provisioningState: 'Done' is not one of ['Creating', 'Succeeded', "
        "'Failed', 'Canceled', 'Deleting', 'ProvisioningAccount', 'Updating']"]


def test_the_preflights_permission_reads_are_operations_of_the_specification():
    """Microsoft.Authorization at 2022-04-01 lists permissions on a resource group or a resource,
    never on a subscription: that call (which pcdb made before the resource group existed, until
    this check) is named; the role assignments and definitions read instead pass."""
    spec = ArmSpec.load()
    sub = "https://management.azure.com/subscriptions/s/providers/Microsoft.Authorization"
    assert spec.check_request("GET", f"{sub}/permissions?api-version=2022-04-01", None) == [
        "GET /subscriptions/s/providers/Microsoft.Authorization/permissions: no operation of the specification "
        "2024-08-01 has this path and method"]
    group = "https://management.azure.com/subscriptions/s/resourcegroups/rg/providers/Microsoft.Authorization"
    assert spec.check_request("GET", f"{group}/permissions?api-version=2022-04-01", None) == []
    assignments = f"{sub}/roleAssignments?$filter=assignedTo('p')&api-version=2022-04-01"
    role = "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/00000000-0000-4000-8000-000000000000"
    assignment = {"id": "a", "name": "a", "type": "Microsoft.Authorization/roleAssignments",
                  "properties": {"scope": "/subscriptions/s", "roleDefinitionId": role, "principalId": "p"}}
    assert spec.check_request("GET", assignments, None) == []
    assert spec.check_response("GET", assignments, 200, {"value": [assignment]}, {}) == []
    assignment["properties"]["roleDefinitionID"] = assignment["properties"].pop("roleDefinitionId")
    assert spec.check_response("GET", assignments, 200, {"value": [assignment]}, {}) == [
        "RoleAssignments_ListForSubscription answer 200.value[0].properties: property 'roleDefinitionID' is not in "
        "the specification",
        "RoleAssignments_ListForSubscription answer 200.value[0].properties: required property 'roleDefinitionId' "
        "missing"]
    definition = {"id": role, "name": "r", "type": "Microsoft.Authorization/roleDefinitions",
                  "properties": {"roleName": "Contributor", "type": "BuiltInRole", "assignableScopes": ["/"],
                                 "permissions": [{"actions": ["*"], "notActions": [], "dataActions": []}]}}
    url = f"https://management.azure.com{role}?api-version=2022-04-01"
    assert spec.covers(url) and spec.check_response("GET", url, 200, definition, {}) == []


def test_the_principal_is_read_from_the_tokens_oid_claim_and_nothing_else_passes():
    from pcdb.azure.preflight import principal_id
    from tests.azure.fake_arm import PRINCIPAL, FakeCredential

    assert principal_id(FakeCredential().get_token("https://management.azure.com/.default").token) == PRINCIPAL
    assert principal_id("fake-token") is None
    assert principal_id("a.!!!.c") is None
    payload = base64.urlsafe_b64encode(json.dumps({"oid": "x' or 1 eq 1"}).encode()).decode().rstrip("=")
    assert principal_id(f"h.{payload}.") is None        # only an object id goes into the $filter
