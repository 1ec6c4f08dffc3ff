"""The target port: the operations every runbook needs, implemented by Azure and the sandbox.

Each ``ensure_*`` operation reads what exists, changes only what differs, and returns a
:class:`~pcdb.changes.Change` (created / updated / unchanged, with the diff).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Generic as typing_Generic
from typing import Literal, Protocol, runtime_checkable

import psycopg

from pcdb.anchors import Anchors
from pcdb.changes import Change
from pcdb.config import Environment
from pcdb.preflight import Check


def throwaway_name(env: Environment, purpose: str) -> str:
    """The name of a throw-away server (restore test, drill, PITR check): the server's own name
    and the purpose. Azure server names are global DNS names, so a fixed name such as
    "pcdb-restore-test" would collide with any other installation in any subscription."""
    return f"{env.server.name[:63 - len(purpose) - 1].rstrip('-')}-{purpose}"  # Azure: 63 at most


@dataclass(frozen=True)
class Endpoint:
    """Where database work connects: the same psycopg code for Azure and the sandbox."""

    host: str
    port: int
    dbname: str
    sslmode: str = "require"
    sslrootcert: str | None = None
    connect_timeout: int = 30
    target_session_attrs: str | None = None
    # With a verified certificate: only SCRAM, bound to this very TLS channel (libpq 16+), so a
    # server that asks for a weaker method, or a man in the middle relaying SCRAM, is refused.
    require_auth: str | None = None
    channel_binding: str | None = None

    def conninfo(self, user: str, password: str | None = None, dbname: str | None = None,
                 application_name: str = "pcdb", tools: bool = False) -> str:
        """A libpq connection string; the password is passed in, never stored here. ``tools``:
        for the machine's PostgreSQL programs (pg_dump...), whose libpq may predate require_auth
        (16); channel_binding=require holds them to SCRAM over the verified channel all the same."""
        extra = {k: v for k, v in {"sslrootcert": self.sslrootcert,
                                   "target_session_attrs": self.target_session_attrs,
                                   "require_auth": None if tools else self.require_auth,
                                   "channel_binding": self.channel_binding,
                                   "password": password}.items() if v}
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, dbname=dbname or self.dbname, user=user,
            sslmode=self.sslmode, connect_timeout=self.connect_timeout,
            application_name=application_name, **extra)


@dataclass(frozen=True)
class BackupInfo:
    id: str
    kind: Literal["automatic", "on-demand"] | str
    finished_at: datetime
    size_bytes: int | None = None


@dataclass(frozen=True)
class BackupStatus:
    """What the nightly verification checks before any restore (R-BAK-1/2)."""

    latest_backup_id: str | None
    latest_backup_at: datetime | None
    retention: timedelta
    geo_redundant: bool
    archive_ok: bool | None   # None: the platform keeps the WAL and cannot show it; the restore test proves it
    archive_detail: str
    integrity_ok: bool | None  # None: the platform keeps the files; only a restore proves them
    integrity_detail: str
    geo_waived: str | None = None   # why a geo copy cannot exist now (a promoted server on Azure), said in the check


@dataclass(frozen=True)
class NodeState:
    name: str
    role: str  # primary | standby | replica | promoted
    running: bool
    sync_state: str | None = None
    lag_bytes: int | None = None
    timeline: int | None = None


@dataclass(frozen=True)
class ServerState:
    name: str
    ha_state: str  # Healthy | NotEnabled | Degraded
    nodes: tuple[NodeState, ...]


@dataclass(frozen=True)
class MetricsSample:
    """One sample of the metrics the health and capacity runbooks evaluate (R-MON-1/2)."""

    at: datetime
    connections: int
    storage_used_bytes: int
    storage_quota_bytes: int
    storage_percent: float
    tps: float | None
    cache_hit_percent: float | None
    deadlocks: int
    replication: tuple[dict, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class MaintenanceWindow:
    """The provider's maintenance window: its latest start (UTC), length and a note."""

    start: datetime
    minutes: int
    note: str = ""


