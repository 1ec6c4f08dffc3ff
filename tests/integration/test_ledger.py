"""The run ledger on a real server: append-only, hash-chained, and `pcdb history verify` names
the first row that was edited or deleted; records that cannot be written wait in a spool and
are chained in order by the next run."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from typer.testing import CliRunner

from pcdb import ledger
from pcdb.cli import app
from pcdb.context import RunbookContext
from pcdb.schema import LEDGER_SCHEMA
from tests.conftest import new_target

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    """A primary with the service database: where the ledger lives."""
    target = new_target()
    target.ensure_resource_group()
    target.sandbox.ensure_ha()
    target.ensure_database()
    yield target, RunbookContext(target.env, target)
    target.sandbox.destroy()


def run(n: int, flow: str = "dr-drill") -> ledger.RunRecord:
    now = datetime.now(timezone.utc)
    return ledger.RunRecord(run_id=f"run-{n}", flow=flow, environment="test", state="Completed",
                            triggered_by="schedule", deployment=f"{flow}-test", parameters={"scenario": "zone"},
                            started_at=now - timedelta(seconds=5), ended_at=now,
                            figures={"rto_seconds": 0.124 + n, "rpo_rows_lost": 0})


def cli(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_tampered_row_is_named_by_history_verify(server, tmp_path):
    target, ctx = server
    spool = ledger.Spool(tmp_path / "spool.jsonl")
    for n in (1, 2, 3):
        assert ledger.record(ctx.connect, LEDGER_SCHEMA, run(n), spool)["ledger"] == "recorded"
    code, out, _ = cli("history", "verify", "--env", str(target.env_path), "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "rows": 3, "first_broken": None}

    with ctx.connect() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("UPDATE pcdb.run_ledger SET state = 'Completed' WHERE seq = 2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("TRUNCATE pcdb.run_ledger")
        # Someone who owns the table turns the guard off and "improves" a drill's RTO.
        conn.execute("ALTER TABLE pcdb.run_ledger DISABLE TRIGGER run_ledger_no_change")
        conn.execute("UPDATE pcdb.run_ledger SET figures = figures || '{\"rto_seconds\": 0.1}' WHERE seq = 2")
        conn.execute("ALTER TABLE pcdb.run_ledger ENABLE TRIGGER run_ledger_no_change")
    code, _, err = cli("history", "verify", "--env", str(target.env_path))
    assert code == 1
    assert "broken at row 2 (run run-2, dr-drill): its content does not match its hash: the row was edited" in \
        " ".join(err.split())

    code, out, _ = cli("history", "--env", str(target.env_path), "--flow", "dr-drill", "--json")
    assert code == 0 and [r["seq"] for r in json.loads(out)["runs"]] == [3, 2, 1]  # still listed, newest first


def test_a_deleted_row_breaks_the_chain_at_the_next_one(server):
    _, ctx = server
    with ctx.connect() as conn:
        for n in (1, 2, 3):
            ledger.append(conn, "pcdb_deleted", run(n))
        conn.execute("ALTER TABLE pcdb_deleted.run_ledger DISABLE TRIGGER run_ledger_no_change")
        conn.execute("DELETE FROM pcdb_deleted.run_ledger WHERE seq = 2")
        result = ledger.verify(conn, "pcdb_deleted")
    assert not result.ok and result.first_broken["seq"] == 3
    assert "row 2 is missing" in result.first_broken["reason"]


def test_records_wait_in_the_spool_while_the_server_is_unreachable_and_are_chained_in_order(server, tmp_path):
    _, ctx = server
    spool = ledger.Spool(tmp_path / "spool.jsonl")

    @contextmanager
    def unreachable():
        raise psycopg.OperationalError("connection refused")
        yield  # pragma: no cover

    first = ledger.record(unreachable, "pcdb_spooled", run(1, "backup-verification"), spool)
    assert first["ledger"] == "spooled" and "connection refused" in first["why"]
    ledger.record(unreachable, "pcdb_spooled", run(2, "backup-verification"), spool)
    assert [r.run_id for r in spool.pending()] == ["run-1", "run-2"]
    assert oct(spool.path.stat().st_mode & 0o777) == "0o600"

    written = ledger.record(ctx.connect, "pcdb_spooled", run(3, "install"), spool)
    assert written == {"ledger": "recorded", "seq": 3}
    assert spool.pending() == [] and not spool.path.exists()
    with ctx.connect() as conn:
        assert ledger.verify(conn, "pcdb_spooled").ok
        rows = ledger.rows(conn, "pcdb_spooled", datetime.now(timezone.utc) - timedelta(days=1))
    assert [(r["seq"], r["run_id"]) for r in rows] == [(3, "run-3"), (2, "run-2"), (1, "run-1")]
    assert rows[2]["figures"] == {"rto_seconds": 1.124, "rpo_rows_lost": 0}


def test_parameters_that_look_like_secrets_never_reach_the_ledger():
    assert ledger.clean_parameters({"env": "prod", "admin_password": "x", "api_token": "y", "phases": [1]}) == \
        {"env": "prod", "phases": [1]}
