"""The drill policy (pcdb.drills) against the in-memory fake of the target port: the order of
steps, the decision before anything irreversible, confirmations by role, what is undone when a
step fails, what is kept when a team has not switched back, and the rows a stalled replica loses.
No server: the whole file runs in well under a second."""

from __future__ import annotations

import pytest

from pcdb import drills
from pcdb.config import load_environment
from pcdb.errors import PcdbError, TargetError
from pcdb.steps import Steps
from pcdb.targets.base import STALL_REPLICA, RoleView, Target
from pcdb.targets.memory import LOGICAL_EPOCH, MemoryPlane, MemoryTarget

ENV = load_environment("local")


class Confirmations:
    """Records each confirmation asked; refuses the ones named."""

    def __init__(self, refuse: tuple[str, ...] = ()):
        self.asked: list[tuple[str, str]] = []
        self.refuse = refuse

    def __call__(self, step, what: str) -> None:
        self.asked.append((what, step.owner))
        if any(r in what for r in self.refuse):
            raise PcdbError(f"{step.owner} did not confirm {what!r}")


def region(target: MemoryTarget, confirm=None, decide=None, **kw) -> drills.DrillResult:
    return drills.region_drill(target, ENV, "pw", decide or (lambda facts: None), confirm or Confirmations(),
                               plane=MemoryPlane(target), **kw)


def test_the_fake_is_a_target_with_capabilities():
    fake = MemoryTarget(ENV)
    assert isinstance(fake, Target) and STALL_REPLICA in fake.capabilities
    assert STALL_REPLICA not in MemoryTarget(ENV, capabilities=frozenset()).capabilities


def test_zone_drill_fails_over_loses_nothing_and_leaves_the_pair_whole():
    fake = MemoryTarget(ENV)
    result = drills.zone_drill(fake, ENV, "pw", "forced", plane=MemoryPlane(fake))
    assert fake.calls == ["failover forced"]
    assert result.rpo_rows_lost == 0 and result.rows_acknowledged == 100 and result.topology_restored
    assert fake.nodes["node2"].role == "primary" and fake.nodes["node1"].dropped is False
    assert fake.nodes["node2"].dropped     # the probe table dropped through the new primary


def test_region_drill_steps_in_order_teams_by_role_and_the_topology_rebuilt():
    fake = MemoryTarget(ENV)
    facts = []
    confirm = Confirmations()
    result = region(fake, confirm, decide=lambda f: facts.append((f, list(fake.calls))))
    assert facts == [({"replica_lag_bytes": 0}, [])]              # decided before anything irreversible
    assert fake.calls == ["stop_primary_region", "promote_replica drill", "start_primary_region", "rebuild_replica"]
    app, dns = ENV.dr.step("switch_application"), ENV.dr.step("switch_dns")
    assert confirm.asked == [(app.step, app.owner), (dns.step, dns.owner),
                             (f"undo: {dns.step} (back to the primary)", dns.owner),
                             (f"undo: {app.step} (back to the primary)", app.owner)]
    assert result.rpo_rows_lost == 0 and result.topology_restored and not fake.replica_diverged()
    assert any("post-promotion check" in n for n in result.notes)


def test_a_decision_against_fails_over_nothing():
    fake = MemoryTarget(ENV)

    def decide(facts):
        raise PcdbError("not today")
    with pytest.raises(PcdbError, match="not today"):
        region(fake, decide=decide)
    assert fake.calls == [] and fake.nodes["node1"].role == "primary" and fake.nodes["node1"].running


def test_a_team_that_does_not_switch_back_keeps_the_promoted_server():
    fake = MemoryTarget(ENV)
    dns = ENV.dr.step("switch_dns")
    result = region(fake, Confirmations(refuse=(f"undo: {dns.step}",)))
    assert "rebuild_replica" not in fake.calls and fake.replica_diverged()
    assert not result.topology_restored and any("the promoted server was kept" in n for n in result.notes)


def test_a_refused_switch_still_starts_the_region_and_rebuilds_the_replica():
    fake = MemoryTarget(ENV)
    app = ENV.dr.step("switch_application")
    with pytest.raises(PcdbError):
        region(fake, Confirmations(refuse=(app.step,)))
    assert fake.calls == ["stop_primary_region", "promote_replica drill", "start_primary_region", "rebuild_replica"]
    assert fake.server_state().ha_state == "Healthy" and not fake.replica_diverged()


def test_a_stalled_replica_loses_exactly_the_rows_written_after_the_stall():
    fake = MemoryTarget(ENV)
    result = region(fake, stall_replica=True)
    # 50 rows before the stall reached the replica; the 100 written after it did not.
    assert fake.calls[0] == "stall_replica" and result.rpo_rows_lost == 100 and result.rows_acknowledged == 170
    assert result.rpo_seconds >= 0 and result.mode == "stalled-replica"


def test_a_target_without_the_capability_is_refused_before_anything_runs():
    fake = MemoryTarget(ENV, capabilities=frozenset())
    with pytest.raises(TargetError, match="cannot stall a replica"):
        region(fake, stall_replica=True)
    assert fake.calls == []


# -- the step model (pcdb.steps): every step named and recorded; decisions between steps --------

class Watched(Steps):
    """A runner that knows whether a step is running: a decision asked inside one would be a
    person's wait eating a task's timeout."""

    def __init__(self):
        self.inside = False

        def run(name, action, retry):
            self.inside = True
            try:
                return action()
            finally:
                self.inside = False
        super().__init__(run)


def between_steps(steps: Watched, then=None):
    def ask(*args):
        assert not steps.inside, "a decision asked inside a step"
        if then:
            then(*args)
    return ask


