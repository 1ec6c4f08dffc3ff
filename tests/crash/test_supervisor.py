"""A primary that crashes does not stay down: the supervisor `pcdb sandbox up` leaves running
promotes the synchronous standby once the primary has not answered for auto_failover_after,
the old primary is rewound into the new standby, and no acknowledged write is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pcdb.probe import ProbeWriter
from tests.conftest import new_target

pytestmark = pytest.mark.postgres


def wait_until(predicate, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def kill_postmaster(node) -> None:
    """SIGKILL the server process itself (a crash, not a shutdown)."""
    pid = int((node.data / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)


def test_a_crashed_primary_fails_over_by_itself_with_no_acknowledged_row_lost():
    target = new_target(sandbox="  auto_failover_after: 2s\n")
    up = subprocess.run([sys.executable, "-m", "cli", "sandbox", "up", "--env", str(target.env_path)],
                        capture_output=True, text=True, timeout=300, check=False)
    assert up.returncode == 0, up.stderr
    status = target.sandbox.status()
    assert status["supervisor"]["running"] and status["supervisor"]["failover_after_seconds"] == 2
    old = target.sandbox.primary().name
    probe = ProbeWriter(target.endpoint("application").conninfo(target.admin, target.admin_password()),
                        table="crash_probe").start()
    probe.wait_for_rows(50)

    kill_postmaster(target.sandbox.primary())
    wait_until(lambda: target.sandbox.status()["supervisor"]["last_failover"] is not None, "an automatic failover")
    probe.wait_for_rows(50)
    outcome = probe.stop()
    assert probe.missing() == []                                   # RPO 0: the standby was synchronous
    assert outcome.outage_seconds and outcome.outage_seconds >= 2  # detected after 2 s, not before
    status = target.sandbox.status()
    assert target.sandbox.primary().name != old and status["problems"] == []
    assert {n["name"]: n["sync_state"] for n in status["nodes"]}[old] == "sync"  # the old one rejoined
    assert "automatic failover" in status["supervisor"]["last_failover"]["detail"]

    down = subprocess.run([sys.executable, "-m", "cli", "sandbox", "down", "--env", str(target.env_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert "supervisor" in down.stdout and not target.sandbox.status()["supervisor"]["running"]
    target.sandbox.destroy()


def test_the_supervisor_leaves_a_primary_alone_while_pcdb_itself_changes_the_topology():
    from pcdb.sandbox.supervisor import Supervisor

    target = new_target(sandbox="  auto_failover_after: 1s\n")
    target.ensure_resource_group()
    target.ensure_server()
    watch = Supervisor(target.sandbox, after=1)
    assert watch.check(time.monotonic()) is None and watch.synchronous
    primary = target.sandbox.primary()

    def stop_and_look():                                           # a drill holding the sandbox's lock
        primary.stop("immediate")
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            assert watch.check(time.monotonic()) is None           # down, but pcdb is at work: no action
            time.sleep(0.1)
        primary.start(60)
    target.sandbox.run_locked(stop_and_look)
    assert target.sandbox.primary().name == primary.name
    target.sandbox.destroy()


def test_a_dying_primarys_last_answer_never_disables_the_failover():
    """Fault injection found it: the check connection accepted just before the kill, the replication
    query answered after the standby's link had ended, with no synchronous standby listed, and
    the supervisor refused for good. The decision rests on what the primary was configured to
    wait for, and on the standby's own view, looked at again on every loop."""
    from pcdb.sandbox.supervisor import Supervisor, decide

    view = {"running": True, "in_recovery": True, "receiver": None, "received": "0/3000060", "replayed": "0/3000060"}
    assert decide("node2", "node2", "node2", view)[0]                               # the dying answer: link gone
    assert not decide("", "node2", "node2", view)[0]                                 # async on purpose: refused
    assert not decide("node2", "", "node2", view)[0]                                 # its running settings said so
    assert not decide("node2", "node2", "node2", {"running": False})[0]
    assert "not in recovery" in decide("node2", "node2", "node2", {**view, "in_recovery": False})[1]

    target = new_target(sandbox="  auto_failover_after: 1s\n")
    target.ensure_resource_group()
    target.ensure_server()
    said = []
    watch = Supervisor(target.sandbox, after=1, log=said.append)
    assert watch.check(time.monotonic()) is None and watch.synchronous and watch.answered == "node2"
    watch.synchronous = False            # what the dying primary answered: no standby streaming any more
    old = target.sandbox.primary()
    kill_postmaster(old)
    deadline = time.monotonic() + 60
    done = None
    while done is None:
        assert time.monotonic() < deadline, said
        done = watch.check(time.monotonic())
        time.sleep(0.1)
    assert done.startswith("automatic failover:") and target.sandbox.primary().name != old.name
    decided = [e for e in target.sandbox.state.events if e["event"] == "auto-failover-decided"][-1]
    assert decided["inputs"]["configured_sync"] == "node2" and decided["inputs"]["streaming_at_last_answer"] is False
    assert decided["inputs"]["standby"]["in_recovery"] is True and decided["inputs"]["primary_unreachable_seconds"] >= 1
    assert target.sandbox.status()["problems"] == []
    target.sandbox.destroy()


