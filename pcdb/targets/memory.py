"""An in-memory fake of the target port: the topology of the HA pair and the read replica, with
replication modelled (the synchronous standby has every acknowledged row, a stalled replica
misses what came after the stall), and a probe writer that writes into it.

It implements every role of the port (pcdb.targets.base: Connection, Provisioning, Topology,
Backups, Telemetry, Archive, Billing) as whole protocols, with no fall-through, so each runbook's
policy (the order of steps, the decisions, what is undone when a step fails, what is refused
before anything changes) runs in milliseconds with no server: every mutating call is recorded in
``calls``. What a platform measures (telemetry, bills, backups) is what a test puts in.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from psycopg.conninfo import conninfo_to_dict

from pcdb import clock
from pcdb.anchors import MemoryAnchors
from pcdb.billing import DayCost
from pcdb.changes import Change
from pcdb.config import Environment
from pcdb.errors import TargetError
from pcdb.preflight import Check
from pcdb.probe import ProbeResult
from pcdb.targets.base import (
    STALL_REPLICA,
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

PORTS = {"node1": 1, "node2": 2, "replica": 3}
APPLICATION_PORT = 0     # the application's path: whichever node is the primary now (as the FQDN follows it)
LOGICAL_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)   # the known rows' versions count from here
ROW_BYTES = 100          # what one probe row stands for in WAL, for the replica's lag


@dataclass
class Node:
    name: str
    role: str                      # primary | standby | replica | promoted
    running: bool = True
    rows: list[int] = field(default_factory=list)
    dropped: bool = False          # the probe table was dropped here
    tables: set[str] = field(default_factory=set)   # drill tables present here (a killed drill's leftovers)


class MemoryTarget:
    """Every role of the port, in memory (``isinstance(fake, Target)`` and each role protocol
    hold, with no fall-through): the topology and its replication, a resource set the install
    reconciles, backups and throw-away servers, telemetry a test sets, write-once archives and
    anchors, and a bill. Every mutating call is recorded in ``calls``."""

    poll_seconds = 0.0

    def __init__(self, env: Environment, capabilities: frozenset[str] = frozenset({STALL_REPLICA, UPGRADE_COPY})):
        self.env = env
        self.capabilities = capabilities
        self.calls: list[str] = []
        # Upgrades: the majors this fake upgrades to, and extensions a major lacks
        self.upgradable: set[str] = {"15", "16"}
        self.missing_extensions: dict[str, set[str]] = {}
        # Connection
        self.identity = "7000000000000000001"     # a new server: a test changes it
        self.secrets: dict[str, str] = {}
        # Provisioning: resource -> its properties as they are (absent: not made)
        self.resources: dict[str, dict[str, object]] = {}
        self.applied_parameters: dict[str, str] = {}
        self.preflight_checks: list[Check] = [Check("memory", True, "nothing outside this process to check")]
        # Topology
        self.nodes = {"node1": Node("node1", "primary"), "node2": Node("node2", "standby"),
                      "replica": Node("replica", "replica")}
        self.stalled = False
        self.drill_promoted = False        # the replica was promoted by a drill (not a real failover)
        self.promoted_backup: BackupInfo | None = None   # the promoted replica's first backup of its own
        self.switch_began: datetime | None = None        # a killed failback switched back then
        self.application = "primary"
        # Backups
        self.backups: list[BackupInfo] = []
        self.servers: dict[str, Endpoint] = {}
        self.restored: dict[int, dict[int, str]] = {}    # a restored server's port -> its known rows
        self.known_versions: list[tuple[datetime, dict[int, str]]] = []
        self.archive_ok: bool | None = True
        self.corrupt_indexes: dict[str, str] = {}       # restored server -> what amcheck finds
        # Telemetry: what a test sets, read back as the platform would give it
        self.sample: MetricsSample | None = None
        self.platform: dict[str, float | None] = {}
        self.history: dict[str, list[tuple[datetime, float, float]]] | None = None
        self.availability: list[tuple[datetime, float]] | None = None
        self.logs: list[tuple[datetime, str]] | None = []
        self.logins_failed: list[datetime] | None = []
        self.certificate_expires: datetime | None = None
        self.window: MaintenanceWindow | None = None
        self.announced: list[PlannedMaintenance] = []
        self.published: list[tuple[datetime, dict[str, float | None]]] = []
        # Archive
        self.anchors = MemoryAnchors()
        self.archived: dict[str, bytes] = {}
        # Billing
        self.costs: list[DayCost] = []

    # -- the data plane's view ---------------------------------------------------------------

    def node_at(self, conninfo: str) -> Node:
        port = int(conninfo_to_dict(conninfo)["port"])
        if port == APPLICATION_PORT:
            return self._role("promoted" if self.application == "replica" else "primary")
        return next(n for n in self.nodes.values() if PORTS[n.name] == port)

    def write(self, node: Node, row: int) -> None:
        """One acknowledged commit: refused unless ``node`` is a running, writable primary."""
        if not node.running or node.role not in ("primary", "promoted"):
            raise ConnectionError(f"{node.name} does not accept writes ({node.role}, "
                                  f"{'running' if node.running else 'stopped'})")
        node.rows.append(row)
        if node.role == "primary":
            standby = self._role("standby")
            if standby is not None and standby.running:
                standby.rows.append(row)                 # synchronous: before the ack
            replica = self.nodes["replica"]
            if replica.role == "replica" and not self.stalled:
                replica.rows.append(row)                 # asynchronous, caught up here

    def _role(self, role: str) -> Node | None:
        return next((n for n in self.nodes.values() if n.role == role), None)

    # -- Connection ------------------------------------------------------------------------------

    def endpoint(self, which: Literal["primary", "replica", "application"] = "primary") -> Endpoint:
        if which == "application":
            return Endpoint("memory", APPLICATION_PORT, self.env.service.database, sslmode="disable")
        node = self.nodes["replica"] if which == "replica" else self._role("primary")
        return Endpoint("memory", PORTS[node.name], self.env.service.database, sslmode="disable")

    def admin_password(self) -> str:
        return self.generated_secret("admin")

    def generated_secret(self, name: str) -> str:
        return self.secrets.setdefault(name, secrets.token_urlsafe(24))

    def server_identity(self) -> dict[str, str]:
        return {"system_identifier": self.identity}

    def own_roles(self) -> set[str]:
        return set()

    # -- Provisioning ------------------------------------------------------------------------------

    def desired(self) -> dict[str, dict[str, object]]:
        """What the spec asks for, resource by resource, in the install's order."""
        env = self.env
        return {
            "resource_group": {"name": env.server.name, "location": env.server.location},
            "network": {"subnets": sorted(s.name for s in env.network.allowed_subnets)},
            "server": {"version": env.server.version, "sku": env.server.sku,
                       "storage_bytes": int(env.server.storage.size),
                       "ha": env.server.high_availability.mode},
            "database": {"name": env.service.database},
            "replica": {"name": env.replica.name, "location": env.replica.location},
            "tls": {"minimum": "TLSv1.3"},
            "access_rules": {"subnets": sorted(s.cidr for s in env.network.allowed_subnets)},
            "monitoring": {"alerts": sorted(r.name for r in env.monitoring.alert_rules)},
        }

    def _diff(self, resource: str) -> Change:
        want, have = self.desired()[resource], self.resources.get(resource)
        if have is None:
            return Change(resource, resource, "created", {k: (None, v) for k, v in want.items()})
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        return Change(resource, resource, "updated" if diff else "unchanged", diff)

    def _ensure(self, resource: str) -> Change:
        change = self._diff(resource)
        if change.changed:
            self.calls.append(f"{change.action} {resource}")
            self.resources[resource] = dict(self.desired()[resource])
        return change

    def ensure_resource_group(self) -> Change:
        return self._ensure("resource_group")

    def ensure_network(self) -> Change:
        return self._ensure("network")

    def ensure_server(self) -> list[Change]:
        return [self._ensure("server")]

    def ensure_database(self) -> Change:
        return self._ensure("database")

    def ensure_replica(self) -> Change:
        return self._ensure("replica")

    def ensure_tls(self) -> Change:
        return self._ensure("tls")

    def ensure_access_rules(self) -> Change:
        return self._ensure("access_rules")

    def ensure_monitoring(self) -> Change:
        return self._ensure("monitoring")

    def _wanted_parameters(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.env.parameters.items()}

    def ensure_parameters(self, names: set[str] | None = None) -> Change:
        wanted = {k: v for k, v in self._wanted_parameters().items() if names is None or k in names}
        diff = {k: (self.applied_parameters.get(k), v) for k, v in wanted.items() if self.applied_parameters.get(k) != v}
        if diff:
            self.calls.append(f"parameters {', '.join(sorted(diff))}")
            self.applied_parameters.update(wanted)
        return Change("parameters", self.env.server.name, "updated" if diff else "unchanged", diff)

    def parameter_differences(self) -> dict[str, dict[str, tuple[str, str]]]:
        diff = {k: (self.applied_parameters.get(k, ""), v) for k, v in self._wanted_parameters().items()
                if self.applied_parameters.get(k) != v}
        return {self.env.server.name: diff} if diff else {}

    def preflight(self) -> list[Check]:
        return list(self.preflight_checks)

    def plan(self) -> list[Change]:
        changes = [self._diff(r) for r in self.desired()]
        wanted = self._wanted_parameters()
        diff = {k: (self.applied_parameters.get(k), v) for k, v in wanted.items() if self.applied_parameters.get(k) != v}
        return changes + [Change("parameters", self.env.server.name, "updated" if diff else "unchanged", diff)]

    # -- Topology ------------------------------------------------------------------------------

    def server_state(self) -> ServerState:
        ha = [self.nodes["node1"], self.nodes["node2"]]
        healthy = all(n.running for n in ha) and {n.role for n in ha} == {"primary", "standby"}
        return ServerState(self.env.server.name, "Healthy" if healthy else "Degraded", tuple(
            NodeState(n.name, n.role, n.running, sync_state={"standby": "sync", "replica": "async"}.get(n.role))
            for n in self.nodes.values()))

    def failover(self, mode: Literal["planned", "forced"] = "planned") -> FailoverResult:
        self.calls.append(f"failover {mode}")
        old, new = self._role("primary"), self._role("standby")
        if new is None or not new.running:
            raise TargetError("no running standby to fail over to")
        old.role, new.role = "standby", "primary"
        return FailoverResult(mode, old.name, new.name, 0.001, 0.002, None)

    def _region(self, running: bool, call: str) -> Change:
        if all(self.nodes[n].running == running for n in ("node1", "node2")):
            return Change("server", self.env.server.name, "unchanged")
        self.calls.append(call)
        for name in ("node1", "node2"):
            self.nodes[name].running = running
        return Change("server", self.env.server.name, "updated")

    def stop_primary_region(self) -> Change:
        return self._region(False, "stop_primary_region")

    def start_primary_region(self) -> Change:
        return self._region(True, "start_primary_region")

    def promote_replica(self, drill: str | None = None) -> PromotionResult:
        self.calls.append(f"promote_replica {drill}")
        replica = self.nodes["replica"]
        if replica.role == "promoted":
            return PromotionResult("replica", "unchanged")
        replica.role = "promoted"
        self.drill_promoted = drill is not None
        self.promoted_backup = None        # none of its own yet
        return PromotionResult("replica", "promoted", 0.001)

    def stall_replica(self) -> None:
        if STALL_REPLICA not in self.capabilities:
            raise TargetError("stall_replica: this target has no stall-replica capability")
        self.calls.append("stall_replica")
        self.stalled = True

    def replica_diverged(self) -> bool:
        return self.nodes["replica"].role == "promoted" and self.drill_promoted

    def application_target(self) -> Literal["primary", "replica"]:
        return self.application

    def serving(self) -> str | None:
        return None if self.application == "primary" else "production runs on the promoted replica"

    def switch_application(self, to: Literal["primary", "replica"]) -> Change:
        if self.application == to:
            return Change("application", "application", "unchanged")
        self.calls.append(f"switch_application {to}")
        before, self.application = self.application, to
        return Change("application", "application", "updated", {"points_at": (before, to)})

    def primary_region_missing(self) -> list[str]:
        return [n for n in ("node1", "node2") if not self.nodes[n].running]

    def failback_plan(self) -> FailbackPlan:
        env = self.env
        return FailbackPlan((
            FailbackStep("make the primary region follow the promoted replica", self.reverse_replication),
            FailbackStep("switch back to the primary region (planned)", self.switch_back, gate="switch",
                         facts=lambda: None if self.switch_began else {"from": env.replica.name, "to": env.server.name},
                         serves=True)), switch_began=self.switch_began)

    def reverse_replication(self) -> list[Change]:
        missing = self.primary_region_missing()
        if missing:
            raise TargetError(f"the primary region is still down: {', '.join(missing)} do not answer")
        self.calls.append("reverse_replication")
        promoted = self.nodes["replica"]
        for name in ("node1", "node2"):
            self.nodes[name].role, self.nodes[name].rows = "standby", list(promoted.rows)
        return [Change("server", n, "updated") for n in ("node1", "node2")]

    def switch_back(self) -> FailoverResult:
        self.calls.append("switch_back")
        self.nodes["node1"].role, self.nodes["node2"].role = "primary", "standby"
        self.application = "primary"
        self.rebuild_replica()
        return FailoverResult("planned", "replica", "node1", 0.001, 0.002, None)

    def rebuild_replica(self) -> Change:
        self.calls.append("rebuild_replica")
        replica = self.nodes["replica"]
        replica.role, replica.rows, self.stalled = "replica", list(self._role("primary").rows), False
        return Change("server", "replica", "created")

    def promoted_server_facts(self) -> list[str]:
        return ["the promoted replica runs alone (in memory)"]

    def promoted_backups(self) -> list[Change]:
        """A first backup of the promoted replica, once."""
        if self.application != "replica" or self.promoted_backup is not None:
            return [Change("backup", "replica", "unchanged")]
        self.promoted_backup = self.take_backup()
        return [Change("backup", "replica", "created")]

    # -- Backups ------------------------------------------------------------------------------

    def list_backups(self) -> list[BackupInfo]:
        return list(self.backups)

    def take_backup(self) -> BackupInfo:
        self.calls.append("take_backup")
        backup = BackupInfo(f"backup-{len(self.backups) + 1}", "on-demand", clock.now())
        self.backups.append(backup)
        return backup

    def backup_status(self) -> BackupStatus:
        latest = self.backups[-1] if self.backups else None
        return BackupStatus(latest.id if latest else None, latest.finished_at if latest else None,
                            self.env.backup.retention, self.env.backup.geo_redundant, self.archive_ok,
                            "the archive follows the primary" if self.archive_ok else "the archive has a gap",
                            None, "only a restore proves the files")

    def amcheck(self, name: str) -> tuple[bool, str]:
        if name not in self.servers:
            raise TargetError(f"amcheck: no restored server {name}")
        found = self.corrupt_indexes.get(name)
        return (found is None, found or "every B-tree index checked: no corruption")

    def restore_point_in_time(self, target_time: datetime, name: str) -> Endpoint:
        self.calls.append(f"restore {name} to {target_time.isoformat()}")
        port = 100 + len(self.restored)
        self.restored[port] = dict(next((rows for at, rows in reversed(self.known_versions) if at <= target_time), {}))
        self.servers[name] = Endpoint("memory", port, self.env.service.database, sslmode="disable")
        return self.servers[name]

    def version(self, rows: dict[int, str]) -> datetime:
        """Record a new version of the known rows; its moment in logical time (one second each)."""
        at = LOGICAL_EPOCH + timedelta(seconds=len(self.known_versions))
        self.known_versions.append((at, rows))
        return at

    def restored_rows(self, conninfo: str) -> dict[int, str]:
        port = int(conninfo_to_dict(conninfo)["port"])
        if port not in self.restored or not any(e.port == port for e in self.servers.values()):
            raise ConnectionError(f"no restored server answers on port {port}")
        return self.restored[port]

    def delete_server(self, name: str) -> Change:
        self.calls.append(f"delete {name}")
        return Change("server", name, "deleted" if self.servers.pop(name, None) else "unchanged")

    # -- Upgrades ---------------------------------------------------------------------------------

    def upgrade_available(self, major: str) -> str | None:
        return None if str(major) in self.upgradable else f"no PostgreSQL {major} in this fake"

    def extension_problem(self, extension: str, major: str) -> str | None:
        if extension in self.missing_extensions.get(str(major), set()):
            return f"DROP EXTENSION {extension}: not in this fake's {major}"
        return None

    def upgrade_copy(self, name: str, major: str) -> dict:
        if name not in self.servers:
            raise TargetError(f"upgrade: no restored server {name}")
        self.calls.append(f"upgrade {name} to {major}")
        return {"from": "14.0", "to": f"{major}.0", "seconds": {"check": 0.1, "upgrade": 0.2}}

    def upgrade_under_way(self) -> str | None:
        return None

    def upgrade_steps(self, major: str) -> list[str]:
        return [f"upgrade the servers to {major}"]

    def upgrade_in_place(self, major: str) -> dict:
        self.calls.append(f"upgrade the servers to {major}")
        return {"from": "14.0", "to": f"{major}.0", "seconds": {"upgrade": 0.2}, "downtime_seconds": 0.3,
                "rollback": "the old folder", "resumed": False}

    # -- Telemetry ------------------------------------------------------------------------------

    def metrics(self) -> MetricsSample:
        if self.sample is None:
            raise TargetError("metrics: the test set no sample (MemoryTarget.sample)")
        return self.sample

    def platform_metrics(self) -> dict[str, float | None]:
        return dict(self.platform)

    def metric_history(self, start: datetime, end: datetime) -> dict[str, list[tuple[datetime, float, float]]] | None:
        if self.history is None:
            return None
        return {k: [p for p in points if start <= p[0] <= end] for k, points in self.history.items()}

    def availability_samples(self, start: datetime, end: datetime) -> list[tuple[datetime, float]] | None:
        if self.availability is None:
            return None
        return [p for p in self.availability if start <= p[0] < end]

    def failed_logins(self, since: datetime) -> int | None:
        return None if self.logins_failed is None else sum(1 for at in self.logins_failed if at >= since)

    def log_lines(self, since: datetime, pattern) -> list[str] | None:
        if self.logs is None:
            return None
        return [line for at, line in self.logs if at >= since and pattern.search(line)]

    def tls_certificate_expiry(self) -> datetime | None:
        return self.certificate_expires

    def maintenance_window(self) -> MaintenanceWindow | None:
        return self.window

    def planned_maintenance(self) -> list[PlannedMaintenance]:
        return list(self.announced)

    def publish_business_metrics(self, values: dict[str, float | None], at: datetime) -> int:
        sent = {k: v for k, v in values.items() if v is not None}
        self.published.append((at, sent))
        return len(sent)

    # -- Archive ------------------------------------------------------------------------------

    def archive_partition(self, path: Path, name: str, sha256: str) -> str:
        location = f"memory://partitions/{name}"
        if location in self.archived:
            raise TargetError(f"{location} exists: an archive is never written over")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise TargetError(f"{path}: its SHA-256 is not {sha256}")
        self.calls.append(f"archive {name}")
        self.archived[location] = data
        return location

    def fetch_partition_archive(self, location: str, dest: Path) -> Path:
        if location not in self.archived:
            raise TargetError(f"no archive at {location}")
        dest.write_bytes(self.archived[location])
        return dest

    def archive_report(self, path: Path, sha256: str) -> str | None:
        location = f"memory://reports/{sha256}/{path.name}"
        self.archived.setdefault(location, path.read_bytes())     # write-once: a second copy keeps the first
        return location

    def read_archived_report(self, location: str) -> bytes | None:
        return self.archived.get(location)

    def ledger_anchors(self) -> MemoryAnchors:
        return self.anchors

    # -- Billing ------------------------------------------------------------------------------

    def daily_costs(self, start, end) -> list[DayCost]:
        return [c for c in self.costs if start <= c.day <= end]


