"""An in-process Azure Resource Manager for tests: the real SDK clients talk to it through the
azure-core transport. Resources are kept in a dict by id; each provider answers in its own
long-running-operation style (202 + Azure-AsyncOperation for flexible servers, 201 for network
and DNS, synchronous 200 for resource groups and monitor); a PUT is followed by the poller's
GET; failures carry ARM error objects; throttling answers 429 with Retry-After."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

from pcdb import clock
from tests.azure.arm_spec import ArmSpec

BASE = "https://management.azure.com"
WRITE_ONLY = ("administratorLoginPassword",)
STATIC_PARAMETERS = {"shared_buffers", "max_connections", "wal_buffers", "shared_preload_libraries"}
# What ARM reports as a parameter's defaultValue: PostgreSQL's built-in value (pg_settings.boot_val).
_BOOT_VALUES = {row["name"].lower(): row["boot"] or "" for row in json.loads(
    (Path(__file__).resolve().parents[2] / "pcdb" / "data" / "pg15_settings.json").read_text())}


# What the region offers, as the Capabilities API (2024-08-01) answers: Korea Central has three
# availability zones and zone-redundant HA; Korea South has no availability zones (same-zone HA
# only). SKUs, storage sizes (MiB) and versions as Azure lists them for the flexible server.
_SKUS = {"Burstable": [("Standard_B1ms", 1), ("Standard_B2s", 2)],
         "GeneralPurpose": [("Standard_D2s_v3", 2), ("Standard_D4s_v3", 4), ("Standard_D8s_v3", 8),
                            ("Standard_D2ds_v5", 2), ("Standard_D4ds_v5", 4), ("Standard_D8ds_v5", 8)],
         "MemoryOptimized": [("Standard_E2ds_v5", 2), ("Standard_E4ds_v5", 4), ("Standard_E8ds_v5", 8)]}
_STORAGE_MB = [32768, 65536, 131072, 262144, 524288, 1048576, 2097152, 4193280, 4194304, 8388608, 16777216, 33553408]


def region_capability(location: str, zones: tuple[str, ...] | None = None) -> dict:
    zones = zones if zones is not None else (("1", "2", "3") if location == "koreacentral" else ())
    modes = ["SameZone", "ZoneRedundant"] if len(zones) > 1 else ["SameZone"]
    return {
        "name": "FlexibleServerCapabilities", "status": "Available", "restricted": "Disabled",
        "zoneRedundantHaSupported": "Enabled" if len(zones) > 1 else "Disabled",
        "geoBackupSupported": "Enabled", "zoneRedundantHaAndGeoBackupSupported": "Enabled" if len(zones) > 1 else "Disabled",
        "storageAutoGrowthSupported": "Enabled", "onlineResizeSupported": "Enabled", "fastProvisioningSupported": "Disabled",
        "supportedServerEditions": [{
            "name": tier, "defaultSkuName": skus[0][0], "status": "Available",
            "supportedStorageEditions": [{"name": "ManagedDisk", "defaultStorageSizeMb": 131072, "status": "Available",
                                          "supportedStorageMb": [{"storageSizeMb": mb, "maximumStorageSizeMb": mb,
                                                                  "status": "Available"} for mb in _STORAGE_MB]}],
            "supportedServerSkus": [{"name": name, "vCores": vcores, "supportedZones": list(zones),
                                     "supportedHaMode": modes, "supportedMemoryPerVcoreMb": 4096, "status": "Available"}
                                    for name, vcores in skus]} for tier, skus in _SKUS.items()],
        "supportedServerVersions": [{"name": v, "status": "Available",
                                     "supportedVersionsToUpgrade": [str(n) for n in range(int(v) + 1, 17)]}
                                    for v in ("12", "13", "14", "15", "16")]}


# The vCore quotas of a subscription in a region (QuotaUsages, 2025-08-01): the regional total and
# per family, as Azure names them.
QUOTA_LIMITS = {"cores": 100, "standardBSFamily": 50, "standardDSv3Family": 50, "standardDDSv5Family": 50,
                "standardEDSv5Family": 50}

# Contributor with Monitoring Metrics Publisher and Storage Blob Data Contributor: what the
# runbooks' identity is given (Microsoft.Authorization/permissions answers per role assignment).
CONTRIBUTOR = ({"actions": ["*"], "notActions": ["Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write",
                                                 "Microsoft.Authorization/elevateAccess/Action"],
                "dataActions": [], "notDataActions": []},
               {"actions": ["Microsoft.Insights/Register/Action", "Microsoft.Support/*",
                            "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": [],
                "dataActions": ["Microsoft.Insights/Metrics/Write"], "notDataActions": []},
               {"actions": ["Microsoft.Storage/storageAccounts/blobServices/containers/*"], "notActions": [],
                "dataActions": ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*"], "notDataActions": []})


class _Raw:
    def close(self) -> None:
        pass

    def read(self) -> bytes:
        return b""


def _response(request, status: int, body=None, headers=None):
    response = HttpResponseImpl(request=request, internal_response=_Raw(), status_code=status, reason=str(status),
                                content_type="application/json", headers=case_insensitive_dict(headers or {}),
                                stream_download_generator=None)
    response._content = json.dumps(body).encode() if body is not None else b""
    response._is_stream_consumed = True
    return response


_GRAINS = {"PT1M": 60, "PT5M": 300, "PT15M": 900, "PT30M": 1800, "PT1H": 3600, "PT6H": 21600, "PT12H": 43200,
           "P1D": 86400}


def _aggregate(points: list[tuple[str, float]], span: str, interval: str) -> list[dict]:
    """What Azure Monitor answers: the points within the timespan, in buckets of the interval
    (time grain), each bucket's average and maximum."""

    grain = _GRAINS[interval]
    start, end = ((datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp() for x in span.split("/"))
                  if "/" in span else (float("-inf"), float("inf")))
    buckets: dict[int, list[float]] = {}
    for t, v in points:
        at = datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        if start <= at < end:
            buckets.setdefault(int(at // grain * grain), []).append(v)
    return [{"timeStamp": datetime.fromtimestamp(b, timezone.utc).isoformat().replace("+00:00", "Z"),
             "average": sum(vs) / len(vs), "maximum": max(vs), "minimum": min(vs)} for b, vs in sorted(buckets.items())]


# The principal the fake credential's tokens are for (the runbooks' identity in these tests).
PRINCIPAL = "5d3e1c7a-9b2f-4e61-8a0d-3c4b5a6f7e80"


class FakeCredential:
    """Tokens shaped as Entra ID's: a JWT (unsigned) whose payload names the principal (oid)."""

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        def part(value: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

        claims = {"aud": "https://management.azure.com", "oid": PRINCIPAL, "exp": 4102444800}
        return AccessToken(f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.", 4102444800)


def _role_id(scope: str, index: int) -> str:
    return f"{scope}/providers/Microsoft.Authorization/roleDefinitions/00000000-0000-4000-8000-{index:012d}"


# Azure Database for PostgreSQL's metrics in the units Azure Monitor reports them (its supported
# metrics list): a percentage is "Percent", a size "Bytes"; the rest are counts.
METRIC_UNITS = {"cpu_percent": "Percent", "memory_percent": "Percent", "storage_percent": "Percent",
                "storage_used": "Bytes", "active_connections": "Count", "tps": "Count"}


class FakeArm(HttpTransport):
    """ARM in a dict. ``requests`` records (method, path) of every call; ``sleeps`` every delay asked."""

    made: list[FakeArm] = []       # every instance, for the check after each test

    def __init__(self):
        self.resources: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, dict]] = []  # (path, body) of every PUT, as sent
        self.sleeps: list[float] = []
        self.throttle: dict[str, int] = {}       # path fragment -> how many 429s to answer first
        self.fail: dict[str, tuple[str, str]] = {}  # path fragment -> (code, message) of a failed operation
        self.metrics: dict[str, list[tuple[str, float]]] = {}  # metric name -> [(ISO time, value)]
        # (server name, metric name) -> [(ISO time, value)]: one server's own series, where a test
        # needs the servers to differ (else every resource answers ``metrics``)
        self.server_metrics: dict[tuple[str, str], list[tuple[str, float]]] = {}
        self.unavailable: dict[str, int] = {}  # path fragment -> how many more 503 answers
        self.costs: list[list] = []            # Cost Management rows: [cost, yyyymmdd, category, sub, currency]
        # Every request and answer on a flexible server checked against the REST specification
        # (tests/azure/arm_spec.py); a test fails on what differs (tests/conftest.py).
        self.spec = ArmSpec.load()
        self.spec_problems: list[str] = []
        # What the preflight reads (pcdb/azure/preflight.py); a test changes one to make it fail.
        self.capabilities: dict[str, dict] = {loc: region_capability(loc) for loc in ("koreacentral", "koreasouth")}
        self.quota_limits: dict[str, dict[str, int]] = {loc: dict(QUOTA_LIMITS) for loc in ("koreacentral", "koreasouth")}
        self.quota_used: dict[str, dict[str, int]] = {}      # location -> quota name -> vCores used elsewhere
        self.unregistered: dict[str, str] = {}               # namespace -> its registration state
        self.taken_names: set[str] = set()                   # server names used in another subscription
        self.permissions: list[dict] = [dict(p) for p in CONTRIBUTOR]
        self.assignment_scopes: dict[int, str] = {}          # role index -> where it is assigned (else the subscription)
        self.budget_refusal: tuple[int, str, str] | None = None
        self.vault_secrets: dict[tuple[str, str], str] = {}  # (vault, secret name) -> value (Key Vault's data plane)
        FakeArm.made.append(self)

    # HttpTransport protocol
    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def sleep(self, duration: float) -> None:
        self.sleeps.append(duration)  # never really sleep: retries and polls are recorded

    @property
    def writes(self) -> list[tuple[str, str]]:
        """Every call that may change something (a name-availability check is a POST that reads)."""
        return [r for r in self.requests if r[0] in ("PUT", "PATCH", "POST", "DELETE")
                and not r[1].lower().endswith("/checknameavailability")]

    def send(self, request, **kwargs):
        """ARM's answer; with ``self.spec`` (an ArmSpec), the request and the answer are checked
        against the REST specification first, and what differs is kept in ``spec_problems``."""
        response = self._answer(request)
        if self.spec is not None and self.spec.covers(request.url):
            body = json.loads(request.content) if request.content else None
            self.spec_problems += self.spec.check_request(request.method, request.url, body)
            answer = json.loads(response._content) if response._content else None
            self.spec_problems += self.spec.check_response(request.method, request.url, response.status_code, answer,
                                                           dict(response.headers))
        return response

    def _answer(self, request):
        path = urlparse(request.url).path
        method = request.method
        self.requests.append((method, path))
        for fragment, left in list(self.unavailable.items()):
            if fragment in path and left > 0:   # a 503 from ARM, e.g. a backups list during an incident
                self.unavailable[fragment] = left - 1
                return _response(request, 503, {"error": {"code": "ServiceUnavailable", "message": "try again later"}})
        for fragment, left in list(self.throttle.items()):
            if fragment in path and left > 0:
                self.throttle[fragment] = left - 1
                return _response(request, 429, {"error": {"code": "TooManyRequests", "message": "throttled"}},
                                 {"Retry-After": "7"})
        host = urlparse(request.url).hostname or ""
        if host.endswith(".vault.azure.net") and method == "GET" and path.startswith("/secrets/"):
            name = path.split("/")[2]      # Key Vault's GET /secrets/{name} (api-version 7.4)
            value = self.vault_secrets.get((host.split(".")[0], name))
            if value is None:
                return _response(request, 404, {"error": {"code": "SecretNotFound",
                                                          "message": f"A secret with (name/id) {name} was not found"}})
            return _response(request, 200, {"value": value, "id": f"https://{host}{path}"})
        if host.endswith(".monitoring.azure.com") and method == "POST" and path.endswith("/metrics"):
            body = json.loads(request.content or b"{}")   # a custom metric: kept, and answered by metric GETs
            self.bodies.append((f"{host}{path}", body))
            data = body["data"]["baseData"]
            self.metrics.setdefault(data["metric"], []).append((body["time"], data["series"][0]["sum"]))
            return _response(request, 200, None)
        if method == "POST" and path.lower().endswith("/providers/microsoft.costmanagement/query"):
            self.bodies.append((path, json.loads(request.content or b"{}")))   # Cost Management: the rows set
            return _response(request, 200, {"properties": {"columns": [
                {"name": "Cost", "type": "Number"}, {"name": "UsageDate", "type": "Number"},
                {"name": "MeterCategory", "type": "String"}, {"name": "MeterSubCategory", "type": "String"},
                {"name": "Currency", "type": "String"}], "rows": self.costs}})
        if path.startswith("/operations/"):
            return _response(request, 200, self.operations[path])
        answered = self._subscription_reads(request, method, path)
        if answered is not None:
            return answered
        key = path.lower()
        if method == "GET" and key.endswith("/providers/microsoft.insights/metrics"):
            query = dict(part.split("=", 1) for part in urlparse(request.url).query.split("&") if "=" in part)
            from urllib.parse import unquote
            names = unquote(query.get("metricnames", "")).split(",")
            interval = unquote(query.get("interval", "PT1M"))
            span = unquote(query.get("timespan", ""))
            return _response(request, 200, {"timespan": span, "interval": interval, "value": [
                {"id": f"{path}/{n}", "type": "Microsoft.Insights/metrics", "name": {"value": n},
                 "unit": METRIC_UNITS.get(n, "Count"),
                 "timeseries": [{"data": _aggregate(self.server_metrics.get(
                     (key.split("/flexibleservers/")[-1].split("/")[0], n), self.metrics.get(n, [])), span, interval)}]}
                for n in names]})
        if method == "GET" and key.endswith("/configurations"):  # a server's parameters, as ARM lists them
            return _response(request, 200, {"value": [v for k, v in self.resources.items() if k.startswith(key + "/")]})
        if method == "GET" and not key.endswith(("/backups", "/metrics")):
            if key in self.resources:
                return _response(request, 200, self.resources[key])
            return _response(request, 404, {"error": {"code": "ResourceNotFound",
                                                      "message": f"The resource '{path}' was not found."}})
        if method == "GET" and key.endswith("/backups"):
            return _response(request, 200, {"value": [v for k, v in self.resources.items() if k.startswith(key + "/")]})
        if method == "PUT":
            return self._put(request, path, key)
        if method == "PATCH" and key in self.resources:
            patch = json.loads(request.content or b"{}")
            self.bodies.append((path, patch))
            self.resources[key].setdefault("properties", {}).update(patch.get("properties", {}))
            if "tags" in patch:
                self.resources[key]["tags"] = patch["tags"]
            return self._accepted(request)
        if method == "POST":
            self.bodies.append((path, json.loads(request.content or b"{}")))
            if key.endswith("/restart"):
                server = key.rsplit("/", 1)[0]
                if server not in self.resources:
                    return _response(request, 404, {"error": {"code": "ResourceNotFound", "message": path}})
                for k, v in self.resources.items():  # a restart applies pending static parameters
                    if k.startswith(server + "/configurations/"):
                        v["properties"].pop("isConfigPendingRestart", None)
            return self._accepted(request)
        if method == "DELETE":   # a resource goes with what is under it (a server's parameters, databases...)
            for gone in [k for k in self.resources if k == key or k.startswith(key + "/")]:
                del self.resources[gone]
            return self._accepted(request)
        return _response(request, 405, {"error": {"code": "MethodNotAllowed", "message": method}})

    def _subscription_reads(self, request, method: str, path: str):
        """What the preflight reads, answered as ARM does: a provider's registration, a region's
        capabilities (2024-08-01) and quota usages (2025-08-01), name availability, the caller's
        permissions on a scope (Microsoft.Authorization), budgets on a scope, a zone's VNet links."""
        low = path.lower()
        if method == "GET" and re.fullmatch(r"/subscriptions/[^/]+/providers/[^/]+", low):
            namespace = path.rsplit("/", 1)[1]
            return _response(request, 200, {"id": path, "namespace": namespace,
                                             "registrationState": self.unregistered.get(namespace, "Registered")})
        located = re.fullmatch(r"/subscriptions/[^/]+/providers/microsoft\.dbforpostgresql/locations/([^/]+)/(.+)", low)
        if located and method == "GET" and located.group(2) == "capabilities":
            found = self.capabilities.get(located.group(1))
            return _response(request, 200, {"value": [found] if found else []})
        if located and method == "GET" and located.group(2) == "resourcetype/flexibleservers/usages":
            location = located.group(1)
            used = self._vcores_used(location)
            return _response(request, 200, {"value": [
                {"name": {"value": name, "localizedValue": name}, "limit": limit, "unit": "Count",
                 "currentValue": used.get(name, 0), "id": f"{path}/{name}"}
                for name, limit in self.quota_limits.get(location, {}).items()]})
        if located and method == "POST" and located.group(2) == "checknameavailability":
            body = json.loads(request.content or b"{}")
            name = body.get("name", "")
            taken = name in self.taken_names or any(k.endswith(f"/flexibleservers/{name.lower()}") for k in self.resources)
            return _response(request, 200, {"name": name, "type": body.get("type"), "nameAvailable": not taken,
                                             **({"reason": "AlreadyExists", "message": "Specified server name is "
                                                 "already used."} if taken else {})})
        if method == "GET" and re.fullmatch(r"/subscriptions/[^/]+/resourcegroups/[^/]+/providers/"
                                            r"microsoft\.authorization/permissions", low):
            scope = low.rsplit("/providers/microsoft.authorization/permissions", 1)[0]
            if scope not in self.resources:
                group = scope.rsplit("/", 1)[1]
                return _response(request, 404, {"error": {"code": "ResourceGroupNotFound",
                                                          "message": f"Resource group '{group}' could not be found."}})
            return _response(request, 200, {"value": self.permissions})
        if method == "GET" and re.fullmatch(r"/subscriptions/[^/]+/providers/microsoft\.authorization/roleassignments",
                                            low):
            # one role per entry of ``permissions``, assigned on the subscription to the caller
            scope = path.rsplit("/providers/", 1)[0]
            wanted = parse_qs(urlparse(request.url).query).get("$filter", [""])[0] == f"assignedTo('{PRINCIPAL}')"
            return _response(request, 200, {"value": [
                {"id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid5(uuid.NAMESPACE_URL, str(i))}",
                 "name": str(uuid.uuid5(uuid.NAMESPACE_URL, str(i))), "type": "Microsoft.Authorization/roleAssignments",
                 "properties": {"scope": self.assignment_scopes.get(i, scope), "roleDefinitionId": _role_id(scope, i),
                                "principalId": PRINCIPAL,
                                "principalType": "ServicePrincipal"}}
                for i in range(len(self.permissions))] if wanted else []})
        role = re.fullmatch(r"(/subscriptions/[^/]+)/providers/microsoft\.authorization/roledefinitions/"
                            r"00000000-0000-4000-8000-(\d{12})", low)
        if method == "GET" and role and int(role.group(2)) < len(self.permissions):
            index = int(role.group(2))
            return _response(request, 200, {"id": path, "name": path.rsplit("/", 1)[1],
                                             "type": "Microsoft.Authorization/roleDefinitions",
                                             "properties": {"roleName": f"role {index}", "type": "BuiltInRole",
                                                            "permissions": [self.permissions[index]],
                                                            "assignableScopes": ["/"]}})
        if method == "GET" and low.endswith("/providers/microsoft.consumption/budgets"):
            if self.budget_refusal:
                status, code, message = self.budget_refusal
                return _response(request, status, {"error": {"code": code, "message": message}})
            scope = low.rsplit("/providers/microsoft.consumption/budgets", 1)[0]
            return _response(request, 200, {"value": [v for k, v in self.resources.items()
                                                       if k.startswith(scope + "/providers/microsoft.consumption/budgets/")]})
        if method == "GET" and low.endswith("/virtualnetworklinks"):
            return _response(request, 200, {"value": [v for k, v in self.resources.items()
                                                       if k.startswith(low + "/") and k.count("/") == low.count("/") + 1]})
        return None

    def _vcores_used(self, location: str) -> dict[str, int]:
        """The vCores the servers this ARM holds in ``location`` count (the HA standby as a server
        of its own), with what ``quota_used`` says is used elsewhere."""
        from pcdb.azure.preflight import quota_family

        used = dict(self.quota_used.get(location, {}))
        for key, server in self.resources.items():
            if not re.search(r"/flexibleservers/[^/]+$", key) or server.get("location") != location:
                continue
            sku = (server.get("sku") or {}).get("name", "")
            vcores = int(re.search(r"_[A-Z](\d+)", sku).group(1)) if re.search(r"_[A-Z](\d+)", sku) else 0
            ha = ((server.get("properties") or {}).get("highAvailability") or {}).get("mode", "Disabled")
            count = vcores * (2 if ha != "Disabled" else 1)
            for name in ("cores", quota_family(sku)):
                used[name] = used.get(name, 0) + count
        return used

    def _accepted(self, request):
        op = f"/operations/{uuid.uuid4()}"
        self.operations[op] = {"status": "Succeeded"}
        return _response(request, 202, None, {"Azure-AsyncOperation": f"{BASE}{op}?api-version=1",
                                              "Location": f"{BASE}{op}?api-version=1"})

    def _put(self, request, path: str, key: str):
        body = json.loads(request.content or b"{}")
        self.bodies.append((path, json.loads(json.dumps(body))))
        props = body.setdefault("properties", {})
        for field in WRITE_ONLY:
            props.pop(field, None)
        record_set = re.search(r"/privateDnsZones/[^/]+/(A|AAAA|CNAME|MX|PTR|SOA|SRV|TXT)/[^/]+$", path)
        blob = "/blobServices/default/containers/" in path   # Microsoft.Storage's blob.json (2023-05-01)
        insights = "/providers/Microsoft.Insights/" in path      # alerts, action groups, workbook, diagnostic setting
        server = "Microsoft.DBforPostgreSQL" in path and not insights   # (a diagnostic setting sits under the server)
        account = re.search(r"/Microsoft\.Storage/storageAccounts/[^/]+$", path)
        budget = "/providers/Microsoft.Consumption/budgets/" in path
        if not (server or record_set or blob or insights or budget):
            props["provisioningState"] = "Succeeded"  # not in the specifications of the others
        parts = path.strip("/").split("/")
        if parts[-2:-1] == ["flexibleServers"]:  # what the service reports of a server it made
            props.setdefault("state", "Ready")
            if props.get("createMode") in ("Replica", "PointInTimeRestore"):
                # what the specification gives a server made without backup settings (its defaults)
                props.setdefault("backup", {"backupRetentionDays": 7, "geoRedundantBackup": "Disabled"})
            source = self.resources.get((props.get("sourceServerResourceId") or "").lower(), {}).get("properties", {})
            for inherited in ("version", "administratorLogin"):   # a replica or a restore is its source's
                if props.get("createMode") in ("Replica", "PointInTimeRestore") and inherited in source:
                    props.setdefault(inherited, source[inherited])
            if props.get("createMode") == "Replica":
                props["replicationRole"] = "AsyncReplica"
                props["replica"] = {"role": "AsyncReplica", "replicationState": "Active"}
        if "/virtualendpoints/" in path.lower():   # the pair of names Azure makes (read-only)
            props["virtualEndpoints"] = [f"{parts[-1]}.writer.postgres.database.azure.com",
                                         f"{parts[-1]}.reader.postgres.database.azure.com"]
        if "/configurations/" in path:
            props["defaultValue"] = _BOOT_VALUES.get(parts[-1].lower(), "")
            props.setdefault("source", "user-override")
            if parts[-1] in STATIC_PARAMETERS:
                props["isConfigPendingRestart"] = True  # static: takes effect at the next restart
        stored = {**body, "id": path, "name": parts[-1], "type": "/".join(parts[5:6] + parts[6::2][:-1])}
        now = clock.now().isoformat().replace("+00:00", "Z")
        group = len(parts) == 4 and parts[2].lower() == "resourcegroups"
        if group:   # Microsoft.Resources' ResourceGroup: its own type, no systemData
            stored["type"] = "Microsoft.Resources/resourceGroups"
        elif "/Microsoft.Network/virtualNetworks/" in path:   # Microsoft.Network's resources: an etag, no systemData
            stored["etag"] = f'W/"{uuid.uuid4()}"'
            if "/subnets/" in path:
                for delegation in props.get("delegations", []):   # what the delegated service may do (read-only)
                    delegation.setdefault("properties", {})["actions"] = [
                        "Microsoft.Network/virtualNetworks/subnets/join/action"]
        elif blob:   # an AzureEntityResource (common-types v1): an etag, no systemData
            stored["etag"] = f'"{uuid.uuid4().hex}"'
            if "/immutabilityPolicies/" in path:
                props.setdefault("state", "Unlocked")      # until someone locks it
        elif account or budget or re.search(r"/Microsoft\.Insights/(actionGroups|metricAlerts|activityLogAlerts)/", path):
            pass   # resources whose specifications (common-types v1 and their own) have no systemData
        else:
            stored["systemData"] = {**(self.resources.get(key) or {}).get("systemData", {"createdAt": now}),
                                    "lastModifiedAt": now}   # what ARM reports of a tracked resource
        failure = next((f for frag, f in self.fail.items() if frag in path), None)
        created = key not in self.resources
        if server:  # 202 + Azure-AsyncOperation, then the poller GETs
            op = f"/operations/{uuid.uuid4()}"
            if failure:
                self.operations[op] = {"status": "Failed", "error": {"code": failure[0], "message": failure[1]}}
            else:
                self.operations[op] = {"status": "Succeeded"}
                self.resources[key] = stored
            return _response(request, 202, None, {"Azure-AsyncOperation": f"{BASE}{op}?api-version=1",
                                                  "Location": f"{BASE}{op}?api-version=1"})
        if failure:
            return _response(request, 400, {"error": {"code": failure[0], "message": failure[1]}})
        self.resources[key] = stored
        if "/Microsoft.Insights/metricAlerts/" in path or "/Microsoft.Insights/diagnosticSettings/" in path:
            return _response(request, 200, stored)  # synchronous, 200 only (metricAlert_API, diagnosticsSettings_API)
        if account and created:   # storage.json: 202 and a Location to poll, then the account is read
            op = f"/operations/{uuid.uuid4()}"
            self.operations[op] = {"status": "Succeeded"}
            return _response(request, 202, None, {"Location": f"{BASE}{op}?api-version=1"})
        if "/immutabilityPolicies/" in path:
            return _response(request, 200, stored, {"ETag": stored["etag"]})   # 200 only, with its ETag
        return _response(request, 201 if created else 200, stored)  # network, DNS, workspaces, groups, alerts, budget
