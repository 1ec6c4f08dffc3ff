"""Real failovers (§8.2.2 steps 5-6, §12.2.1) and the failback: the drills' steps without their undo.

A drill is a real failover plus its undo (pcdb.drills); here nothing is undone automatically.
A zone failover forces the HA standby up when automatic failover did not happen. A region
failover promotes the replica in the other region, points the application's name at it, and
watches the service: the recovery time is measured, from when the outage began, to the first
write the application's path accepts. The failback waits until the primary region is back,
makes its servers follow the promoted replica, and switches back in a planned way after the
approvals (no acknowledged write is lost: the promoted replica stops cleanly first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import psycopg

from pcdb import clock
from pcdb.changes import Change
from pcdb.config import DrStep, Environment
from pcdb.errors import TargetError
from pcdb.sql import query
from pcdb.steps import Steps
from pcdb.targets.base import Connection, FailoverResult, Topology
from pcdb.timeline import Timeline


class FailoverTarget(Connection, Topology, Protocol):
    """The roles of the target port used by the real failovers and the failback (pcdb.targets.base)."""


PORT = FailoverTarget   # checked: tests/unit/test_port_roles.py


@dataclass
class FailoverReport(Timeline):
    """What a real failover or failback did, measured."""

    kind: str                            # zone | region | failback
    target_rto_seconds: float
    outage_began: str
    recovery_seconds: float | None = None   # outage began -> first write accepted by the application's path
    application: str = "primary"         # where the application's name points at the end
    changed: bool = True
    # Which server production runs on at the end, as the platform says (target.serving()):
    # recorded in the ledger row and the evidence; the runbooks read it from the platform itself.
    serving: str | None = None
    timeline: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: str | None = None
    steps: list[dict] = field(default_factory=list)    # pcdb.steps records: name, began, seconds, outcome

    @property
    def met(self) -> bool | None:
        return None if self.recovery_seconds is None else self.recovery_seconds <= self.target_rto_seconds

    def as_dict(self) -> dict:
        return {"kind": self.kind, "changed": self.changed, "application": self.application,
                "serving": self.serving or "the spec's primary",
                "outage_began": self.outage_began, "recovery_seconds": self.recovery_seconds,
                "target_rto_seconds": self.target_rto_seconds, "met": self.met,
                "timeline": self.timeline_dicts(), "steps": self.steps, "notes": self.notes,
                "report": self.report}


def _conninfo(target: FailoverTarget, env: Environment, password: str, which: str) -> str:
    return target.endpoint(which).conninfo(env.server.admin.user, password)  # type: ignore[arg-type]


class ServicePlane(Protocol):
    """What the failovers ask of the database itself, apart from the target's control plane:
    whether a server answers, whether the application's path takes a write, and how far the
    replica replayed. Real servers by default (SQL); pcdb.targets.memory fakes it with the port."""

    def answers(self, conninfo: str, timeout: int) -> bool: ...
    def takes_write(self, conninfo: str) -> bool: ...
    def replica_position(self, conninfo: str) -> tuple[datetime | None, str]: ...


class SqlServicePlane:
    """The failovers' database work on real servers."""

    def answers(self, conninfo: str, timeout: int) -> bool:
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=timeout):
                return True
        except psycopg.Error:
            return False

    def takes_write(self, conninfo: str) -> bool:
        """A write to a temporary table: it leaves nothing behind."""
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
                conn.execute(query("failover.sql", "write_check"))
                return True
        except psycopg.Error:
            return False

    def replica_position(self, conninfo: str) -> tuple[datetime | None, str]:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            last = conn.execute(query("failover.sql", "replica_position")).fetchone()
        return last[0], str(last[1])


SQL = SqlServicePlane()


def answers(target: FailoverTarget, env: Environment, password: str, which: str, timeout: int = 3,
            plane: ServicePlane = SQL) -> bool:
    return plane.answers(_conninfo(target, env, password, which), timeout)


def watch_service(target: FailoverTarget, env: Environment, password: str, began: float, deadline: float,
                  plane: ServicePlane = SQL) -> float | None:
    """Poll the application's path until it takes a write; seconds since ``began`` (monotonic),
    or None when ``deadline`` (monotonic) passed first."""
    while time.monotonic() < deadline:
        if plane.takes_write(_conninfo(target, env, password, "application")):
            return round(time.monotonic() - began, 3)
        time.sleep(target.poll_seconds or 0.2)
    return None


def _began(outage_began: datetime | None) -> tuple[float, str]:
    """The outage's start as a monotonic time (for the measure) and as text (for the report)."""
    if outage_began is None:
        return time.monotonic(), clock.now().isoformat(timespec="seconds")
    ago = (clock.now() - outage_began).total_seconds()
    if ago < 0:
        raise TargetError(f"the outage cannot begin in the future ({outage_began.isoformat()})")
    return time.monotonic() - ago, outage_began.isoformat(timespec="seconds")


