"""The major upgrade (#27) on a sandbox installed at production's 14: a copy restored from the
latest backup is upgraded to 15 with pg_upgrade and proved (the rehearsal); a failing precheck
stops the run before anything is made; the upgrade of the topology loses no acknowledged row,
measures its downtime, leaves it whole and PITR working on 15; killed halfway, it is finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb.context import RunbookContext
from pcdb.install import run_directly
from pcdb.probe import ProbeWriter
from tests.conftest import new_target

pytestmark = pytest.mark.postgres
runner = CliRunner()


def test_a_failing_precheck_stops_before_anything_then_the_rehearsal_and_the_upgrade_lose_nothing(
        prefect_harness):
    target = new_target(extra='server:\n  version: "14"\n')
    spec, env = str(target.env_path), {"PCDB_SANDBOX_ROOT": str(target.sandbox.root)}
    ctx = RunbookContext(target.env, target)
    run_directly(ctx, phases=[1, 2, 3, 4, 5, 6])

    # An extension that 15 does not have here (pltcl: Debian's postgresql-15 without its pltcl package).
    with ctx.connect() as conn:
        conn.execute("CREATE EXTENSION pltcl")
    events_before = len(target.sandbox.state.events)
    refused = runner.invoke(app, ["upgrade", "--env", spec, "--to", "15", "--rehearse"], env=env)
    assert refused.exit_code == 1
    said = " ".join(refused.stderr.split())
    assert "stops before anything changes: extensions exist for the target" in said and "pltcl" in said
    assert "Fix: pltcl: not in PostgreSQL 15's build here: DROP EXTENSION pltcl" in said
    assert not [e for e in target.sandbox.state.events[events_before:] if e["event"] in ("restored", "upgraded")]
    assert target.sandbox.status()["restores"] == []

    # The extension dropped: prechecks, rehearsal and the upgrade itself, under a writer.
    with ctx.connect() as conn:
        conn.execute("DROP EXTENSION pltcl")
    application = lambda: target.endpoint("application").conninfo(target.admin, ctx.admin_password())  # noqa: E731
    probe = ProbeWriter(application(), table="upgrade_probe", resolve=application).start()
    probe.wait_for_rows(20)
    upgraded = runner.invoke(app, ["upgrade", "--env", spec, "--to", "15", "--json"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    result = json.loads(upgraded.stdout[upgraded.stdout.index("{"):])
    assert [c["name"] for c in result["prechecks"] if not c["passed"]] == []
    assert {c["name"] for c in result["prechecks"]} == {
        "target version", "extensions exist for the target", "no reg* data types in user tables",
        "no prepared transactions", "no logical replication slots", "free storage",
        "parameters the target removed or renamed"}
    rehearsal = result["rehearsal"]                                       # on a restored copy, first
    assert rehearsal["passed"] and rehearsal["from_version"].startswith("14.") and rehearsal["to_version"].startswith("15.")
    assert {"check", "upgrade"} <= set(rehearsal["pg_upgrade_seconds"]) and rehearsal["analyze_seconds"] is not None
    checked = {c["name"]: c for c in rehearsal["checks"]}
    assert all(c["passed"] for c in checked.values()) and "PostgreSQL 15." in checked["connection and TLS"]["evidence"]
    assert rehearsal["restore"]["mismatches"] == [] and rehearsal["restore"]["server_deleted"]
    report = Path(result["report"]).read_text()
    assert "**passed**" in report and "## The upgrade" in report and "| free storage | PASS |" in report
    done = result["upgrade"]
    assert done["from"].startswith("14.") and done["to"].startswith("15.") and not done["resumed"]
    assert done["downtime_seconds"] > 0 and done["first_backup"] and "data.14" in done["rollback"]
    assert done["server_downtime_seconds"] > 0 and done["probe_rows_lost"] == 0     # the run's own writer: none lost
    assert any(u.startswith("pg_stat_statements 1.9 to 1.") for u in done["extensions_updated"])   # ALTER ... UPDATE
    status = target.sandbox.status()
    assert status["problems"] == [] and {n["version"].split(".")[0] for n in status["nodes"]} == {"15"}
    probe.wait_for_rows(20, timeout=60)
    probe.stop()
    assert probe.missing() == [], "acknowledged rows lost across the upgrade"
    checks = {c["name"]: c for c in result["checks"]}                   # Phase 7 by the run: failovers, PITR on 15
    assert [n for n, c in checks.items() if not c["passed"]] == []
    assert not checks["point-in-time restore test"]["evidence"].startswith("not repeated")
    assert "## Phase 7's checks on the upgraded servers" in report
    history = json.loads(runner.invoke(app, ["history", "--env", spec, "--json"], env=env).stdout)
    row = next(r for r in history["runs"] if r["flow"] == "upgrade" and r["figures"].get("upgraded"))
    assert row["figures"]["downtime_seconds"] == done["downtime_seconds"]
    made = [f["timeline"] for f in checks["HA failover test"]["details"]["failovers"]]
    assert row["figures"]["planned_failovers"]["timelines"] == made and len(made) == 2   # the health rule reads them
    with psycopg.connect(application()) as conn:
        conn.execute("DROP TABLE upgrade_probe")
    target.sandbox.destroy()


def test_the_upgrade_killed_after_its_primary_was_upgraded_is_finished_by_the_next_run_and_loses_no_row(
        prefect_harness):
    """The topology on 14, a writer on the application's path: `pcdb upgrade` is killed right after
    the primary's upgraded folder took the old one's place (the standby and the replica still 14);
    the next `pcdb upgrade --to 15` finishes it: every node runs 15, the topology is whole."""
    target = new_target(extra='server:\n  version: "14"\n')
    spec, env = str(target.env_path), {"PCDB_SANDBOX_ROOT": str(target.sandbox.root)}
    ctx = RunbookContext(target.env, target)
    run_directly(ctx, phases=[1, 2, 3, 4, 5, 6])                        # installed: the run checks it after
    application = lambda: target.endpoint("application").conninfo(target.admin, ctx.admin_password())  # noqa: E731
    probe = ProbeWriter(application(), table="upgrade_probe", resolve=application).start()
    probe.wait_for_rows(20)

    script = (f"from pcdb.config import load_environment\nfrom pcdb.sandbox import Sandbox\n"
              f"Sandbox(load_environment({spec!r})).upgrade('15')\n")
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PCDB_CRASH_AT": "upgrade:swapped"},
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1500:]
    assert target.sandbox.state.upgrade["step"] == "rebuilding"          # the intent says where it stopped

    finished = runner.invoke(app, ["upgrade", "--env", spec, "--to", "15", "--json"], env=env)
    assert finished.exit_code == 0, finished.output
    result = json.loads(finished.stdout[finished.stdout.index("{"):])
    assert result["finished_an_interrupted_upgrade"] and result["upgrade"]["resumed"]
    assert "took no write before the upgrade" in result["upgrade"]["probe_note"]     # it was down: said, not guessed
    assert [c["name"] for c in result["checks"] if not c["passed"]] == []
    assert result["upgrade"]["from"].startswith("14.") and result["upgrade"]["to"].startswith("15.")
    status = target.sandbox.status()
    assert status["problems"] == [] and {n["version"].split(".")[0] for n in status["nodes"]} == {"15"}
    assert "the spec's server.version is 14, but the sandbox runs PostgreSQL 15" in status["postgresql"]["warning"]
    probe.wait_for_rows(20, timeout=60)
    probe.stop()
    assert probe.missing() == [], "acknowledged rows lost across the interrupted upgrade"
    with psycopg.connect(application()) as conn:
        conn.execute("DROP TABLE upgrade_probe")
    target.sandbox.destroy()
