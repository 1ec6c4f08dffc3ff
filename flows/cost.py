"""The cost review (§9, R-OPS-3), deployed daily: the month so far against the $1,400 budget, the
alerts of §9.2.1 ($1,600 a month, a 20 % rise); `pcdb cost` by hand. Read only; report, artifact,
ledger row; a warning notification on an alert."""

from __future__ import annotations

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import flow, name_run, runbook_context, stepped
from pcdb import clock, cost
from pcdb.config import load_environment


@flow(name="cost", **HOOKS)
@alive
def cost_review(env: str = "local", spec_path: str | None = None) -> dict:
    """This month's cost so far, projected, per component, against the budget and last month.

    Args:
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
    """
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    today = clock.now().date()
    with evidence(spec, ctx, "cost") as ev, stepped() as step:
        costs = step("read the daily costs", lambda: cost.month_costs(ctx.target, today), retry=True)
        freed = step("measure what the retention freed", lambda: cost.retention_freed(ctx), retry=True)
        result = cost.review(spec, costs, today, retention=freed)
        path = publish_report(spec, f"cost-{spec.name}", cost.markdown(spec, result) + "\n" + ledger_link(spec) + "\n",
                              "cost review")
        result["report"] = str(path)
        ev.report = str(path)
        ev.figures = {k: result[k] for k in ("month", "spent_usd", "projected_usd", "budget_usd", "rise_percent",
                                             "alerts")}
        if result["alerts"]:
            notify(spec, "warning", f"pcdb cost of {spec.name}: {result['alerts'][0]}",
                   "\n".join(result["alerts"]) + f"\nTrend: {result['trend']}\nReport: {path}")
        name_run(f"cost {result['month']} · "
                 + (f"${result['projected_usd']:,.0f} projected" if result["projected_usd"] is not None else "no cost yet")
                 + (" · ALERT" if result["alerts"] else ""))
        return result
