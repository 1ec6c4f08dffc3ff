"""Nightly backup verification on real sandboxes: a good backup is proved by a restore; a damaged
backup or a WAL gap fails the run, and the throw-away server is deleted either way."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from cli.main import app
from flows.backup_verification import WEEKDAYS
from pcdb import backups, clock
from pcdb.context import RunbookContext
from pcdb.install import run_directly
from tests.conftest import new_target, wait_until

pytestmark = pytest.mark.postgres


def installed_with_data(rows: int = 2000, extra: str = ""):
    target = new_target(extra)
    ctx = RunbookContext(target.env, target)
    run_directly(ctx, phases=[1, 2, 3, 4, 5, 6])
    with ctx.connect() as conn:
        conn.execute("INSERT INTO product_change.pc_product_change_history (line_number, customer_id, "
                     "current_product_code, target_product_code, kos_request_data) "
                     "SELECT '010-' || g, 'C' || g, 'A', 'B', jsonb_build_object('n', g) "
                     "FROM generate_series(1, %s) g", (rows,))
        # Settled pages (hint bits set, all-visible): reading them later writes no full-page image
        # that WAL replay would use to overwrite a damaged page of the backup.
        conn.execute("VACUUM (FREEZE, ANALYZE) product_change.pc_product_change_history")
    target.take_backup()
    return target, ctx


class Recorded(logging.Handler):
    def __init__(self, level):
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def verify(target, restore=True):
    from flows.backup_verification import verify_backups

    return verify_backups(spec_path=str(target.env_path), restore=restore, return_state=True)


def test_a_good_backup_is_verified_by_a_real_restore_through_the_cli(prefect_harness):
    target, _ = installed_with_data()
    result = CliRunner().invoke(app, ["verify-backups", "--env", str(target.env_path), "--restore-test", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["latest_backup_age_hours"] < 1 and report["retention_days"] == 35
    assert report["geo_redundant"] is True and report["archive_ok"] is True
    test = report["restore_test"]
    assert test["passed"] and test["amcheck_ok"] and test["server_deleted"]
    assert test["tables_compared"] == 3 and test["mismatches"] == [] and test["seconds"] > 0
    assert test["jobs"] == 2 and test["hashed_as_text"] == []      # every row hashed by hash_record_extended
    budget = test["budget"]                                        # no capacity analysis yet: its own size
    assert budget["size_from"] == "the restored copy" and budget["size_bytes"] == test["bytes"]
    assert budget["window_seconds"] == 3.5 * 3600 and budget["fits"]   # 04:30-08:00 KST by default
    assert "MB/s" in Path(report["report"]).read_text()
    assert target.sandbox.status()["restores"] == []
    target.sandbox.destroy()


def test_a_restore_test_projected_past_its_window_at_the_databases_size_is_a_health_warning(prefect_harness,
                                                                                            tmp_path):
    """At the size the latest capacity analysis measured (256 GiB here), this run's seconds per GiB
    no longer fit a one-minute window: the ledger row and the report say so, and the next health
    run warns (restore-test-budget)."""
    from pcdb import health, ledger
    from pcdb.schema import LEDGER_SCHEMA

    target, ctx = installed_with_data(extra="backup:\n  verification:\n    window: {start: \"04:30\", "
                                            "end: \"04:31\", timezone: Asia/Seoul}\n")
    with ctx.connect() as conn:
        ledger.ensure_ledger(conn, LEDGER_SCHEMA)
        ledger.append(conn, LEDGER_SCHEMA, ledger.RunRecord(
            run_id="capacity-of-the-test", flow="capacity", environment=target.env.name, state="Completed",
            triggered_by="the test", figures={"used_bytes": 256 * 2**30}))
    state = verify(target)
    assert state.is_completed(), state.message
    test = state.result()["restore_test"]
    budget = test["budget"]
    assert budget["size_bytes"] == 256 * 2**30 and budget["size_from"].startswith("the capacity analysis of ")
    assert budget["window_seconds"] == 60 and not budget["fits"]
    assert budget["projected_seconds"] == pytest.approx(budget["seconds_per_gb"] * 256, rel=0.01)
    assert "does NOT fit" in Path(state.result()["report"]).read_text()
    with ctx.connect() as conn:
        row = ledger.rows(conn, LEDGER_SCHEMA, clock.now() - timedelta(hours=1), flow="backup-verification")[0]
    assert row["figures"]["restore_budget"]["fits"] is False and row["figures"]["restore_mb_per_second"] > 0

    report = health.run(RunbookContext(target.env, target), health.Store(tmp_path / "health.sqlite"),
                        lambda *_: {}, now=clock.now())
    warned = [a for a in report.alerts if a["rule"] == "restore-test-budget"]
    assert warned and warned[0]["severity"] == "warning"
    assert report.metrics["restore_budget_percent"] == pytest.approx(
        100 * budget["projected_seconds"] / 60, rel=0.01)

    # The next restore test on another day than the weekly one samples the rows (a weekday three
    # days off today's, so a midnight passing during the test changes nothing) ...
    today = WEEKDAYS.index(clock.now().astimezone(ZoneInfo("Asia/Seoul")).strftime("%A").lower())
    spec = target.env_path.read_text()
    target.env_path.write_text(spec.replace("    window:", f"    restore_test_weekday: {WEEKDAYS[(today + 3) % 7]}\n"
                                                          "    window:", 1))
    state = verify(target)
    assert state.is_completed(), state.message
    test = state.result()["restore_test"]
    assert test["passed"] and test["mode"] == "sample", test["mode_reason"]
    assert "past the window's 60 s" in test["mode_reason"] and str(test["sample_seed"]).startswith("20")
    assert 0 < test["rows_compared_percent"] <= 100
    text = Path(state.result()["report"]).read_text()
    assert "Mode: **sample**" in text and "every page is still amchecked" in text
    with ctx.connect() as conn:
        row = ledger.rows(conn, LEDGER_SCHEMA, clock.now() - timedelta(hours=1), flow="backup-verification")[0]
        assert row["figures"]["restore_mode"] == "sample"
        # ... and the weekly restore-test day compares everything, whatever the last projection said.
        sunday = datetime(2026, 12, 6, 1, tzinfo=timezone.utc)                   # 10:00 in Seoul, a Sunday
        checks = target.env.backup.verification

        def weekly_on(day: str):
            backup = target.env.backup.model_copy(update={"verification": checks.model_copy(
                update={"restore_test_weekday": day})})
            return target.env.model_copy(update={"backup": backup})
        on_its_day = backups.restore_mode(conn, weekly_on("sunday"), sunday)
        another_day = backups.restore_mode(conn, weekly_on("monday"), sunday)
    assert on_its_day.kind == "full" and "weekly restore-test day" in on_its_day.reason and on_its_day.sample is None
    assert another_day.kind == "sample" and another_day.sample == backups.Sample(20261206, checks.sample_percent)
    target.sandbox.destroy()


def test_a_corrupted_file_in_the_backup_fails_verification_and_the_server_is_still_deleted(prefect_harness):
    target, ctx = installed_with_data()
    with ctx.connect() as conn:
        relpath = conn.execute("SELECT pg_relation_filepath('product_change.pc_product_change_history')").fetchone()[0]
    backup = target.sandbox.list_backups()[-1]
    datafile = backup.path / relpath
    raw = bytearray(datafile.read_bytes())
    for page in range(len(raw) // 8192):                 # damage the tuple area of every page
        raw[page * 8192 + 7000:page * 8192 + 7016] = b"\xff" * 16
    datafile.write_bytes(bytes(raw))

    state = verify(target)
    assert state.is_failed()
    assert "backup integrity" in state.message
    assert "restore test" in state.message               # the corrupt page is found after the restore too
    assert target.sandbox.status()["restores"] == []      # the throw-away server is gone
    target.sandbox.destroy()


def test_a_changed_row_and_a_missing_row_in_the_restored_copy_fail_the_comparison(prefect_harness, monkeypatch):
    """The fast comparison (hash_record_extended, several connections a side) still sees one row
    changed, then one row gone, in the copy: a fault put there right after the restore, before the
    comparison, as a bad restore would leave it. And a row the application commits while the
    source is being read (minutes at production's size) is after the marked moment: in neither
    side, not a mismatch."""
    from pcdb.targets.sandbox import SandboxTarget

    target, ctx = installed_with_data()
    restore = SandboxTarget.restore_point_in_time
    fingerprint_piece = backups._fingerprint_piece
    fault, restoring = {}, threading.Event()

    def restore_then_damage(self, target_time, name):
        restoring.set()
        endpoint = restore(self, target_time, name)
        with ctx.connect_to(endpoint) as copy:
            copy.execute(fault["sql"])
        return endpoint

    def a_commit_while_the_source_is_read(conn, schema, piece, as_text):
        if fault.pop("drop_once", None):        # a session lost while the source is read: retried
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        if fault.pop("while_read", None):       # the first piece read is the source's
            # read while the copy is made: the restore has begun before this piece is done (read
            # one after the other, this waits in vain and the restore test fails)
            assert restoring.wait(timeout=60), "the source was read before the restore began, not beside it"
            with ctx.connect() as app:
                app.execute(f"INSERT INTO {table} (line_number, customer_id, current_product_code, "
                            "target_product_code, kos_request_data) VALUES ('010-NEW', 'C-NEW', 'A', 'B', '{}')")
        return fingerprint_piece(conn, schema, piece, as_text)

    monkeypatch.setattr(SandboxTarget, "restore_point_in_time", restore_then_damage)
    monkeypatch.setattr(backups, "_fingerprint_piece", a_commit_while_the_source_is_read)
    table = "product_change.pc_product_change_history"
    reports = {}
    for kind, sql in (("changed", f"UPDATE {table} SET target_product_code = 'C' WHERE line_number = '010-1234'"),
                      ("missing", f"DELETE FROM {table} WHERE line_number = '010-77'")):
        fault["sql"] = sql
        state = verify(target)
        assert state.is_failed() and "restore test" in state.message, (kind, state.message)
        reports[kind] = Path(state.message.rsplit("report ", 1)[1]).read_text()
        assert target.sandbox.status()["restores"] == []
    assert "pc_product_change_history: source 2000 rows, restored 2000 (content differs)" in reports["changed"]
    assert "pc_product_change_history: source 2000 rows, restored 1999" in reports["missing"]
    assert "(content differs)" not in reports["missing"]

    fault.update(sql="SELECT 1", while_read=True)
    restoring.clear()
    warned = Recorded(logging.WARNING)
    logging.getLogger("prefect.task_runs").addHandler(warned)
    try:
        state = verify(target)
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(warned)
    outcome = state.result()
    # In its thread the step has no timeout Prefect could not enforce: no warning of one in the run's log.
    assert not [r for r in warned.records if "Timeout of" in r.getMessage()], warned.records
    assert "while_read" not in fault                     # the row was committed during the source's read
    assert outcome["restore_test"]["passed"] and outcome["restore_test"]["mismatches"] == [], outcome["restore_test"]
    with ctx.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 2001

    fault.update(sql="SELECT 1", drop_once=True, while_read=True)   # dropped, then a commit during the retry
    restoring.clear()
    again = verify(target).result()["restore_test"]
    assert "drop_once" not in fault and "while_read" not in fault
    assert again["passed"] and again["mismatches"] == [], again    # the retry read the same marked moment
    with get_client(sync_client=True) as client:      # the step in its thread is a task run of this run
        def recorded():       # task runs reach the server as events, a moment after the flow returns
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            return [t for t in tasks if t.name == "fingerprint the source at that moment" and t.state.is_completed()]
        assert len(wait_until(recorded, "the source's fingerprint as a completed task run", timeout=60)) == 1

    target.sandbox.destroy()


def test_a_corrupted_index_page_in_the_backup_fails_the_restore_tests_amcheck(prefect_harness):
    """Without heapallindexed (the default) amcheck still reads every index page: a damaged one
    fails it (its checksum, then its structure), and the throw-away server is deleted."""
    target, ctx = installed_with_data()
    with ctx.connect() as conn:
        relpath = conn.execute("SELECT pg_relation_filepath(i.indexrelid) FROM pg_index i JOIN pg_class c "
                               "ON c.oid = i.indexrelid WHERE i.indrelid = "
                               "'product_change.pc_product_change_history'::regclass ORDER BY c.relname LIMIT 1"
                               ).fetchone()[0]
    datafile = target.sandbox.list_backups()[-1].path / relpath
    raw = bytearray(datafile.read_bytes())
    for page in range(1, len(raw) // 8192):               # every page but the metapage
        raw[page * 8192 + 4000:page * 8192 + 4016] = b"\xff" * 16
    datafile.write_bytes(bytes(raw))

    state = verify(target)
    assert state.is_failed() and "restore test" in state.message
    report = Path(state.message.rsplit("report ", 1)[1]).read_text()
    assert "amcheck: FAILED" in report
    assert target.sandbox.status()["restores"] == []
    target.sandbox.destroy()


def test_a_wal_gap_in_the_archive_is_detected(prefect_harness):
    target, ctx = installed_with_data()
    sealed = [target.sandbox.seal_wal() for _ in range(3)]
    (target.sandbox.archive_dirs[0] / sealed[1]).unlink()  # a segment lost from the archive
    state = verify(target, restore=False)
    assert state.is_failed() and "WAL archiving current" in state.message
    target.sandbox.destroy()
