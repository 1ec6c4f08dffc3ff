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

pytestmark = pytest.mark.integration


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
    up = subprocess.run([sys.executable, "-m", "pcdb.cli", "sandbox", "up", "--env", str(target.env_path)],
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

    down = subprocess.run([sys.executable, "-m", "pcdb.cli", "sandbox", "down", "--env", str(target.env_path)],
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
