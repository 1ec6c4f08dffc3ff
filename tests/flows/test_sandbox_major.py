"""The sandbox runs the spec's major (#27): production's 14 here, where Debian has only 15, from
the pinned server build that ./dev setup installs (pcdb/sandbox/builds.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb.context import RunbookContext
from pcdb.install import run_directly
from pcdb.sandbox import builds
from tests.conftest import new_target

pytestmark = pytest.mark.postgres
runner = CliRunner()


def test_a_sandbox_on_productions_major_runs_it_everywhere_fails_over_restores_and_verifies(prefect_harness):
    target = new_target(extra='server:\n  version: "14"\n')
    spec = str(target.env_path)
    env = {"PCDB_SANDBOX_ROOT": str(target.sandbox.root)}
    said = runner.invoke(app, ["sandbox", "postgresql", "--env", spec, "--install", "--json"], env=env)
    assert said.exit_code == 0, said.output
    which = json.loads(said.stdout)                                     # ./dev setup installed it: unchanged
    assert which["install"]["changed"] is False and which["install"]["version"] == builds.PINNED["14"].version
    assert which["builds"]["installed"] == {"14": which["binaries"]} and which["builds"]["installable"] == ["14"]
    own = json.loads(runner.invoke(app, ["sandbox", "postgresql", "--env", spec, "--install", "--major", "15",
                                         "--json"], env=env).stdout)["install"]
    assert own["note"] == "the machine's own PostgreSQL" and own["changed"] is False
    newer = runner.invoke(app, ["sandbox", "postgresql", "--env", spec, "--install", "--major", "17"], env=env)
    assert newer.exit_code == 1 and "PostgreSQL 17 cannot be had here" in newer.stderr

    assert runner.invoke(app, ["sandbox", "up", "--env", spec], env=env).exit_code == 0

    status = json.loads(runner.invoke(app, ["sandbox", "status", "--env", spec, "--json"], env=env).stdout)
    assert [n["version"].split(".")[0] for n in status["nodes"]] == ["14"] * 3   # what each server says
    pg = status["postgresql"]
    assert pg["spec_version"] == "14" and pg["matches_spec"] and pg["warning"] is None
    assert pg["build"]["package"] == builds.PACKAGE and pg["build"]["integrity"] == builds.PINNED["14"].integrity

    # Phase 7 on 14: planned failovers both ways (each old primary copied afresh: no pg_rewind
    # of another major here), the point-in-time restore, the TLS 1.3-only and privilege checks.
    ctx = RunbookContext(target.env, target)
    checks = run_directly(ctx, phases=[1, 2, 3, 4, 5, 6, 7])[7]
    failed = [c for c in checks if not c.passed]
    assert checks and not failed, failed
    assert any(c.name.startswith("HA failover") for c in checks)
    rejoins = [e["how"] for e in target.sandbox.state.events if e["event"] == "rejoined"]
    assert rejoins and all(h.startswith("copied afresh (no pg_rewind for PostgreSQL 14.") for h in rejoins)
    assert target.sandbox.status()["problems"] == []                  # synchronous standby, replica streaming

    target.take_backup()
    result = runner.invoke(app, ["verify-backups", "--env", spec, "--json"], env=env)
    assert result.exit_code == 0, result.output
    text = open(json.loads(result.stdout[result.stdout.index("{"):])["report"]).read()
    assert "the restore test replays it" in text                        # pg_verifybackup 15 skips 14's WAL, said

    # The restore test's machinery on 14: the upgrade's rehearsal restores the backup, compares it
    # with the source and upgrades the copy; with --rehearse nothing of the environment changes.
    rehearsed = runner.invoke(app, ["upgrade", "--env", spec, "--to", "15", "--rehearse", "--json"], env=env)
    assert rehearsed.exit_code == 0, rehearsed.output
    result = json.loads(rehearsed.stdout[rehearsed.stdout.index("{"):])
    assert result["rehearsal"]["passed"] and result["rehearsal"]["restore"]["mismatches"] == []
    assert result["rehearsal"]["restore"]["amcheck_ok"] and "upgrade" not in result
    status = target.sandbox.status()
    assert status["restores"] == [] and {n["version"].split(".")[0] for n in status["nodes"]} == {"14"}
    target.sandbox.destroy()
