"""DR drills (R-DR-1..3): measured, never assumed. A probe writer commits numbered rows through
the application's connection path and records every acknowledged commit; after the drill we
count what is missing (RPO in rows, never a guess) and the writer's outage (RTO).

Every drill cleans up what it creates (probe tables, throw-away servers) in ``finally`` and
leaves the topology whole; ``cleanup`` also removes what a drill killed halfway left behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import psycopg
from psycopg import sql as psql

from pcdb.config import DrStep, Environment
from pcdb.errors import TargetError
from pcdb.failover import promote_region
from pcdb.probe import ProbeResult, ProbeWriter
from pcdb.sql import query
from pcdb.steps import Steps
from pcdb.targets.base import STALL_REPLICA, Backups, Connection, Provisioning, Topology, throwaway_name
from pcdb.timeline import Timeline


class DrillTarget(Connection, Provisioning, Topology, Backups, Protocol):
    """The roles of the target port used by the DR drills (pcdb.targets.base)."""


PORT = DrillTarget   # checked: tests/unit/test_port_roles.py
logger = logging.getLogger("pcdb.drills")   # in a flow run, the step's own log (PREFECT_LOGGING_EXTRA_LOGGERS)


def restore_server(env: Environment) -> str:
    """The corruption drill's throw-away server."""
    return throwaway_name(env, "drill-restore")


def _q(name: str, table: str) -> psql.Composed:
    return psql.SQL(query("drills.sql", name)).format(table=psql.Identifier(table))


PROBE_TABLE = "pcdb_drill_probe"
CORRUPTION_TABLE = "pcdb_drill_corruption"


@dataclass
class DrillResult(Timeline):
    scenario: str
    mode: str
    target_rto_seconds: float
    target_rpo_seconds: float | None
    rto_seconds: float | None = None
    rpo_rows_lost: int = 0
    rpo_seconds: float = 0.0
    rows_in_doubt: int = 0
    rows_acknowledged: int = 0
    topology_restored: bool = False
    timeline: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: str | None = None
    steps: list[dict] = field(default_factory=list)    # pcdb.steps records: name, began, seconds, outcome


    @property
    def met(self) -> bool:
        rto_ok = self.rto_seconds is not None and self.rto_seconds <= self.target_rto_seconds
        rpo_ok = self.target_rpo_seconds is None or self.rpo_seconds <= self.target_rpo_seconds
        return rto_ok and rpo_ok

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "mode": self.mode, "rto_seconds": self.rto_seconds,
                "rpo_rows_lost": self.rpo_rows_lost, "rpo_seconds": round(self.rpo_seconds, 3),
                "rows_in_doubt": self.rows_in_doubt, "rows_acknowledged": self.rows_acknowledged,
                "target_rto_seconds": self.target_rto_seconds, "target_rpo_seconds": self.target_rpo_seconds,
                "met": self.met, "topology_restored": self.topology_restored,
                "timeline": self.timeline_dicts(), "steps": self.steps, "notes": self.notes,
                "report": self.report}


class Probe(Protocol):
    """What a drill needs of a probe writer (pcdb.probe.ProbeWriter, or a fake of it)."""

    result: ProbeResult

    def start(self) -> Probe: ...
    def wait_for_rows(self, count: int, timeout: float = 30) -> None: ...
    def stop(self) -> ProbeResult: ...
    def missing(self, conninfo: str | None = None) -> list[int]: ...
    def drop_table(self, conninfo: str | None = None) -> None: ...
    def switch_to(self, conninfo: str) -> None: ...


class DataPlane(Protocol):
    """The drills' database work, apart from the target's control plane: the probe writer, the
    replica's lag, the corruption drill's known rows and the tables a killed drill left. Real
    servers by default (SQL); pcdb.targets.memory fakes it with the port."""

    def probe(self, conninfo: str, table: str) -> Probe: ...
    def replica_lag_bytes(self, target: DrillTarget, env: Environment, password: str) -> int | None: ...
    def drop_leftover_tables(self, conninfo: str) -> list[str]: ...
    def write_known_rows(self, conninfo: str, rows: int) -> datetime: ...
    def corrupt_known_rows(self, conninfo: str) -> None: ...
    def count_intact(self, conninfo: str) -> tuple[int, int]: ...
    def drop_known_rows(self, conninfo: str) -> None: ...