def test_a_primary_that_cannot_be_rewound_is_copied_afresh_and_the_events_say_so():
    """No primary without its synchronous copy: when pg_rewind cannot rewind the old primary, it is
    copied afresh from a base backup, the events say which, and the message names the file that
    holds pg_rewind's own output."""
    from pcdb.sandbox.supervisor import Supervisor

    target = new_target(sandbox="  auto_failover_after: 1s\n")
    target.ensure_resource_group()
    target.ensure_server()
    watch = Supervisor(target.sandbox, after=1, log=lambda m: None)
    assert watch.check(time.monotonic()) is None
    old = target.sandbox.primary()
    kill_postmaster(old)
    wait_until(lambda: not old.is_running(), "the old primary gone")
    (old.data / "global" / "pg_control").unlink()              # nothing pg_rewind can read any more
    deadline = time.monotonic() + 90
    done = None
    while done is None:
        assert time.monotonic() < deadline
        done = watch.check(time.monotonic())
        time.sleep(0.1)
    assert "copied afresh (pg_rewind could not rewind it" in done and "pg_rewind.log" in done
    events = [e for e in target.sandbox.state.events if e["event"] in ("rejoin-recloned", "rejoined")]
    assert events[-2]["event"] == "rejoin-recloned" and events[-1]["how"].startswith("copied afresh")
    log = old.home / "pg_rewind.log"
    assert log.exists() and "pg_control" in log.read_text()
    status = target.sandbox.status()
    assert status["problems"] == [] and {n["name"]: n["sync_state"] for n in status["nodes"]}[old.name] == "sync"
    target.sandbox.destroy()


def test_a_primary_left_without_its_synchronous_copy_is_healed_by_the_supervisor(monkeypatch):
    from pcdb.sandbox import supervisor
    from pcdb.sandbox.supervisor import Supervisor

    monkeypatch.setattr(supervisor, "HEAL_GRACE", 0.5)
    target = new_target(sandbox="  auto_failover_after: 1s\n")
    target.ensure_resource_group()
    target.ensure_server()
    sandbox = target.sandbox
    primary, standby = sandbox.primary(), sandbox.standby()
    standby.stop("immediate")                                   # a rejoin that failed: no copy, and
    primary.write_node_conf(sandbox._node_conf(primary, "primary"))   # the primary writes alone
    primary.reload()
    said = []
    watch = Supervisor(sandbox, after=1, log=said.append)
    assert any("not synchronous" in p for p in sandbox.status()["problems"])
    deadline = time.monotonic() + 90
    while not any(m.startswith("standby ") for m in said):
        assert time.monotonic() < deadline, said
        watch.check(time.monotonic())
        time.sleep(0.1)
    assert sandbox.status()["problems"] == []
    sandbox.destroy()