@dataclass(frozen=True)
class PlannedMaintenance:
    """Maintenance the provider announced (Azure: 5 days ahead) or is doing now."""

    title: str
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True)
class FailoverResult:
    """What a failover of the HA pair did (R-DR-1)."""

    mode: str                    # planned | forced
    old_primary: str             # a node name (sandbox) or "zone N" (Azure)
    new_primary: str
    promote_seconds: float       # until the new primary accepted writes
    total_seconds: float         # until the pair was whole again (Azure: the API call's end)
    timeline: int | None = None  # the new primary's timeline, where the target can read it

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FailbackStep:
    """One step of the failback, named as a DBA says it. ``run`` reads what exists and changes
    only what differs, so a run killed anywhere is finished by the next. A gated step waits for
    an approval first: "switch" (the switch back, and each other team's confirmation), "delete"
    (a server deleted); ``facts`` says what the approver sees, or None when the step has nothing
    left to do (no approval is asked then)."""

    name: str
    run: Callable[[], object]
    gate: Literal["switch", "delete"] | None = None
    facts: Callable[[], dict | None] | None = None
    serves: bool = False     # after it, the application's name leads to the primary region: the switch's outage ends


@dataclass(frozen=True)
class FailbackPlan:
    """The failback's steps on a target, in order."""

    steps: tuple[FailbackStep, ...]
    under_way: str | None = None     # an interrupted failback's recorded step: go on, whatever the name points at
    verify: bool = False             # Phase 7's checks after the steps (Azure: the primary is a new server)
    finish: Callable[[], object] | None = None   # after the checks passed: the intent removed
    # When an interrupted run made the switch back and was killed before the application's path
    # took writes again: the write outage is measured from then, not from this run's start.
    switch_began: datetime | None = None


@dataclass(frozen=True)
class PromotionResult:
    """What promoting the read replica did (R-DR-2)."""

    name: str
    action: str                  # promoted | unchanged (it was promoted already)
    seconds: float = 0.0
    timeline: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# What a target can do beyond what every target does: asked with ``x in target.capabilities``,
# never by calling an operation to see whether it refuses.
STALL_REPLICA = "stall-replica"            # cut the replica's replication link (a drill of a loss)
READ_SERVER_LOG = "read-server-log"        # log_lines() and failed_logins() answer from the server log
STORAGE_GUARD = "storage-guard"            # the platform turns the server read-only at 95 % storage
SYNC_STANDBY_VISIBLE = "sync-standby-visible"   # the HA standby streams where pg_stat_replication shows it
UPGRADE_COPY = "upgrade-copy"              # upgrade_copy() upgrades a restored copy (the upgrade's rehearsal)


class Role(Protocol):
    """What every role carries: the environment, how often a runbook may re-read state while it
    waits, and what this target can do beyond the common operations (see above)."""

    env: Environment
    poll_seconds: float
    capabilities: frozenset[str]

@runtime_checkable
class Connection(Role, Protocol):
    """Where and as whom a runbook connects, and what tells this server from any other: every
    runbook takes this role."""

    def endpoint(self, which: Literal["primary", "replica", "application"] = "primary") -> Endpoint:
        """Where database work connects: the primary, the replica, or the application's path."""
        ...
    def admin_password(self) -> str:
        """The server administrator's password (resolved late, never stored in a field)."""
        ...
    def generated_secret(self, name: str) -> str:
        """A password the spec says to generate, made once and kept where only its owner reads it."""
        ...
    def server_identity(self) -> dict[str, str]:
        """What tells this server from any other made from the same spec (sandbox: PostgreSQL's
        system identifier and when the sandbox was made; Azure: the resource id and its creation
        time): evidence about a server is bound to it, never to its configuration alone."""
        ...
    def own_roles(self) -> set[str]:
        """Login roles the platform itself needs (replication, the provider's superuser)."""
        ...