class SqlPlane:
    """The drills' database work on real servers, over SQL through the target's endpoints."""

    def probe(self, conninfo: str, table: str) -> Probe:
        return ProbeWriter(conninfo, table=table)

    def replica_lag_bytes(self, target: DrillTarget, env: Environment, password: str) -> int | None:
        return replica_lag_bytes(target, env, password)

    def drop_leftover_tables(self, conninfo: str) -> list[str]:
        dropped = []
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for table in (PROBE_TABLE, CORRUPTION_TABLE):
                if conn.execute(query("drills.sql", "table_exists"), {"name": table}).fetchone()[0]:
                    conn.execute(_q("drop_table", table))
                    dropped.append(table)
        return dropped

    def write_known_rows(self, conninfo: str, rows: int) -> datetime:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(_q("create_known_rows", CORRUPTION_TABLE))
            conn.execute(_q("insert_known_rows", CORRUPTION_TABLE), {"rows": rows})
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]

    def corrupt_known_rows(self, conninfo: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(_q("corrupt_delete", CORRUPTION_TABLE))
            conn.execute(_q("corrupt_update", CORRUPTION_TABLE))

    def count_intact(self, conninfo: str) -> tuple[int, int]:
        with psycopg.connect(conninfo) as conn:
            return tuple(conn.execute(_q("count_intact", CORRUPTION_TABLE)).fetchone())

    def drop_known_rows(self, conninfo: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(_q("drop_table", CORRUPTION_TABLE))


SQL = SqlPlane()


def _admin(target: DrillTarget, env: Environment, password: str, which: str = "application") -> str:
    return target.endpoint(which).conninfo(env.server.admin.user, password)  # type: ignore[arg-type]


def cleanup(target: DrillTarget, env: Environment, password: str,
            confirm: Callable[[DrStep, str], None] | None = None, plane: DataPlane = SQL,
            step: Steps | None = None) -> list[str]:
    """Remove what an interrupted drill may have left: probe tables, throw-away servers, and make
    the topology whole again. A replica a drill promoted is replaced only after ``confirm``
    (the application may still point at it), asked between the steps. Returns what it removed or
    repaired."""
    step = step or Steps()
    promoted_for_real = not target.replica_diverged() and any(n.role == "promoted" for n in target.server_state().nodes)
    if target.application_target() != "primary" or promoted_for_real:
        raise TargetError("the service runs on the promoted replica since a real region failover: fail back "
                          "(`pcdb failback region`) before any drill, or it would undo production's failover"
                          + ("; the failover itself is not finished: run `pcdb failover region --real` again"
                             if target.application_target() == "primary" else ""))
    server = restore_server(env)

    def leftovers() -> list[str]:
        done = []
        if target.delete_server(server).action == "deleted":
            done.append(f"deleted throw-away server {server}")
        if target.start_primary_region().changed:
            done.append("the primary region was left stopped by an interrupted region drill: started")
        done += [f"dropped leftover table {t}" for t in plane.drop_leftover_tables(_admin(target, env, password, "primary"))]
        for item in done:      # said by the step itself: its task run's log in the UI
            logger.warning("left over by an earlier drill: %s", item)
        if not done:
            logger.info("nothing left over by an earlier drill")
        return done

    done = step("clean up after earlier drills", leftovers, retry=True)
    if target.replica_diverged():
        if confirm is not None:
            confirm(env.dr.step("switch_application"), f"the application and DNS point at the primary, not at "
                    f"{env.replica.name}, which an earlier drill promoted and which will now be replaced")
        step(f"rebuild the replica {env.replica.name} an earlier drill promoted", target.rebuild_replica)
        done.append("replica was promoted or cut off by an interrupted region drill: rebuilt from the primary")
        logger.warning("left over by an earlier drill: %s", done[-1])
    repaired = step("check the HA pair and the replica, repair what differs",
                    lambda: [c for c in [*target.ensure_server(), target.ensure_replica()] if c.changed], retry=True)
    return done + [f"{c.resource} {c.name}: {c.action}" for c in repaired]


def _topology_whole(target: DrillTarget) -> bool:
    state = target.server_state()
    replica = [n for n in state.nodes if n.role == "replica"]
    return state.ha_state == "Healthy" and all(n.running and n.sync_state == "async" for n in replica) and bool(replica)


def wait_topology_whole(target: DrillTarget, timeout: float = 1800) -> bool:
    """Poll until the HA pair is healthy and the replica follows (Azure rebuilds the standby after
    a failover in the background); False when the deadline passes first. The target says how
    often it may be asked."""
    deadline = time.monotonic() + timeout
    while not _topology_whole(target):
        if time.monotonic() > deadline:
            return False
        time.sleep(target.poll_seconds)
    return True


def replica_lag_bytes(target: DrillTarget, env: Environment, password: str) -> int | None:
    """WAL the replica has not replayed: the primary's current LSN minus the replica's replay LSN,
    both read over SQL through the endpoints (the same on Azure and on the sandbox)."""
    try:
        with psycopg.connect(_admin(target, env, password, "primary"), autocommit=True) as conn:
            current = conn.execute(query("drills.sql", "current_lsn")).fetchone()[0]
        with psycopg.connect(_admin(target, env, password, "replica"), autocommit=True) as conn:
            return int(conn.execute(query("drills.sql", "replay_lag_bytes"), {"lsn": current}).fetchone()[0])
    except psycopg.Error:
        return None


def _started(probe: Probe, rows: int) -> None:
    probe.start()
    probe.wait_for_rows(rows)


def _measured(probe: Probe, rows: int, timeout: float = 30) -> ProbeResult:
    probe.wait_for_rows(rows, timeout=timeout)
    return probe.stop()


def zone_drill(target: DrillTarget, env: Environment, password: str, mode: str = "forced",
               plane: DataPlane = SQL, decide: Callable[[dict], None] | None = None,
               step: Steps | None = None) -> DrillResult:
    """Zone failure (R-DR-1): HA failover under a probe writer; RPO must be 0.

    Args:
        decide: called with the pair's state before the failover, between the steps; raises to abort.
        step: runs each step (inline by default; a Prefect task each in the flow).
    """
    step = step or Steps()
    result = DrillResult("zone", mode, env.dr.zone_failure.rto.total_seconds(), env.dr.zone_failure.rpo.total_seconds())
    probe = plane.probe(_admin(target, env, password), PROBE_TABLE)
    try:
        step("start the probe writer", lambda: _started(probe, 50))
        result.mark("probe writer started")
        if decide is not None:
            state = target.server_state()
            decide({"mode": mode, "ha_state": state.ha_state,
                    "nodes": [f"{n.name} {n.role} {'up' if n.running else 'DOWN'}" for n in state.nodes]})
            result.mark(f"decision to fail over ({mode}) recorded")
        failover = step(f"{mode} failover of the HA pair", lambda: target.failover(mode))  # type: ignore[arg-type]
        result.mark(f"{failover.new_primary} promoted in {failover.promote_seconds:.3f}s; "
                    f"{failover.old_primary} rejoined as synchronous standby")
        outcome = step("measure the probe writer", lambda: _measured(probe, 50))
        result.mark("probe writer stopped")
        _account(result, probe, outcome)
        result.topology_restored = step("check the topology is whole", lambda: wait_topology_whole(target))
        result.mark("topology checked: " + ("whole" if result.topology_restored else "NOT whole"))
    finally:
        probe.stop()
        step("drop the probe table", lambda: _drop(probe))
    return result


def _account(result: DrillResult, probe: Probe, outcome, conninfo: str | None = None) -> None:
    missing = probe.missing(conninfo)
    result.rows_acknowledged = len(outcome.acknowledged)
    result.rpo_rows_lost = len(missing)
    result.rows_in_doubt = len(outcome.in_doubt)
    result.rto_seconds = round(outcome.outage_seconds or 0.0, 3)
    if missing:
        kept = [i for i in outcome.acknowledged if i not in set(missing)]
        last_kept = max((outcome.acknowledged_at[i] for i in kept if i < min(missing)), default=None)
        last_lost = max(outcome.acknowledged_at[i] for i in missing)
        result.rpo_seconds = last_lost - (last_kept or outcome.acknowledged_at[min(missing)])


def _drop(probe: Probe, conninfo: str | None = None) -> None:
    try:
        probe.drop_table(conninfo)
    except psycopg.Error:
        pass  # cleanup() at the next drill removes it


def corruption_drill(target: DrillTarget, env: Environment, password: str, rows: int = 1000,
                     plane: DataPlane = SQL, step: Steps | None = None) -> DrillResult:
    """Data corruption (R-DR-3): known rows, a wrong DELETE/UPDATE, restore to just before it on a
    new server, prove the known rows are back and the corruption is not; RTO = restore time."""
    step = step or Steps()
    result = DrillResult("corruption", "pitr", env.dr.data_corruption.rto.total_seconds(), None)
    primary = _admin(target, env, password, "primary")
    server = restore_server(env)
    try:
        before = step(f"write {rows} known rows", lambda: plane.write_known_rows(primary, rows))
        result.mark(f"{rows} known rows written")
        step("corrupt them: a third deleted, a third overwritten", lambda: plane.corrupt_known_rows(primary))
        result.mark("corruption: a third of the rows deleted, a third overwritten")
        started = time.monotonic()
        endpoint = step(f"restore to just before the corruption on {server}",
                        lambda: target.restore_point_in_time(before, server))
        result.rto_seconds = round(time.monotonic() - started, 3)
        result.mark(f"restored to {before.isoformat()} on {server} in {result.rto_seconds}s")
        got = step("compare the known rows", lambda: plane.count_intact(endpoint.conninfo(env.server.admin.user,
                                                                                            password)), retry=True)
        intact = got == (rows, rows)
        result.notes.append(f"restored table: {got[0]} rows, {got[1]} with their original content "
                            f"(expected {rows}/{rows})")
        result.rpo_rows_lost = rows - got[1]
        if not intact:
            result.rto_seconds = None  # the restore did not recover the data: the RTO is not met
    finally:
        step(f"delete the throw-away server {server}", lambda: target.delete_server(server), retry=True)
        result.mark(f"throw-away server {server} deleted")
        step("drop the known rows", lambda: plane.drop_known_rows(primary), retry=True)
        result.topology_restored = step("check the topology is whole", lambda: wait_topology_whole(target))
    return result


def region_drill(target: DrillTarget, env: Environment, password: str, decide: Callable[[dict], None],
                 confirm: Callable[[DrStep, str], None], stall_replica: bool = False, drill_id: str = "drill",
                 plane: DataPlane = SQL, step: Steps | None = None) -> DrillResult:
    """Region failure (R-DR-2): the manual procedure of §5.2.3, that is the real region failover's
    promotion (pcdb.failover.promote_region) plus its undo.

    The HA pair's region is stopped, the replica is promoted after a recorded decision, the
    steps of other teams wait for their confirmation; RPO = acknowledged rows missing on the
    promoted replica. Then the post-promotion checklist, and the original topology is rebuilt
    (the promoted server is a drill's: it is replaced by a new replica of the primary).

    Args:
        decide: called with the replica's lag before anything irreversible; raises to abort.
        confirm: called per step owned by another team (the step, what to confirm); raises to abort.
        stall_replica: cut the replica's link first, so that loss is expected (a drill of the breach).
        drill_id: tags the promoted server (Azure), so only a drill's promotion is ever undone.
        plane: the database work (real SQL; a fake with pcdb.targets.memory).
        step: runs each step (inline by default; a Prefect task each in the flow). The decision
            and the confirmations are asked between steps, never inside one.
    """
    step = step or Steps()
    rpo = env.dr.region_failure.rpo.total_seconds()
    result = DrillResult("region", "stalled-replica" if stall_replica else "manual",
                         env.dr.region_failure.rto.total_seconds(), rpo)
    probe = plane.probe(_admin(target, env, password), PROBE_TABLE)
    replica_info = _admin(target, env, password, "replica")
    promoted = stopped = False
    switched: list = []  # steps of other teams that pointed the application at the promoted server
    if stall_replica and STALL_REPLICA not in target.capabilities:   # refused before anything runs
        raise TargetError(f"{type(target).__name__} cannot stall a replica's replication: the stalled-replica "
                          "region drill runs on the sandbox only")
    try:
        step("start the probe writer", lambda: _started(probe, 50))
        result.mark("probe writer started")
        if stall_replica:
            step("stall the replica's link (no streaming, no archive)",
                 lambda: (target.stall_replica(), probe.wait_for_rows(100)))
            result.mark("replica link stalled (no streaming, no archive)")
        lag = step("measure the replica's lag", lambda: plane.replica_lag_bytes(target, env, password), retry=True)
        result.mark(f"replica lag checked: {lag} bytes behind the primary")
        decide({"replica_lag_bytes": lag})
        result.mark("decision to fail over recorded")
        failed_at = time.monotonic()
        stopped = True
        step("stop the primary region (the primary and its HA standby)", target.stop_primary_region)
        result.mark("primary region stopped (the primary server and its HA standby)")
        promoted = True  # from here on the replica may be promoted: the finally undoes it
        promote_region(target, env, confirm, result.mark, drill=drill_id, switched=switched, step=step)

        def through_the_replica() -> ProbeResult:
            probe.switch_to(replica_info)  # the application's connection string now names the replica
            return _measured(probe, 20, timeout=60)

        outcome = step("write through the promoted replica", through_the_replica)
        result.mark("writes succeed on the promoted replica")
        _account(result, probe, outcome, replica_info)
        result.rto_seconds = round((outcome.first_recovery or time.monotonic()) - failed_at, 3)
        result.notes += [f"post-promotion check: {fact}" for fact in target.promoted_server_facts()]
    finally:
        probe.stop()
        if promoted:
            _drop(probe, replica_info)
        if stopped:
            step("start the primary region again", target.start_primary_region, retry=True)
            result.mark("primary region started again")
        kept = False
        if target.replica_diverged():
            kept = not _switched_back(switched, confirm, result)
            if not kept:
                step(f"rebuild the replica {env.replica.name} from the primary", target.rebuild_replica)
                result.mark("original topology rebuilt: the promoted server replaced by a new replica of the primary")
        step("drop the probe table", lambda: _drop(probe, _admin(target, env, password, "primary")))
        # A promoted server kept on purpose means the topology is not whole: say so, do not wait for it.
        result.topology_restored = not kept and step("check the topology is whole", lambda: wait_topology_whole(target))
    return result


def _switched_back(switched: list, confirm: Callable[[DrStep, str], None], result: DrillResult) -> bool:
    """Before the promoted server is replaced, every team that pointed the application at it
    confirms it points back at the primary; without that, the promoted server is kept."""
    for step in reversed(switched):
        try:
            confirm(step, f"undo: {step.step} (back to the primary)")
        except Exception as exc:  # noqa: BLE001 - a refusal keeps the promoted server, whatever its form
            result.notes.append(f"the promoted server was kept: '{step.step}' was not undone ({exc}); "
                                "the next drill asks again before it replaces the promoted server")
            return False
        result.mark(f"confirmed: undo {step.step} ({step.owner})")
    return True
