"""Monthly availability (§1, §2.2) and the cost review (§9): a generated month of the health runbook's samples with known
downtime, exact to the minute; the error budget's burn alert; unobserved minutes; Azure's
is_db_alive through the in-process ARM; `pcdb sla --json` through a real flow on the sandbox."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from cli.main import app
from pcdb import clock, health, sla
from pcdb.config import load_environment

LOCAL = load_environment("local")
SEOUL_NOVEMBER = datetime(2026, 10, 31, 15, tzinfo=timezone.utc)       # 2026-11-01 00:00 Asia/Seoul
OUTAGES = [(datetime(2026, 11, 3, 2, 14, tzinfo=timezone.utc), 17), (datetime(2026, 11, 12, 20, 0, tzinfo=timezone.utc), 5),
           (datetime(2026, 11, 28, 9, 31, tzinfo=timezone.utc), 21)]


def month_of_samples(store: health.Store, start: datetime, minutes: int, outages, gaps=()) -> None:
    down = {int((t - start).total_seconds() // 60) + i for t, n in outages for i in range(n)}
    missing = {int((t - start).total_seconds() // 60) + i for t, n in gaps for i in range(n)}
    rows = [((start + timedelta(minutes=m, seconds=7)).isoformat(), "up", 0.0 if m in down else 1.0)
            for m in range(minutes) if m not in missing]
    with store.db:
        store.db.execute("BEGIN")                     # one transaction: the store runs in autocommit
        store.db.executemany("INSERT INTO samples VALUES (?, ?, ?)", rows)


def test_a_month_with_known_downtime_is_measured_exactly_to_the_minute(tmp_path):
    store = health.Store(tmp_path / "h.sqlite")
    month_of_samples(store, SEOUL_NOVEMBER, 30 * 1440, OUTAGES)
    start, end, name = sla.month_bounds(LOCAL, "2026-11", SEOUL_NOVEMBER)
    assert (start, end, name) == (SEOUL_NOVEMBER, SEOUL_NOVEMBER + timedelta(days=30), "2026-11")
    r = sla.report(LOCAL, sla.minutes_from_store(store.db, start, end), start, end, name, end + timedelta(days=2))
    assert r["complete"] and r["minutes_in_month"] == 43200 and r["minutes_down"] == 43 and r["minutes_unobserved"] == 0
    assert r["availability_percent"] == round(100 * (1 - 43 / 43200), 4)                # 99.9005
    service, zr = r["targets"]["service"], r["targets"]["zone_redundant"]
    assert service["met"] and service["budget_minutes"] == 43.2 and service["left_minutes"] == 0.2
    assert not zr["met"] and zr["budget_minutes"] == 21.6 and "budget of 21.6 min is spent" in zr["alert"]
    assert [o["minutes"] for o in r["outages"]] == [17, 5, 21] and r["outages"][0]["start"].startswith("2026-11-03T02:14")


def test_unobserved_minutes_are_never_counted_up(tmp_path):
    store = health.Store(tmp_path / "h.sqlite")
    month_of_samples(store, SEOUL_NOVEMBER, 30 * 1440, OUTAGES[:1], gaps=[(datetime(2026, 11, 20, tzinfo=timezone.utc), 90)])
    start, end, name = sla.month_bounds(LOCAL, "2026-11", SEOUL_NOVEMBER)
    r = sla.report(LOCAL, sla.minutes_from_store(store.db, start, end), start, end, name, end)
    assert r["minutes_unobserved"] == 90 and r["minutes_down"] == 17
    assert r["worst_case_percent"] == round(100 * (1 - 107 / 43200), 4) < r["availability_percent"]


def test_the_burn_alert_fires_when_the_last_day_would_spend_the_budget_before_the_month_ends(tmp_path):
    calm, burning = health.Store(tmp_path / "calm.sqlite"), health.Store(tmp_path / "burn.sqlite")
    ten_days = 10 * 1440
    month_of_samples(calm, SEOUL_NOVEMBER, ten_days, [(SEOUL_NOVEMBER + timedelta(days=2), 10)])
    month_of_samples(burning, SEOUL_NOVEMBER, ten_days, [(SEOUL_NOVEMBER + timedelta(days=9, hours=12), 10)])
    start, end, name = sla.month_bounds(LOCAL, "2026-11", SEOUL_NOVEMBER)
    now = SEOUL_NOVEMBER + timedelta(days=10)
    quiet = sla.report(LOCAL, sla.minutes_from_store(calm.db, start, end), start, end, name, now)
    hot = sla.report(LOCAL, sla.minutes_from_store(burning.db, start, end), start, end, name, now)
    assert not quiet["complete"] and quiet["alerts"] == [] and quiet["targets"]["service"]["left_minutes"] == 33.2
    # 10 minutes in the last 24 h: at that rate 33.2 minutes last 80 hours, the month has 20 days left.
    assert hot["targets"]["service"]["exhausted_in_hours"] == 79.7 and "before the month ends" in hot["alerts"][0]
    assert hot["targets"]["service"]["burn_rate"] == round((10 / 43.2) / (10 / 30), 2)


def test_a_bad_month_is_refused_in_words():
    with pytest.raises(ValueError, match="give a month as YYYY-MM"):
        sla.month_bounds(LOCAL, "November", SEOUL_NOVEMBER)
    bad = CliRunner().invoke(app, ["sla", "--env", "local", "--month", "2026/11"])
    assert bad.exit_code == 1 and "give a month as YYYY-MM" in bad.stderr


def test_azure_availability_is_is_db_alive_per_minute_through_the_metrics_api(tmp_path):
    from pcdb.targets.factory import make_target
    from tests.azure.fake_arm import FakeArm, FakeCredential
    from tests.azure.test_target import PROD, SECRETS

    arm = FakeArm()
    target = make_target(PROD, lambda ref, owner: SECRETS[owner], credential=FakeCredential(), transport=arm,
                         polling_interval=0)
    start = datetime(2026, 11, 26, 15, tzinfo=timezone.utc)
    samples = []
    for minute in range(2 * 1440):                              # two days, a sample every 20 s
        for second in (0, 20, 40):
            at = start + timedelta(minutes=minute, seconds=second)
            alive = 0.0 if (700 <= minute < 704 and second == 20) or 2000 <= minute < 2003 else 1.0
            samples.append((at.isoformat().replace("+00:00", "Z"), alive))
    arm.metrics = {"is_db_alive": samples}
    points = target.availability_samples(start, start + timedelta(days=2))
    assert len([r for r in arm.requests if r[1].endswith("/metrics")]) == 2           # a day per query
    minutes = sla.minutes_from_points(points)
    assert len(minutes) == 2880 and sum(1 for v in minutes.values() if v < 1) == 7   # one failed sample: down


@pytest.mark.postgres
def test_pcdb_sla_json_on_the_sandbox(target, prefect_harness):
    store = health.store_for(target.env)
    store.db.execute("DELETE FROM samples WHERE metric = 'up'")
    now = clock.now()
    start, _, name = sla.month_bounds(target.env, None, now)
    elapsed = int((now - start).total_seconds() // 60)
    month_of_samples(store, start, elapsed, [(start + timedelta(minutes=elapsed // 2), 3)] if elapsed > 10 else [])
    store.close()
    result = CliRunner().invoke(app, ["sla", "--env", str(target.env_path), "--json"])
    report = json.loads(result.stdout)
    assert report["month"] == name and report["minutes_down"] == (3 if elapsed > 10 else 0)
    assert report["minutes_observed"] == elapsed and set(report["targets"]) == {"service", "zone_redundant"}
    assert result.exit_code == (0 if report["targets"]["zone_redundant"]["met"] and not report["alerts"] else 2)
    assert report["report"].endswith(".md")


@pytest.mark.postgres
def test_pcdb_cost_json_on_the_sandbox_is_the_price_tables_month(target, prefect_harness):
    result = CliRunner().invoke(app, ["cost", "--env", str(target.env_path), "--json"])
    review = json.loads(result.stdout)
    today = clock.now().date()
    assert result.exit_code == 0 and review["alerts"] == [] and review["budget_usd"] == 1400
    assert review["days_elapsed"] == today.day - 1 and review["month"] == f"{today:%Y-%m}"
    if review["days_elapsed"]:
        assert review["projected_usd"] == 1400.0
    assert review["previous_month_usd"] == 1400.0 and review["report"].endswith(".md")
