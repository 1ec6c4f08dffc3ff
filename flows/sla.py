"""Monthly availability against the plan's targets (§1, §2.2), deployed daily; `pcdb sla` by hand.

Read only. The month so far (or a given month) from the health runbook's samples on the sandbox
and Azure Monitor's is_db_alive on Azure; a warning when the error budget would be spent before
the month ends; report, artifact and ledger row (the monthly report is the run of the 1st, which
also closes the previous month).
"""

from __future__ import annotations

from datetime import timedelta

from prefect import get_run_logger

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import flow, name_run, runbook_context, stepped
from pcdb import clock, sla
from pcdb.config import load_environment


@flow(name="sla", **HOOKS)
@alive
def sla_report(env: str = "local", spec_path: str | None = None, month: str | None = None) -> dict:
    """Availability of a month (default: this month so far) against 99.9 % and 99.95 %.

    Args:
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
        month: the month to report, YYYY-MM (default: this month so far)
    """
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    now = clock.now()
    with evidence(spec, ctx, "sla") as ev, stepped() as step:
        result = step("measure the month's availability", lambda: sla.measure(ctx.target, spec, month, now),
                      retry=True)
        local = now.astimezone(sla.ZoneInfo(spec.service.timezone))
        if month is None and local.day == 1:      # the 1st closes the previous month
            previous = (local.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
            result["previous_month"] = step(f"close the month {previous}",
                                            lambda: sla.measure(ctx.target, spec, previous, now), retry=True)
        text = sla.markdown(spec, result)
        if "previous_month" in result:
            text += "\n" + sla.markdown(spec, result["previous_month"])
        text += "\n" + ledger_link(spec) + "\n"
        path = publish_report(spec, f"sla-{spec.name}", text, "availability")
        result["report"] = str(path)
        ev.report = str(path)
        ev.figures = {"month": result["month"], "availability_percent": result["availability_percent"],
                      "minutes_down": result["minutes_down"], "minutes_unobserved": result["minutes_unobserved"],
                      "alerts": result["alerts"]}
        if result["alerts"]:
            notify(spec, "warning", f"pcdb availability of {spec.name}: error budget at risk",
                   "\n".join(result["alerts"]) + f"\nReport: {path}")
        get_run_logger().info("availability of %s in %s: %s %%", spec.name, result["month"],
                              result["availability_percent"])
        name_run(f"availability {result['month']} · {result['availability_percent']} % · "
                 f"{result['minutes_down']} min down" + (" · BUDGET AT RISK" if result["alerts"] else ""))
        return result
