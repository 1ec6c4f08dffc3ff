"""Plan before apply (as Terraform does): what the install would create, change or leave.

Each desired body is compared, path by path, with what exists; a property that Azure cannot
change in place is a conflict with what to do, never a silent re-creation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pcdb.azure.desired import Desired

# Properties that a PUT cannot change on an existing resource (ARM answers an error or ignores).
IMMUTABLE = {
    "server": {"location", "properties.availabilityZone", "properties.backup.geoRedundantBackup",
               "properties.network.delegatedSubnetResourceId", "properties.network.privateDnsZoneArmResourceId",
               "properties.administratorLogin", "properties.createMode"},
    "replica": {"location", "properties.sourceServerResourceId", "properties.createMode"},
    "virtual_network": {"location"},
    "log_analytics_workspace": {"location"},
}
# Write-only or create-only fields that a GET does not return: not drift. The Teams webhook URL
# is a secret: the plan shows its source, apply sends the value, and it is never compared.
NOT_RETURNED = {"properties.createMode", "properties.administratorLoginPassword", "properties.sourceServerResourceId",
                "properties.webhookReceivers"}
# Created only when missing (§7.1.1 "skip if it exists"): the VNet and subnet may be shared and a
# PUT would replace what others configured (other subnets, the NSG association that is the
# server's access control, C-2). A difference is reported, never written.
CREATE_ONLY = {"virtual_network": "the VNet exists (it may be shared): pcdb never rewrites it",
               "subnet": "the subnet exists: pcdb never rewrites it (a PUT would drop its NSG association); "
                         "fix it by hand if the delegation or prefix is wrong"}
# Fields Azure needs at creation and keeps as it has them: compared never (a budget's start date
# must lie in the month it is created in; next month's desired date is not a change).
ADOPTED = {"budget": {"properties.timePeriod.startDate"}}
RESOLUTION = {
    "properties.backup.geoRedundantBackup": "geo-redundant backup is chosen at creation: restore the server "
                                            "into a new one with the wanted setting and switch over",
    "properties.availabilityZone": "the zone cannot move: use an HA failover to make the other zone primary",
    "location": "a resource cannot move region: create it anew and migrate",
}


@dataclass(frozen=True)
class PlanItem:
    type: str
    name: str
    id: str
    action: str  # create | update | unchanged | conflict
    properties: dict
    changes: dict = field(default_factory=dict)  # path -> {"current": ..., "desired": ...}
    notes: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()   # what Azure does when the change is applied (a restart, online, ...)

    @property
    def restarts(self) -> bool:
        return any(e.startswith(RESTART) for e in self.effects)

    def as_dict(self) -> dict:
        return {"type": self.type, "name": self.name, "id": self.id, "action": self.action,
                "properties": self.properties, "changes": self.changes, "notes": list(self.notes),
                "effects": list(self.effects)}


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def _same(desired, current) -> bool:
    """Whether ARM's ``current`` already holds ``desired``: strings case-insensitively (ARM echoes
    enums and ids in its own case), numbers by value, mappings and lists element by element where
    ARM may add fields of its own (defaults such as dimensions: [] in a metric criterion)."""
    if isinstance(desired, str) and isinstance(current, str):
        return desired.lower() == current.lower()
    if isinstance(desired, bool) or isinstance(current, bool):
        return desired == current
    if isinstance(desired, (int, float)) and isinstance(current, (int, float, str)):
        try:
            return float(desired) == float(current)
        except ValueError:
            return False
    if isinstance(desired, dict) and isinstance(current, dict):
        return all(_same(v, current.get(k)) for k, v in desired.items())
    if isinstance(desired, list) and isinstance(current, list):
        return len(desired) == len(current) and all(_same(d, c) for d, c in zip(desired, current))
    return desired == current


def plan_one(item: Desired, current: dict | None) -> PlanItem:
    body = item.body()
    if current is None:
        return PlanItem(item.type, item.name, item.id, "create", body)
    have = _flatten(current)
    changes, conflicts, notes = {}, [], []
    wanted_flat = _flatten(body)
    swapped = _zones_swapped(wanted_flat, have) if item.type == "server" else ()
    if swapped:
        notes.append(f"zone {have[ZONES[0]]} is primary after an HA failover (standby in zone {have[ZONES[1]]}): "
                     "the same pair of zones, not drift")
    for path, wanted in wanted_flat.items():
        if path in NOT_RETURNED or path in swapped or path not in have and path.startswith("tags") \
                or path in ADOPTED.get(item.type, ()):
            continue
        if not _same(wanted, have.get(path)):
            changes[path] = {"current": have.get(path), "desired": wanted}
            if item.type == "server" and path == "properties.version" and have.get(path) is not None:
                conflicts.append(_version_conflict(str(wanted), str(have[path])))
            elif path in IMMUTABLE.get(item.type, set()):
                conflicts.append(f"{path} cannot change in place: {RESOLUTION.get(path, 'recreate it deliberately')}")
    if changes and item.type in CREATE_ONLY:
        conflicts.append(CREATE_ONLY[item.type])
    size = changes.get(STORAGE)
    if size and _number(size["desired"]) is not None and _number(size["current"]) is not None \
            and _number(size["desired"]) < _number(size["current"]):
        conflicts.append(f"storage cannot shrink ({size['current']} GB to {size['desired']} GB): keep the size, or "
                         "restore into a new server with the smaller size and switch over")
    effects = _effects(item, changes)
    if conflicts:
        return PlanItem(item.type, item.name, item.id, "conflict", body, changes, tuple(conflicts + notes), effects)
    return PlanItem(item.type, item.name, item.id, "update" if changes else "unchanged", body, changes, tuple(notes),
                    effects)


# What Azure does when a change is applied: Microsoft's "Scaling resources" page (scale/
# concepts-scaling-resources, 2025-11-18) for compute, storage and backup retention; PostgreSQL's
# own context for a parameter (postmaster: a restart), which pcdb applies with a planned failover.
RESTART = "restarts the server"
STORAGE = "properties.storage.storageSizeGB"


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _effects(item: Desired, changes: dict) -> tuple[str, ...]:
    from pcdb import params

    out = []
    if item.type in ("server", "replica") and any(p.startswith("sku.") for p in changes):
        out.append(f"{RESTART} to change its compute: 10-30 s with near-zero downtime scaling, 2-10 min otherwise; "
                   "uncommitted transactions roll back" + (" (a replica always takes the regular scaling)"
                                                           if item.type == "replica" else ""))
    if item.type == "server" and STORAGE in changes:
        out.append("grows the storage online (no restart in most cases; it can never shrink again)")
    if item.type == "server" and "properties.backup.backupRetentionDays" in changes:
        out.append("changes the backup retention online")
    if item.type == "configuration" and changes:
        info = params.lookup(item.name)
        if info is not None and info.needs_restart:
            out.append(f"{RESTART}: {item.name} is static (it takes effect at a restart); pcdb restarts with a "
                       "planned failover, standby first")
    return tuple(out)


def cost_delta(items: list[PlanItem], price_table: list, storage_usd_per_gib_month: float | None) -> dict:
    """What the plan changes on the monthly bill, from the spec's price table only: a server or a
    replica created costs its row (the row whose ``resource`` names it); storage grown costs its
    GiB at ``storage_usd_per_gib_month`` (twice with HA: the standby has its own). A change the
    table cannot price (another SKU, HA switched) is listed as unknown, never guessed."""
    rows = {c.resource: c for c in price_table if getattr(c, "resource", None)}
    lines, unknown = [], []
    for item in items:
        if item.type not in ("server", "replica") or item.action == "unchanged":
            continue
        if item.action == "create":
            row = rows.get(item.type)
            if row is None:
                unknown.append(f"{item.type} {item.name} created: no price table row names resource: {item.type}")
            else:
                lines.append({"what": f"{item.type} {item.name} created", "usd": row.monthly_usd,
                              "source": f"the price table's row '{row.component}' ({row.spec})"})
            continue
        for path, change in item.changes.items():
            if path == STORAGE:
                grown = (_number(change["desired"]) or 0) - (_number(change["current"]) or 0)
                ha = str(item.properties.get("properties", {}).get("highAvailability", {}).get("mode", "Disabled"))
                copies = 1 if ha.lower() == "disabled" else 2
                if storage_usd_per_gib_month is None:
                    unknown.append(f"{item.name}: storage {change['current']} to {change['desired']} GB (set "
                                   "operations.cost.storage_usd_per_gib_month to price it)")
                else:
                    lines.append({"what": f"{item.name}: storage {change['current']} to {change['desired']} GB"
                                          + (" (and its HA standby's)" if copies == 2 else ""),
                                  "usd": round(grown * copies * storage_usd_per_gib_month, 2),
                                  "source": f"operations.cost.storage_usd_per_gib_month ({storage_usd_per_gib_month})"})
            elif path.startswith(("sku.", "properties.highAvailability.mode")):
                unknown.append(f"{item.name}: {path} {change['current']} to {change['desired']}: the price table "
                               "prices the spec's configuration only, not the current one; compare the two in "
                               "Azure's pricing calculator")
    known = round(sum(line["usd"] for line in lines), 2)
    return {"monthly_delta_usd": None if unknown else known, "known_usd": known, "lines": lines, "unknown": unknown}


def _version_conflict(wanted: str, have: str) -> str:
    """A PUT never changes a server's major: up is `pcdb upgrade` (prechecks, a rehearsal, a signed
    decision), and down does not exist in place."""
    if int(wanted.split(".")[0]) < int(have.split(".")[0]):
        return (f"the server runs PostgreSQL {have} (upgraded) and the spec still says {wanted}: the spec's version is "
                f"out of date: edit server.version to \"{have}\"")
    return (f"the spec says PostgreSQL {wanted} and the server runs {have}: a major version upgrade is not a change "
            f"a plan applies: run `pcdb upgrade --to {wanted}` (prechecks, a rehearsal, a signed decision)")


ZONES = ("properties.availabilityZone", "properties.highAvailability.standbyAvailabilityZone")


def _zones_swapped(wanted: dict, have: dict) -> tuple[str, ...]:
    """After an HA failover Azure reports the standby's zone as the server's zone: the zone paths,
    when the current pair is the desired pair swapped."""
    want, got = [wanted.get(z) for z in ZONES], [have.get(z) for z in ZONES]
    if None not in want and want[0] != want[1] and [str(g) for g in got] == [str(w) for w in reversed(want)]:
        return ZONES
    return ()


def make_plan(desired: list[Desired], read: Callable[[Desired], dict | None] | None = None) -> list[PlanItem]:
    """Compare every desired resource with what ``read`` returns (None = absent).

    With no reader the subscription is assumed empty: everything is created.
    """
    return [plan_one(item, read(item) if read else None) for item in desired]