@runtime_checkable
class Provisioning(Role, Protocol):
    """Phases 1-6 of the install: every ``ensure_*`` reads what exists and changes only what
    differs; ``plan`` says what they would change without changing it."""

    def ensure_resource_group(self) -> Change:
        """The resource group (sandbox: its folder and state file) exists (Phase 1)."""
        ...
    def ensure_network(self) -> Change:
        """The network the spec names: VNet, subnets, private DNS (sandbox: loopback only) (Phase 2)."""
        ...
    def ensure_server(self) -> list[Change]:
        """The HA pair with its backups and TLS, as the spec says (Phase 3)."""
        ...
    def ensure_database(self) -> Change:
        """The service database exists."""
        ...
    def ensure_replica(self) -> Change:
        """The asynchronous read replica (Azure: in the DR region) follows the primary."""
        ...
    def ensure_parameters(self, names: set[str] | None = None) -> Change:
        """Server parameters equal the spec (only ``names`` when given); a parameter the spec no
        longer names goes back to its default; restarts where a parameter needs one."""
        ...
    def parameter_differences(self) -> dict[str, dict[str, tuple[str, str]]]:
        """Per node (or server), parameter -> (applied, wanted) where they differ; read only."""
        ...
    def ensure_tls(self) -> Change:
        """TLS as the spec says (1.3 only on the sandbox; Azure's certificates and minimum version)."""
        ...
    def ensure_access_rules(self) -> Change:
        """Who may connect: the spec's subnets (Azure: firewall rules or NSG; sandbox: pg_hba)."""
        ...
    def ensure_monitoring(self) -> Change:
        """Alerts, action groups, diagnostic settings and workbook (sandbox: nothing to create)."""
        ...
    def plan(self) -> list[Change]:
        """What an install would change, without changing it (plan before apply)."""
        ...
    def preflight(self) -> list[Check]:
        """Read only, before Phase 1: what the install needs from where it runs (Azure: providers,
        the region's capabilities, quota, names, network, permissions, the budget's scope; sandbox:
        the server programs of the spec's version), each failing check with what to do."""
        ...

@runtime_checkable
class Topology(Role, Protocol):
    """The HA pair and the read replica: their state, the failovers, the region's loss and the
    failback."""

    def server_state(self) -> ServerState:
        """Nodes, their roles, sync state, lag and timeline; the HA state."""
        ...
    def failover(self, mode: Literal["planned", "forced"] = "planned") -> FailoverResult:
        """Make the standby the primary (forced: as a zone failure would); the pair whole again."""
        ...
    def promote_replica(self, drill: str | None = None) -> PromotionResult:
        """Make the read replica a writable primary (``drill`` marks a drill's promotion)."""
        ...
    def stop_primary_region(self) -> Change:
        """Stop the primary and its HA standby: the region drill's stand-in for a lost region."""
        ...
    def start_primary_region(self) -> Change:
        """Start what stop_primary_region stopped."""
        ...
    def stall_replica(self) -> None:
        """Cut the replica's replication (only with the STALL_REPLICA capability)."""
        ...
    def replica_diverged(self) -> bool:
        """A drill promoted the replica and it has not been rebuilt yet."""
        ...
    def serving(self) -> str | None:
        """None while production runs where the spec says; after a real region failover, a plain
        sentence: which server it runs on, where, until the failback (health and status show it)."""
        ...
    def application_target(self) -> Literal["primary", "replica"]:
        """Where the application's name points: the HA pair, or the replica a real region failover
        promoted (Azure: the private DNS record; the sandbox: its stand-in for it)."""
        ...
    def switch_application(self, to: Literal["primary", "replica"]) -> Change:
        """Point the application's name at the HA pair or at the promoted replica."""
        ...
    def primary_region_missing(self) -> list[str]:
        """What of the primary region does not answer yet (empty: the region is back)."""
        ...
    def failback_plan(self) -> FailbackPlan:
        """The failback's steps (sandbox: the primary region follows the promoted replica, then a
        planned switch back; Azure: a new server in the primary region, Azure's planned
        switchover, the CNAME, HA, the replica, what a promotion does not carry over)."""
        ...
    def rebuild_replica(self) -> Change:
        """Replace a promoted replica by a new read replica of the primary."""
        ...
    def promoted_server_facts(self) -> list[str]:
        """What is true of a promoted replica that a person must know (no HA, no geo backups...)."""
        ...
    def promoted_backups(self) -> list[Change]:
        """After a real region failover, the promoted server's backups as the spec says (Azure:
        the retention, which a replica has its own of; the sandbox: a first base backup of it,
        which Azure takes by itself); unchanged otherwise."""
        ...

