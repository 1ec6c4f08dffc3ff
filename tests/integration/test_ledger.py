"""The run ledger on a real server: append-only, hash-chained, anchored outside the database, and
`pcdb history verify` names the first row that was edited, deleted, cut off, dropped or rewritten,
and a report whose archive was edited; records that cannot be written wait in a spool and are
chained in order by the next run."""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb import clock, ledger
from pcdb.anchors import AnchorConflict, FileAnchors
from pcdb.context import RunbookContext
from pcdb.schema import LEDGER_SCHEMA
from tests.conftest import new_target

pytestmark = pytest.mark.postgres


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
    now = clock.now()
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
        assert ledger.record(ctx.connect, LEDGER_SCHEMA, run(n), spool, target.ledger_anchors())["anchored"]
    code, out, _ = cli("history", "verify", "--env", str(target.env_path), "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["rows"] == 3 and result["first_broken"] is None
    assert result["anchors"]["anchored"] == 3 and result["anchors"]["unanchored"] == []

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
    assert written == {"ledger": "recorded", "seq": 3, "anchored": False}   # no evidence store given
    assert spool.pending() == [] and not spool.path.exists()
    with ctx.connect() as conn:
        assert ledger.verify(conn, "pcdb_spooled").ok
        rows = ledger.rows(conn, "pcdb_spooled", clock.now() - timedelta(days=1))
    assert [(r["seq"], r["run_id"]) for r in rows] == [(3, "run-3"), (2, "run-2"), (1, "run-1")]
    assert rows[2]["figures"] == {"rto_seconds": 1.124, "rpo_rows_lost": 0}


def test_parameters_that_look_like_secrets_never_reach_the_ledger():
    assert ledger.clean_parameters({"env": "prod", "admin_password": "x", "api_token": "y", "phases": [1]}) == \
        {"env": "prod", "phases": [1]}


def anchored(ctx, schema: str, tmp_path, n: int = 3, **figures) -> FileAnchors:
    anchors = FileAnchors(tmp_path / "anchors")
    spool = ledger.Spool(tmp_path / "spool.jsonl")
    for i in range(1, n + 1):
        record = run(i)
        if figures:
            record = dataclasses.replace(record, figures={**record.figures, **figures})
        assert ledger.record(ctx.connect, schema, record, spool, anchors)["anchored"]
    return anchors


def test_numbers_jsonb_normalises_verify_right_after_they_are_written(server, tmp_path):
    # -0.0 reads back as 0.0 and 1e16 as 10000000000000000: the hash is taken over what comes back.
    _, ctx = server
    anchors = anchored(ctx, "pcdb_numbers", tmp_path, spent_usd=-0.0, big=1e16, tiny=1e-7, nan=float("nan"))
    with ctx.connect() as conn:
        assert ledger.verify(conn, "pcdb_numbers", anchors).ok


def test_the_newest_row_deleted_with_the_guard_off_is_caught_by_its_anchor(server, tmp_path):
    _, ctx = server
    anchors = anchored(ctx, "pcdb_cut", tmp_path)
    with ctx.connect() as conn:
        conn.execute("ALTER TABLE pcdb_cut.run_ledger DISABLE TRIGGER run_ledger_no_change")
        conn.execute("DELETE FROM pcdb_cut.run_ledger WHERE seq = 3")
        conn.execute("ALTER TABLE pcdb_cut.run_ledger ENABLE TRIGGER run_ledger_no_change")
        assert ledger.verify(conn, "pcdb_cut").ok          # the chain alone cannot see it
        result = ledger.verify(conn, "pcdb_cut", anchors)
    assert not result.ok and result.first_broken["seq"] == 3 and "its tail was deleted" in result.first_broken["reason"]


def test_a_dropped_ledger_is_caught_by_its_anchors(server, tmp_path):
    _, ctx = server
    anchors = anchored(ctx, "pcdb_dropped", tmp_path)
    with ctx.connect() as conn:
        conn.execute("DROP TABLE pcdb_dropped.run_ledger")
        result = ledger.verify(conn, "pcdb_dropped", anchors)
    assert not result.ok and "the ledger was dropped" in result.first_broken["reason"]


def test_a_chain_rewritten_with_recomputed_hashes_is_caught_by_its_anchors(server, tmp_path):
    _, ctx = server
    anchors = anchored(ctx, "pcdb_rewritten", tmp_path)
    with ctx.connect() as conn:
        # The owner rewrites every row from row 2 on, "improving" the RTO, and chains it anew.
        conn.execute("DROP TABLE pcdb_rewritten.run_ledger")
        for n in (1, 2, 3):
            record = run(n)
            if n >= 2:
                record = dataclasses.replace(record, figures={**record.figures, "rto_seconds": 0.001})
            ledger.append(conn, "pcdb_rewritten", record)
        assert ledger.verify(conn, "pcdb_rewritten").ok    # a consistent chain
        result = ledger.verify(conn, "pcdb_rewritten", anchors)
    assert not result.ok and [p["seq"] for p in result.problems] == [1, 2, 3]   # new recorded_at: every hash
    assert "differs from its anchor" in result.first_broken["reason"]
    # Appending to the rewritten chain cannot anchor over the old anchors either.
    with pytest.raises(AnchorConflict, match="the chain was rewritten"):
        anchors.put(2, "0" * 64)


def test_an_edited_archived_report_is_caught(server, tmp_path):
    target, ctx = server
    report = tmp_path / "drill-zone-test.md"
    report.write_text("# DR drill: zone\n\nRTO 0.2 s (target 120 s): met\n")
    sha = ledger.file_sha256(report)
    archive = target.archive_report(report, sha)
    record = dataclasses.replace(run(1), report_path=str(report), report_sha256=sha, report_archive=archive)
    anchors = FileAnchors(tmp_path / "anchors")
    ledger.record(ctx.connect, "pcdb_reports", record, ledger.Spool(tmp_path / "spool.jsonl"), anchors)
    with ctx.connect() as conn:
        result = ledger.verify(conn, "pcdb_reports", anchors, target.read_archived_report)
        assert result.ok and result.reports == {"checked": 1, "unreadable": 0}
        archived = Path(archive)
        os.chmod(archived, 0o600)
        archived.write_text(archived.read_text().replace("met", "met with room to spare"))
        result = ledger.verify(conn, "pcdb_reports", anchors, target.read_archived_report)
    assert not result.ok and "the archive was changed" in result.first_broken["reason"]


def test_a_report_location_outside_the_archive_is_never_read(server, tmp_path):
    target, _ = server
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not evidence")
    assert target.read_archived_report(str(secret)) is None
