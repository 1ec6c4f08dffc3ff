"""The cost review (§9) on the spec's price table and on given daily costs: the budget, both
alerts of §9.2.1 ($1,600 a month, a 20 % rise), the per-component breakdown, the RI saving."""

from __future__ import annotations

from datetime import date

from pcdb import billing, cost
from pcdb.config import load_environment

LOCAL = load_environment("local")


def month_of(env, first: date, last: date, scale: float = 1.0) -> list[billing.DayCost]:
    return [billing.DayCost(c.day, c.component, c.category, c.usd * scale) for c in billing.model_costs(env, first, last)]


def test_the_price_table_costs_the_budget_and_raises_no_alert():
    costs = month_of(LOCAL, date(2026, 10, 1), date(2026, 11, 16))
    r = cost.review(LOCAL, costs, date(2026, 11, 16))
    assert r["days_elapsed"] == 15 and r["projected_usd"] == 1400.0 and r["spent_usd"] == 700.0
    assert r["previous_month_usd"] == 1400.0 and r["rise_percent"] == 0.0 and r["alerts"] == []
    assert r["by_component_usd"]["primary server"] == 410.0 and r["by_category_usd"]["compute"] == 555.0
    assert r["reserved_instance_saving_usd_per_month"] == round(0.30 * 1110, 2) and len(r["trend"]) == 46


def test_more_than_1600_a_month_alerts():
    costs = month_of(LOCAL, date(2026, 10, 1), date(2026, 11, 1)) + \
        month_of(LOCAL, date(2026, 11, 1), date(2026, 11, 11), scale=1650 / 1400)
    r = cost.review(LOCAL, costs, date(2026, 11, 11))
    assert r["projected_usd"] == 1650.0
    assert any("more than the $1,600 alert threshold" in a for a in r["alerts"])


def test_a_rise_of_more_than_20_percent_alerts_below_the_threshold_too():
    costs = month_of(LOCAL, date(2026, 10, 1), date(2026, 11, 1), scale=1100 / 1400) + \
        month_of(LOCAL, date(2026, 11, 1), date(2026, 11, 11))
    r = cost.review(LOCAL, costs, date(2026, 11, 11))
    assert r["projected_usd"] == 1400.0 and r["rise_percent"] == round(300 / 1100 * 100, 1)
    assert r["alerts"] == ["projected $1,400 is 27 % more than last month's $1,100 (alert above 20 %)"]
    assert "**Alerts:**" in cost.markdown(LOCAL, r)


def test_azure_costs_come_from_cost_management_per_meter_and_feed_the_same_review():
    from pcdb.targets.factory import make_target
    from tests.azure.fake_arm import FakeArm, FakeCredential
    from tests.azure.test_target import PROD, SECRETS

    arm = FakeArm()
    target = make_target(PROD, lambda ref, owner: SECRETS[owner], credential=FakeCredential(), transport=arm,
                         polling_interval=0)
    pg = "Azure Database for PostgreSQL"
    arm.costs = [row for day in range(20261101, 20261111) for row in (
        [30.0, day, pg, "Flexible Server General Purpose Dsv3 Series Compute", "USD"],
        [4.0, day, pg, "Flexible Server Storage", "USD"], [5.0, day, pg, "Flexible Server Backup Storage", "USD"],
        [2.5, day, "Bandwidth", "Inter-Region", "USD"], [2.0, day, "Log Analytics", "Analytics Logs", "USD"])]
    costs = target.daily_costs(date(2026, 11, 1), date(2026, 11, 11))
    path, body = next((p, b) for p, b in arm.bodies if p.lower().endswith("/microsoft.costmanagement/query"))
    assert "/resourceGroups/rg-phonebill-prod/" in path and body["dataset"]["granularity"] == "Daily"
    assert [g["name"] for g in body["dataset"]["grouping"]] == ["MeterCategory", "MeterSubCategory"]
    assert len(costs) == 50 and {c.category for c in costs} == {"compute", "storage", "backup_storage", "network",
                                                               "monitoring"}
    r = cost.review(PROD, costs, date(2026, 11, 11))
    assert r["spent_usd"] == 435.0 and r["projected_usd"] == 1305.0 and r["alerts"] == []
    assert r["by_category_usd"] == {"compute": 300.0, "storage": 40.0, "backup_storage": 50.0, "network": 25.0,
                                    "monitoring": 20.0}
    arm.costs = [[60.0, d, pg, "Flexible Server Compute", "USD"] for d in range(20261101, 20261111)]
    hot = cost.review(PROD, target.daily_costs(date(2026, 11, 1), date(2026, 11, 11)), date(2026, 11, 11))
    assert hot["projected_usd"] == 1800.0 and "more than the $1,600 alert threshold" in hot["alerts"][0]


def test_the_budget_is_a_desired_resource_on_the_warning_channels_and_keeps_its_start_date():
    import copy

    from pcdb.azure.desired import desired_resources
    from pcdb.azure.plan import plan_one

    prod = load_environment("prod")
    budget = next(d for d in desired_resources(prod, "11111111-2222-3333-4444-555555555555") if d.type == "budget")
    assert budget.id.endswith("/resourceGroups/rg-phonebill-prod/providers/Microsoft.Consumption/budgets/"
                              "budget-prod-monthly")
    props = budget.body()["properties"]
    assert props["amount"] == 1400 and props["timeGrain"] == "Monthly" and props["category"] == "Cost"
    actual, forecast = props["notifications"]["actual-over-budget"], props["notifications"]["forecast-over-alert"]
    assert (actual["threshold"], actual["thresholdType"]) == (100, "Actual")
    assert (forecast["threshold"], forecast["thresholdType"]) == (114.3, "Forecasted")   # $1,600 of $1,400
    group = f"/actionGroups/{prod.azure.action_group.name}-email-teams"                  # warning: Teams and email
    assert actual["contactGroups"][0].endswith(group) and forecast["contactGroups"] == actual["contactGroups"]
    # The budget API requires contactEmails: the warning email channel's recipients.
    assert actual["contactEmails"] == forecast["contactEmails"] == ["dba-team@phonebill.com", "ops-team@phonebill.com"]
    # Created in its month; next month the desired start date differs and is not a change.
    current = copy.deepcopy(budget.body())
    current["properties"]["timePeriod"]["startDate"] = "2026-01-01T00:00:00Z"
    assert plan_one(budget, current).action == "unchanged"
    current["properties"]["amount"] = 1200
    assert plan_one(budget, current).action == "update"


def test_what_the_partition_retention_freed_is_reported_and_priced_when_a_price_is_set(tmp_path):
    costs = month_of(LOCAL, date(2026, 10, 1), date(2026, 11, 16))
    bare = cost.review(LOCAL, costs, date(2026, 11, 16), retention=(3 * 2**30, 3))
    assert bare["retention_freed_bytes"] == 3 * 2**30 and bare["retention_saving_usd_per_month"] is None
    assert "set operations.cost.storage_usd_per_gib_month to price it" in cost.markdown(LOCAL, bare)
    spec = tmp_path / "priced.yaml"
    spec.write_text("extends: local\nname: priced\noperations:\n  cost:\n    monthly_budget_usd: 1400\n"
                    "    alert_monthly_usd: 1600\n    alert_increase_percent: 20\n    storage_usd_per_gib_month: 0.12\n")
    priced_env = load_environment(spec)
    priced = cost.review(priced_env, costs, date(2026, 11, 16), retention=(3 * 2**30, 3))
    assert priced["retention_saving_usd_per_month"] == 0.36 and "worth $0.36 a month" in cost.markdown(priced_env, priced)
