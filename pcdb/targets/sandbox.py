"""SandboxTarget: the target port on the local sandbox of real PostgreSQL servers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import replace
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Literal

from psycopg import sql as psql

from pcdb import clock, crash, params
from pcdb.anchors import Anchors, FileAnchors
from pcdb.changes import Change
from pcdb.config import Environment
from pcdb.errors import SandboxError, TargetError
from pcdb.preflight import Check
from pcdb.process import machine_memory
from pcdb.sandbox import Sandbox, builds, proc
from pcdb.sandbox.engine import HA_NODES, REPLICA, REPLICATION_USER
from pcdb.sandbox.node import Node
from pcdb.sql import query
from pcdb.targets.base import (
    READ_SERVER_LOG,
    STALL_REPLICA,
    STORAGE_GUARD,
    SYNC_STANDBY_VISIBLE,
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

# A hot standby needs at least its primary's value of these (PostgreSQL "Hot Standby" docs).
HOT_STANDBY_MINIMUMS = ("max_connections", "max_prepared_transactions", "max_locks_per_transaction",
                        "max_wal_senders", "max_worker_processes")


def _alter_system(name: str, value: str | None) -> psql.Composed:
    """ALTER SYSTEM SET (or RESET, for None). A list parameter gets one literal per item: a single
    'a,b' would be stored as the one name "a,b" and the server would not start."""
    if value is None:
        return psql.SQL("ALTER SYSTEM RESET {}").format(psql.Identifier(name))
    if name.lower() in params.LIST_PARAMETERS:
        items = [x.strip() for x in value.split(",") if x.strip()]
        literal = psql.SQL(", ").join(psql.Literal(x) for x in items) if items else psql.Literal("")
    else:
        literal = psql.Literal(value)
    return psql.SQL("ALTER SYSTEM SET {} = {}").format(psql.Identifier(name), literal)


@cache
def _sharedir(bindir: Path) -> Path:
    """PostgreSQL's share folder (asked once per binaries folder, not at every parameter read). A
    build without pg_config (pcdb's builds of other majors) keeps it beside its bin/."""
    if not (bindir / "pg_config").exists():
        return bindir.parent / "share" / "postgresql"
    result = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, timeout=10,
                            check=False)
    return Path(result.stdout.strip())


def _logged_since(line: str, since: datetime) -> bool:
    """A line's own time (log_line_prefix starts with %t, in UTC on the sandbox) is not before ``since``;
    a line without one (a continuation) counts."""
    try:
        at = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return True
    return at >= since


