"""AzureTarget: the target port on Azure Database for PostgreSQL Flexible Server.

Ensure steps reconcile the resources of ``pcdb.azure.desired`` (GET, compare, PUT what differs).
Operations use azure-mgmt-postgresqlflexibleservers: restart with failover, replica promote,
point-in-time restore into a new server, backups. Long-running calls wait with an explicit
timeout. Database work connects to the server's FQDN with TLS.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Literal

from pcdb import clock, crash, wal
from pcdb.azure.apply import AzureClients, Reconciler, translate
from pcdb.azure.desired import PLATFORM_PARAMETERS, Desired, desired_resources
from pcdb.azure.plan import make_plan
from pcdb.changes import Change
from pcdb.config import Environment
from pcdb.errors import TargetError
from pcdb.paths import AZURE_ROOTS
from pcdb.preflight import Check
from pcdb.targets.base import (
    STORAGE_GUARD,
    UPGRADE_COPY,
    BackupInfo,
    BackupStatus,
    Endpoint,
    FailbackPlan,
    FailbackStep,
    FailoverResult,
    MaintenanceWindow,
    MetricsSample,
    NodeState,
    PlannedMaintenance,
    PromotionResult,
    ServerState,
)

FQDN = "{name}.postgres.database.azure.com"
KINDS = {
    "resource_group": ("resource_group",),
    "network": ("virtual_network", "subnet", "private_dns_zone", "private_dns_zone_link"),
    "server": ("server",),
    "database": ("database",),
    "replica": ("replica",),
    "access_rules": ("firewall_rule",),
    "monitoring": ("log_analytics_workspace", "diagnostic_setting", "workbook", "action_group", "metric_alert",
                   "activity_log_alert", "log_alert", "budget", "storage_account", "blob_container", "immutability_policy"),
}


def _text(value) -> str:
    """An SDK enum's value as Azure writes it ("Ready", "15"), not the Python name."""
    return str(getattr(value, "value", value))