@runtime_checkable
class Backups(Role, Protocol):
    """The platform's backups and the throw-away servers restored from them."""

    def list_backups(self) -> list[BackupInfo]:
        """The backups the platform holds, oldest first."""
        ...
    def take_backup(self) -> BackupInfo:
        """An on-demand backup; the platform's retention is applied to the older ones."""
        ...
    def backup_status(self) -> BackupStatus:
        """The nightly verification's facts: latest backup, retention, geo copy, archive, files."""
        ...
    def amcheck(self, name: str) -> tuple[bool, str]:
        """amcheck every B-tree index of the restored server ``name``: (all good, evidence)."""
        ...
    def restore_point_in_time(self, target_time: datetime, name: str) -> Endpoint:
        """A new server ``name`` restored to ``target_time``; registered before it is made."""
        ...
    def delete_server(self, name: str) -> Change:
        """Remove a throw-away server (restore, drill); unchanged when it is not there."""
        ...

@runtime_checkable
class Telemetry(Role, Protocol):
    """What the platform measures and announces; every read changes nothing."""

    def metrics(self) -> MetricsSample:
        """One sample of connections, storage, rates and replication; writes nothing."""
        ...
    def platform_metrics(self) -> dict[str, float | None]:
        """The provider's own latest metrics (Azure Monitor), where it has them."""
        ...
    def metric_history(self, start: datetime, end: datetime) -> dict[str, list[tuple[datetime, float, float]]] | None:
        """Hourly (average, maximum) points of the capacity metrics the platform keeps; None when
        it keeps none (the sandbox: the health runbook's store is its history)."""
        ...
    def availability_samples(self, start: datetime, end: datetime) -> list[tuple[datetime, float]] | None:
        """The platform's own per-minute availability (Azure: is_db_alive's minimum); None when
        it has none (the sandbox: the health runbook's ``up`` samples are the record)."""
        ...
    def failed_logins(self, since: datetime) -> int | None:
        """Failed logins since then (None: not readable here, e.g. Azure's are in Log Analytics)."""
        ...
    def log_lines(self, since: datetime, pattern) -> list[str] | None:
        """Server log lines matching ``pattern`` since then (None: the log is not readable here)."""
        ...
    def tls_certificate_expiry(self) -> datetime | None:
        """When the server's TLS certificate expires (None: the platform rotates it)."""
        ...
    def maintenance_window(self) -> MaintenanceWindow | None:
        """The provider's maintenance window, or None (system-managed, or no provider)."""
        ...
    def planned_maintenance(self) -> list[PlannedMaintenance]:
        """The provider's announced or running maintenance of the server."""
        ...
    def publish_business_metrics(self, values: dict[str, float | None], at: datetime) -> int:
        """Send the health runbook's business rates where the platform's dashboard reads them
        (Azure Monitor custom metrics); return how many were sent."""
        ...

