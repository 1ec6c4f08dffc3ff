"""The money (§9): daily cost per component, the month against the budget, and the two alerts of
§9.2.1 — more than ``alert_monthly_usd`` a month (projected from the month so far) and a rise of
more than ``alert_increase_percent`` over the previous month.

Costs come from the target: on the sandbox, the cost model of the spec's price table (§9.1.1,
each row's monthly price spread over the days), so that reports and alerts run offline. The
monthly review adds the trend, the reserved-instance saving the plan estimates on compute
(§9.1.2, ~30 %) and what each category takes.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta

import psycopg

from pcdb import versions
from pcdb.billing import DayCost
from pcdb.config import Environment
from pcdb.context import RunbookContext
from pcdb.forecast import sparkline
from pcdb.sql import query
from pcdb.targets.base import Billing

PORT = Billing   # the one role of the target port used here (tests/unit/test_port_roles.py checks it)


def retention_freed(ctx: RunbookContext) -> tuple[int, int] | None:
    """What the KOS-log retention dropped in the last 12 months: (bytes freed, partitions dropped);
    None before any maintenance run, or before one that records sizes. Read only."""
    with ctx.connect() as conn:
        if not conn.execute(query("maintenance.sql", "archive_table_exists")).fetchone()[0]:
            return None
        try:
            freed, dropped = conn.execute(query("maintenance.sql", "retention_freed")).fetchone()
        except psycopg.errors.UndefinedColumn:
            return None                     # a table of an earlier pcdb: the next maintenance adds the sizes
    return int(freed), int(dropped)


def month_costs(target: Billing, today: date) -> list[DayCost]:
    """The daily costs a review compares: the previous month's and this month's so far."""
    start = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    return target.daily_costs(start, today)


def _month(d: date) -> tuple[int, int]:
    return d.year, d.month


def review(env: Environment, costs: list[DayCost], today: date, retention: tuple[int, int] | None = None) -> dict:
    """The month so far (up to yesterday: a day's cost is complete the next day) against the
    budget and the previous month, per component and category, with the alerts. ``retention``:
    (bytes, partitions) the KOS-log retention dropped in the last 12 months."""
    cfg = env.operations.cost
    current = _month(today)
    first = today.replace(day=1)
    previous = _month(first - timedelta(days=1))
    days_in_month = calendar.monthrange(*current)[1]
    so_far = [c for c in costs if _month(c.day) == current and c.day < today]
    before = [c for c in costs if _month(c.day) == previous]
    elapsed = len({c.day for c in so_far})
    spent = sum(c.usd for c in so_far)
    projected = spent / elapsed * days_in_month if elapsed else None
    previous_total = sum(c.usd for c in before) if before else None
    by_component: dict[str, float] = {}
    by_category: dict[str, float] = {}
    for c in so_far:
        by_component[c.component] = by_component.get(c.component, 0.0) + c.usd
        by_category[c.category] = by_category.get(c.category, 0.0) + c.usd
    daily = {}
    for c in [*before, *so_far]:
        daily[c.day] = daily.get(c.day, 0.0) + c.usd
    alerts = []
    if projected is not None and projected > cfg.alert_monthly_usd:
        alerts.append(f"projected ${projected:,.0f} this month, more than the ${cfg.alert_monthly_usd:,.0f} alert "
                      f"threshold (budget ${cfg.monthly_budget_usd:,.0f})")
    rise = None
    if projected is not None and previous_total:
        rise = 100.0 * (projected - previous_total) / previous_total
        if rise > cfg.alert_increase_percent:
            alerts.append(f"projected ${projected:,.0f} is {rise:.0f} % more than last month's ${previous_total:,.0f} "
                          f"(alert above {cfg.alert_increase_percent:g} %)")
    compute = (by_category.get("compute", 0.0) / elapsed * days_in_month) if elapsed else 0.0
    return {"month": f"{current[0]}-{current[1]:02d}", "days_elapsed": elapsed, "days_in_month": days_in_month,
            "spent_usd": round(spent, 2), "projected_usd": round(projected, 2) if projected is not None else None,
            "budget_usd": cfg.monthly_budget_usd, "alert_usd": cfg.alert_monthly_usd,
            "budget_left_usd": round(cfg.monthly_budget_usd - (projected or spent), 2),
            "previous_month_usd": round(previous_total, 2) if previous_total is not None else None,
            "rise_percent": round(rise, 1) if rise is not None else None,
            "by_component_usd": {k: round(v, 2) for k, v in by_component.items()},
            "by_category_usd": {k: round(v, 2) for k, v in by_category.items()},
            "reserved_instance_saving_usd_per_month": round(compute * cfg.reserved_instance_saving_percent / 100, 2),
            "trend": sparkline([daily[d] for d in sorted(daily)]), "alerts": alerts,
            "extended_support": _extended_support(env, today, so_far, days_in_month),
            "retention_freed_bytes": retention[0] if retention else None,
            "retention_dropped_partitions": retention[1] if retention else None,
            "retention_saving_usd_per_month": round(retention[0] / 2**30 * cfg.storage_usd_per_gib_month, 2)
            if retention and cfg.storage_usd_per_gib_month else None}


def _extended_support(env: Environment, today: date, so_far: list[DayCost], days_in_month: int) -> dict | None:
    """Azure's Extended Support charge for the spec's major when it applies this month (pcdb's
    version table says when Azure bills it): what the costs show so far, else the price table's
    extended_support row; no row and nothing billed yet: the price is unknown, never guessed."""
    first = today.replace(day=1)
    last = first.replace(day=days_in_month)
    support = versions.support(env.server.version, today)
    facts = support.facts
    if facts is None or not facts.azure_extended_start or not facts.azure_extended_end \
            or facts.azure_extended_start > last or facts.azure_extended_end < first:
        return None
    row = next((c for c in env.operations.cost.price_table if c.category == "extended_support"), None)
    billed = [c for c in so_far if c.category == "extended_support"]
    if billed:
        days = len({c.day for c in billed})
        monthly, source = sum(c.usd for c in billed) / days * days_in_month, f"as billed on {days} day(s), a month of it"
    elif row is not None:
        monthly, source = row.monthly_usd, f"the price table's row '{row.component}'"
    else:
        monthly, source = None, ("unknown: the price table has no extended_support row (Azure's retail price list "
                                 "gives it per vCore-hour); pcdb does not guess a price")
    return {"major": support.major, "billed_from": facts.azure_extended_start.isoformat(),
            "billed_until": facts.azure_extended_end.isoformat(),
            "monthly_usd": round(monthly, 2) if monthly is not None else None, "source": source}


def markdown(env: Environment, r: dict) -> str:
    lines = [f"# Cost of `{env.name}` in {r['month']}: ${r['spent_usd']:,.2f} so far, "
             f"${r['projected_usd'] or 0:,.0f} projected (budget ${r['budget_usd']:,.0f})", "",
             f"- {r['days_elapsed']} of {r['days_in_month']} days; last month ${r['previous_month_usd'] or 0:,.2f}"
             + (f" ({r['rise_percent']:+.1f} %)" if r["rise_percent"] is not None else ""),
             f"- Daily trend: {r['trend']}",
             f"- A reserved instance would save about ${r['reserved_instance_saving_usd_per_month']:,.0f} a month on "
             "compute (§9.1.2)"]
    if r["retention_freed_bytes"] is not None:
        lines.append(f"- The partition retention dropped {r['retention_dropped_partitions']} partition(s) in the last 12 "
                     f"months, {r['retention_freed_bytes'] / 2**30:.2f} GiB"
                     + (f", worth ${r['retention_saving_usd_per_month']:,.2f} a month of storage"
                        if r["retention_saving_usd_per_month"] is not None else
                        " (set operations.cost.storage_usd_per_gib_month to price it)"))
    ext = r.get("extended_support")
    if ext:
        price = f"${ext['monthly_usd']:,.2f} a month ({ext['source']})" if ext["monthly_usd"] is not None \
            else f"price {ext['source']}"
        lines.append(f"- **Extended support** for PostgreSQL {ext['major']}, billed from {ext['billed_from']} until "
                     f"{ext['billed_until']}: {price}. It ends with the major upgrade ({versions.UPGRADE_DOC})")
    lines += ["", "| component | so far (USD) |", "|---|---|"]
    lines += [f"| {k} | {v:,.2f} |" for k, v in sorted(r["by_component_usd"].items(), key=lambda kv: -kv[1])]
    if r["alerts"]:
        lines += ["", "**Alerts:**", *(f"- {a}" for a in r["alerts"])]
    return "\n".join(lines) + "\n"