class AzureTarget:
    """Implements :class:`~pcdb.targets.base.Target` with the Azure SDK."""

    # Azure makes a server read-only at 95 % storage by itself; it gives no way to stall a replica,
    # and its server logs are in Log Analytics, not readable here. A restored copy is upgraded by
    # Azure's own in-place upgrade (the rehearsal).
    capabilities = frozenset({STORAGE_GUARD, UPGRADE_COPY})

    def __init__(self, env: Environment, clients: AzureClients, subscription: str,
                 admin_password: Callable[[], str], timeout: float = 3600,
                 endpoints: Callable[[str], Endpoint | None] | None = None,
                 teams_webhook: Callable[[], str] | None = None, credential=None,
                 blob_endpoint: str | None = None, blob_verify: str | bool = True, transport=None):
        if env.azure is None:
            raise TargetError(f"environment {env.name!r} has no azure section")
        self.env = env
        self.clients = clients
        self.subscription = subscription
        self.rg = env.azure.resource_group
        self.timeout = timeout
        self.poll_seconds = 15.0  # ARM reads are rate-limited
        self.reconciler = Reconciler(clients, admin_password, timeout, teams_webhook)
        self._admin_password = admin_password
        # Where a server's data plane answers, by server name (None: its FQDN). The Azure tests
        # map names to the sandbox servers that their ARM fake operates.
        self._endpoints = endpoints or (lambda name: None)
        # The evidence archive's data plane: Entra ID tokens for Azure Storage from the same
        # credential; the endpoint is the account's unless given (the tests' Azurite).
        self._credential = credential
        self._blob_endpoint = blob_endpoint
        self._blob_verify = blob_verify
        self._transport = transport  # the custom-metrics ingestion endpoint goes through the same one
        self._active: tuple[str, float] | None = None   # (the server production runs on, when read)

    # -- reconciliation -----------------------------------------------------------------

    def desired(self) -> list[Desired]:
        return desired_resources(self.env, self.subscription)

    def _ensure(self, *types: str, names: set[str] | None = None) -> list[Change]:
        return [self.reconciler.apply(d)[1] for d in self.desired()
                if d.type in types and (names is None or d.name in names)]

    def plan(self) -> list[Change]:
        items = make_plan(self.desired(), self.reconciler.read)
        action = {"create": "created", "update": "updated", "unchanged": "unchanged", "conflict": "conflict"}
        return [*(Change(i.type, i.name, action[i.action], {k: (v["current"], v["desired"]) for k, v in i.changes.items()},
                         i.notes + i.effects) for i in items),
                *(Change("configuration", name, "updated", {"properties.value": (current, default)},
                         ("not in the spec any more: back to Azure's default",))
                  for name, (current, default) in self._removed_parameters().items())]

    def preflight(self) -> list[Check]:
        from pcdb.azure.preflight import Preflight

        return Preflight(self.env, self.clients, self.subscription, self.desired(), self.reconciler.read,
                         credential=self._credential).run()

    def ensure_resource_group(self) -> Change:
        return self._ensure(*KINDS["resource_group"])[0]

    def ensure_network(self) -> Change:
        changes = self._ensure(*KINDS["network"])
        changed = [c for c in changes if c.changed]
        return Change("network", self.env.network.vnet.name if self.env.network.vnet else "public",
                      "updated" if changed else "unchanged",
                      notes=tuple(f"{c.resource} {c.name}: {c.action}" for c in changes))

    def ensure_server(self) -> list[Change]:
        return self._ensure(*KINDS["server"])

    def ensure_database(self) -> Change:
        return self._ensure(*KINDS["database"])[0]

    def ensure_replica(self) -> Change:
        return self._ensure(*KINDS["replica"])[0]

    def _removed_parameters(self) -> dict[str, tuple[str, str]]:
        """name -> (current, Azure's default): parameters set by a user (source user-override) that
        the spec does not name, so they go back to the default (parameters reconciled both ways)."""
        pg = self.clients.postgres
        if self._find_server(self.env.server.name) is None:
            return {}
        wanted = {d.name for d in self.desired() if d.type == "configuration"}
        listed = self._call("list parameters of", self.env.server.name,
                            lambda: list(pg.configurations.list_by_server(self.rg, self.env.server.name)))
        return {c.name: (c.value, c.default_value) for c in listed
                if (c.source or "").lower() == "user-override" and c.name not in wanted
                and c.default_value is not None and str(c.value) != str(c.default_value)}

    def ensure_parameters(self, names: set[str] | None = None) -> Change:
        """Set what differs, and put parameters the spec no longer names back to their default;
        when Azure reports a change pending a restart, restart the server with a planned failover
        (standby first), so the primary is never down longer than a failover."""
        from azure.mgmt.postgresqlflexibleservers import models as pgm

        if names is not None and names & set(self.env.parameters):
            names = names | set(PLATFORM_PARAMETERS)  # Azure's own: the extension allow-list, enhanced metrics
        changes = self._ensure("configuration", names=names)
        diff = {c.name: c.diff.get("properties.value", ("(absent)", "(created)")) for c in changes if c.changed}
        removed = self._removed_parameters() if names is None or names & set(self.env.parameters) else {}
        for name, (current, default) in removed.items():
            self._call("reset parameter", name, lambda n=name, d=default: self.clients.postgres.configurations.begin_put(
                self.rg, self.env.server.name, n, pgm.Configuration(value=d, source="system-default")))
            diff[name] = (current, f"{default} (default: removed from the spec)")
        if not diff:
            return Change("parameters", self.env.server.name, "unchanged")
        pg = self.clients.postgres
        applied = {n: self._call("read parameter", n, lambda n=n: pg.configurations.get(self.rg, self.env.server.name, n))
                   for n in diff}
        sent = {d.name: d.body()["properties"]["value"] for d in self.desired() if d.type == "configuration"}
        sent |= {n: default for n, (_, default) in removed.items()}
        wrong = {n: (c.value, sent[n]) for n, c in applied.items() if str(c.value) != str(sent[n])}
        if wrong:  # read back: Azure must hold exactly the value sent, in the parameter's own unit (C-3)
            raise TargetError(f"parameters read back differ from what was set: {wrong} (current, sent); "
                              "check the unit Azure reports for each (az postgres flexible-server parameter show)")
        pending = [n for n, c in applied.items() if getattr(c, "is_config_pending_restart", False)]
        notes = ()
        if pending:
            self.failover("planned")
            notes = (f"restarted with a planned failover for {', '.join(sorted(pending))}",)
        return Change("parameters", self.env.server.name, "updated", diff=diff, notes=notes)

    def parameter_differences(self) -> dict[str, dict[str, tuple[str, str]]]:
        diffs = {}
        for item in make_plan([d for d in self.desired() if d.type == "configuration"], self.reconciler.read):
            if item.action != "unchanged":
                value = item.changes.get("properties.value", {})
                diffs[item.name] = (value.get("current"), value.get("desired"))
        diffs |= self._removed_parameters()
        return {self.env.server.name: diffs}

    def ensure_tls(self) -> Change:
        return self.ensure_parameters({"require_secure_transport", "ssl_min_protocol_version"})

    def ensure_access_rules(self) -> Change:
        if self.env.network.mode == "vnet":
            allowed = ", ".join(f"{s.cidr} ({s.name})" for s in self.env.network.allowed_subnets)
            return Change("access_rules", self.env.server.name, "unchanged", notes=(
                "VNet-integrated server: it has no firewall rules (C-2); access is enforced by the NSG of "
                f"{self.env.network.subnet.name}, which must allow only {allowed} on port 5432",))
        changes = self._ensure(*KINDS["access_rules"])
        return Change("access_rules", self.env.server.name,
                      "updated" if any(c.changed for c in changes) else "unchanged",
                      notes=tuple(f"{c.name}: {c.action}" for c in changes))

    def ensure_monitoring(self) -> Change:
        changes = self._ensure(*KINDS["monitoring"])
        return Change("monitoring", self.env.azure.log_analytics_workspace,
                      "updated" if any(c.changed for c in changes) else "unchanged",
                      notes=tuple(f"{c.resource} {c.name}: {c.action}" for c in changes if c.changed))

    # -- state and operations -------------------------------------------------------------

    def _call(self, what: str, name: str, func):
        """Call the SDK; its errors are translated once, as the reconciler's are (429/5xx and an
        unreachable ARM are transient and retried by the runbooks, the rest say what to do)."""
        from azure.core.exceptions import AzureError

        try:
            result = func()
            return result.result(timeout=self.timeout) if hasattr(result, "result") else result
        except AzureError as exc:
            translated = translate(exc, f"{what} {name}")
            if translated is exc:
                raise
            raise translated from exc

    def _server(self, name: str):
        pg = self.clients.postgres
        return self._call("read server", name, lambda: pg.servers.get(self.rg, name))

    def _find_server(self, name: str):
        """The server, or None when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.clients.postgres.servers.get(self.rg, name)
        except ResourceNotFoundError:
            return None

    def _replica_server(self):
        return self._find_server(self.env.replica.name)

    @staticmethod
    def _is_replica(server) -> bool:
        return (server.replication_role or "").lower() in ("asyncreplica", "geoasyncreplica")

    # -- which server production runs on (#25): the primary, or the replica a real region failover
    # promoted (not a replica any more and no drill tag: Azure's own state is the record, read the
    # same from every machine), until the failback. Every read below follows it.

    def active_server(self) -> str:
        """The server production runs on now (read from ARM at most every 30 s)."""
        import time

        if self._active is not None and time.monotonic() - self._active[1] < 30:
            return self._active[0]
        replica = self._replica_server()
        promoted = replica is not None and not self._is_replica(replica) and self.DRILL_TAG not in (replica.tags or {})
        self._active = (self.env.replica.name if promoted else self.env.server.name, time.monotonic())
        return self._active[0]

    def _active_id(self) -> str:
        kind = "replica" if self.active_server() == self.env.replica.name else "server"
        return next(d.id for d in self.desired() if d.type == kind)

    def serving(self) -> str | None:
        """None while production runs where the spec says; otherwise that plainly."""
        if self.active_server() == self.env.server.name:
            return None
        return (f"production runs on the promoted replica {self.env.replica.name} in {self.env.replica.location} "
                f"since a real region failover; {self.env.server.name} ({self.env.server.location}) is its former "
                "primary. Every runbook reads the promoted server; drills are refused until the failback")

    def server_state(self) -> ServerState:
        """HA state and nodes as ARM reports them; the replica counts as following ("async") when
        its replication state is Active."""
        active = self.active_server()
        if active != self.env.server.name:      # the promoted replica serves; the former primary is listed
            promoted = self._server(active)
            former = self._find_server(self.env.server.name)
            ha = promoted.high_availability.state if promoted.high_availability else "NotEnabled"
            nodes = [NodeState(active, "primary", promoted.state == "Ready")]
            if former is not None:
                nodes.append(NodeState(self.env.server.name, "former primary", former.state == "Ready"))
            return ServerState(active, ha or "NotEnabled", tuple(nodes))
        server = self._server(self.env.server.name)
        ha = server.high_availability.state if server.high_availability else "NotEnabled"
        nodes = [NodeState(self.env.server.name, "primary", server.state == "Ready")]
        replica = self._replica_server()
        if replica is not None:
            following = self._is_replica(replica) and replica.replica is not None and \
                (replica.replica.replication_state or "") == "Active"
            nodes.append(NodeState(self.env.replica.name, "replica" if self._is_replica(replica) else "promoted",
                                   replica.state == "Ready", "async" if following else None))
        return ServerState(self.env.server.name, ha or "NotEnabled", tuple(nodes))

    def list_backups(self) -> list[BackupInfo]:
        pg = self.clients.postgres_2025     # the backups operations at 2025-08-01 (pcdb/azure/apply.py)
        active = self.active_server()
        found = self._call("list backups of", active,
                           lambda: list(pg.backups_automatic_and_on_demand.list_by_server(self.rg, active)))
        out = [BackupInfo(b.name, "automatic" if (b.backup_type or "").lower() == "full" else "on-demand",
                          b.completed_time) for b in found]
        return sorted(out, key=lambda b: b.finished_at)

    def take_backup(self) -> BackupInfo:
        name = clock.now().strftime("pcdb-%Y%m%dT%H%M%SZ")
        pg = self.clients.postgres_2025
        active = self.active_server()
        self._call("take an on-demand backup of", active,
                   lambda: pg.backups_automatic_and_on_demand.begin_create(self.rg, active, name))
        return BackupInfo(name, "on-demand", clock.now())

    def restore_point_in_time(self, target_time: datetime, name: str) -> Endpoint:
        from azure.mgmt.postgresqlflexibleservers import models as m

        active = self.active_server()
        location = self.env.server.location if active == self.env.server.name else self.env.replica.location
        body = m.Server(location=location, create_mode="PointInTimeRestore",
                        source_server_resource_id=self._active_id(), point_in_time_utc=target_time)
        pg = self.clients.postgres
        self._call("restore into", name, lambda: pg.servers.begin_create_or_update(self.rg, name, body))
        return self._endpoint(name)

    def delete_server(self, name: str) -> Change:
        if name in (self.env.server.name, self.env.replica.name):
            raise TargetError(f"{name} is part of the production topology; pcdb deletes only throw-away servers")
        if self._find_server(name) is None:
            return Change("server", name, "unchanged", notes=("does not exist",))
        pg = self.clients.postgres
        self._call("delete", name, lambda: pg.servers.begin_delete(self.rg, name))
        return Change("server", name, "deleted")

    # -- Upgrades (#27): Azure's in-place major version upgrade, through ARM ----------------------
    #
    # Microsoft's "Major version upgrades in Azure Database for PostgreSQL" (learn.microsoft.com,
    # configure-maintain/concepts-major-version-upgrade, 2026-04-08) and the CLI's
    # `az postgres flexible-server upgrade` (a PATCH of properties.version alone): Azure runs its
    # own precheck and refuses a server with a read replica, a logical replication slot, an event
    # trigger, a view on pg_stat_activity, or one of the extensions below; it stops the server,
    # takes a backup, runs pg_upgrade, and on failure puts the server back from that backup; HA is
    # disabled for the upgrade and enabled again after. There is no way back in place after a
    # successful upgrade: a point-in-time restore to before it, into a new server, is the rollback.
    UPGRADE_TAG = "pcdb-upgrade"       # the intent, on the server itself: it outlives this machine
    UPGRADE_BLOCKING = frozenset({"timescaledb", "postgres_fdw", "session_variable", "pg_hint_plan", "plv8"})
    UPGRADE_BLOCKING_FROM_17 = frozenset({"age", "azure_ai", "hll", "pg_diskann", "pgrouting"})
    UPGRADE_RECREATED = frozenset({"pg_repack", "hypopg"})   # "dropped and re-created after the upgrade by design"

    def upgrade_available(self, major: str) -> str | None:
        """Azure upgrades in place to any later major it supports (its version policy: not a
        preview, not retired), as pcdb's version table (pcdb/data/postgresql-versions.json) has them."""
        from pcdb import versions

        facts = versions.table().get(int(major))
        if facts is None:
            return f"PostgreSQL {major} is not in pcdb's version table: Azure's support of it is not known here"
        if facts.preview:
            return f"PostgreSQL {major} is in preview on Azure: not a target for a production upgrade"
        return None

    def extension_problem(self, extension: str, major: str) -> str | None:
        """Azure's rules for an extension across its in-place upgrade (above); pcdb's spec
        allow-lists only the runbooks' own (azure.extensions)."""
        from pcdb.azure.desired import RUNBOOK_EXTENSIONS

        if extension in self.UPGRADE_BLOCKING or (int(major) >= 17 and extension in self.UPGRADE_BLOCKING_FROM_17):
            return (f"Azure's in-place upgrade refuses a server that has it: DROP EXTENSION {extension} before the "
                    f"upgrade and create it again after, if PostgreSQL {major} on Azure supports it")
        if extension in self.UPGRADE_RECREATED:
            return (f"Azure's upgrade does not carry it: DROP EXTENSION {extension} before the upgrade and "
                    "CREATE EXTENSION it after")
        if extension != "plpgsql" and extension not in RUNBOOK_EXTENSIONS:
            return (f"not in the spec's azure.extensions allow-list ({', '.join(RUNBOOK_EXTENSIONS)}): pcdb cannot "
                    f"vouch for it on {major}: drop it, or allow-list it and check Azure's extension table for {major}")
        return None

    def _update_version(self, name: str, major: str) -> float:
        """Azure's in-place upgrade of ``name`` (its version, alone in the PATCH); the seconds ARM took."""
        import time

        from azure.mgmt.postgresqlflexibleservers import models as m

        pg = self.clients.postgres
        started = time.monotonic()
        self._call("upgrade", f"{name} to PostgreSQL {major}",
                   lambda: pg.servers.begin_update(self.rg, name, m.ServerForPatch(version=str(major))))
        return round(time.monotonic() - started, 3)

    def upgrade_copy(self, name: str, major: str) -> dict:
        """The rehearsal's upgrade: Azure's own in-place upgrade of the restored copy, so Azure's
        precheck and pg_upgrade both run on the same data before production's turn."""
        if name in (self.env.server.name, self.env.replica.name):
            raise TargetError(f"{name} is part of the production topology: the rehearsal upgrades only a restored copy")
        before = _text(self._server(name).version)
        seconds = self._update_version(name, major)
        return {"from": before, "to": _text(self._server(name).version), "seconds": {"version update": seconds}}

    def _upgrade_intent(self, server=None) -> dict | None:
        server = server or self._server(self.env.server.name)
        raw = (server.tags or {}).get(self.UPGRADE_TAG)
        return dict(part.split("=", 1) for part in raw.split(";")) if raw else None

    def _write_intent(self, intent: dict | None) -> None:
        """The upgrade's intent as a tag of the primary (written before each step; removed at the end)."""
        from azure.mgmt.postgresqlflexibleservers import models as m

        name = self.env.server.name
        tags = {k: v for k, v in (self._server(name).tags or {}).items() if k != self.UPGRADE_TAG}
        if intent:
            tags[self.UPGRADE_TAG] = ";".join(f"{k}={v}" for k, v in intent.items())
        pg = self.clients.postgres
        self._call("record the upgrade's step on", name,
                   lambda: pg.servers.begin_update(self.rg, name, m.ServerForPatch(tags=tags)))

    def upgrade_under_way(self) -> str | None:
        intent = self._upgrade_intent()
        return intent["to"] if intent else None

    def upgrade_steps(self, major: str) -> list[str]:
        server, replica = self.env.server.name, self.env.replica.name
        return [f"record the rollback point on {server} (tag {self.UPGRADE_TAG}): the time now, and the server a "
                "point-in-time restore to it would create",
                f"delete the read replica {replica} (Azure's upgrade refuses a server that has one): no DR copy "
                "until it is created again",
                f"update {server}'s version to {major} through ARM: Azure's precheck, its backup, pg_upgrade; HA "
                "off during it and on again after; the application's writes measured across it",
                f"create the read replica {replica} again from the upgraded primary"]

    def rollback_procedure(self, intent: dict) -> str:
        return (f"Azure keeps no way back in place after a successful upgrade. Restore the server as it was "
                f"before: a point-in-time restore to {intent['rollback_time']} into a new server "
                f"{intent['rollback_server']} (az postgres flexible-server restore --resource-group {self.rg} "
                f"--name {intent['rollback_server']} --source-server {self.env.server.name} --restore-time "
                f"{intent['rollback_time']}), check it, then point the application at it "
                f"(PostgreSQL {intent['from']}). A failed upgrade is put back by Azure itself from the backup "
                "it takes first: read the server's version and state")

    def upgrade_in_place(self, major: str) -> dict:
        """Azure's in-place upgrade of the primary, intent first (a tag on the server): the
        rollback point recorded, the read replica deleted (Azure refuses a server that has one),
        the version PATCH, then the replica created again from the upgraded primary. Killed
        halfway, the next call reads the tag and goes on from its step. Refused or failed, the
        replica is created again on the old version, the tag removed, and the error says Azure's
        state and the rollback procedure."""
        import time

        name = self.env.server.name
        server = self._server(name)
        intent = self._upgrade_intent(server)
        resumed = intent is not None
        if intent and intent["to"] != str(major):
            raise TargetError(f"an upgrade of {name} to {intent['to']} is under way (tag {self.UPGRADE_TAG}): finish it "
                              f"first (pcdb upgrade --to {intent['to']})")
        if intent is None:
            if _text(server.version).split(".")[0] == str(major):
                return {"from": server.version, "to": server.version, "seconds": {}, "downtime_seconds": None,
                        "rollback": "nothing to roll back: the server already runs this major", "resumed": False,
                        "replica": "unchanged"}
            at = clock.now().replace(microsecond=0)
            intent = {"to": str(major), "from": _text(server.version), "step": "replica",
                      "rollback_time": at.isoformat().replace("+00:00", "Z"),
                      "rollback_server": f"{name}-pre{major}-{at:%Y%m%d%H%M}"[:63]}
            self._write_intent(intent)
        seconds: dict[str, float] = {}
        if intent["step"] == "replica":
            started = time.monotonic()
            if self._replica_server() is not None:
                pg = self.clients.postgres
                self._call("delete the read replica (Azure's upgrade refuses a server that has one)",
                           self.env.replica.name, lambda: pg.servers.begin_delete(self.rg, self.env.replica.name))
            seconds["replica deleted"] = round(time.monotonic() - started, 3)
            intent["step"] = "version"
            self._write_intent(intent)
        failure = None
        if intent["step"] == "version":
            if _text(self._server(name).version).split(".")[0] != str(major):
                try:
                    seconds["version update"] = self._update_version(name, major)
                except TargetError as exc:
                    failure = exc
            intent["step"] = "recreate"
            self._write_intent(intent)
        started = time.monotonic()
        replica = "created again from it"
        try:
            self.ensure_replica()       # from the primary as it is now: upgraded, or put back by Azure
        except TargetError as exc:
            if failure is None:
                raise                   # the tag stays at "recreate": the next run creates it
            replica = f"NOT created again: {exc}; `pcdb install` creates it"
        seconds["replica created"] = round(time.monotonic() - started, 3)
        after = self._server(name)
        if failure is not None:
            self._write_intent(None)    # nothing left to finish: Azure refused, or put the server back
            raise TargetError(f"{failure}. Azure's state now: {name} is {_text(after.state)}, PostgreSQL "
                              f"{_text(after.version)}; "
                              f"the read replica {replica}. Rollback: {self.rollback_procedure(intent)}")
        self._write_intent(None)
        return {"from": intent["from"], "to": _text(after.version), "seconds": seconds, "downtime_seconds": None,
                "rollback": self.rollback_procedure(intent), "resumed": resumed,
                "replica": "deleted before the upgrade and created again from the upgraded primary"}

    def _zones(self) -> tuple[str | None, str | None]:
        server = self._server(self.env.server.name)
        standby = server.high_availability.standby_availability_zone if server.high_availability else None
        return server.availability_zone, standby

    def failover(self, mode: Literal["planned", "forced"] = "planned") -> FailoverResult:
        """Restart with failover: the standby zone becomes the primary zone (R-DR-1)."""
        from azure.mgmt.postgresqlflexibleservers import models as m

        pg = self.clients.postgres
        before = self._zones()
        started = clock.now()
        body = m.RestartParameter(restart_with_failover=True,
                                  failover_mode="PlannedFailover" if mode == "planned" else "ForcedFailover")
        self._call("fail over", self.env.server.name, lambda: pg.servers.begin_restart(self.rg, self.env.server.name, body))
        seconds = (clock.now() - started).total_seconds()
        after = self._zones()
        return FailoverResult(mode, f"zone {before[0]}", f"zone {after[0]}", seconds, seconds)

    DRILL_TAG = "pcdb-drill"
    # When a server became production's primary by a promotion (a real region failover, or the
    # failback's switchover): written in the same PATCH as the promotion, read by the SLA to
    # know which server's availability counted when.
    PROMOTED_TAG = "pcdb-promoted"

    def promote_replica(self, mode: Literal["standalone", "switchover"] = "standalone",
                        option: Literal["planned", "forced"] = "forced", drill: str | None = None) -> PromotionResult:
        """Promote the read replica (R-DR-2). Planned waits for the replica to catch up; forced
        does not (a lost region cannot be waited for). ``drill`` tags the promoted server, so
        only a server a drill promoted is ever rebuilt by pcdb; a real promotion is tagged with
        its time instead. The values are the REST specification's (2024-08-01: lower case; the
        SDK's own enum has them capitalised)."""
        from azure.mgmt.postgresqlflexibleservers import models as m

        pg = self.clients.postgres
        replica = self._replica_server()
        if replica is None:
            raise TargetError(f"there is no replica {self.env.replica.name} to promote; run the install (Phase 3)")
        if not self._is_replica(replica):
            return PromotionResult(self.env.replica.name, "unchanged")
        started = clock.now()
        mark = {self.DRILL_TAG: drill} if drill else {self.PROMOTED_TAG: started.isoformat(timespec="seconds")}
        tags = {**(replica.tags or {}), **mark}
        body = m.ServerForPatch(replica=m.Replica(promote_mode=mode, promote_option=option), tags=tags)
        self._call("promote", self.env.replica.name, lambda: pg.servers.begin_update(self.rg, self.env.replica.name, body))
        self._active = None
        return PromotionResult(self.env.replica.name, "promoted", (clock.now() - started).total_seconds())

    def stop_primary_region(self) -> Change:
        """Stop the primary server (Azure stops its HA standby with it): the region drill's
        stand-in for a lost region. Unchanged when it is already stopped."""
        pg = self.clients.postgres
        if self._server(self.env.server.name).state == "Stopped":
            return Change("server", self.env.server.name, "unchanged", notes=("already stopped",))
        self._call("stop", self.env.server.name, lambda: pg.servers.begin_stop(self.rg, self.env.server.name))
        return Change("server", self.env.server.name, "updated", {"state": ("Ready", "Stopped")})

    def start_primary_region(self) -> Change:
        pg = self.clients.postgres
        state = self._server(self.env.server.name).state
        if state != "Stopped":
            return Change("server", self.env.server.name, "unchanged", notes=(f"state {state}",))
        self._call("start", self.env.server.name, lambda: pg.servers.begin_start(self.rg, self.env.server.name))
        return Change("server", self.env.server.name, "updated", {"state": ("Stopped", "Ready")})

    def stall_replica(self) -> None:
        raise TargetError("Azure gives no way to cut a replica's replication link: the stalled-replica "
                          "region drill runs on the sandbox only")

    def replica_diverged(self) -> bool:
        """The replica was promoted by a drill (tagged) and not rebuilt yet. A replica promoted
        for real (no drill tag) is production's primary now and is never touched."""
        replica = self._replica_server()
        return replica is not None and not self._is_replica(replica) and self.DRILL_TAG in (replica.tags or {})

    def rebuild_replica(self) -> Change:
        """Delete the server a drill promoted and create the read replica of the primary again."""
        replica = self._replica_server()
        if replica is not None and self._is_replica(replica):
            return Change("server", self.env.replica.name, "unchanged", notes=("still a replica",))
        if replica is not None:
            if self.DRILL_TAG not in (replica.tags or {}):
                raise TargetError(f"{self.env.replica.name} was promoted outside a drill and may carry production "
                                  "writes: pcdb does not delete it; rebuild the replica by hand once it is retired")
            pg = self.clients.postgres
            self._call("delete the promoted drill server", self.env.replica.name,
                       lambda: pg.servers.begin_delete(self.rg, self.env.replica.name))
        change = self.ensure_replica()
        self._active = None
        return Change("server", self.env.replica.name, "created",
                      notes=("the server the drill promoted was deleted; the replica was created again "
                             "from the primary", *change.notes))

    # -- real region failover and failback (#16) --------------------------------------------

    def _application_record(self):
        """The application's CNAME in the private DNS zone, or None when the spec names none."""
        from azure.core.exceptions import ResourceNotFoundError

        name, zone = self.env.dr.application_record, self.env.network.private_dns_zone
        if not name or not zone:
            return None
        try:
            return self.clients.dns.record_sets.get(self.rg, zone, "CNAME", name)
        except ResourceNotFoundError:
            return None

    def application_target(self) -> Literal["primary", "replica"]:
        """The replica when the application's record names it; without a record, when the
        replica was promoted outside a drill (it then holds production's writes)."""
        record = self._application_record()
        if record is not None and record.cname_record is not None:
            return "replica" if record.cname_record.cname == FQDN.format(name=self.env.replica.name) else "primary"
        replica = self._replica_server()
        promoted = replica is not None and not self._is_replica(replica) and self.DRILL_TAG not in (replica.tags or {})
        return "replica" if promoted else "primary"

    def switch_application(self, to: Literal["primary", "replica"]) -> Change:
        """Point the private DNS record ``dr.application_record`` at the server (a 30 s TTL, so
        clients follow within a minute). Without a record the application team switched its
        connection setting (a confirmed step): nothing to write here."""
        from azure.mgmt.privatedns import models as dns

        name, zone = self.env.dr.application_record, self.env.network.private_dns_zone
        if not name or not zone:
            return Change("application record", "-", "unchanged",
                          notes=("the spec names no dr.application_record: the connection setting was switched by "
                                 "its owner (confirmed step)",))
        wanted = FQDN.format(name=self.env.replica.name if to == "replica" else self.env.server.name)
        record = self._application_record()
        before = record.cname_record.cname if record is not None and record.cname_record else None
        if before == wanted:
            return Change("application record", name, "unchanged", notes=(f"CNAME {wanted}",))
        body = dns.RecordSet(ttl=30, cname_record=dns.CnameRecord(cname=wanted))
        self._call("point the application record", name,
                   lambda: self.clients.dns.record_sets.create_or_update(self.rg, zone, "CNAME", name, body))
        return Change("application record", name, "updated" if before else "created", {"CNAME": (before, wanted)})

    def primary_region_missing(self) -> list[str]:
        server = self._find_server(self.env.server.name)
        if server is None:
            return [f"{self.env.server.name} (not found)"]
        state = _text(server.state)
        return [] if state == "Ready" else [f"{self.env.server.name} (state {state})"]

    # -- the failback (#25): a new server in the primary region, Azure's planned switchover ---
    # Azure cannot rewind a server onto another's timeline, and a server's name is unique and never
    # renamed: the former primary is deleted (after an approval) so that its name, the spec's, is
    # the new primary's. The new server is a read replica of the promoted one; Azure's "promote to
    # primary server" (switchover, planned: it waits until the replica caught up) then swaps their
    # roles, so the promoted server becomes the Korea South read replica again. Each step reads
    # what exists and changes only what differs; the step under way is a tag on the promoted
    # server, written before the step, read by the next run (it outlives this machine).
    FAILBACK_TAG = "pcdb-failback"
    VIRTUAL_ENDPOINT = "{server}-ve"   # the switchover's virtual endpoints (Azure requires them)

    def _failback_intent(self) -> str | None:
        replica = self._replica_server()
        return (replica.tags or {}).get(self.FAILBACK_TAG) if replica is not None else None

    def _record_failback(self, what: str | None) -> None:
        """The step under way, as a tag of the promoted server (removed with None)."""
        from azure.mgmt.postgresqlflexibleservers import models as m

        name = self.env.replica.name
        tags = {k: v for k, v in (self._server(name).tags or {}).items() if k != self.FAILBACK_TAG}
        if what:
            tags[self.FAILBACK_TAG] = f"{what} since {clock.now().isoformat(timespec='seconds')}"[:256]
        pg = self.clients.postgres
        self._call("record the failback's step on", name,
                   lambda: pg.servers.begin_update(self.rg, name, m.ServerForPatch(tags=tags)))

    def failback_plan(self) -> FailbackPlan:
        server, replica = self.env.server, self.env.replica
        steps = (
            ("delete", f"delete the former primary {server.name} ({server.location}) after the approval: its name "
             "is the new primary's", self._fb_delete_former, "delete", self._fb_former_facts),
            ("1", f"1. create {server.name} in {server.location} as a read replica of the promoted {replica.name} "
             f"({server.sku}, {server.storage.size // (1 << 30)} GB, zone {server.high_availability.primary_zone})",
             self._fb_create, None, None),
            ("2", f"2. wait for {server.name} to catch up with {replica.name} (lag measured)", self._fb_catch_up, None, None),
            ("3", f"3. promote {server.name} with Azure's planned switchover ({replica.name} becomes its replica)",
             self._fb_switchover, "switch", self._fb_switch_facts),
            ("4", "4. point the application's CNAME back", lambda: self.switch_application("primary"), None, None),
            ("5", f"5. zone-redundant HA on {server.name}, standby in zone {server.high_availability.standby_zone}",
             self._fb_ha, None, None),
            ("6", f"6. the read replica {replica.name} in {replica.location} as the spec says", self._fb_replica, None, None),
            ("7", "7. re-apply what a promotion does not carry over (parameters, allow-listed extensions, PgBouncer, "
             "authentication) and verify the backup settings", self._fb_reapply, None, None),
        )

        serving = "4"   # after the CNAME points back, the application is served again: the switch's outage ends

        def recorded(key: str, name: str, run: Callable[[], object]) -> Callable[[], object]:
            def step() -> object:
                intent = name.split(" (")[0][:120]
                if not (self._failback_intent() or "").startswith(intent + " since"):
                    self._record_failback(intent)   # intent first (a resumed step's is on record already)
                crash.point("azure-failback", key)
                out = run()
                crash.point("azure-failback-done", key)
                return out
            return step

        under_way = self._failback_intent()
        return FailbackPlan(tuple(FailbackStep(name, recorded(key, name, run), gate, facts, serves=key == serving)
                                  for key, name, run, gate, facts in steps),
                            under_way=under_way, verify=True, finish=lambda: self._record_failback(None),
                            switch_began=self._fb_switch_began() if under_way else None)

    def _fb_switch_began(self) -> datetime | None:
        """When an interrupted failback's switchover began (its time is tagged on the new primary
        in the switchover's own PATCH), while the application's name still points at the
        promoted replica: the write outage that switch began is not over yet."""
        server = self._find_server(self.env.server.name)
        if server is None or self._is_replica(server) or self.application_target() != "replica":
            return None
        return self._promoted_at(server)

    def _promoted_at(self, server) -> datetime | None:
        """When pcdb promoted ``server`` (the time it tagged on it), None if it never did."""
        at = (server.tags or {}).get(self.PROMOTED_TAG) if server is not None else None
        if not at:
            return None
        try:
            return datetime.fromisoformat(at)
        except ValueError:
            raise TargetError(f"the tag {self.PROMOTED_TAG} on {server.name} is not a time ({at[:40]!r}): pcdb "
                              "writes it when it promotes the server; put back the promotion's time or "
                              "remove the tag") from None

    def _fb_former_facts(self) -> dict | None:
        """What the approver of the former primary's deletion sees; None once it is gone (or is
        already the new primary: a replica of the promoted server, or its switched-over primary)."""
        former, promoted = self._find_server(self.env.server.name), self._replica_server()
        if former is None or self._is_replica(former) or promoted is None or self._is_replica(promoted):
            return None     # gone; or the failback's own server (a replica, or the primary after the switchover)
        return {"delete": self.env.server.name, "location": self.env.server.location, "state": _text(former.state),
                "why": "its name is the spec's and Azure never renames a server: the new primary takes it",
                "lost": "the writes it took after the replica's last replayed transaction (the region failover's "
                        "RPO) go with it"}

    def _fb_delete_former(self) -> Change:
        if self._fb_former_facts() is None:
            return Change("server", self.env.server.name, "unchanged",
                          notes=("the former primary is gone (or is already the new server)",))
        pg = self.clients.postgres
        self._call("delete the former primary", self.env.server.name,
                   lambda: pg.servers.begin_delete(self.rg, self.env.server.name))
        return Change("server", self.env.server.name, "deleted", notes=("the former primary, after the approval",))

    def _fb_create(self) -> Change:
        from azure.mgmt.postgresqlflexibleservers import models as m

        server, name = self.env.server, self.env.server.name
        found = self._find_server(name)
        if found is not None:
            if self._fb_former_facts() is not None:
                raise TargetError(f"{name} is still the former primary: its deletion (after the approval) comes first")
            return Change("server", name, "unchanged", notes=(f"exists ({_text(found.replication_role)})",))
        wanted = next(d for d in self.desired() if d.type == "server").model
        body = m.Server(location=server.location, sku=wanted.sku, storage=wanted.storage, backup=wanted.backup,
                        availability_zone=wanted.availability_zone, network=wanted.network, create_mode="Replica",
                        source_server_resource_id=next(d.id for d in self.desired() if d.type == "replica"))
        pg = self.clients.postgres
        self._call("create the failback's replica", name, lambda: pg.servers.begin_create_or_update(self.rg, name, body))
        return Change("server", name, "created", notes=(f"a read replica of {self.env.replica.name} in {server.location}",))

    def _fb_catch_up(self) -> Change:
        """Until ARM says the replication is Active and the new server replayed the promoted one's
        WAL position read at the start; the lag at the start and the time it took are reported."""
        import time

        import psycopg

        from pcdb.sql import query

        name, source = self.env.server.name, self.env.replica.name
        server = self._server(name)
        if not self._is_replica(server):
            return Change("replication", f"{source}->{name}", "unchanged", notes=(f"{name} is no replica any more",))
        user, password = self.env.server.admin.user, self._admin_password()
        with psycopg.connect(self._endpoint(source).conninfo(user, password), autocommit=True) as conn:
            wanted = wal.lsn(conn.execute(query("failover.sql", "wal_position")).fetchone()[0])
        started, first, deadline = time.monotonic(), None, time.monotonic() + self.timeout
        with psycopg.connect(self._endpoint(name).conninfo(user, password), autocommit=True) as conn:
            while True:
                link = self._server(name).replica
                state = _text(link.replication_state) if link is not None and link.replication_state else ""
                replayed, _ = conn.execute(query("failover.sql", "replay_position")).fetchone()
                lag = max(0, wanted - wal.lsn(replayed or "0/0"))
                first = lag if first is None else first
                if state == "Active" and lag == 0:
                    break
                if time.monotonic() > deadline:
                    raise TargetError(f"{name} did not catch up with {source} within {self.timeout:.0f} s "
                                      f"(replication {state or 'unknown'}, {lag} bytes behind): check the replica "
                                      "in the portal, then run the failback again")
                time.sleep(min(self.poll_seconds, 5.0))
        seconds = round(time.monotonic() - started, 3)
        return Change("replication", f"{source}->{name}", "updated", {"lag_bytes": (first, 0)},
                      notes=(f"caught up: {first} bytes behind at the start, {seconds} s to catch up",))

    def _fb_switch_facts(self) -> dict | None:
        server = self._find_server(self.env.server.name)
        if server is None or not self._is_replica(server):
            return None
        return {"from": self.env.replica.name, "to": self.env.server.name, "how": "Azure's planned switchover"}

    def _fb_switchover(self) -> Change:
        """Azure's "promote to primary server", planned: it needs virtual endpoints on the current
        primary with the server to promote as a member."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.mgmt.postgresqlflexibleservers import models as m

        name, promoted = self.env.server.name, self.env.replica.name
        if not self._is_replica(self._server(name)):
            self._active = None
            return Change("server", name, "unchanged", notes=("already the primary",))
        pg = self.clients.postgres
        endpoint = self.VIRTUAL_ENDPOINT.format(server=self.env.server.name)[:63]
        try:
            members = pg.virtual_endpoints.get(self.rg, promoted, endpoint).properties.members or []
        except ResourceNotFoundError:
            members = []
        if name not in members:
            body = m.VirtualEndpoint(properties=m.VirtualEndpointResourceProperties(endpoint_type="ReadWrite",
                                                                                  members=[name]))
            self._call("create the virtual endpoints on", promoted,
                       lambda: pg.virtual_endpoints.begin_create(self.rg, promoted, endpoint, body))
        started = clock.now()
        tags = {**(self._server(name).tags or {}), self.PROMOTED_TAG: started.isoformat(timespec="seconds")}
        patch = m.ServerForPatch(replica=m.Replica(promote_mode="switchover", promote_option="planned"), tags=tags)
        self._call("switch over to", name, lambda: pg.servers.begin_update(self.rg, name, patch))
        self._active = None
        seconds = round((clock.now() - started).total_seconds(), 3)
        return Change("server", name, "updated", {"replicationRole": ("AsyncReplica", "Primary")},
                      notes=(f"switched over in {seconds} s; {promoted} is its read replica",))

    def _fb_ha(self) -> Change:
        from azure.mgmt.postgresqlflexibleservers import models as m

        name, ha = self.env.server.name, self.env.server.high_availability
        server = self._server(name)
        have = server.high_availability
        if have is not None and _text(have.mode) == ha.mode and (have.standby_availability_zone or None) == ha.standby_zone:
            return Change("high availability", name, "unchanged", notes=(f"{ha.mode}, standby zone {ha.standby_zone}",))
        patch = m.ServerForPatch(high_availability=m.HighAvailability(mode=ha.mode,
                                                                     standby_availability_zone=ha.standby_zone))
        pg = self.clients.postgres
        self._call("enable high availability on", name, lambda: pg.servers.begin_update(self.rg, name, patch))
        return Change("high availability", name, "updated",
                      {"mode": (_text(have.mode) if have else "Disabled", ha.mode)},
                      notes=(f"standby in zone {ha.standby_zone}",))

    def _fb_replica(self) -> Change:
        replica = self._replica_server()
        if replica is not None and not self._is_replica(replica):
            raise TargetError(f"{self.env.replica.name} is not a replica after the switchover: check it in the portal")
        return self.ensure_replica()

    def _fb_reapply(self) -> list[Change]:
        """Parameters (the extension allow-list among them; PgBouncer's, which the spec does not
        name, back to Azure's default: off), the authentication as the spec has it, and the
        backup settings (:meth:`_backup_as_spec`)."""
        return [self.ensure_parameters(), self._auth_as_spec(self.env.server.name), self._pgbouncer(self.env.server.name),
                *self._backup_as_spec(self.env.server.name)]

    def _auth_as_spec(self, name: str) -> Change:
        """Password authentication only: the spec's roles log in with SCRAM passwords and it names
        no Entra ID administrator, so Entra ID authentication stays off (Azure's promotion does
        not carry a server's authentication settings over)."""
        from azure.mgmt.postgresqlflexibleservers import models as m

        have = self._server(name).auth_config
        current = (_text(have.password_auth) if have and have.password_auth else "Enabled",
                   _text(have.active_directory_auth) if have and have.active_directory_auth else "Disabled")
        if current == ("Enabled", "Disabled"):
            return Change("authentication", name, "unchanged", notes=("password (SCRAM) only, no Entra ID, as the spec",))
        pg = self.clients.postgres
        patch = m.ServerForPatch(auth_config=m.AuthConfig(password_auth="Enabled", active_directory_auth="Disabled"))
        self._call("set the authentication of", name, lambda: pg.servers.begin_update(self.rg, name, patch))
        return Change("authentication", name, "updated",
                      {"passwordAuth": (current[0], "Enabled"), "activeDirectoryAuth": (current[1], "Disabled")})

    def _pgbouncer(self, name: str) -> Change:
        """PgBouncer as the spec has it: its parameters, when the spec names them, are applied with
        the others; otherwise Azure's built-in PgBouncer is off (a user's change is put back by
        :meth:`ensure_parameters`), and this says so."""
        from azure.core.exceptions import ResourceNotFoundError

        wanted = self.env.parameters.get("pgbouncer.enabled")
        try:
            value = self.clients.postgres.configurations.get(self.rg, name, "pgbouncer.enabled").value
        except ResourceNotFoundError:
            value = "false"
        if wanted is None and str(value).lower() != "false":
            raise TargetError(f"PgBouncer is on on {name} though the spec names no pgbouncer parameter: "
                              "set pgbouncer.enabled in the spec's parameters, or turn it off in the portal")
        return Change("pgbouncer", name, "unchanged", notes=(f"pgbouncer.enabled={value}",))

    def _backup_as_spec(self, name: str) -> list[Change]:
        """The backup retention patched where it differs; geo-redundant backup Azure sets only at
        creation, so a difference there is said, not written."""
        from azure.mgmt.postgresqlflexibleservers import models as m

        out = []
        backup = self._server(name).backup
        days, geo = self.env.backup.retention.days, "Enabled" if self.env.backup.geo_redundant else "Disabled"
        if backup is None or backup.backup_retention_days != days:
            pg = self.clients.postgres
            patch = m.ServerForPatch(backup=m.Backup(backup_retention_days=days))
            self._call("set the backup retention of", name, lambda: pg.servers.begin_update(self.rg, name, patch))
            out.append(Change("backup", name, "updated",
                              {"backupRetentionDays": (backup.backup_retention_days if backup else None, days)}))
        have_geo = _text(backup.geo_redundant_backup) if backup and backup.geo_redundant_backup else "Disabled"
        if have_geo != geo:
            out.append(Change("backup", name, "conflict", {"geoRedundantBackup": (have_geo, geo)},
                              notes=("Azure sets geo-redundant backup only when a server is created: restore into a "
                                     "new server with it, and switch over",)))
        elif not out:
            out.append(Change("backup", name, "unchanged", notes=(f"{days} days, geo-redundant {geo}",)))
        return out

    def promoted_backups(self) -> list[Change]:
        """After a real region failover, the promoted server's backup retention as the spec says
        (Azure gives a replica its own, shorter one, and takes the promoted server's backups by
        itself from the promotion on)."""
        name = self.env.replica.name
        if self.active_server() != name:
            return [Change("backup", name, "unchanged", notes=("no real region failover: the primary's backups serve",))]
        return self._backup_as_spec(name)

    def promoted_server_facts(self) -> list[str]:
        """The post-promotion checklist (§5.2.3): what the promoted server lacks that the primary had."""
        replica = self._replica_server()
        if replica is None:
            return ["the replica does not exist"]
        facts = []
        ha = replica.high_availability.mode if replica.high_availability else "Disabled"
        if (ha or "Disabled") == "Disabled":
            facts.append(f"{self.env.replica.name} has no high availability: enable ZoneRedundant "
                         "(az postgres flexible-server update --high-availability ZoneRedundant) before it "
                         "takes production load")
        geo = (replica.backup.geo_redundant_backup if replica.backup else None) or "Disabled"
        if geo != "Enabled":
            facts.append(f"{self.env.replica.name} has no geo-redundant backup, and Azure sets it only when a "
                         "server is created: until the topology is rebuilt, a second region loss is not covered")
        return facts or [f"{self.env.replica.name} carries HA and geo-redundant backup"]

    METRICS = ("active_connections", "storage_used", "storage_percent", "tps", "cpu_percent", "memory_percent")

    def metrics_series(self, start: datetime, end: datetime, interval: str = "PT1M",
                       names: tuple[str, ...] = METRICS, resource: str | None = None) -> dict[str, list[tuple[datetime, float]]]:
        """Azure Monitor samples (1-minute, kept 93 days) of ``names`` between start and end."""
        server = resource or self._active_id()
        span = f"{start.isoformat()}/{end.isoformat()}"  # metrics.list wants ISO strings, not timedeltas
        response = self._call("read metrics of", server.rsplit("/", 1)[-1], lambda: self.clients.monitor.metrics.list(
            server, timespan=span, interval=interval, metricnames=",".join(names), aggregation="Average,Maximum"))
        out: dict[str, list[tuple[datetime, float]]] = {}
        for metric in response.value or []:
            points = out.setdefault(metric.name.value, [])
            for series in metric.timeseries or []:
                for point in series.data or []:
                    value = point.maximum if point.maximum is not None else point.average
                    if value is not None:
                        points.append((point.time_stamp, float(value)))
        return out

    # Azure Monitor's names -> the capacity analysis's (pcdb.capacity)
    HISTORY = {"storage_used": "storage_used", "storage_percent": "storage_percent",
               "txlogs_storage_used": "txlogs_storage_used", "active_connections": "active_connections",
               "cpu_percent": "cpu_percent", "memory_percent": "memory_percent", "iops": "iops",
               "maximum_used_transactionIDs": "xid_age"}

    def metric_history(self, start: datetime, end: datetime) -> dict[str, list[tuple[datetime, float, float]]]:
        """Hourly (PT1H) averages and maxima of the capacity metrics from Azure Monitor, which keeps
        93 days: {metric: [(hour, average, maximum)]}, ``iops`` also as ``iops_percent`` of the
        provisioned IOPS. Hourly, not 1-minute: 93 days of minutes are 134,000 points a metric,
        beyond what one metrics query returns; the hour's average and maximum keep what the
        analysis needs."""
        server = self._active_id()
        span = f"{start.isoformat()}/{end.isoformat()}"
        response = self._call("read metric history of", server.rsplit("/", 1)[-1], lambda: self.clients.monitor.metrics.list(
            server, timespan=span, interval="PT1H", metricnames=",".join(self.HISTORY), aggregation="Average,Maximum"))
        out: dict[str, list[tuple[datetime, float, float]]] = {}
        for metric in response.value or []:
            name = self.HISTORY.get(metric.name.value)
            if name is None:
                continue
            points = out.setdefault(name, [])
            for series in metric.timeseries or []:
                for point in series.data or []:
                    if point.average is None and point.maximum is None:
                        continue          # an hour without data: a gap, not a zero
                    avg = point.average if point.average is not None else point.maximum
                    points.append((point.time_stamp, float(avg), float(point.maximum if point.maximum is not None
                                                                         else avg)))
        if out.get("iops"):
            limit = float(self.env.server.storage.iops)
            out["iops_percent"] = [(t, 100 * a / limit, 100 * m / limit) for t, a, m in out["iops"]]
        return out

    def daily_costs(self, start, end) -> list:
        """Actual daily cost of the resource group from Azure Cost Management, per meter category
        and sub-category, each put in a category of §9.2.1 (compute, storage, backup storage,
        network, monitoring). The identity needs Cost Management Reader on the resource group."""
        from azure.mgmt.costmanagement import models as cm

        from pcdb.billing import DayCost, meter_category

        scope = f"subscriptions/{self.subscription}/resourceGroups/{self.rg}"
        definition = cm.QueryDefinition(
            type="ActualCost", timeframe="Custom",
            time_period=cm.QueryTimePeriod(from_property=datetime.combine(start, datetime.min.time(), timezone.utc),
                                           to=datetime.combine(end, datetime.min.time(), timezone.utc)),
            dataset=cm.QueryDataset(granularity="Daily",
                                    aggregation={"totalCost": cm.QueryAggregation(name="Cost", function="Sum")},
                                    grouping=[cm.QueryGrouping(type="Dimension", name="MeterCategory"),
                                              cm.QueryGrouping(type="Dimension", name="MeterSubCategory")]))
        result = self._call("read the cost of", self.rg, lambda: self.clients.cost.query.usage(scope, definition))
        if result is None:
            return []
        names = [c.name for c in result.columns or []]
        out = []
        for row in result.rows or []:
            r = dict(zip(names, row))
            day = datetime.strptime(str(int(r["UsageDate"])), "%Y%m%d").date()
            if not start <= day < end:
                continue
            category, sub = r.get("MeterCategory") or "", r.get("MeterSubCategory") or ""
            out.append(DayCost(day, f"{category}/{sub}".strip("/"), meter_category(category, sub), float(r["Cost"])))
        return out

    def serving_periods(self, start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
        """Which server production's primary was, period by period between ``start`` and
        ``end``: the spec's server, then from a real region failover's promotion the promoted
        replica, then from a failback's switchover the spec's server again (each promotion's
        time is tagged on the server it promoted)."""
        marks = []
        for name in (self.env.server.name, self.env.replica.name):
            if (at := self._promoted_at(self._find_server(name))) is not None:
                marks.append((at, name))
        periods, current, since = [], self.env.server.name, start
        for at, name in sorted(marks):
            if at > since and at < end:
                periods.append((current, since, at))
                since = at
            if at < end:
                current = name
        periods.append((current, since, end))
        return periods

    def availability_samples(self, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
        """is_db_alive per minute (sampled every 20 s: the minute's minimum, so one failed sample
        makes the minute down), a day per query, of the server that was production's primary
        at each minute: a replica answering while its primary was down does not count as up."""
        ids = {d.name: d.id for d in self.desired() if d.type in ("server", "replica")}
        out: list[tuple[datetime, float]] = []
        for name, begin, finish in self.serving_periods(start, end):
            server, day = ids[name], begin
            while day < finish:
                upto = min(finish, day + timedelta(days=1))
                span = f"{day.isoformat()}/{upto.isoformat()}"
                response = self._call("read availability of", name,
                                      lambda span=span, server=server: self.clients.monitor.metrics.list(
                                          server, timespan=span, interval="PT1M", metricnames="is_db_alive",
                                          aggregation="Minimum"))
                for metric in response.value or []:
                    for series in metric.timeseries or []:
                        out += [(p.time_stamp, float(p.minimum)) for p in series.data or []
                                if p.minimum is not None and begin <= p.time_stamp < finish]
                day = upto
        return out

    def metrics(self) -> MetricsSample:
        """The latest sample, in the shape the sandbox gives (fields Azure has no metric for are None)."""
        end = clock.now()
        series = self.metrics_series(end - timedelta(minutes=5), end)
        latest = {name: points[-1][1] for name, points in series.items() if points}
        replica_id = next(d.id for d in self.desired() if d.type == "replica")
        lag = self.metrics_series(end - timedelta(minutes=5), end, names=("physical_replication_delay_in_seconds",),
                                  resource=replica_id).get("physical_replication_delay_in_seconds", [])
        quota = self.env.server.storage.size
        used = int(latest.get("storage_used", 0))
        return MetricsSample(
            at=end, connections=int(latest.get("active_connections", 0)), storage_used_bytes=used,
            storage_quota_bytes=quota, storage_percent=latest.get("storage_percent", 100.0 * used / quota),
            tps=latest.get("tps"), cache_hit_percent=None, deadlocks=0,
            replication=({"name": self.env.replica.name, "lag_bytes": None,
                          "lag_seconds": lag[-1][1] if lag else None},))

    def endpoint(self, which: Literal["primary", "replica", "application"] = "primary") -> Endpoint:
        """The FQDN follows the primary across a zone failover, so primary and application are one;
        with an application record (dr.application_record), the application's path is the server
        the record names (after a region failover: the promoted replica)."""
        if which == "application" and self.env.dr.application_record and self.env.network.private_dns_zone:
            return self._endpoint(self.env.replica.name if self.application_target() == "replica"
                                  else self.env.server.name)
        if which == "replica":
            return self._endpoint(self.env.replica.name)
        return self._endpoint(self.active_server())     # after a real region failover: the promoted server

    def _endpoint(self, name: str) -> Endpoint:
        mapped = self._endpoints(name)
        if mapped is not None:
            return mapped
        conn = self.env.server.connection
        timeout = int(conn.connect_timeout.total_seconds())
        if self.env.security.tls.verify_server_certificate:
            # The certificate is checked against Azure's roots and the server's name; the password
            # goes only to SCRAM bound to that channel.
            return Endpoint(FQDN.format(name=name), conn.port, self.env.service.database, "verify-full",
                            sslrootcert=conn.ca_bundle or str(AZURE_ROOTS), connect_timeout=timeout,
                            require_auth="scram-sha-256", channel_binding="require")
        return Endpoint(FQDN.format(name=name), conn.port, self.env.service.database, conn.sslmode,
                        sslrootcert=conn.ca_bundle, connect_timeout=timeout)

    def archive_report(self, path, sha256: str) -> str | None:
        """Upload the report into the evidence container (immutability policy: it can never be
        changed or deleted within the retention), as ``<env>/<year>/<stem>.<sha256[:12]><suffix>``
        with its SHA-256 as metadata; a blob of that name already there is the same report."""
        archive = self.env.azure.evidence_archive
        if archive is None or self._credential is None:
            return None
        year = clock.now().strftime("%Y")
        return self._blob_put(archive.container, f"{self.env.name}/{year}/{path.stem}.{sha256[:12]}{path.suffix}",
                              path, sha256, "text/markdown; charset=utf-8", once=True)

    def read_archived_report(self, location: str) -> bytes | None:
        """An archived report's bytes, read only from the evidence container (a ledger row names
        the URL; a row is not trusted to send this identity's token anywhere else)."""
        archive = self.env.azure.evidence_archive
        if archive is None or self._credential is None:
            return None
        if not location.startswith(f"{self._blob_base()}/{archive.container}/{self.env.name}/"):
            return None
        with self._blob_client() as (client, HttpRequest):
            reply = client.send_request(HttpRequest("GET", location, headers={"x-ms-version": "2023-11-03"}),
                                        connection_verify=self._blob_verify)
            return reply.read() if reply.status_code == 200 else None

    def server_identity(self) -> dict[str, str]:
        server = self._find_server(self.env.server.name)
        if server is None:
            raise TargetError(f"{self.env.server.name} does not exist: it has no identity to bind evidence to")
        created = getattr(getattr(server, "system_data", None), "created_at", None)
        return {"resource_id": server.id or "", "created_at": created.isoformat() if created else ""}

    def ledger_anchors(self):
        """The ledger's anchors: a blob per row in the immutable evidence container, named
        ``<env>/ledger/<server>/<seq>`` with the row hash in its metadata."""
        archive = self.env.azure.evidence_archive
        if archive is None or self._credential is None:
            return None
        from pcdb.azure.anchors import BlobAnchors

        return BlobAnchors(self._blob_client, self._blob_base(), archive.container,
                           f"{self.env.name}/ledger/{self.env.server.name}/", self._blob_verify)

    def archive_partition(self, path, name: str, sha256: str) -> str:
        """A partition's dump into the partition-archive container as ``<env>/partitions/<name>.dump``
        (SHA-256 as metadata), write-once (``If-None-Match: *``): the name carries the content's
        hash, so a blob already there under it is this very archive."""
        archive = self.env.azure.evidence_archive
        if archive is None or self._credential is None:
            raise TargetError("partitions are archived into azure.evidence_archive's storage account, which "
                              f"{self.env.name} does not name: add it, or keep the partitions (raise the retention)")
        return self._blob_put(archive.partition_container, f"{self.env.name}/partitions/{name}.dump", path, sha256,
                              "application/octet-stream", once=True)

    def fetch_partition_archive(self, location: str, dest):
        with self._blob_client() as (client, HttpRequest):
            reply = client.send_request(HttpRequest("GET", location, headers={"x-ms-version": "2023-11-03"}),
                                        connection_verify=self._blob_verify)
            if reply.status_code != 200:
                raise TargetError(f"could not read the archive {location}: HTTP {reply.status_code}")
            dest.write_bytes(reply.read())
        return dest

    def _blob_client(self):
        from contextlib import contextmanager

        from azure.core import PipelineClient
        from azure.core.pipeline.policies import BearerTokenCredentialPolicy, RetryPolicy
        from azure.core.rest import HttpRequest

        @contextmanager
        def opened():
            policies = [RetryPolicy(), BearerTokenCredentialPolicy(self._credential, "https://storage.azure.com/.default")]
            with PipelineClient(self._blob_base(), policies=policies) as client:
                yield client, HttpRequest
        return opened()

    def _blob_base(self) -> str:
        archive = self.env.azure.evidence_archive
        return (self._blob_endpoint or f"https://{archive.storage_account}.blob.core.windows.net").rstrip("/")

    def _blob_put(self, container: str, blob: str, path, sha256: str, content_type: str, once: bool) -> str:
        import base64
        import hashlib

        archive = self.env.azure.evidence_archive
        url = f"{self._blob_base()}/{container}/{blob}"
        data = path.read_bytes()
        headers = {"x-ms-version": "2023-11-03", "x-ms-blob-type": "BlockBlob", "Content-Type": content_type,
                   "x-ms-meta-sha256": sha256,
                   "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()}  # noqa: S324 - transfer check
        if once:
            headers["If-None-Match"] = "*"
        with self._blob_client() as (client, HttpRequest):
            try:
                reply = client.send_request(HttpRequest("PUT", url, content=data, headers=headers),
                                            connection_verify=self._blob_verify)
            except Exception as exc:
                raise TargetError(f"could not archive {path.name} into {archive.storage_account}/"
                                  f"{container}: {exc}") from exc
        if once and reply.status_code == 409 and "BlobAlreadyExists" in reply.text():
            return url
        if reply.status_code >= 300:
            raise TargetError(f"archiving {path.name} into {archive.storage_account}/{container} failed: "
                              f"HTTP {reply.status_code} {reply.text()[:300]}; the identity needs the Storage Blob "
                              "Data Contributor role on the container")
        return url

    def failed_logins(self, since: datetime) -> int | None:  # noqa: ARG002 - in Log Analytics, not here
        return None

    def log_lines(self, since: datetime, pattern) -> list[str] | None:  # noqa: ARG002 - in Log Analytics
        return None   # the server log is in Log Analytics (PostgreSQLLogs), read with its own query language

    def tls_certificate_expiry(self) -> datetime | None:
        return None   # Azure renews the server certificate itself

    def maintenance_window(self) -> MaintenanceWindow | None:
        """The server's maintenance window as its next start (UTC) and length; None when it is
        system-managed (Azure then gives 5 days' notice: the health runbook reports it)."""
        server = self._server(self.active_server())
        window = getattr(server, "maintenance_window", None)
        if window is None or (getattr(window, "custom_window", "Disabled") or "Disabled") != "Enabled":
            return None
        now = clock.now()
        # dayOfWeek: 0 = Sunday in ARM; Python's weekday(): 0 = Monday.
        days = ((window.day_of_week or 0) - (now.weekday() + 1) % 7) % 7
        start = (now + timedelta(days=days)).replace(hour=window.start_hour or 0, minute=window.start_minute or 0,
                                                      second=0, microsecond=0)
        if start > now:
            start -= timedelta(days=7)   # the window that started last (it may be running now)
        return MaintenanceWindow(start, 60, "custom window")

    def platform_metrics(self) -> dict[str, float | None]:
        """The latest 1-minute values Azure Monitor has (R-MON-1): CPU, memory, IOPS use, storage,
        and whether the server answered (is_db_alive, sampled every 20 s: the minimum counts)."""
        end = clock.now()
        names = ("cpu_percent", "memory_percent", "disk_iops_consumed_percentage", "storage_percent", "is_db_alive")
        series = self.metrics_series(end - timedelta(minutes=5), end, names=names)
        latest = {name: points[-1][1] for name, points in series.items() if points}
        alive = [v for _, v in series.get("is_db_alive", [])][-1:]
        return {"cpu_percent": latest.get("cpu_percent"), "memory_percent": latest.get("memory_percent"),
                "iops_percent": latest.get("disk_iops_consumed_percentage"),
                "storage_percent": latest.get("storage_percent"),
                "connection_failed": (1.0 if alive[0] == 0 else 0.0) if alive else None,
                "storage_quota_bytes": float(self.env.server.storage.size)}

    def planned_maintenance(self) -> list[PlannedMaintenance]:
        """Azure's planned maintenance of the server that is announced or under way (Resource
        Health events of type PlannedMaintenance, notified 5 days ahead): [{title, start, end}]."""
        from azure.core.rest import HttpRequest

        server = self._active_id()
        request = HttpRequest("GET", f"https://management.azure.com{server}/providers/Microsoft.ResourceHealth/events",
                              params={"api-version": "2022-10-01"})
        reply = self.clients.resource.send_request(request)
        if reply.status_code == 404:
            return []
        if reply.status_code >= 300:
            raise TargetError(f"could not read the planned maintenance of {self.env.server.name}: "
                              f"HTTP {reply.status_code} {reply.text()[:200]}")
        out = []
        for event in reply.json().get("value", []):
            props = event.get("properties", {})
            if props.get("eventType") != "PlannedMaintenance" or props.get("status") not in ("Active", None):
                continue
            start, end = props.get("impactStartTime"), props.get("impactMitigationTime")
            out.append(PlannedMaintenance(props.get("title", event.get("name")),
                                          datetime.fromisoformat(start.replace("Z", "+00:00")) if start else None,
                                          datetime.fromisoformat(end.replace("Z", "+00:00")) if end else None))
        return out

    def publish_business_metrics(self, values: dict[str, float | None], at: datetime) -> int:
        """The business rates as Azure Monitor custom metrics of the server (namespace pcdb/business,
        https://<region>.monitoring.azure.com<server id>/metrics; the identity needs Monitoring
        Metrics Publisher on the server): what the §6.3 workbook's business panels chart."""
        from azure.core import PipelineClient
        from azure.core.pipeline import policies
        from azure.core.rest import HttpRequest

        from pcdb.azure.workbook import BUSINESS_NAMESPACE

        present = {k: float(v) for k, v in values.items() if v is not None}
        if not present or self._credential is None:
            return 0
        server = next(d.id for d in self.desired() if d.type == "server")
        base = f"https://{self.env.server.location}.monitoring.azure.com"
        options = {"transport": self._transport} if self._transport is not None else {}
        client = PipelineClient(base, policies=[
            policies.RetryPolicy(retry_total=2),
            policies.BearerTokenCredentialPolicy(self._credential, "https://monitoring.azure.com/.default")], **options)
        for name, value in present.items():
            body = {"time": at.isoformat(), "data": {"baseData": {
                "metric": name, "namespace": BUSINESS_NAMESPACE, "dimNames": [],
                "series": [{"dimValues": [], "min": value, "max": value, "sum": value, "count": 1}]}}}
            reply = client.send_request(HttpRequest("POST", f"{base}{server}/metrics", json=body))
            if reply.status_code >= 300:
                raise TargetError(f"Azure Monitor refused the custom metric {name}: HTTP {reply.status_code} "
                                  f"{reply.text()[:200]}")
        return len(present)

    def own_roles(self) -> set[str]:
        return {"azuresu", "replication"}

    def admin_password(self) -> str:
        return self._admin_password()

    def generated_secret(self, name: str) -> str:
        raise TargetError(f"the secret of {name} must come from a secret store on Azure (env or Prefect Secret), "
                          "not be generated")

    def backup_status(self) -> BackupStatus:
        """Backup facts from the server (retention, geo) and its backups list (R-BAK-1/2).
        Azure manages WAL and backup files itself: their integrity is proved by the restore test."""
        server = self._server(self.active_server())
        backups = self.list_backups()
        latest = backups[-1] if backups else None
        settings = server.backup          # None: Azure reports no backup settings for the server
        earliest = getattr(settings, "earliest_restore_date", None)
        geo = _text(getattr(settings, "geo_redundant_backup", None) or "").lower() == "enabled"
        return BackupStatus(
            latest_backup_id=latest.id if latest else None, latest_backup_at=latest.finished_at if latest else None,
            retention=timedelta(days=getattr(settings, "backup_retention_days", None) or 0),
            geo_redundant=geo,
            geo_waived=None if geo or server.name != self.env.replica.name else (
                f"Azure sets geo-redundant backup only when a server is created: the promoted {server.name} has "
                "none until the failback's new primary; a loss of this region too is not covered meanwhile"),
            # Azure shows neither the WAL nor the backup files: nothing here can pass them. They are
            # "deferred to the restore test", judged by the date of the last one that passed.
            archive_ok=None,
            archive_detail=f"WAL is archived by Azure (earliest restore point {earliest})" if earliest
            else "WAL is archived by Azure",
            integrity_ok=None,
            integrity_detail="Azure keeps the backup files")

    def amcheck(self, name: str) -> tuple[bool, str]:
        """amcheck over SQL on a (restored) server, through its FQDN with TLS."""
        import psycopg

        from pcdb.amcheck import amcheck_sql

        info = self._endpoint(name).conninfo(self.env.server.admin.user, self._admin_password())
        with psycopg.connect(info, autocommit=True) as conn:
            return amcheck_sql(conn, self.env.backup.verification.heapallindexed)
