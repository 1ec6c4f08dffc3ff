"""The preflight against the subscription (#25 item 4): read only, before Phase 1, so that what
Azure would refuse halfway through the install is said first, each with what to do.

Checks, in order: the resource providers registered; what the region offers (the Capabilities
API: the SKU, zone-redundant HA in the spec's zones, the storage size, the PostgreSQL version, and
the replica's region); the vCore quota against what the plan still has to create (the QuotaUsages
API); the server names; the VNet, the subnet's delegation and the private DNS zone; the principal's
permissions for every operation the runbooks use (Microsoft.Authorization: the permissions on the
resource group when it exists; before it does, the principal's role assignments on the
subscription and their role definitions, since the published API lists permissions only for a
resource group or a resource); the budget's scope. The secrets (Key Vault among them) are
checked by the caller, which can read them.

API versions: the flexible-server client speaks 2024-08-01 (pcdb.azure.apply.POSTGRES_API_VERSION);
its Capabilities operation is there. Quota usages and name availability are first in a stable
version at 2025-08-01, so those two reads use a client at that version (``clients.postgres_2025``).
"""

from __future__ import annotations

import base64
import fnmatch
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from pcdb.azure.desired import Desired
from pcdb.config import Environment
from pcdb.errors import TransientError
from pcdb.preflight import Check
from pcdb.units import format_size, parse_size

PREFLIGHT_API_VERSION = "2025-08-01"
PERMISSIONS_API_VERSION = "2022-04-01"
BUDGETS_API_VERSION = "2021-10-01"
ROLE_DEFINITION_ID = re.compile(r"(/subscriptions/[0-9a-fA-F-]{36})?/providers/Microsoft\.Authorization/"
                                r"roleDefinitions/[0-9a-fA-F-]{36}", re.IGNORECASE)
PG = "Microsoft.DBforPostgreSQL/flexibleServers"

# What the runbooks do beyond reading and writing the resources the install makes: restarts with
# failover, start/stop (the region drill), deletes (PITR copies, the replica of an upgrade), the
# backups, joining the delegated subnet and the private DNS zone, the application's CNAME, the
# metrics, the cost query.
EXTRA_ACTIONS = (
    f"{PG}/delete", f"{PG}/restart/action", f"{PG}/start/action", f"{PG}/stop/action",
    f"{PG}/backups/read", f"{PG}/backups/write",
    "Microsoft.Insights/metrics/read", "Microsoft.CostManagement/query/action",
)
VNET_ACTIONS = ("Microsoft.Network/virtualNetworks/subnets/join/action", "Microsoft.Network/privateDnsZones/join/action",
                "Microsoft.Network/privateDnsZones/CNAME/read", "Microsoft.Network/privateDnsZones/CNAME/write")
