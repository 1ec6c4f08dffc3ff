"""The crash matrix: pcdb is killed (SIGKILL, as a power cut would) at every step of a failover,
a rejoin, a node creation and a restore. After each kill, `pcdb sandbox up` and the interrupted
runbook must converge: one primary, a synchronous standby, no leftovers, and not one
acknowledged row lost under an independent writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psycopg
import pytest

from pcdb import clock
from pcdb.probe import ProbeWriter
from tests.conftest import installed_target, new_target

pytestmark = pytest.mark.postgres

FAILOVER_POINTS = ["failover:intent-saved", "failover:old-stopped", "failover:promoted", "failover:roles-saved",
                   "rejoin:rewinding", "rejoin:rewound", "rejoin:streaming"]


def killed_at(point: str, code: str, spec) -> None:
    """Run ``code`` (with ``sandbox`` bound) in a pcdb process that dies at ``point``."""
    script = ("from pcdb.config import load_environment\nfrom pcdb.sandbox import Sandbox\n"
              f"sandbox = Sandbox(load_environment({str(spec)!r}))\n{code}\n")
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PCDB_CRASH_AT": point},
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == -signal.SIGKILL, f"did not die at {point}: {result.returncode} {result.stderr[-1500:]}"


def pcdb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600, check=False)
    assert not check or result.returncode == 0, f"pcdb {' '.join(args)}: {result.stderr[-2000:]}"
    return result


def assert_whole(target) -> None:
    status = target.sandbox.status()
    assert status["problems"] == [] and status["intent"] is None, status["problems"]
    ha = {n["name"]: n for n in status["nodes"] if n["name"] in ("node1", "node2")}
    assert sorted(n["role"] for n in ha.values()) == ["primary", "standby"]
    assert [n["sync_state"] for n in ha.values() if n["role"] == "standby"] == ["sync"]
    replica = [n for n in status["nodes"] if n["name"] == "replica"][0]
    assert replica["running"] and replica["sync_state"] == "async"


@pytest.fixture(scope="module")
def sandbox():
    """The matrix's own sandbox: every case leaves it whole for the next."""
    target = installed_target()
    yield target
    target.sandbox.destroy()


@pytest.mark.parametrize("mode", ["planned", "forced"])
@pytest.mark.parametrize("point", FAILOVER_POINTS)
def test_a_failover_killed_at_any_step_converges_with_no_acknowledged_row_lost(sandbox, point, mode):
    probe = ProbeWriter(sandbox.endpoint("application").conninfo(sandbox.admin, sandbox.admin_password()),
                        table="crash_probe").start()
    probe.wait_for_rows(20)
    before = sandbox.sandbox.state.nodes
    primary_before = next(n for n, i in before.items() if i.role == "primary" and n != "replica")
    killed_at(point, f"sandbox.failover({mode!r})", sandbox.env_path)
    said = pcdb("sandbox", "status", "--env", str(sandbox.env_path), check=False)
    assert said.returncode == 2 and "an interrupted failover" in " ".join(said.stderr.split())
    if point == "rejoin:streaming":                               # the pair runs without sync: said so
        assert "the HA pair is not synchronous" in " ".join(said.stderr.split())

    pcdb("sandbox", "up", "--env", str(sandbox.env_path))         # finishes or undoes the failover
    assert_whole(sandbox)
    probe.wait_for_rows(20)
    probe.stop()
    assert probe.missing() == [], f"acknowledged rows lost after a kill at {point}"
    primary_after = sandbox.sandbox.primary().name
    promoted = point not in ("failover:intent-saved", "failover:old-stopped")
    assert (primary_after != primary_before) == promoted          # rolled forward only once promoted
    with psycopg.connect(sandbox.endpoint("primary").conninfo(sandbox.admin, sandbox.admin_password())) as conn:
        conn.execute("DROP TABLE crash_probe")


