"""The cost review (§9, R-OPS-3), deployed daily: the month so far against the $1,400 budget, the
alerts of §9.2.1 ($1,600 a month, a 20 % rise); `pcdb cost` by hand. Read only; report, artifact,
ledger row; a warning notification on an alert."""

from __future__ import annotations

from prefect import flow

from flows.evidence import HOOKS, evidence, publish_report
from flows.notify import notify
from flows.runbook import runbook_context
from pcdb import clock, cost
from pcdb.config import load_environment


@flow(name="cost", **HOOKS)
def cost_review(env: str = "local", spec_path: str | None = None) -> dict:
    """This month's cost so far, projected, per component, against the budget and last month."""
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    today = clock.now().date()
    with evidence(spec, ctx, "cost") as ev:
        result = cost.review(spec, cost.month_costs(ctx.target, today), today, retention=cost.retention_freed(ctx))
        path = publish_report(spec, f"cost-{spec.name}", cost.markdown(spec, result), "cost review")
        result["report"] = str(path)
        ev.report = str(path)
        ev.figures = {k: result[k] for k in ("month", "spent_usd", "projected_usd", "budget_usd", "rise_percent",
                                             "alerts")}
        if result["alerts"]:
            notify(spec, "warning", f"pcdb cost of {spec.name}: {result['alerts'][0]}",
                   "\n".join(result["alerts"]) + f"\nTrend: {result['trend']}\nReport: {path}")
        return result