class MemoryProbe:
    """A probe writer that commits into a MemoryTarget, synchronously: each row either succeeds
    on the node its connection string names, or fails (never acknowledged)."""

    def __init__(self, target: MemoryTarget, conninfo: str):
        self.target = target
        self.conninfo = conninfo
        self.result = ProbeResult()
        self.next_id = 1

    def start(self) -> MemoryProbe:
        self.target.node_at(self.conninfo).tables.add("pcdb_drill_probe")
        return self

    def wait_for_rows(self, count: int, timeout: float = 30) -> None:  # noqa: ARG002 - nothing to wait for
        written = 0
        for _ in range(count * 3):              # a few failed attempts, as the real writer retries
            try:
                self.target.write(self.target.node_at(self.conninfo), self.next_id)
            except ConnectionError as exc:
                if self.result.first_failure is None:
                    self.result.first_failure = time.monotonic()
                self.result.errors.append(str(exc))
                continue
            if self.result.first_failure is not None and self.result.first_recovery is None:
                self.result.first_recovery = time.monotonic()
            self.result.acknowledged.append(self.next_id)
            self.result.acknowledged_at[self.next_id] = clock.now().timestamp()
            self.next_id += 1
            written += 1
            if written == count:
                return
        raise TimeoutError(f"probe writer acknowledged {written} of {count} rows; errors: {self.result.errors[-3:]}")

    def stop(self) -> ProbeResult:
        return self.result

    def missing(self, conninfo: str | None = None) -> list[int]:
        present = set(self.target.node_at(conninfo or self.conninfo).rows)
        return [i for i in self.result.acknowledged if i not in present]

    def drop_table(self, conninfo: str | None = None) -> None:
        node = self.target.node_at(conninfo or self.conninfo)
        node.dropped = True
        node.tables.discard("pcdb_drill_probe")

    def switch_to(self, conninfo: str) -> None:
        self.conninfo = conninfo


