"""PostgreSQL's version lifecycle as data (pcdb/data/postgresql-versions.json): where a major
stands on a day, the production spec's warning in `config check` and `plan`, and the Extended
Support line of the cost review. Every day here is fixed, never the wall clock's."""

from __future__ import annotations

from datetime import date, datetime, timezone

from typer.testing import CliRunner

from cli.main import app
from pcdb import billing, clock, cost, versions
from pcdb.config import load_environment
from pcdb.config.checks import warnings

PROD, LOCAL = load_environment("prod"), load_environment("local")


def at(day: date):
    return clock.fixed(datetime(day.year, day.month, day.day, 9, tzinfo=timezone.utc))


def with_version(env, version: str, extra_rows: list | None = None):
    server = env.server.model_copy(update={"version": version})
    ops = env.operations
    if extra_rows is not None:
        ops = ops.model_copy(update={"cost": ops.cost.model_copy(update={"price_table": [*ops.cost.price_table,
                                                                                           *extra_rows]})})
    return env.model_copy(update={"server": server, "operations": ops})


def test_every_major_of_the_table_has_its_dates_in_order_and_each_source_is_noted():
    import json

    raw = json.loads(versions.TABLE.read_text())
    assert {"community", "azure_standard", "azure_extended"} <= set(raw["sources"])
    assert sorted(versions.table()) == list(range(11, 19))
    for major in versions.table().values():
        assert major.azure_standard_end >= major.community_eol or major.major <= 13
        if major.azure_extended_start:
            assert major.azure_standard_end < major.azure_extended_start < major.azure_extended_end


def test_where_a_major_stands_before_near_after_and_long_after_its_end():
    end = versions.table()[14].azure_standard_end                            # 2026-11-12
    assert versions.support("14", date(2026, 8, 13)).status == "standard"    # 91 days ahead
    near = versions.support("14.9", date(2026, 8, 14))
    assert (near.status, near.days_left) == ("ending", 90)
    assert versions.support(140009, end).status == "ending"                  # its last day is still supported
    after = versions.support(14, date(2026, 12, 2))
    assert (after.status, after.days_left, after.billed_extended) == ("extended", -20, False)
    assert versions.support(14, date(2026, 12, 12)).billed_extended          # Azure bills from its extended start
    assert versions.support(11, date(2027, 6, 1)).status == "unsupported"
    assert versions.support(10, date(2020, 1, 1)).status == "unsupported"    # older than the table
    assert versions.support(19, date(2026, 12, 2)).status == "unknown"       # not announced: no warning invented


def test_config_check_on_prod_prints_the_postgresql_14_warning_with_its_dates_and_the_upgrade_runbook():
    with at(date(2026, 12, 2)):
        result = CliRunner().invoke(app, ["config", "check", "--env", "prod", "--json"])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if "server.version" in line)
    assert "PostgreSQL 14 left Azure's standard support on 2026-11-12" in warning
    assert "Extended Support, billed on top of the server from 2026-12-12 until 2029-11-11" in warning
    assert versions.UPGRADE_DOC in warning


def test_the_warning_starts_90_days_ahead_only_on_production_and_plan_prints_it_too():
    sixteen = with_version(PROD, "16")
    with at(date(2028, 8, 10)):                                   # 91 days before 16's end
        assert not [w for w in warnings(sixteen) if w.startswith("server.version")]
    with at(date(2028, 8, 11)):
        assert [w for w in warnings(sixteen) if "leaves Azure's standard support on 2028-11-09 (in 90 days)" in w]
    with at(date(2030, 1, 1)):
        assert not [w for w in warnings(with_version(LOCAL, "14")) if w.startswith("server.version")]   # a sandbox
    with at(date(2026, 12, 2)):
        result = CliRunner().invoke(app, ["plan", "--env", "prod", "--assume-empty", "--json"])
    assert result.exit_code == 0, result.output
    assert "PostgreSQL 14 left Azure's standard support on 2026-11-12" in result.stderr


def test_every_shipped_spec_has_the_version_support_rule_by_default():
    from pcdb.rules import catalog

    for env in (PROD, LOCAL):
        rule = next(r for r in catalog(env) if r.name == "version-support")
        assert (rule.metric, rule.operator, rule.warning, rule.critical) == ("version_support_days_left", "<=", 90, -1)


def test_the_cost_review_shows_extended_support_as_its_own_line_priced_only_from_the_price_table():
    december = billing.model_costs(PROD, date(2026, 11, 1), date(2026, 12, 20))
    unknown = cost.review(PROD, december, date(2026, 12, 20))["extended_support"]
    assert unknown["major"] == 14 and unknown["billed_from"] == "2026-12-12" and unknown["monthly_usd"] is None
    assert unknown["source"].startswith("unknown") and "does not guess" in unknown["source"]
    assert "**Extended support** for PostgreSQL 14" in cost.markdown(PROD, cost.review(PROD, december,
                                                                                        date(2026, 12, 20)))
    row = PROD.operations.cost.price_table[0].model_copy(update={"component": "extended support (4 vCores)",
                                                                  "category": "extended_support", "monthly_usd": 310.0})
    priced = with_version(PROD, "14", [row])
    days = billing.model_costs(priced, date(2026, 12, 1), date(2026, 12, 20))
    billed = [c for c in days if c.category == "extended_support"]
    assert min(c.day for c in billed) == date(2026, 12, 12)                 # not before Azure bills it
    r = cost.review(priced, days, date(2026, 12, 20))
    assert r["extended_support"]["monthly_usd"] == 310.0                     # a month of what 8 billed days cost
    assert cost.review(PROD, december, date(2026, 11, 20))["extended_support"] is None   # November: not billed
    assert cost.review(with_version(PROD, "16"), december, date(2026, 12, 20))["extended_support"] is None


def test_an_azure_extended_support_meter_is_its_own_category():
    assert billing.meter_category("Azure Database for PostgreSQL", "Flexible Server Extended Support") == \
        "extended_support"
    assert billing.meter_category("Azure Database for PostgreSQL", "Flexible Server Compute") == "compute"
