"""The cost review (§9, R-OPS-3), deployed daily: the month so far against the $1,400 budget, the
alerts of §9.2.1 ($1,600 a month, a 20 % rise); `pcdb cost` by hand. Read only; report, artifact,
ledger row; a warning notification on an alert."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from prefect import flow

from flows.evidence import HOOKS, evidence, publish_report
from flows.notify import notify
from flows.runbook import runbook_context
from pcdb import clock, cost
from pcdb.config import load_environment
from pcdb.sql import query


def _retention(ctx) -> tuple[int, int] | None:
    """What the KOS-log retention dropped in the last 12 months (None before any maintenance run,
    or before one that records sizes). Read only."""
    with ctx.connect() as conn:
        if not conn.execute(query("maintenance.sql", "archive_table_exists")).fetchone()[0]:
            return None
        try:
            freed, dropped = conn.execute(query("maintenance.sql", "retention_freed")).fetchone()
        except psycopg.errors.UndefinedColumn:
            return None                     # a table of an earlier pcdb: the next maintenance adds the sizes
    return int(freed), int(dropped)


@flow(name="cost", **HOOKS)
def cost_review(env: str = "local", spec_path: str | None = None) -> dict:
    """This month's cost so far, projected, per component, against the budget and last month."""
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    today = clock.now().date()
    with evidence(spec, ctx, "cost") as ev:
        start = (today.replace(day=1) - timedelta(days=1)).replace(day=1)      # the previous month too
        result = cost.review(spec, ctx.target.daily_costs(start, today), today, retention=_retention(ctx))
        path = publish_report(spec, f"cost-{spec.name}", cost.markdown(spec, result), "cost review")
        result["report"] = str(path)
        ev.report = str(path)
        ev.figures = {k: result[k] for k in ("month", "spent_usd", "projected_usd", "budget_usd", "rise_percent",
                                             "alerts")}
        if result["alerts"]:
            notify(spec, "warning", f"pcdb cost of {spec.name}: {result['alerts'][0]}",
                   "\n".join(result["alerts"]) + f"\nTrend: {result['trend']}\nReport: {path}")
        return result