class MemoryPlane:
    """pcdb.drills.DataPlane and pcdb.failover.ServicePlane over a MemoryTarget."""

    def __init__(self, target: MemoryTarget):
        self.target = target

    def probe(self, conninfo: str, table: str) -> MemoryProbe:  # noqa: ARG002 - one table in memory
        return MemoryProbe(self.target, conninfo)

    def replica_lag_bytes(self, target, env, password) -> int | None:  # noqa: ARG002 - the fake's own view
        primary = self.target._role("primary")
        return (len(primary.rows) - len(self.target.nodes["replica"].rows)) * ROW_BYTES

    # The corruption drill's known rows: versions in logical time (a restore takes the version of
    # its moment), and the drills' leftover tables.

    def drop_leftover_tables(self, conninfo: str) -> list[str]:
        node = self.target.node_at(conninfo)
        dropped = [t for t in ("pcdb_drill_probe", "pcdb_drill_corruption") if t in node.tables]
        node.tables -= set(dropped)
        return dropped

    def write_known_rows(self, conninfo: str, rows: int) -> datetime:
        node = self.target.node_at(conninfo)
        node.tables.add("pcdb_drill_corruption")
        return self.target.version({i: "original" for i in range(1, rows + 1)})

    def corrupt_known_rows(self, conninfo: str) -> None:
        self.target.node_at(conninfo)
        rows = dict(self.target.known_versions[-1][1])
        for i in list(rows):
            if i % 3 == 0:
                del rows[i]
            elif i % 3 == 1:
                rows[i] = "corrupted"
        self.target.version(rows)

    def count_intact(self, conninfo: str) -> tuple[int, int]:
        rows = self.target.restored_rows(conninfo)
        return len(rows), sum(1 for v in rows.values() if v == "original")

    def drop_known_rows(self, conninfo: str) -> None:
        self.target.node_at(conninfo).tables.discard("pcdb_drill_corruption")

    def answers(self, conninfo: str, timeout: int) -> bool:  # noqa: ARG002 - nothing to wait for
        return self.target.node_at(conninfo).running

    def takes_write(self, conninfo: str) -> bool:
        node = self.target.node_at(conninfo)
        return node is not None and node.running and node.role in ("primary", "promoted")

    def replica_position(self, conninfo: str) -> tuple[datetime | None, str]:
        node = self.target.node_at(conninfo)
        return clock.now(), f"0/{len(node.rows) * ROW_BYTES:X}"