DATA_ACTIONS = ("Microsoft.Insights/Metrics/Write",)          # the business metrics (Monitoring Metrics Publisher)
ARCHIVE_DATA_ACTIONS = ("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
                        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read")


def _wire(model: Any) -> dict:
    """An SDK model as Azure wrote it (wire names: these SDKs' models give them as_dict)."""
    return model.as_dict()


def resource_type(resource_id: str) -> str:
    """"Microsoft.Network/virtualNetworks/subnets" of a subnet's id (the last provider's types)."""
    parts = resource_id.strip("/").split("/")
    if "providers" not in parts:
        return "Microsoft.Resources/subscriptions/resourceGroups"
    at = len(parts) - 1 - parts[::-1].index("providers")
    rest = parts[at + 1:]
    return "/".join([rest[0], *rest[1::2]])


def required_actions(env: Environment, desired: list[Desired]) -> tuple[list[str], list[str]]:
    """(actions, data actions) the runbooks need on the resource group: read and write of every
    resource type the install makes, and what EXTRA_ACTIONS lists."""
    actions: list[str] = []
    for d in desired:
        kind = resource_type(d.id)
        actions += [f"{kind}/read", f"{kind}/write"]
    actions += EXTRA_ACTIONS
    if env.network.mode == "vnet":
        actions += VNET_ACTIONS
    data = list(DATA_ACTIONS) + (list(ARCHIVE_DATA_ACTIONS) if env.azure.evidence_archive else [])
    return list(dict.fromkeys(actions)), data


def allowed(action: str, permissions: list[dict], data: bool = False) -> bool:
    """Azure's rule: an action is allowed when one permission's actions match it and that same
    permission's notActions do not (wildcards, case-insensitive)."""
    key, deny = ("dataActions", "notDataActions") if data else ("actions", "notActions")
    lowered = action.lower()
    for p in permissions:
        if any(fnmatch.fnmatchcase(lowered, a.lower()) for a in p.get(key) or []) and \
                not any(fnmatch.fnmatchcase(lowered, n.lower()) for n in p.get(deny) or []):
            return True
    return False


def principal_id(token: str) -> str | None:
    """The object id (the ``oid`` claim) of the principal an ARM access token was issued to. The
    token is a JWT whose payload is read, not verified: it is the caller's own token, and ARM
    verifies it. None when the token carries no such claim."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    oid = claims.get("oid") if isinstance(claims, dict) else None
    return oid if isinstance(oid, str) and re.fullmatch(r"[0-9a-fA-F-]{36}", oid) else None


def quota_family(sku: str) -> str | None:
    """The quota family Azure counts a flexible server's vCores in: Standard_D4s_v3 ->
    standardDSv3Family, Standard_D4ds_v5 -> standardDDSv5Family, Standard_B2s -> standardBSFamily."""
    if sku.startswith("Standard_B"):
        return "standardBSFamily"
    m = re.fullmatch(r"Standard_([A-Z])\d+([a-z]*)_v(\d+)", sku)
    return f"standard{m.group(1)}{m.group(2).upper()}v{m.group(3)}Family" if m else None


class Preflight:
    """The checks, each a method returning Checks. ``read`` is the reconciler's: a desired
    resource as Azure has it (wire names), or None when it does not exist; what exists needs no
    quota, owns its name, and is checked as it is."""

    def __init__(self, env: Environment, clients, subscription: str, desired: list[Desired],
                 read: Callable[[Desired], dict | None], credential=None):
        self.env, self.c, self.subscription, self.desired, self.read = env, clients, subscription, desired, read
        self.credential = credential   # to tell which principal asks, before the resource group exists
        self.rg = env.azure.resource_group
        self.rg_id = f"/subscriptions/{subscription}/resourceGroups/{self.rg}"
        self._caps: dict[str, dict | str] = {}
        self._found: dict[str, dict | None] = {}

    def found(self, kind: str) -> dict | None:
        """The one desired resource of ``kind`` (server, replica, virtual_network, subnet,
        private_dns_zone, resource_group) as it is, read once per preflight."""
        if kind not in self._found:
            self._found[kind] = self.read(next(d for d in self.desired if d.type == kind))
        return self._found[kind]

    def exists(self, kind: str) -> bool:
        return self.found(kind) is not None

    def run(self) -> list[Check]:
        out: list[Check] = []
        for check in (self.providers, self.capabilities, self.quota, self.names, self.network, self.permissions,
                      self.budget):
            try:
                out += check()
            except Exception as exc:   # a check that cannot read says so; the others still run
                from azure.core.exceptions import ClientAuthenticationError

                from pcdb.azure.apply import translate

                error = translate(exc, f"read what the {check.__name__} check needs")
                if isinstance(exc, ClientAuthenticationError):     # no check can read: said once
                    return [Check("credentials", False, f"no check could read the subscription: {error}",
                                  "sign in as the runbooks' identity (`az login`, a managed identity, or "
                                  "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET), then run again")]
                if isinstance(error, TransientError):      # throttled or unavailable: the task retries
                    raise error from exc
                out.append(Check(check.__name__, False, f"could not be read: {error}",
                                 "check the credential's access to the subscription, then run again"))
        return out

    # -- the resource providers -------------------------------------------------------------

    def namespaces(self) -> list[str]:
        found = {resource_type(d.id).split("/")[0] for d in self.desired}
        return sorted(found - {"Microsoft.Resources"})

    def providers(self) -> list[Check]:
        missing = []
        for ns in self.namespaces():
            state = getattr(self.c.resource.providers.get(ns), "registration_state", None)
            if state != "Registered":
                missing.append(f"{ns} ({state or 'unknown'})")
        if missing:
            return [Check("providers", False, f"not registered in the subscription: {', '.join(missing)}",
                          " ; ".join(f"az provider register --namespace {m.split(' ')[0]}" for m in missing)
                          + " (needs the subscription's Contributor), then run again")]
        return [Check("providers", True, f"registered: {', '.join(self.namespaces())}")]

    # -- what the region offers ---------------------------------------------------------------

    def _capability(self, location: str) -> dict | str:
        """The region's capability set for this subscription, or why there is none."""
        if location not in self._caps:
            found = [_wire(c) for c in self.c.postgres.capabilities_by_location.list(location)]
            self._caps[location] = found[0] if found else f"Azure lists no flexible-server capability in {location}"
        return self._caps[location]

    @staticmethod
    def _edition(cap: dict, tier: str) -> dict | None:
        return next((e for e in cap.get("supportedServerEditions") or [] if e.get("name") == tier), None)

    @staticmethod
    def _sku(edition: dict | None, sku: str) -> dict | None:
        return next((s for s in (edition or {}).get("supportedServerSkus") or [] if s.get("name") == sku), None)

    def capabilities(self) -> list[Check]:
        s, r = self.env.server, self.env.replica
        cap = self._capability(s.location)
        if isinstance(cap, str) or cap.get("restricted") == "Enabled":
            why = cap if isinstance(cap, str) else f"{s.location} is restricted for this subscription"
            return [Check("region", False, why, f"ask Microsoft support to enable Azure Database for PostgreSQL "
                                                f"flexible server in {s.location} for the subscription, or change "
                                                "server.location")]
        out = [self._sku_check("sku", s.location, s.tier, s.sku, s.vcores, cap)]
        if out[0].ok:       # HA in the zones is a question about an offered SKU only
            out.append(self._ha_check(cap))
        out.append(self._storage_check(cap))
        versions = [v.get("name") for v in cap.get("supportedServerVersions") or []]
        out.append(Check("version", s.version in versions,
                         f"PostgreSQL {s.version} {'is' if s.version in versions else 'is not'} offered in {s.location} "
                         f"(offered: {', '.join(versions) or 'none'})",
                         f"set server.version to one of {', '.join(versions)} (docs/operations/upgrade.md)"))
        if self.env.backup.geo_redundant:
            both = s.high_availability.mode == "ZoneRedundant"
            key = "zoneRedundantHaAndGeoBackupSupported" if both else "geoBackupSupported"
            ok = cap.get(key) == "Enabled"
            out.append(Check("geo-backup", ok, f"geo-redundant backup{' with zone-redundant HA' if both else ''} is "
                             f"{'offered' if ok else 'not offered'} in {s.location} ({key}: {cap.get(key)})",
                             "set backup.geo_redundant: false and rely on the read replica for R-DR-2, or choose a "
                             "region that offers both; Azure cannot add it after creation"))
        replica_cap = self._capability(r.location)
        if isinstance(replica_cap, str):
            out.append(Check("replica-region", False, replica_cap, "choose another replica.location"))
        else:
            check = self._sku_check("replica-region", r.location, s.tier, r.sku, r.vcores, replica_cap)
            versions = [v.get("name") for v in replica_cap.get("supportedServerVersions") or []]
            if check.ok and s.version not in versions:
                check = Check("replica-region", False, f"{r.location} does not offer PostgreSQL {s.version} for the "
                              "read replica", "choose a replica.location that offers the server's version")
            out.append(check)
        return out

    def _sku_check(self, name: str, location: str, tier: str, sku: str, vcores: int, cap: dict) -> Check:
        edition = self._edition(cap, tier)
        found = self._sku(edition, sku)
        offered = ", ".join(x.get("name", "?") for x in (edition or {}).get("supportedServerSkus") or [])
        if found is None:
            return Check(name, False, f"{location} does not offer {sku} in the {tier} tier to this subscription "
                         f"(offered: {offered or 'no ' + tier + ' SKU'})",
                         f"choose a SKU the region offers, or ask Microsoft support for {sku} in {location}")
        if found.get("vCores") not in (None, vcores):
            return Check(name, False, f"{sku} has {found.get('vCores')} vCores, the spec says {vcores}",
                         "make the spec's vcores agree with the SKU")
        return Check(name, True, f"{location} offers {sku} ({found.get('vCores')} vCores, {tier})")

    def _ha_check(self, cap: dict) -> Check:
        s = self.env.server
        ha = s.high_availability
        if ha.mode == "Disabled":
            return Check("zone-redundant-ha", True, "the spec asks for no high availability")
        found = self._sku(self._edition(cap, s.tier), s.sku) or {}
        zones = [str(z) for z in found.get("supportedZones") or []]
        modes = found.get("supportedHaMode") or []
        wanted = {ha.primary_zone, ha.standby_zone}
        problems = []
        if ha.mode == "ZoneRedundant" and cap.get("zoneRedundantHaSupported") != "Enabled":
            problems.append(f"{s.location} offers no zone-redundant HA to this subscription")
        if ha.mode not in modes:
            problems.append(f"{s.sku} supports HA modes {', '.join(modes) or 'none'}, not {ha.mode}")
        missing = sorted(wanted - set(zones))
        if missing:
            problems.append(f"{s.sku} is not offered in zone(s) {', '.join(missing)} of {s.location} "
                            f"(zones offered: {', '.join(zones) or 'none'})")
        if problems:
            other = sorted(set(zones) - {ha.primary_zone})
            fix = (f"set server.high_availability.standby_zone to one of {', '.join(other)}" if
                   ha.primary_zone in zones and other and ha.mode == "ZoneRedundant" else
                   "choose zones the region offers for the SKU, or another SKU or region")
            return Check("zone-redundant-ha", False, "; ".join(problems),
                         fix + "; the HA zone pair cannot be changed in place after creation")
        return Check("zone-redundant-ha", True, f"{ha.mode} HA with the primary in zone {ha.primary_zone} and the "
                     f"standby in zone {ha.standby_zone}: offered for {s.sku} in {s.location}")

    def _storage_check(self, cap: dict) -> Check:
        s = self.env.server
        mb = s.storage.size // parse_size("1MB")
        sizes = []
        for storage in (self._edition(cap, s.tier) or {}).get("supportedStorageEditions") or []:
            sizes += [x.get("storageSizeMb") for x in storage.get("supportedStorageMb") or []]
        sizes = sorted(x for x in sizes if isinstance(x, int))
        if mb in sizes:
            largest = format_size(sizes[-1] * parse_size("1MB"))
            ok = s.storage.max_size <= sizes[-1] * parse_size("1MB")
            return Check("storage", ok, f"{format_size(s.storage.size)} is a size {s.location} offers; auto-grow "
                         f"up to {format_size(s.storage.max_size)} {'fits' if ok else 'is more than'} the largest "
                         f"({largest})", f"set server.storage.max_size to at most {largest}")
        near = [format_size(x * parse_size("1MB")) for x in sizes if x >= mb][:3]
        return Check("storage", False, f"{format_size(s.storage.size)} is not a storage size {s.location} offers for "
                     f"{s.tier}", "set server.storage.size to an offered size"
                     + (f", e.g. {', '.join(near)}" if near else ""))

    # -- quota -----------------------------------------------------------------------------

    def quota(self) -> list[Check]:
        s, r = self.env.server, self.env.replica
        need: dict[str, dict[str, int]] = {}          # location -> quota name -> vCores still to create
        if not self.exists("server"):
            count = s.vcores * (2 if s.high_availability.mode != "Disabled" else 1)   # the HA standby is a server too
            for name in ("cores", quota_family(s.sku)):
                need.setdefault(s.location, {}).setdefault(name, 0)
                need[s.location][name] += count
        if not self.exists("replica"):
            for name in ("cores", quota_family(r.sku)):
                need.setdefault(r.location, {}).setdefault(name, 0)
                need[r.location][name] += r.vcores
        if not need:
            return [Check("quota", True, "the server and the replica exist: the plan needs no new vCores")]
        problems, seen = [], []
        for location, names in need.items():
            usages = {u.get("name", {}).get("value"): u for u in
                      (_wire(x) for x in self.c.postgres_2025.quota_usages.list(location))}
            for name, count in names.items():
                usage = usages.get(name)
                if usage is None:
                    problems.append(f"{location} reports no quota named {name}")
                    continue
                left = (usage.get("limit") or 0) - (usage.get("currentValue") or 0)
                seen.append(f"{location} {name}: {count} needed, {left} free of {usage.get('limit')}")
                if left < count:
                    problems.append(f"{location} {name}: {count} vCores needed, {left} free "
                                    f"({usage.get('currentValue')} used of {usage.get('limit')})")
        if problems:
            return [Check("quota", False, "; ".join(problems),
                          "request a quota increase for Azure Database for PostgreSQL flexible server (Azure portal: "
                          "Quotas, or a support request), or choose a smaller SKU")]
        return [Check("quota", True, "; ".join(seen))]

    # -- names -------------------------------------------------------------------------------

    def names(self) -> list[Check]:
        from azure.mgmt.postgresqlflexibleservers import models as pg

        out = []
        for kind, name, location in (("server", self.env.server.name, self.env.server.location),
                                     ("replica", self.env.replica.name, self.env.replica.location)):
            if self.exists(kind):
                out.append(Check(f"{kind}-name", True, f"{name} exists in {self.rg}: the install reconciles it"))
                continue
            answer = _wire(self.c.postgres_2025.name_availability.check_with_location(
                location, pg.CheckNameAvailabilityRequest(name=name, type=PG)))
            if answer.get("nameAvailable"):
                out.append(Check(f"{kind}-name", True, f"{name} is free"))
            else:
                out.append(Check(f"{kind}-name", False, f"{name} cannot be used: {answer.get('reason') or '?'}: "
                                 f"{answer.get('message') or 'taken'}",
                                 f"choose another {kind}.name (server names are "
                                 "global: they are part of the DNS name)"))
        return out

    # -- the network ------------------------------------------------------------------------

    def network(self) -> list[Check]:
        n = self.env.network
        if n.mode != "vnet":
            return [Check("network", True, "public access with firewall rules: no subnet or private DNS zone to check")]
        problems, notes = [], []
        vnet = self.found("virtual_network")
        if vnet is None:
            notes.append(f"VNet {n.vnet.name} will be created (Phase 2)")
        else:
            spaces = ((vnet.get("properties") or {}).get("addressSpace") or {}).get("addressPrefixes") or []
            subnet_net = ipaddress.ip_network(n.subnet.address_prefix)
            if not any(subnet_net.subnet_of(ipaddress.ip_network(x)) for x in spaces):
                problems.append(f"VNet {n.vnet.name} has address space {', '.join(spaces)}, which does not hold the "
                                f"subnet {n.subnet.address_prefix}")
            subnet = self.found("subnet")
            if subnet is None:
                notes.append(f"subnet {n.subnet.name} will be created and delegated (Phase 2)")
            else:
                props = subnet.get("properties") or {}
                services = [(d.get("properties") or {}).get("serviceName") for d in props.get("delegations") or []]
                used = props.get("ipConfigurations") or []
                if services and n.subnet.delegation not in services:
                    problems.append(f"subnet {n.subnet.name} is delegated to {', '.join(services)}, not "
                                    f"{n.subnet.delegation}")
                elif not services and used:
                    problems.append(f"subnet {n.subnet.name} holds {len(used)} other resource(s), so it cannot be "
                                    f"delegated to {n.subnet.delegation}")
                else:
                    state = f"is delegated to {n.subnet.delegation}" if services else "will be delegated (Phase 2)"
                    notes.append(f"subnet {n.subnet.name} {state}")
        if not n.private_dns_zone.endswith(".postgres.database.azure.com"):
            problems.append(f"the private DNS zone {n.private_dns_zone} does not end in .postgres.database.azure.com")
        zone = self.found("private_dns_zone")
        if zone is None:
            notes.append(f"private DNS zone {n.private_dns_zone} and its VNet link will be created (Phase 2)")
        else:
            vnet_id = f"{self.rg_id}/providers/Microsoft.Network/virtualNetworks/{n.vnet.name}".lower()
            links = [_wire(x) for x in self.c.dns.virtual_network_links.list(self.rg, n.private_dns_zone)]
            targets = [((x.get("properties") or {}).get("virtualNetwork") or {}).get("id", "").lower() for x in links]
            ours = next((x for x in links if x.get("name") == f"{n.vnet.name}-link"), None)
            if ours is not None and ((ours.get("properties") or {}).get("virtualNetwork") or {}).get("id", "").lower() != vnet_id:
                problems.append(f"the zone's link {n.vnet.name}-link points at another VNet")
            else:
                linked = "is linked to" if vnet_id in targets else "will be linked (Phase 2) to"
                notes.append(f"private DNS zone {n.private_dns_zone} {linked} {n.vnet.name}")
        if problems:
            return [Check("network", False, "; ".join(problems),
                          "use a subnet delegated to Microsoft.DBforPostgreSQL/flexibleServers that holds nothing else, "
                          "inside the VNet's address space, and a zone named <name>.private.postgres.database.azure.com "
                          "linked to that VNet; or change network.* in the spec")]
        return [Check("network", True, "; ".join(notes))]

    # -- permissions and the budget's scope -------------------------------------------------

    def _scope(self) -> tuple[str, bool]:
        """The resource group when it exists (where the runbooks act), else the subscription."""
        if self.exists("resource_group"):
            return self.rg_id, True
        return f"/subscriptions/{self.subscription}", False

    def _arm_get(self, path: str, api_version: str, **query: str) -> tuple[int, dict]:
        from azure.core.rest import HttpRequest

        reply = self.c.resource.send_request(HttpRequest("GET", path, params={**query, "api-version": api_version}))
        try:
            body = reply.json()
        except ValueError:
            body = {}
        return reply.status_code, body if isinstance(body, dict) else {}

    def _granted_on_group(self) -> tuple[list[dict] | None, str]:
        """Permissions_ListForResourceGroup: what the caller may do on the resource group."""
        status, body = self._arm_get(f"{self.rg_id}/providers/Microsoft.Authorization/permissions",
                                     PERMISSIONS_API_VERSION)
        if status != 200:
            error = body.get("error") or {}
            return None, (f"Azure would not list the principal's permissions on {self.rg_id}: HTTP {status} "
                          f"{error.get('code', '')} {error.get('message', '')}").strip()
        return body.get("value") or [], ""

    def _granted_on_subscription(self) -> tuple[list[dict] | None, str]:
        """Before the resource group exists: the roles assigned to the caller (and its groups) on
        the subscription or above (RoleAssignments_ListForSubscription, assignedTo), and what each
        role definition permits (RoleDefinitions_Get)."""
        scope = f"/subscriptions/{self.subscription}"
        token = self.credential.get_token("https://management.azure.com/.default").token if self.credential else ""
        principal = principal_id(token)
        if principal is None:
            return None, "the credential's token does not say which principal it is (no oid claim)"
        status, body = self._arm_get(f"{scope}/providers/Microsoft.Authorization/roleAssignments",
                                     PERMISSIONS_API_VERSION, **{"$filter": f"assignedTo('{principal}')"})
        if status != 200:
            error = body.get("error") or {}
            return None, (f"Azure would not list the principal's role assignments on {scope}: HTTP {status} "
                          f"{error.get('code', '')} {error.get('message', '')}").strip()
        # Assignments at the subscription or above it (a management group, the root) apply to
        # the resource group to be made; those below it (another group, a resource) do not.
        below = scope.lower() + "/"
        inherited = {(a.get("properties") or {}).get("roleDefinitionId") for a in body.get("value") or []
                     if not ((a.get("properties") or {}).get("scope") or "").lower().startswith(below)}
        granted: list[dict] = []
        for role in sorted(r for r in inherited if r):
            if not ROLE_DEFINITION_ID.fullmatch(role):   # read only a role definition's id, never another URL
                return None, f"Azure named a role definition that is not one: {role[:120]!r}"
            status, definition = self._arm_get(role, PERMISSIONS_API_VERSION)
            if status != 200:
                return None, f"Azure would not read the role definition {role}: HTTP {status}"
            granted += (definition.get("properties") or {}).get("permissions") or []
        return granted, ""

    def permissions(self) -> list[Check]:
        _, rg_exists = self._scope()
        granted, problem = self._granted_on_group() if rg_exists else self._granted_on_subscription()
        if granted is None:
            return [Check("permissions", False, problem,
                          "give the runbooks' identity Reader at least, to let it check the rest")]
        actions, data_actions = required_actions(self.env, self.desired)
        if not rg_exists:
            actions = ["Microsoft.Resources/subscriptions/resourceGroups/write", *actions]
        missing = [a for a in actions if not allowed(a, granted)]
        missing += [a for a in data_actions if not allowed(a, granted, data=True)]
        where = f"the resource group {self.rg}" if rg_exists else f"the subscription (the resource group {self.rg} is to be made)"
        if missing:
            return [Check("permissions", False, f"the principal may not do {len(missing)} operation(s) the runbooks use on "
                          f"{where}: {', '.join(missing)}",
                          "assign the runbooks' identity Contributor, Monitoring Metrics Publisher"
                          + (" and Storage Blob Data Contributor" if self.env.azure.evidence_archive else "")
                          + f" on {where} (or a custom role with the actions listed)")]
        return [Check("permissions", True, f"every one of the {len(actions) + len(data_actions)} operations the "
                      f"runbooks use is allowed on {where}")]

    def budget(self) -> list[Check]:
        scope, rg_exists = self._scope()
        status, body = self._arm_get(f"{scope}/providers/Microsoft.Consumption/budgets", BUDGETS_API_VERSION)
        where = f"resource group {self.rg}" if rg_exists else "the subscription (the budget goes on the resource group once made)"
        if status == 200:
            return [Check("budget-scope", True, f"budgets can be kept on {where} "
                          f"(${self.env.operations.cost.monthly_budget_usd:,.0f} a month, §9.2.1)")]
        error = body.get("error") or {}
        return [Check("budget-scope", False, f"Azure refuses budgets on {where}: HTTP {status} "
                      f"{error.get('code', '')}: {error.get('message', '')}",
                      "budgets need an Enterprise Agreement, Microsoft Customer Agreement or pay-as-you-go "
                      "subscription and Cost Management Contributor on the scope; fix that, or keep §9.2.1's alerts "
                      "through the daily cost runbook only")]