@runtime_checkable
class Archive(Role, Protocol):
    """Write-once evidence outside the database: partition archives, reports, the ledger's anchors."""

    def archive_partition(self, path: Path, name: str, sha256: str) -> str:
        """Store a partition's dump under ``name`` (sandbox: the backup store; Azure: a blob
        container), write-once: never over another archive; return where it went, for
        :meth:`fetch_partition_archive`."""
        ...
    def fetch_partition_archive(self, location: str, dest: Path) -> Path:
        """Bring an archived partition's dump back to ``dest`` (the proof restores it)."""
        ...
    def archive_report(self, path: Path, sha256: str) -> str | None:
        """Copy a run's report to durable, write-once storage; return where it went (or None
        when this target has no archive yet)."""
        ...
    def read_archived_report(self, location: str) -> bytes | None:
        """An archived report's bytes (None: not readable, or ``location`` is not in this
        environment's archive: a ledger row is not trusted to name any place)."""
        ...
    def ledger_anchors(self) -> Anchors | None:
        """Where the run ledger's anchors are kept, write-once, outside the database (None: this
        environment has no evidence store)."""
        ...

@runtime_checkable
class Billing(Role, Protocol):
    """What the environment costs."""

    def daily_costs(self, start, end) -> list:
        """What each component cost each day from ``start`` to ``end`` (dates): pcdb.billing.DayCost
        (the sandbox: the spec's price table as a cost model)."""
        ...

@runtime_checkable
class Upgrades(Role, Protocol):
    """Major version upgrades (#27): what this target can upgrade to, and a rehearsal's upgrade of
    a restored copy."""

    def upgrade_available(self, major: str) -> str | None:
        """None when the server can be upgraded to ``major`` here; else why not, and what to do."""
        ...
    def extension_problem(self, extension: str, major: str) -> str | None:
        """None when the upgrade to ``major`` can carry ``extension``; else why not and what to do
        (sandbox: the target's binaries lack it; Azure: not allow-listed, or its in-place upgrade
        refuses a server that has it)."""
        ...
    def upgrade_copy(self, name: str, major: str) -> dict:
        """Upgrade the restored (throw-away) server ``name`` to ``major`` and start it: {from, to,
        seconds: {part: s}}. Never a server of the topology."""
        ...
    def upgrade_under_way(self) -> str | None:
        """The major an interrupted upgrade of the environment's servers was going to, or None."""
        ...
    def upgrade_steps(self, major: str) -> list[str]:
        """What upgrade_in_place(major) will do, step by step, in words (the signed plan shows them)."""
        ...
    def upgrade_in_place(self, major: str) -> dict:
        """Upgrade the environment's servers to ``major``, intent first (a second call finishes an
        interrupted one): {from, to, seconds, downtime_seconds, rollback, resumed}."""
        ...

@runtime_checkable
class Target(Connection, Provisioning, Topology, Backups, Telemetry, Archive, Billing, Upgrades, Protocol):
    """The whole port: what Azure and the sandbox implement (see docs/architecture.md "The port").

    A runbook takes only the roles it uses (its own protocol, e.g. ``pcdb.drills.DrillTarget``);
    the targets implement them all. Every ``ensure_*`` reads what exists and changes only what
    differs. The reads (state, backups, metrics, logs) change nothing, neither on the platform
    nor on this machine.
    """


ROLES: tuple[type, ...] = (Connection, Provisioning, Topology, Backups, Telemetry, Archive, Billing, Upgrades)


def role_operations(*roles: type) -> frozenset[str]:
    """The attributes a set of role protocols names (its methods and Role's fields)."""
    names: set[str] = set()
    for role in roles:
        for klass in role.__mro__:
            if klass in (Protocol, object, typing_Generic):
                continue
            names |= {n for n in vars(klass) if not n.startswith("_")}
            names |= set(getattr(klass, "__annotations__", {}))
    return frozenset(names)


class RoleView:
    """A target seen through some of its roles only: what a runbook that declares those roles may
    touch. Any other operation is an AttributeError naming the roles, so a policy test run through
    a view fails the moment the runbook reaches beyond what it declared."""

    def __init__(self, target: object, *roles: type):
        self._target = target
        self._roles = roles
        self._allowed = role_operations(*roles)

    def __getattr__(self, name: str):
        if name not in self._allowed:
            raise AttributeError(f"{name} is in none of the roles this runbook declared "
                                 f"({', '.join(r.__name__ for r in self._roles)})")
        return getattr(self._target, name)