def zone_failover(target: FailoverTarget, env: Environment, password: str, decide: Callable[[dict], None],
                  outage_began: datetime | None = None, plane: ServicePlane = SQL,
                  step: Steps | None = None) -> FailoverReport:
    """The manual forced failover of the HA pair (§8.2.2 step 5): for when the automatic HA
    failover did not happen. Refused when the standby cannot take over."""
    step = step or Steps()
    began, text = _began(outage_began)
    report = FailoverReport("zone", env.dr.zone_failure.rto.total_seconds(), text)
    state = step("read the HA pair's state", target.server_state, retry=True)
    standby = [n for n in state.nodes if n.role == "standby"]
    if not standby or not all(n.running for n in standby):
        raise TargetError(f"the HA standby of {env.server.name} is not running: a zone failover has nothing to "
                          "promote. If the whole region is down, fail over the region (`pcdb failover region "
                          "--real`)")
    facts = {"ha_state": state.ha_state, "nodes": [f"{n.name} {n.role} {'up' if n.running else 'DOWN'}"
                                                   for n in state.nodes]}
    decide(facts)
    report.mark(f"forced failover decided ({facts['ha_state']})")
    result = step("forced failover of the HA pair", lambda: target.failover("forced"))
    report.mark(f"{result.new_primary} promoted in {result.promote_seconds:.3f}s; {result.old_primary} rejoins")
    report.recovery_seconds = step("watch the application's path take a write", lambda: watch_service(
        target, env, password, began, time.monotonic() + report.target_rto_seconds, plane))
    report.mark("the application's path takes writes" if report.recovery_seconds is not None
                else "the application's path did NOT take a write within the target")
    return report


def promote_region(target: FailoverTarget, env: Environment, confirm: Callable[[DrStep, str], None],
                   mark: Callable[[str], None], drill: str | None = None, switched: list | None = None,
                   step: Steps | None = None) -> None:
    """The region failover's irreversible part, the same in the drill and for real: the replica
    promoted (a drill's tagged with ``drill``), then each other team's step confirmed by its owner
    (appended to ``switched``, so that a drill knows what to undo), between the steps."""
    step = step or Steps()
    promoted = step(f"promote the replica {env.replica.name} ({env.replica.location})",
                    lambda: target.promote_replica(drill=drill))
    mark(f"replica {promoted.name} {promoted.action} ({env.dr.step('promote_replica').owner})")
    for role in ("switch_application", "switch_dns"):
        dr_step = env.dr.step(role)
        confirm(dr_step, dr_step.step)
        if switched is not None:
            switched.append(dr_step)
        mark(f"confirmed: {dr_step.step} ({dr_step.owner})")


def region_failover(target: FailoverTarget, env: Environment, password: str, decide: Callable[[dict], None],
                    confirm: Callable[[DrStep, str], None], outage_began: datetime | None = None,
                    plane: ServicePlane = SQL, step: Steps | None = None) -> FailoverReport:
    """Promote the replica in the other region and point the application at it (§12.2.1).

    Refused while the primary region answers (two primaries would split the writes). A run
    killed halfway is finished by the next: the promotion and the switch are each idempotent."""
    step = step or Steps()
    began, text = _began(outage_began)
    report = FailoverReport("region", env.dr.region_failure.rto.total_seconds(), text, application="replica")
    backups_step = "the promoted server's backups as the spec says"
    if target.application_target() == "replica":
        # The failover is done (changed stays False: no topology changes now); a run killed after
        # the switch and before the backups step has that step finished here.
        done = step(backups_step, target.promoted_backups, retry=True)
        finished = [line for c, line in zip(done, _said(done)) if c.action != "unchanged"]
        report.changed = False
        report.notes.append("the application already points at the promoted replica: "
                            + (f"finished the last step ({'; '.join(finished)})" if finished else "nothing to do"))
        report.recovery_seconds = None
        report.serving = target.serving()
        return report
    if target.replica_diverged():
        raise TargetError("the replica is left promoted by an interrupted drill, not a copy of the primary: "
                          "a region failover to it would lose data. Run a drill's cleanup first")

    def region_down_replica_up() -> tuple[datetime | None, str]:
        if answers(target, env, password, "primary", plane=plane):
            raise TargetError(f"the primary region answers ({env.server.name} accepts connections): a region failover "
                              "now would make two primaries and split the writes. Use `pcdb failover zone --real` "
                              "for a failed zone, or stop the primary first")
        if not answers(target, env, password, "replica", plane=plane):
            raise TargetError(f"the replica {env.replica.name} does not answer either: there is nothing to fail "
                              "over to")
        return plane.replica_position(_conninfo(target, env, password, "replica"))

    replayed_at, replay_lsn = step("check the primary region is down and the replica answers", region_down_replica_up)
    facts = {"primary_region_missing": target.primary_region_missing(),
             "replica_last_replayed_at": replayed_at.isoformat() if replayed_at else None,
             "replica_replay_lsn": replay_lsn}
    decide(facts)
    report.mark(f"region failover decided; the replica last replayed a transaction at {facts['replica_last_replayed_at']}")
    promote_region(target, env, confirm, report.mark, step=step)
    switched = step("point the application's name at the promoted replica",
                    lambda: target.switch_application("replica"), retry=True)
    report.mark(f"the application's name points at the promoted replica ({switched.action})")
    report.recovery_seconds = step("watch the application's path take a write", lambda: watch_service(
        target, env, password, began, time.monotonic() + report.target_rto_seconds, plane))
    report.mark("the application's path takes writes" if report.recovery_seconds is not None
                else "the application's path did NOT take a write within the target")
    for line in _said(step(backups_step, target.promoted_backups, retry=True)):
        report.mark(line)
    report.notes += [f"post-promotion check: {fact}" for fact in target.promoted_server_facts()]
    report.serving = target.serving()
    return report