def test_after_every_interrupted_failover_the_install_still_passes_every_check(sandbox, prefect_harness):
    from flows.install import install

    state = install(spec_path=str(sandbox.env_path), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["checks"] == {"passed": 16, "total": 16}
    assert_whole(sandbox)


def test_two_primaries_are_said_loudly_and_up_refuses_to_start_or_discard_either():
    target = new_target()
    target.ensure_resource_group()
    target.sandbox.ensure_ha()
    standby = target.sandbox.standby()
    standby.promote(60)                                           # someone promoted it by hand
    status = pcdb("sandbox", "status", "--env", str(target.env_path), check=False)
    assert status.returncode == 2
    assert "SPLIT BRAIN: node1 and node2 both accept writes" in " ".join(status.stderr.split())
    standby.stop("fast")
    up = pcdb("sandbox", "up", "--env", str(target.env_path), check=False)
    assert up.returncode == 1 and "SPLIT BRAIN: node2 is recorded as the standby of node1" in " ".join(up.stderr.split())
    assert not standby.is_running()                               # not started as a second primary
    target.sandbox.destroy()


@pytest.mark.parametrize("point", ["create:initdb-done", "create:configured", "clone:copied"])
def test_a_kill_while_a_node_is_made_leaves_nothing_that_starts_with_default_settings(point):
    target = new_target()
    killed_at(point, "sandbox.up()", target.env_path)
    for folder in (target.sandbox.root / "nodes").iterdir():     # what exists as a node is complete
        if (folder / "data" / "PG_VERSION").exists() and not folder.name.endswith(".building"):
            assert (folder / "data" / "node.conf").exists(), folder
    pcdb("sandbox", "up", "--env", str(target.env_path))
    assert_whole(target)
    for node in target.sandbox.nodes():
        assert f"port = '{node.port}'" in (node.data / "node.conf").read_text()
    target.sandbox.destroy()


# Every place the first install of a new sandbox can be killed while it makes something, in the
# order it reaches them: each node's .building folder, just after initdb, the base-backup copies,
# and just before and after the database is created.
FIRST_INSTALL_POINTS = ["create:building:node1", "create:initdb-done:node1", "create:configured:node1",
                        "create:building:node2", "clone:copied:node2", "install:database-creating",
                        "install:database-created", "create:building:replica", "clone:copied:replica"]


def test_a_first_install_killed_at_every_point_is_finished_by_the_next_install_alone(prefect_harness):
    """`pcdb install` on a new sandbox is SIGKILLed at each point in turn: every next install,
    and nothing else (no `pcdb sandbox up`), gets past what the kill left and on to the next
    point, and the last one finishes with every check passed. A kill at node2.building once made
    every re-run fail with 'database "product_change_db" does not exist'."""
    from prefect.settings import PREFECT_API_URL

    target = new_target()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    for point in FIRST_INSTALL_POINTS:
        run = subprocess.run([sys.executable, "-m", "cli", "install", "--env", str(target.env_path)],
                             env={**env, "PCDB_CRASH_AT": point}, capture_output=True, text=True, timeout=600,
                             check=False)
        assert run.returncode == -signal.SIGKILL, f"the install after the last kill did not reach {point}: " \
                                                  f"{run.returncode} {run.stderr[-3000:]}"
    done = subprocess.run([sys.executable, "-m", "cli", "install", "--env", str(target.env_path), "--json"],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["checks"]["passed"] == json.loads(done.stdout)["checks"]["total"]
    assert_whole(target)
    target.sandbox.destroy()


@pytest.mark.parametrize("point", ["restore:registered", "restore:copied", "restore:started"])
def test_a_restore_killed_at_any_step_is_removed_by_the_next_restore_test(sandbox, point, prefect_harness):
    from flows.backup_verification import verify_backups
    from pcdb.targets.base import throwaway_name

    name = throwaway_name(sandbox.env, "restore-test")
    killed_at(point, f"from pcdb import clock\nsandbox.restore(clock.now(), {name!r})",
              sandbox.env_path)
    listed = pcdb("sandbox", "restores", "--env", str(sandbox.env_path), "--json")
    assert [r["name"] for r in __import__("json").loads(listed.stdout)] == [name]   # left behind, and shown

    state = verify_backups(spec_path=str(sandbox.env_path), restore=True, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["restore_test"]["passed"]
    assert sandbox.sandbox.status()["restores"] == []
    assert not (sandbox.sandbox.root / "restores" / name).exists()


def test_a_leftover_restored_server_can_be_deleted_by_hand(sandbox):

    sandbox.sandbox.restore(clock.now(), "by-hand")
    out = pcdb("sandbox", "restores", "--env", str(sandbox.env_path)).stdout
    assert "by-hand: port" in out and "running" in out
    assert "by-hand: deleted" in pcdb("sandbox", "restores", "--env", str(sandbox.env_path), "--delete", "by-hand").stdout
    assert sandbox.sandbox.status()["restores"] == []


@pytest.mark.parametrize("point", ["failback:old-stopped", "failback:promoted"])
def test_a_failback_killed_halfway_is_finished_or_undone_and_loses_no_acknowledged_row(sandbox, point):
    """The failback's switch writes its intent first: killed before node1 was promoted, the next
    run keeps the service on the promoted replica (and a new failback finishes the job); killed
    after, it finishes the switch. Not one row acknowledged through the application's name lost."""
    sb, password = sandbox.sandbox, sandbox.admin_password()

    def application() -> str:
        return sandbox.endpoint("application").conninfo(sandbox.admin, password)
    sandbox.stop_primary_region()                                 # a real region failover, then the region back
    sb.promote_replica()
    sb.switch_application("replica")
    sandbox.start_primary_region()
    sb.reverse_replication()
    probe = ProbeWriter(application(), table="crash_failback_probe", resolve=application).start()
    probe.wait_for_rows(20)
    killed_at(point, "sandbox.switch_back()", sandbox.env_path)
    pcdb("sandbox", "up", "--env", str(sandbox.env_path))         # finishes or undoes the switch
    promoted = point == "failback:promoted"
    assert sb.state.application == ("primary" if promoted else "replica") and sb.state.intent is None
    if not promoted:
        probe.wait_for_rows(20, timeout=60)                       # still served by the promoted replica
        sb.switch_back()
    assert_whole(sandbox)
    probe.wait_for_rows(20, timeout=60)
    probe.stop()
    assert probe.missing() == [], f"acknowledged rows lost after a kill at {point}"
    with psycopg.connect(application()) as conn:
        conn.execute("DROP TABLE crash_failback_probe")