class SandboxTarget:
    """Implements :class:`~pcdb.targets.base.Target` on :class:`~pcdb.sandbox.Sandbox`."""

    poll_seconds = 0.2  # local servers answer in milliseconds

    capabilities = frozenset({STALL_REPLICA, READ_SERVER_LOG, STORAGE_GUARD, SYNC_STANDBY_VISIBLE, UPGRADE_COPY})

    def __init__(self, env: Environment, sandbox: Sandbox | None = None):
        self.env = env
        self.sandbox = sandbox or Sandbox(env)
        self.admin = env.server.admin.user
        self._last_metrics: tuple[datetime, int] | None = None   # metrics(): the previous sample, in memory

    # -- desired state --------------------------------------------------------------------

    def desired_parameters(self) -> dict[str, params.ParamValue]:
        """The spec's parameters, with the sandbox's extra preload libraries that are installed."""
        desired = self.env.desired_parameters()
        extras = [lib for lib in self.sandbox.spec.extra_preload_libraries if self._installed(lib)]
        if extras:
            libs = desired.get("shared_preload_libraries")
            names = [x.strip() for x in (libs.setting if libs else "").split(",") if x.strip()]
            merged = ",".join(names + [e for e in extras if e not in names])
            desired["shared_preload_libraries"] = params.canonical("shared_preload_libraries", merged)
        return desired

    def _installed(self, extension: str) -> bool:
        return (_sharedir(self.sandbox.bindir) / "extension" / f"{extension}.control").exists()

    # -- ensure ---------------------------------------------------------------------------

    def ensure_resource_group(self) -> Change:
        existed = self.sandbox.exists()
        self.sandbox._prepare_root()
        return Change("resource_group", str(self.sandbox.root), "unchanged" if existed else "created")

    def ensure_network(self) -> Change:
        return Change("network", "loopback", "unchanged",
                      notes=("servers listen on 127.0.0.1 only; access rules are pg_hba lines",))

    def ensure_server(self) -> list[Change]:
        """The HA pair with its backups: WAL archiving on, and a first base backup so a
        point-in-time restore works from the moment the install finishes (Azure takes its
        first automatic backup when the server is created)."""
        settings = {n: v.setting for n, v in self.desired_parameters().items()}
        changes = self.sandbox.ensure_ha(settings)
        backups = self.sandbox.list_backups()
        if backups:
            changes.append(Change("backup", backups[-1].id, "unchanged", notes=(f"{len(backups)} base backup(s)",)))
        else:
            first = self.sandbox.take_backup(kind="automatic")
            changes.append(Change("backup", first.id, "created", notes=("first automatic base backup",)))
        return changes

    def ensure_replica(self) -> Change:
        return self.sandbox.ensure_replica()

    def ensure_database(self) -> Change:
        name = self.env.service.database
        with self.sandbox.primary().connect(self.admin) as conn:
            if conn.execute(query("sandbox.sql", "database_exists"), {"name": name}).fetchone()[0]:
                return Change("database", name, "unchanged")
            crash.point("install:database-creating")
            conn.execute(psql.SQL("CREATE DATABASE {} ENCODING 'UTF8'").format(psql.Identifier(name)))
        crash.point("install:database-created")
        return Change("database", name, "created")

    def ensure_parameters(self, names: set[str] | None = None) -> Change:
        """Set what differs on every node, reload, and restart in a rolling way where needed
        (holding the sandbox's lock: the supervisor must not take a restart for a crash).

        Args:
            names: only these parameters (a phase's share); default all of the spec.

        Restart order: replica, standby, then a planned switchover so the old primary restarts
        as the new standby; the primary is never down longer than a failover.
        """
        return self.sandbox.run_locked(lambda: self._ensure_parameters(names))

    def _ensure_parameters(self, names: set[str] | None) -> Change:
        everything = self.desired_parameters()
        desired = {k: v for k, v in everything.items() if names is None or k in names}
        removed = self._removed_from_spec(everything)
        desired.update(removed)  # a parameter no longer in the spec goes back to its default
        diff: dict[str, tuple[object, object]] = {}
        lowered = self._lower_on_primary_first(desired, diff, set(removed))
        for node in self._running_nodes():
            for name, (current, wanted) in self._differences(node, desired, set(removed)).items():
                diff[name] = (current, f"{wanted} (default: removed from the spec)" if name in removed else wanted)
                with node.connect(self.admin) as conn:
                    conn.execute(_alter_system(name, None if name in removed else wanted))
        if not diff:
            return Change("parameters", self.env.server.name, "unchanged")
        for node in self._running_nodes():
            node.reload()
        restarted = self._rolling_restart()
        left = {n: d for node in self._running_nodes() for n, d in self._differences(node, desired, set()).items()}
        if left:
            raise TargetError(f"parameters not applied after reload/restart: {left}; see the server logs")
        notes = (*lowered, *((f"restarted: {', '.join(restarted)}",) if restarted else ()))
        return Change("parameters", self.env.server.name, "updated", diff=diff, notes=notes)

    def _removed_from_spec(self, desired: dict[str, params.ParamValue]) -> dict[str, params.ParamValue]:
        """Parameters pcdb once set (postgresql.auto.conf holds only what it set from the spec) that
        the spec no longer names, each with the value it has without them."""
        wanted = {v.name for v in desired.values()}
        try:
            primary = self.sandbox.primary()
        except SandboxError:
            return {}
        if not primary.is_running():   # not made yet (a first install killed early): pcdb set nothing
            return {}
        with primary.connect(self.admin) as conn:
            rows = conn.execute(query("sandbox.sql", "auto_conf_settings")).fetchall()
        out = {}
        for name, file_value, boot_value in rows:
            if name in wanted or name in params.OWNED:   # e.g. the storage guard's read-only switch
                continue
            setting = boot_value or ""
            if file_value is not None:
                try:
                    setting = params.canonical(name, file_value, owned=True).setting
                except ValueError:
                    setting = file_value
            out[name] = params.ParamValue(name, setting, None, True, "(default)")
        return out

    def _lower_on_primary_first(self, desired: dict[str, params.ParamValue], diff: dict,
                                removed: set[str] = frozenset()) -> tuple[str, ...]:
        """A standby refuses to run with a smaller max_connections (and the like) than its primary
        ("recovery aborted because of insufficient parameter settings"), so a decrease cannot go
        standby first: the primary is restarted with it first (a restart's write outage, no
        switchover can avoid it), then the rolling restart carries it to the standbys."""
        primary = self.sandbox.primary()
        current = self._differences(primary, {k: v for k, v in desired.items() if k in HOT_STANDBY_MINIMUMS})
        lower = {n: (c, w) for n, (c, w) in current.items() if c is not None and int(w) < int(c)}
        if not lower:
            return ()
        with primary.connect(self.admin) as conn:
            for name, (_, wanted) in lower.items():
                conn.execute(_alter_system(name, None if name in removed else wanted))
        started = time.monotonic()
        primary.stop("fast")
        primary.start(self.sandbox.timeout)
        self.sandbox._wait_streaming(primary, self.sandbox.standby().name, sync=True)
        diff.update(lower)
        return (f"lowered on the primary first ({', '.join(sorted(lower))}): restarted {primary.name}, "
                f"writes paused {time.monotonic() - started:.2f}s",)

    def parameter_differences(self) -> dict[str, dict[str, tuple[str, str]]]:
        """Read-only: per running node, the parameters whose value differs from the spec (one the
        spec no longer names, while pcdb's setting of it is still there, differs too)."""
        desired = self.desired_parameters()
        removed = self._removed_from_spec(desired)
        return {node.name: self._differences(node, {**desired, **removed}, set(removed))
                for node in self._running_nodes()}

    def ensure_tls(self) -> Change:
        """TLS on, minimum version as the spec says, non-TLS TCP rejected (R-SEC-4)."""
        wanted = self.env.security.tls.min_version
        with self.sandbox.primary().connect(self.admin) as conn:
            ssl = conn.execute("SHOW ssl").fetchone()[0]
            version = conn.execute("SHOW ssl_min_protocol_version").fetchone()[0]
        if (ssl, version) == ("on", wanted):
            return Change("tls", self.env.server.name, "unchanged",
                          notes=(f"ssl on, minimum {version}; pg_hba rejects hostnossl",))
        raise TargetError(f"the sandbox servers run ssl={ssl}, minimum {version}, but the spec asks for "
                          f"{wanted}; the sandbox is built with TLSv1.3 only: destroy and re-create it")

    def generated_secret(self, name: str) -> str:
        """A password the sandbox generated for ``name`` (file mode 0600)."""
        return self.sandbox.password(name)

    def preflight(self) -> list[Check]:
        """The server programs of the spec's version: on this machine, or where they come from."""
        major = str(self.env.server.version)
        found = proc.bindir_of_major(major)
        if found is not None:
            return [Check("server-programs", True, f"PostgreSQL {major}: {found}")]
        return [Check("server-programs", False, f"the server programs of PostgreSQL {major} (server.version) are not "
                      "on this machine", builds.why_not(major))]

    def plan(self) -> list[Change]:
        """Read-only: what an install would create or change on this sandbox now."""
        sb = self.sandbox
        if not sb.exists():
            return [Change(kind, name, "created", notes=("would be created",)) for kind, name in (
                ("resource_group", str(sb.root)), ("server", "node1"), ("server", "node2"),
                ("server", "replica"), ("database", self.env.service.database))]
        planned = [Change("resource_group", str(sb.root), "unchanged")]
        for name in (*HA_NODES, REPLICA):
            planned.append(self._node_plan(name))
        planned.append(self._database_plan())
        diffs = {n: d for node, nd in self.parameter_differences().items() for n, d in nd.items()}
        planned.append(Change("parameters", self.env.server.name, "updated" if diffs else "unchanged", diff=diffs))
        files = self._access_files()
        cidrs = files.pop("cidrs")
        stale = sorted(f"{node.name}/{name}" for node in sb.nodes() if node.exists() for name, text in files.items()
                       if not (node.data / name).exists() or (node.data / name).read_text() != text)
        planned.append(Change("access_rules", "pg_hba", "updated" if stale else "unchanged",
                              diff={"files": (", ".join(stale), "rewritten")} if stale else {},
                              notes=(f"hostssl + scram-sha-256 from {', '.join(cidrs.split())}; socket: the "
                                     "admin only, peer from the OS users pcdb runs as",)))
        return planned

    def _node_plan(self, name: str) -> Change:
        """A node as the next install finds it: made and running, made and stopped, or still to
        be made (never made, or half-made by a run that was killed: its ``.building`` folder is
        thrown away and the node made again)."""
        sb = self.sandbox
        if name not in sb.state.nodes or not sb.node(name).exists():
            half = (sb.root / "nodes" / f"{name}.building").exists()
            return Change("server", name, "created",
                          notes=("a killed run left it half-made: made again" if half else "would be created",))
        return Change("server", name, "unchanged" if sb.node(name).is_running() else "started")

    def _database_plan(self) -> Change:
        name = self.env.service.database
        try:
            primary = self.sandbox.primary()
        except SandboxError:
            return Change("database", name, "created")
        if not primary.is_running():
            return Change("database", name, "created", notes=("unknown until the primary runs",))
        with primary.connect(self.admin) as conn:
            found = conn.execute(query("sandbox.sql", "database_exists"), {"name": name}).fetchone()[0]
        return Change("database", name, "unchanged" if found else "created")

    def _access_files(self) -> dict[str, str]:
        cidrs = ("127.0.0.1/32", *(s.cidr for s in self.env.network.allowed_subnets))
        return {"pg_hba.conf": self.sandbox.hba(cidrs), "pg_ident.conf": self.sandbox.ident(), "cidrs": " ".join(cidrs)}

    def _differences(self, node: Node, desired: dict[str, params.ParamValue], removed: set[str] = frozenset()) -> dict:
        """What differs on ``node``; a ``removed`` parameter differs while postgresql.auto.conf still holds it."""
        names = [v.name for v in desired.values()]
        with node.connect(self.admin) as conn:
            rows = conn.execute(query("sandbox.sql", "settings"), {"names": names}).fetchall()
            in_auto = {r[0] for r in conn.execute(query("sandbox.sql", "auto_conf_settings"))} if removed else set()
        actual = {r[0]: (r[1], r[4]) for r in rows}
        out = {}
        for value in desired.values():
            setting, pending = actual.get(value.name, (None, False))
            if value.name in removed:
                if value.name in in_auto:
                    out[value.name] = (setting, value.setting)
            elif setting is None or pending or not params.same_setting(value.name, value.setting, setting):
                out[value.name] = (setting, value.setting)
        return out

    def _pending_restart(self, node: Node) -> bool:
        with node.connect(self.admin) as conn:
            return conn.execute(query("sandbox.sql", "pending_restart")).fetchone()[0]

    def _rolling_restart(self) -> list[str]:
        sb = self.sandbox
        restarted = []
        for name in (REPLICA, sb.standby().name):
            node = sb.node(name)
            if node.is_running() and self._pending_restart(node):
                node.stop("fast")
                node.start(sb.timeout)
                restarted.append(name)
        if self._pending_restart(sb.primary()):
            result = sb.failover("planned")
            restarted.append(f"{result['old_primary']} (switchover to {result['new_primary']})")
        elif restarted:
            sb.wait_replica_following()
        return restarted

    def _running_nodes(self) -> list[Node]:
        return [n for n in self.sandbox.nodes() if n.is_running()]

    def ensure_access_rules(self) -> Change:
        """pg_hba.conf and pg_ident.conf on every node: hostssl lines for loopback and the spec's
        allowed subnets (R-SEC-5), SCRAM everywhere, and over the socket only the admin from the OS
        users pcdb runs as (peer). Rewritten whole where they differ (an older sandbox had trust)."""
        files = self._access_files()
        cidrs = files.pop("cidrs").split()
        changed: dict[str, list[str]] = {}
        for node in self.sandbox.nodes():
            for name, wanted in files.items():
                path = node.data / name
                if not path.exists() or path.read_text() != wanted:
                    proc.write_file(path, wanted, mode=0o600)
                    changed.setdefault(node.name, []).append(name)
            if node.name in changed and node.is_running():
                node.reload()
        return Change("access_rules", "pg_hba", "updated" if changed else "unchanged",
                      diff={"hostssl": ("", ", ".join(cidrs))} if changed else {},
                      notes=(*(f"rewritten on {n}: {', '.join(f)}" for n, f in changed.items()),
                             "socket: the admin only, peer from the OS users pcdb runs as"))

    def ensure_monitoring(self) -> Change:
        """Record the alert rules and thresholds for the health runbook to evaluate."""
        path = self.sandbox.root / "monitoring.json"
        wanted = json.dumps(self.env.monitoring.model_dump(mode="json"), indent=2, ensure_ascii=False)
        if path.exists() and path.read_text() == wanted:
            return Change("monitoring", str(path), "unchanged")
        action = "updated" if path.exists() else "created"
        path.write_text(wanted)
        return Change("monitoring", str(path), action,
                      notes=(f"{len(self.env.monitoring.alert_rules)} alert rules recorded",))

    # -- state and operations ---------------------------------------------------------------

    def server_state(self) -> ServerState:
        status = self.sandbox.status()
        # The port calls a read replica that left recovery "promoted" (the sandbox's status says primary).
        nodes = tuple(NodeState(n["name"], "promoted" if n["name"] == REPLICA and n["role"] == "primary" else n["role"],
                                n["running"], n["sync_state"], n["lag_bytes"], n["timeline"]) for n in status["nodes"])
        ha = {n.name: n for n in nodes if n.name in HA_NODES}
        healthy = any(n.role == "primary" and n.running for n in ha.values()) and any(
            n.role == "standby" and n.sync_state == "sync" for n in ha.values())
        return ServerState(self.env.server.name, "Healthy" if healthy else "Degraded", nodes)

    def list_backups(self) -> list[BackupInfo]:
        return [BackupInfo(b.id, b.kind, b.finished_at, b.size_bytes) for b in self.sandbox.list_backups()]

    def take_backup(self) -> BackupInfo:
        """A base backup; then the retention, as Azure applies it to its automatic backups."""
        b = self.sandbox.take_backup()
        self.sandbox.prune_backups(self.env.backup.retention)
        return BackupInfo(b.id, b.kind, b.finished_at, b.size_bytes)

    def backup_status(self) -> BackupStatus:
        """The daily backup facts (R-BAK-1/2): age, retention, geo copy, archive, manifest check.
        Read only: the retention is applied when a backup is taken, not when one is looked at."""
        sb = self.sandbox
        backups = sb.list_backups()
        latest = backups[-1] if backups else None
        archiver = sb.archive_status()
        last_ok, last_failed = archiver["last_archived_time"], archiver["last_failed_time"]
        failing = last_failed is not None and (last_ok is None or last_failed > last_ok)
        gaps = sb.archive_gaps(latest) if latest else []
        verified, verify_detail = sb.verify_backup(latest) if latest else (False, "no backup")
        return BackupStatus(
            latest_backup_id=latest.id if latest else None,
            latest_backup_at=latest.finished_at if latest else None,
            retention=self.env.backup.retention, geo_redundant=self.env.backup.geo_redundant and bool(latest)
            and sb.geo_copy_matches(latest), archive_ok=not failing and not gaps,
            archive_detail=(f"{len(gaps)} missing WAL segment(s): {', '.join(gaps[:5])}" if gaps else
                            f"archiving failing since {archiver['last_failed_wal']}" if failing else
                            f"last archived {archiver['last_archived_wal']}"),
            integrity_ok=verified, integrity_detail=verify_detail)

    def amcheck(self, name: str) -> tuple[bool, str]:
        checks = self.env.backup.verification
        return self.sandbox.amcheck(name, self.env.service.database, jobs=checks.jobs,
                                    heapallindexed=checks.heapallindexed)

    def restore_point_in_time(self, target_time: datetime, name: str) -> Endpoint:
        node = self.sandbox.restore(target_time, name)
        return self._endpoint_of(node)

    def delete_server(self, name: str) -> Change:
        return self.sandbox.delete_server(name)

    # -- Upgrades ---------------------------------------------------------------------------

    def upgrade_available(self, major: str) -> str | None:
        return None if proc.bindir_of_major(str(major)) is not None else builds.why_not(str(major))

    def extension_problem(self, extension: str, major: str) -> str | None:
        found = proc.bindir_of_major(str(major))
        if found is not None and (_sharedir(found) / "extension" / f"{extension}.control").exists():
            return None
        return (f"not in PostgreSQL {major}'s build here: DROP EXTENSION {extension} (and what depends on it) "
                f"or find a build of it for {major}; then run the upgrade again")

    def upgrade_copy(self, name: str, major: str) -> dict:
        return self.sandbox.upgrade_restored(name, str(major))

    def upgrade_under_way(self) -> str | None:
        pending = self.sandbox.state.upgrade if self.sandbox.exists() else None
        return pending["to"] if pending else None

    def upgrade_in_place(self, major: str) -> dict:
        return self.sandbox.upgrade(str(major))

    def upgrade_steps(self, major: str) -> list[str]:
        return [f"initdb {major} and pg_upgrade --check while the primary serves",
                "stop the nodes; pg_upgrade the primary in copy mode (the old data folder kept beside, for the "
                "rollback); start it",
                "copy the synchronous standby and the replica afresh from it; the WAL archive starts again",
                f"a first base backup on {major}"]

    def failover(self, mode: Literal["planned", "forced"] = "planned") -> FailoverResult:
        r = self.sandbox.failover(mode)
        return FailoverResult(r["mode"], r["old_primary"], r["new_primary"], r["promote_seconds"], r["total_seconds"],
                              r.get("timeline"))

    def promote_replica(self, drill: str | None = None) -> PromotionResult:
        r = self.sandbox.promote_replica(by=drill or "real")
        return PromotionResult(r["name"], r["action"], r.get("seconds", 0.0), r.get("timeline"))

    def stop_primary_region(self) -> Change:
        if not any(self.sandbox.node(n).is_running() for n in HA_NODES):
            return Change("server", self.env.server.name, "unchanged", notes=("already stopped",))
        self.sandbox.stop_region()
        return Change("server", self.env.server.name, "updated", {"state": ("running", "stopped")})

    def start_primary_region(self) -> Change:
        changes = [c for c in self.sandbox.start_region() if c.changed]
        return Change("server", self.env.server.name, "updated" if changes else "unchanged",
                      notes=tuple(f"{c.name}: {c.action}" for c in changes))

    def stall_replica(self) -> None:
        self.sandbox.stall_replica()

    def application_target(self) -> str:
        return self.sandbox.state.application

    def serving(self) -> str | None:
        if self.sandbox.state.application != "replica":
            return None
        return (f"production runs on the promoted replica {self.env.replica.name} ({self.env.replica.location}): the "
                "application points at it since a region failover, until the failback")

    def switch_application(self, to: Literal["primary", "replica"]) -> Change:
        before = self.sandbox.state.application
        if not self.sandbox.switch_application(to):
            return Change("application record", self.env.server.name, "unchanged", notes=(f"points at the {to}",))
        return Change("application record", self.env.server.name, "updated", {"points at": (before, to)})

    def primary_region_missing(self) -> list[str]:
        return self.sandbox.region_missing()

    def failback_plan(self) -> FailbackPlan:
        """The two halves: the HA nodes copied afresh from the promoted replica (nothing the service
        sees), then, after the approval, the planned switch back (an interrupted one is finished
        or undone by the sandbox's own intent at its next operation)."""
        env = self.env
        return FailbackPlan((
            FailbackStep("make the primary region follow the promoted replica", self.reverse_replication),
            FailbackStep("switch back to the primary region (planned)", self.switch_back, gate="switch",
                         facts=lambda: {"from": env.replica.name, "to": env.server.name}, serves=True)))

    def reverse_replication(self) -> list[Change]:
        return self.sandbox.reverse_replication()

    def switch_back(self) -> FailoverResult:
        r = self.sandbox.switch_back()
        return FailoverResult(r["mode"], r["old_primary"], r["new_primary"], r["promote_seconds"], r["total_seconds"],
                              r.get("timeline"))

    def replica_diverged(self) -> bool:
        return self.sandbox.replica_diverged()

    def rebuild_replica(self) -> Change:
        if not self.sandbox.replica_diverged():
            return Change("server", REPLICA, "unchanged", notes=("still a replica",))
        self.sandbox.ensure_ha()
        return self.sandbox.rebuild_replica()

    def promoted_backups(self) -> list[Change]:
        """A first base backup of the promoted replica (Azure takes one by itself): the nightly
        restore test then starts from the promoted lineage instead of replaying across the fork."""
        sb = self.sandbox
        if sb.state.application != "replica":
            return [Change("backup", REPLICA, "unchanged", notes=("no real region failover: the HA pair's backups serve",))]
        latest = sb.list_backups()[-1:]
        if latest and latest[0].source == REPLICA and latest[0].timeline == sb.state.nodes[REPLICA].timeline:
            return [Change("backup", REPLICA, "unchanged", notes=(f"{latest[0].id} is of the promoted {REPLICA}",))]
        taken = self.take_backup()
        return [Change("backup", REPLICA, "created", notes=(f"{taken.id}: the first base backup of the promoted {REPLICA}",))]

    def promoted_server_facts(self) -> list[str]:
        return [f"the promoted {REPLICA} runs alone: no synchronous standby, no geo copy of its backups; "
                "the sandbox rebuilds the original topology after the drill"]

    def metrics(self) -> MetricsSample:
        sb = self.sandbox
        with sb.primary().connect(self.admin) as conn:
            cur = conn.execute(query("sandbox.sql", "metrics"))
            row = dict(zip([c.name for c in cur.description], cur.fetchone()))
            replication = tuple({"name": r[0], "sync_state": r[2], "lag_bytes": r[3], "lag_seconds": r[4]}
                                for r in conn.execute(query("sandbox.sql", "replication")))
        now = clock.now()
        # TPS from the previous sample of this process: a read writes nothing (the health runbook
        # keeps its own counters between runs).
        last = self._last_metrics
        tps = None
        if last:
            seconds = (now - last[0]).total_seconds()
            if seconds > 0 and row["transactions"] >= last[1]:
                tps = (row["transactions"] - last[1]) / seconds
        self._last_metrics = (now, row["transactions"])
        quota = sb.spec.storage_quota
        reads = row["blks_hit"] + row["blks_read"]
        return MetricsSample(
            at=now, connections=row["connections"], storage_used_bytes=row["storage_used_bytes"],
            storage_quota_bytes=quota, storage_percent=100.0 * row["storage_used_bytes"] / quota,
            tps=tps, cache_hit_percent=(100.0 * row["blks_hit"] / reads) if reads else None,
            deadlocks=row["deadlocks"], replication=replication)

    def endpoint(self, which: Literal["primary", "replica", "application"] = "primary") -> Endpoint:
        sb = self.sandbox
        if which == "replica":
            return self._endpoint_of(sb.node(REPLICA))
        if which == "application" and sb.state.application == "replica":  # the DNS stand-in, switched
            return replace(self._endpoint_of(sb.node(REPLICA)), target_session_attrs="read-write")
        if which == "application":  # survives a failover, like the Azure FQDN
            ports = ",".join(str(sb.node(n).port) for n in HA_NODES)
            return Endpoint(",".join("127.0.0.1" for _ in HA_NODES), ports,  # type: ignore[arg-type]
                            self.env.service.database, "verify-full", str(sb.ca_file),
                            target_session_attrs="read-write", require_auth="scram-sha-256",
                            channel_binding="require")
        return self._endpoint_of(sb.primary())

    def _endpoint_of(self, node: Node) -> Endpoint:
        return Endpoint("127.0.0.1", node.port, self.env.service.database, "verify-full",
                        str(self.sandbox.ca_file),
                        connect_timeout=int(self.env.server.connection.connect_timeout.total_seconds()),
                        require_auth="scram-sha-256", channel_binding="require")

    def admin_password(self) -> str:
        return self.sandbox.password(self.admin)

    def archive_partition(self, path: Path, name: str, sha256: str) -> str:
        return self.sandbox.archive_partition(path, name, sha256)

    def fetch_partition_archive(self, location: str, dest: Path) -> Path:
        source = Path(location)
        if not source.is_file():
            raise TargetError(f"the archive {location} is missing from the backup store")
        shutil.copyfile(source, dest)
        return dest

    def failed_logins(self, since: datetime) -> int | None:
        """Failed password logins in the nodes' server logs written since ``since``."""
        return len(self.log_lines(since, re.compile("password authentication failed")))

    def log_lines(self, since: datetime, pattern: re.Pattern) -> list[str]:
        """Lines of the nodes' server logs (files written since ``since``) that match ``pattern``."""
        found = []
        for node in self.sandbox.nodes():
            for log in sorted(node.log_dir.glob("*.log")) if node.log_dir.is_dir() else ():
                if datetime.fromtimestamp(log.stat().st_mtime, timezone.utc) < since:
                    continue
                with log.open(errors="replace") as f:
                    found += [line.rstrip("\n") for line in f if pattern.search(line) and _logged_since(line, since)]
        return found

    def tls_certificate_expiry(self) -> datetime | None:
        from cryptography import x509

        cert = self.sandbox.tls_dir / "server.crt"
        if not cert.exists():
            return None
        return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc

    def maintenance_window(self) -> MaintenanceWindow | None:
        return None   # the sandbox has no provider maintenance

    def planned_maintenance(self) -> list[PlannedMaintenance]:
        return []

    def platform_metrics(self) -> dict[str, float | None]:
        """What Azure Monitor would say, measured on this machine (pcdb.sandbox.procstats): the
        primary's memory now, its CPU time and its disk's operations as cumulative counters (the
        health runbook turns two readings into cpu_percent and iops_percent against the machine's
        cores and the spec's provisioned IOPS), and the storage size the sandbox stands for."""
        from pcdb.sandbox import procstats

        out: dict[str, float | None] = {"storage_quota_bytes": float(self.sandbox.spec.storage_quota),
                                        "cpu_count": float(os.cpu_count() or 1),
                                        "iops_limit": float(self.env.server.storage.iops)}
        try:
            primary = self.sandbox.primary()
        except SandboxError:
            return out
        pids = procstats.server_pids(primary.data)
        if pids:
            out["cpu_seconds_total"] = procstats.cpu_seconds(pids)
            out["memory_percent"] = 100.0 * procstats.memory_bytes(pids) / machine_memory()
        out["disk_operations_total"] = procstats.disk_operations(primary.data)
        return out

    def own_roles(self) -> set[str]:
        return {REPLICATION_USER}

    def daily_costs(self, start, end) -> list:
        """The cost model of the spec's price table (§9.1.1): the sandbox costs nothing itself."""
        from pcdb.billing import model_costs

        return model_costs(self.env, start, end)

    def availability_samples(self, start: datetime, end: datetime) -> None:  # noqa: ARG002
        """None: the health runbook's ``up`` samples are the sandbox's availability record."""
        return None

    def metric_history(self, start: datetime, end: datetime) -> None:  # noqa: ARG002
        """None: the sandbox's platform keeps no history; the health runbook's store is it."""
        return None

    def publish_business_metrics(self, values: dict[str, float | None], at: datetime) -> int:  # noqa: ARG002
        """Nothing to publish: the health runbook's store is the sandbox's metric history."""
        return 0

    def server_identity(self) -> dict[str, str]:
        with self.sandbox.primary().connect(self.admin) as conn:
            system_id = conn.execute(query("catalog.sql", "system_identifier")).fetchone()[0]
        return {"system_identifier": system_id, "created_at": self.sandbox.state.created_at or ""}

    def ledger_anchors(self) -> Anchors:
        """The ledger's anchors: a file per row under ``evidence/ledger`` of the backup store."""
        return FileAnchors(self.sandbox.backup_dirs[0] / "evidence" / "ledger")

    def read_archived_report(self, location: str) -> bytes | None:
        """An archived report's bytes; only inside the backup stores (a ledger row names the
        location, and a row is not trusted to name any file of this machine)."""
        path = Path(location)
        if not any(path.resolve().is_relative_to(store.resolve()) for store in self.sandbox.backup_dirs):
            return None
        return path.read_bytes() if path.is_file() else None

    def archive_report(self, path: Path, sha256: str) -> str | None:
        """The report, read-only, into the backup store and its geo copy (reports/<year>/), named
        with its hash so a later report never overwrites an earlier one."""
        return self.sandbox.archive_file(path, sha256)
