"""The capacity runbook on the shared sandbox: real SQL snapshots broken down by table, and
`pcdb capacity --json` through a real Prefect flow, with too little history and with 30 days."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb import capacity, clock, health, synthetic
from pcdb.context import RunbookContext

pytestmark = pytest.mark.postgres


def test_the_sql_snapshot_breaks_growth_down_by_table_with_partitions_summed(target, tmp_path):
    ctx = RunbookContext(target.env, target)
    store = capacity.Store(tmp_path / "capacity.sqlite")
    now = clock.now()
    with ctx.connect() as conn:
        conn.execute("DROP SCHEMA IF EXISTS cap_probe CASCADE; CREATE SCHEMA cap_probe; "
                     "CREATE TABLE cap_probe.growing (id bigserial PRIMARY KEY, payload text); "
                     "CREATE TABLE cap_probe.events (at date NOT NULL, note text) PARTITION BY RANGE (at); "
                     "CREATE TABLE cap_probe.events_a PARTITION OF cap_probe.events FOR VALUES FROM ('2026-01-01') "
                     "TO ('2026-07-01'); CREATE TABLE cap_probe.events_b PARTITION OF cap_probe.events FOR VALUES "
                     "FROM ('2026-07-01') TO ('2027-01-01'); CREATE TABLE cap_probe.steady (n int); "
                     "INSERT INTO cap_probe.steady SELECT generate_series(1, 1000)")
        try:
            assert capacity.take_snapshot(ctx, store, now - timedelta(days=7))["relations"] >= 3
            conn.execute("INSERT INTO cap_probe.growing (payload) SELECT repeat('x', 200) FROM generate_series(1, 20000)")
            conn.execute("INSERT INTO cap_probe.events SELECT date '2026-01-01' + (g % 360), 'e' FROM "
                         "generate_series(1, 3000) g")
            conn.execute("ANALYZE cap_probe.growing, cap_probe.events, cap_probe.steady")
            capacity.take_snapshot(ctx, store, now)
            size = conn.execute("SELECT pg_total_relation_size('cap_probe.growing')").fetchone()[0]
        finally:
            conn.execute("DROP SCHEMA cap_probe CASCADE")
    tables, sequences = capacity._tables(store, now - timedelta(weeks=13), now, 50)
    by_name = {t["name"]: t for t in tables}
    assert tables[0]["name"] == "cap_probe.growing" and tables[0]["bytes"] == size
    assert tables[0]["growth_bytes_per_week"] > 4_000_000 and tables[0]["rows"] == 20000
    assert tables[0]["heap_bytes"] > 0 and tables[0]["index_bytes"] > 0
    events = by_name["cap_probe.events"]
    assert events["partitions"] == 2 and events["rows"] == 3000 and events["growth_bytes_per_week"] > 0
    assert by_name["cap_probe.steady"]["growth_bytes_per_week"] == 0 and by_name["cap_probe.steady"]["xid_age"] > 0
    assert any(s["name"] == "cap_probe.growing_id_seq" and s["used_percent"] > 0 for s in sequences)


def capacity_json(target) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["capacity", "--env", str(target.env_path), "--json"])
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON: {result.exit_code} {result.stdout[-1500:]} {result.stderr[-3000:]}") from None


# The runbook's clock is fixed: at 05:36 UTC on a Wednesday, the moment this test once failed
# when it read the wall clock (the history then ended at a different time of day every run).
AT = datetime(2026, 12, 2, 5, 36, tzinfo=timezone.utc)


def test_pcdb_capacity_json_is_the_contract_with_too_little_history_and_with_a_month(target, prefect_harness):
    store = health.store_for(target.env)
    store.db.execute("DELETE FROM samples")
    store.db.execute("DELETE FROM hourly")
    with clock.fixed(AT):
        code, early = capacity_json(target)
    assert code == 0 and early["insufficient_history"] == {"have_days": 0, "need_days": 14}
    assert early["storage"]["days_to_warning"] is None and early["storage"]["interval"] == [None, None]
    assert early["verdict"].startswith("no forecast yet") and Path(early["report"]).is_file()

    quota = target.env.sandbox.storage_quota
    history = synthetic.History(end=AT, days=30, step_minutes=15, quota_bytes=quota, start_bytes=0.2 * quota,
                                growth_bytes_per_day=0.01 * quota, bulk_load=(12.0, 0.05 * quota))
    synthetic.write(store.db, history)
    store.close()
    with clock.fixed(AT):
        code, result = capacity_json(target)
    assert code == 0 and "insufficient_history" not in result
    s = result["storage"]
    assert set(s) >= {"used_bytes", "limit_bytes", "growth_bytes_per_day", "days_to_warning", "days_to_autogrow",
                      "days_to_readonly", "interval"}
    assert s["limit_bytes"] == quota and s["growth_bytes_per_day"] > 0
    # The accuracy of the forecast is the business of tests/capacity/test_forecast.py, at every hour
    # of a week; here the contract: the truth lies inside the forecast's own 90 % interval.
    truth = history.true_days_to(0.75 * quota)
    assert s["interval"][0] <= truth <= s["interval"][1] and s["interval"][0] <= s["days_to_warning"]
    assert s["days_to_warning"] < s["days_to_autogrow"] < s["days_to_readonly"]
    assert set(result["connections"]) >= {"peak", "limit", "trend_per_week"} and result["connections"]["limit"] == 200
    assert result["tables"] and set(result["tables"][0]) >= {"name", "bytes", "growth_bytes_per_week"}
    assert [Path(p).name.rsplit("-", 1)[1] for p in result["plots"]] == ["storage.png", "connections.png", "cpu.png"]
    report = Path(result["report"])
    assert all(Path(p).parent == report.parent and Path(p).is_file() for p in result["plots"])
    text = report.read_text()
    assert text.startswith(f"# Capacity of `test`: storage reaches 75 % in {s['days_to_warning']:.0f} days")
    assert f"]({Path(result['plots'][0]).name})" in text and "forecast_accuracy" not in result

    assert len(result["sparkline"]) >= 4 and set(result["sparkline"]) <= set("▁▂▃▄▅▆▇█")   # the notification's
    assert result["logs"]["bytes"] > 0          # C-6: the server log's volume, from pg_ls_logdir()
    from pcdb import ledger
    from pcdb.schema import LEDGER_SCHEMA

    with RunbookContext(target.env, target).connect() as conn:
        (row,) = [r for r in ledger.rows(conn, LEDGER_SCHEMA, AT - timedelta(minutes=10),
                                         flow="capacity") if r["report_path"] == result["report"]]
    assert row["state"] == "Completed" and row["figures"]["days_to_warning"] == s["days_to_warning"]

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["capacity-test"])),
                                            limit=1, sort="CREATED_DESC")
    assert artifact.data.startswith("# Capacity of `test`: storage reaches") and "data:image/png;base64," in artifact.data
