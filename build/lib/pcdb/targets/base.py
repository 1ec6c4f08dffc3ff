"""The target port: the operations every runbook needs, implemented by Azure and the sandbox.

Each ``ensure_*`` operation reads what exists, changes only what differs, and returns a
:class:`~pcdb.changes.Change` (created / updated / unchanged, with the diff).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import psycopg

from pcdb.changes import Change
from pcdb.config import Environment


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

    def conninfo(self, user: str, password: str | None = None, dbname: str | None = None,
                 application_name: str = "pcdb") -> str:
        """A libpq connection string; the password is passed in, never stored here."""
        extra = {k: v for k, v in {"sslrootcert": self.sslrootcert,
                                   "target_session_attrs": self.target_session_attrs,
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


@runtime_checkable
class Target(Protocol):
    """What a runbook may ask of an environment (see ARCHITECTURE "The target port")."""

    env: Environment
    poll_seconds: float  # how often a runbook may re-read state while it waits

    def ensure_resource_group(self) -> Change: ...
    def ensure_network(self) -> Change: ...
    def ensure_server(self) -> list[Change]: ...
    def ensure_database(self) -> Change: ...
    def ensure_replica(self) -> Change: ...
    def ensure_parameters(self, names: set[str] | None = None) -> Change: ...
    def parameter_differences(self) -> dict[str, dict[str, tuple[str, str]]]: ...
    def ensure_tls(self) -> Change: ...
    def plan(self) -> list[Change]: ...
    def generated_secret(self, name: str) -> str: ...
    def ensure_access_rules(self) -> Change: ...
    def ensure_monitoring(self) -> Change: ...
    def server_state(self) -> ServerState: ...
    def list_backups(self) -> list[BackupInfo]: ...
    def take_backup(self) -> BackupInfo: ...
    def backup_status(self) -> BackupStatus: ...
    def amcheck(self, name: str) -> tuple[bool, str]: ...
    def restore_point_in_time(self, target_time: datetime, name: str) -> Endpoint: ...
    def delete_server(self, name: str) -> Change: ...
    def failover(self, mode: Literal["planned", "forced"] = "planned") -> dict: ...
    def promote_replica(self, drill: str | None = None) -> dict: ...
    def stop_primary_region(self) -> Change: ...
    def start_primary_region(self) -> Change: ...
    def stall_replica(self, dry_run: bool = False) -> None: ...
    def replica_diverged(self) -> bool: ...
    def rebuild_replica(self) -> Change: ...
    def promoted_server_facts(self) -> list[str]: ...
    def metrics(self) -> MetricsSample: ...
    def endpoint(self, which: Literal["primary", "replica", "application"] = "primary") -> Endpoint: ...
    def admin_password(self) -> str: ...
    def archive_partition(self, path: Path, name: str, sha256: str) -> str:
        """Store a partition's dump (sandbox: the backup store; Azure: a blob container); return
        where it went, for :meth:`fetch_partition_archive`."""
        ...
    def fetch_partition_archive(self, location: str, dest: Path) -> Path: ...
    def failed_logins(self, since: datetime) -> int | None: ...
    def log_lines(self, since: datetime, pattern) -> list[str] | None:
        """Server log lines matching ``pattern`` since then (None: the log is not readable here)."""
        ...
    def tls_certificate_expiry(self) -> datetime | None: ...
    def metric_history(self, start: datetime, end: datetime) -> dict[str, list[tuple[datetime, float, float]]] | None:
        """Hourly (average, maximum) points of the capacity metrics the platform keeps; None when
        it keeps none (the sandbox: the health runbook's store is its history)."""
        ...
    def maintenance_window(self) -> dict | None:
        """The provider's maintenance window as {start (the latest, UTC), minutes, note}, or None."""
        ...
    def platform_metrics(self) -> dict[str, float | None]:
        """The provider's own latest metrics (Azure Monitor), where it has them."""
        ...
    def planned_maintenance(self) -> list[dict]:
        """The provider's announced or running maintenance of the server: [{title, start, end}]."""
        ...
    def own_roles(self) -> set[str]:
        """Login roles the platform itself needs (replication, the provider's superuser)."""
        ...
    def publish_business_metrics(self, values: dict[str, float | None], at: datetime) -> int:
        """Send the health runbook's business rates where the platform's dashboard reads them
        (Azure Monitor custom metrics); return how many were sent."""
        ...
    def archive_report(self, path: Path, sha256: str) -> str | None:
        """Copy a run's report to durable, write-once storage; return where it went (or None
        when this target has no archive yet)."""
        ...