def failback(target: FailoverTarget, env: Environment, password: str, approve: Callable[[dict], None],
             confirm: Callable[[DrStep, str], None], plane: ServicePlane = SQL,
             step: Steps | None = None, verify: Callable[[], list] | None = None) -> FailoverReport:
    """Back to the primary region, planned, as the target's steps say (its failback_plan):
    refused while the region is down (naming what is missing); each step measured; the switch
    back after the approval and the teams' confirmations, a server deleted only after an
    approval of its own. A run killed anywhere is finished by the next: each step reads what
    exists, and an interrupted failback is recorded by the target (it goes on even where the
    application's name already points back). ``verify`` runs Phase 7's checks where the plan asks
    (a new primary server on Azure); a failing check fails the run and the failback stays recorded."""
    step = step or Steps()
    report = FailoverReport("failback", env.dr.region_failure.rto.total_seconds(),
                            clock.now().isoformat(timespec="seconds"))
    plan = target.failback_plan()
    if plan.under_way:
        report.mark(f"an interrupted failback goes on (recorded at: {plan.under_way})")
    else:
        if target.application_target() != "replica":
            report.changed = False
            report.notes.append("the application points at the primary region already: nothing to fail back")
            return report
        missing = target.primary_region_missing()
        if missing:
            raise TargetError(f"the primary region is still down: {', '.join(missing)} do not answer. Fail back once "
                              "it is back; the service stays on the promoted replica meanwhile")
    began = None
    if plan.switch_began is not None:     # an interrupted run switched back: its outage is not over
        began = time.monotonic() - max(0.0, (clock.now() - plan.switch_began).total_seconds())
        report.mark(f"the switch back began in an interrupted run at {plan.switch_began.isoformat(timespec='seconds')}: "
                    "its write outage is measured from then")
    for planned in plan.steps:
        facts = planned.facts() if planned.facts is not None else None
        if planned.gate == "delete" and facts is not None:
            approve(facts)
            report.mark(f"deletion of {facts['delete']} approved")
        elif planned.gate == "switch" and facts is not None:
            approve(facts)
            report.mark("switch back approved")
            for role in ("switch_application", "switch_dns"):
                dr_step = env.dr.step(role)
                confirm(dr_step, f"{dr_step.step} (back to the primary region)")
                report.mark(f"confirmed: {dr_step.step} back to the primary region ({dr_step.owner})")
            began = time.monotonic()     # the write outage of the planned switch is measured from here
        for line in _said(step(planned.name, planned.run)):
            report.mark(line)
        if planned.serves and began is not None:
            report.recovery_seconds = step("watch the application's path take a write",
                                           lambda since=began: watch_service(
                                               target, env, password, since,
                                               time.monotonic() + report.target_rto_seconds, plane))
    report.application = target.application_target()
    if plan.verify and verify is not None:
        results = step("8. run Phase 7's checks on the new primary", verify)
        failed = [r for r in results if not r.passed]
        report.notes += [f"Phase 7: {r.name}: {'passed' if r.passed else 'FAILED'} ({r.evidence})" for r in results]
        if failed:
            raise TargetError(f"the failback's Phase 7 checks failed: {', '.join(r.name for r in failed)}; the failback "
                              "stays recorded: fix what they say, then run the failback again (it goes on from there)")
    if plan.finish is not None:
        step("the failback's record removed", plan.finish)
    report.serving = target.serving()
    return report


def _said(out: object) -> list[str]:
    """A step's outcome in the timeline's words."""
    if isinstance(out, FailoverResult):
        return [f"{out.new_primary} promoted in {out.promote_seconds:.3f}s after {out.old_primary} stopped cleanly; "
                "the application's name points back; the read replica made again"]
    items = out if isinstance(out, list) else [out] if isinstance(out, Change) else []
    return [f"{c.resource} {c.name}: {c.action} {'; '.join(c.notes)}".strip() for c in items]