def test_a_step_beside_another_runs_at_the_same_time_is_recorded_and_hands_back_its_error():
    """Steps.beside: the restore test reads the source while the copy is made. Each waits for the
    other (a barrier), so this returns only when the two really ran at the same time."""
    import threading

    steps, both = Steps(), threading.Barrier(2, timeout=30)
    read = steps.beside("read the source", lambda: both.wait() is not None and "fingerprints")
    assert steps("make the copy", lambda: both.wait() is not None and "copy") == "copy"
    assert read.result() == "fingerprints"
    assert sorted(steps.names) == ["make the copy", "read the source"]

    def broken():
        raise TargetError("the source went away")
    failed = steps.beside("read the source again", broken)
    with pytest.raises(TargetError, match="went away"):
        failed.result()
    assert steps.records[-1].name == "read the source again"
    assert steps.records[-1].outcome == "failed: the source went away"


def test_the_zone_drill_is_named_steps_with_its_decision_between_them():
    fake = MemoryTarget(ENV)
    steps = Watched()
    decided = []
    result = drills.zone_drill(RoleView(fake, drills.PORT), ENV, "pw", "forced", plane=MemoryPlane(fake),
                               decide=between_steps(steps, lambda facts: decided.append((facts, list(steps.names)))),
                               step=steps)
    assert steps.names == ["start the probe writer", "forced failover of the HA pair", "measure the probe writer",
                           "check the topology is whole", "drop the probe table"]
    assert decided[0][1] == ["start the probe writer"] and decided[0][0]["mode"] == "forced"
    assert all(r.outcome == "done" for r in steps.records) and result.rpo_rows_lost == 0


def test_a_decision_against_the_zone_failover_fails_nothing_over_and_still_drops_the_probe():
    fake = MemoryTarget(ENV)
    steps = Steps()

    def against(facts):
        raise PcdbError("not now")
    with pytest.raises(PcdbError, match="not now"):
        drills.zone_drill(fake, ENV, "pw", plane=MemoryPlane(fake), decide=against, step=steps)
    assert fake.calls == [] and steps.names == ["start the probe writer", "drop the probe table"]
    assert "pcdb_drill_probe" not in fake.nodes["node1"].tables


def test_the_corruption_drill_restores_the_known_rows_through_the_data_plane():
    fake = MemoryTarget(ENV)
    steps = Steps()
    result = drills.corruption_drill(RoleView(fake, drills.PORT), ENV, "pw", rows=300, plane=MemoryPlane(fake),
                                     step=steps)
    server = drills.restore_server(ENV)
    assert steps.names == ["write 300 known rows", "corrupt them: a third deleted, a third overwritten",
                           f"restore to just before the corruption on {server}", "compare the known rows",
                           f"delete the throw-away server {server}", "drop the known rows",
                           "check the topology is whole"]
    assert result.rpo_rows_lost == 0 and result.rto_seconds is not None and result.met
    assert fake.servers == {} and "pcdb_drill_corruption" not in fake.nodes["node1"].tables


def test_a_corruption_drill_whose_restore_fails_still_deletes_the_server_and_drops_the_rows():
    fake = MemoryTarget(ENV)
    steps = Steps()

    def broken(target_time, name):
        fake.servers[name] = None
        raise TargetError("restore failed: the platform said no")
    fake.restore_point_in_time = broken
    with pytest.raises(TargetError, match="the platform said no"):
        drills.corruption_drill(fake, ENV, "pw", rows=30, plane=MemoryPlane(fake), step=steps)
    assert [r.outcome for r in steps.records][2].startswith("failed: restore failed")
    assert steps.names[3:] == [f"delete the throw-away server {drills.restore_server(ENV)}", "drop the known rows",
                               "check the topology is whole"]
    assert fake.servers == {} and "pcdb_drill_corruption" not in fake.nodes["node1"].tables


def test_cleanup_finishes_what_a_killed_region_drill_left_and_asks_before_replacing_the_promoted_replica():
    fake = MemoryTarget(ENV)
    for resource in ("server", "replica"):
        fake._ensure(resource)
    fake.nodes["node1"].tables.add("pcdb_drill_probe")          # killed mid-drill: the probe's table,
    fake.restore_point_in_time(LOGICAL_EPOCH, drills.restore_server(ENV))     # a throw-away server,
    fake.stop_primary_region()                                 # the region stopped,
    fake.promote_replica(drill="region")                       # and the replica promoted
    fake.calls.clear()
    steps, confirm = Watched(), Confirmations()
    done = drills.cleanup(RoleView(fake, drills.PORT), ENV, "pw", between_steps(steps, confirm),
                          plane=MemoryPlane(fake), step=steps)
    assert steps.names == ["clean up after earlier drills", f"rebuild the replica {ENV.replica.name} an earlier drill "
                           "promoted", "check the HA pair and the replica, repair what differs"]
    assert confirm.asked == [(confirm.asked[0][0], ENV.dr.step("switch_application").owner)]
    assert done[:3] == [f"deleted throw-away server {drills.restore_server(ENV)}",
                        "the primary region was left stopped by an interrupted region drill: started",
                        "dropped leftover table pcdb_drill_probe"]
    assert fake.server_state().ha_state == "Healthy" and not fake.replica_diverged()
    again = Steps()
    assert drills.cleanup(fake, ENV, "pw", confirm, plane=MemoryPlane(fake), step=again) == []   # nothing left
    assert again.names == ["clean up after earlier drills", "check the HA pair and the replica, repair what differs"]
