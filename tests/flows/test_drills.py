"""DR drills on real sandboxes: measured RTO/RPO, topology restored, leftovers cleaned, one at a time."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pcdb import drills
from pcdb.cli import app
from pcdb.context import RunbookContext
from pcdb.install import run_directly
from tests.conftest import new_target

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def drilled(prefect_harness):
    """One installed sandbox the drills run against, one after the other."""
    target = new_target()
    ctx = RunbookContext(target.env, target)
    run_directly(ctx, phases=[1, 2, 3, 4, 5, 6])
    yield target, ctx
    target.sandbox.destroy()


def drill(target, scenario, *args):
    result = CliRunner().invoke(app, ["drill", scenario, "--env", str(target.env_path), "--yes", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def no_leftovers(target, ctx):
    with ctx.connect() as conn:
        tables = [r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'pcdb_drill%%'")]
    return tables == [] and target.sandbox.status()["restores"] == []


@pytest.mark.parametrize("mode", ["forced", "planned"])
def test_zone_drill_loses_no_acknowledged_row_and_restores_the_topology(drilled, mode):
    target, ctx = drilled
    result = drill(target, "zone", "--mode", mode)
    assert result["scenario"] == "zone" and result["mode"] == mode
    assert result["rpo_rows_lost"] == 0 and result["met"] is True
    assert 0 <= result["rto_seconds"] <= result["target_rto_seconds"] == 120
    assert result["topology_restored"] is True
    assert target.server_state().ha_state == "Healthy"
    assert no_leftovers(target, ctx)
    assert "## Timeline" in open(result["report"]).read()


def test_corruption_drill_brings_the_exact_data_back(drilled):
    target, ctx = drilled
    result = drill(target, "corruption")
    assert result["met"] is True and result["rpo_rows_lost"] == 0
    assert result["rto_seconds"] > 0 and result["target_rto_seconds"] == 4 * 3600
    assert no_leftovers(target, ctx)


def test_region_drill_counts_no_loss_when_the_replica_keeps_up(drilled, tmp_path):
    """...and asks the right teams however the spec orders the steps (picked by role, not position)."""
    target, ctx = drilled
    reordered = tmp_path / "reordered.yaml"
    steps = list(reversed(ctx.env.dr.region_failover_steps))
    reordered.write_text(f"extends: {target.env_path}\ndr:\n  region_failover_steps:\n" + "".join(
        f"    - {{step: {s.step}, owner: {s.owner}, role: {s.role}}}\n" for s in steps))
    result = CliRunner().invoke(app, ["drill", "region", "--env", str(reordered), "--yes", "--json"])
    assert result.exit_code == 0, result.output
    result = json.loads(result.stdout[result.stdout.index("{"):])
    report = open(result["report"]).read()
    assert "confirmed: update the application connection strings (dev team)" in report
    assert "confirmed: update the DNS records (network team)" in report
    assert "check the service (ops)" not in report and "(DBA/ops)" not in report
    assert result["rpo_rows_lost"] == 0 and result["met"] is True
    assert result["topology_restored"] is True
    state = {n.name: n for n in target.server_state().nodes}
    assert state["replica"].role == "replica" and state["replica"].sync_state == "async"
    assert no_leftovers(target, ctx)


def test_region_drill_with_a_stalled_replica_reports_the_loss_as_a_breach(prefect_harness):
    target = new_target("dr:\n  region_failure:\n    rpo: 0s\n")  # any loss breaches
    ctx = RunbookContext(target.env, target)
    run_directly(ctx, phases=[1, 2, 3])
    result = drill(target, "region", "--stall-replica")
    assert result["rpo_rows_lost"] > 0 and result["met"] is False
    assert result["topology_restored"] is True
    target.sandbox.destroy()


def test_an_interrupted_drill_leaves_nothing_after_the_next_run(drilled):
    target, ctx = drilled
    with ctx.connect() as conn:   # what a drill killed halfway leaves behind
        conn.execute("CREATE TABLE pcdb_drill_probe (id bigint PRIMARY KEY)")
    target.take_backup()
    target.restore_point_in_time(target.list_backups()[-1].finished_at, drills.restore_server(target.env))
    target.sandbox.promote_replica()
    result = drill(target, "zone")
    assert result["met"] is True
    assert no_leftovers(target, ctx)
    assert {n.name: n.role for n in target.server_state().nodes}["replica"] == "replica"


def test_two_drills_at_once_on_one_environment_are_refused_naming_the_holder(drilled):
    import os

    from flows.dr_drill import dr_drill
    from flows.exclusion import mutating_slot

    target, _ = drilled
    with mutating_slot(target.env.name, "region drill"):   # another drill holds the slot
        state = dr_drill(scenario="zone", spec_path=str(target.env_path), yes=True, return_state=True)
    assert state.is_failed() and "another drill or mutating runbook holds test: region drill run" in state.message
    assert f"(pid {os.getpid()} on" in state.message and "pcdb unlock --env test" in state.message
