"""Real failovers and the failback (§8.2.2 steps 5-6, §12.2.1), triggered by a person.

The same gates as the drills (flows/runbook.py): a decision before anything irreversible, signed
on production and bound to the topology it was made on, each other team's step confirmed by a
member of that team. Nothing is undone
automatically. The run is in the ledger, with the report and a critical notification.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect import get_run_logger

from flows.evidence import HOOKS, evidence, ledger_link, publish_report
from flows.exclusion import mutating_slot
from flows.heartbeat import alive
from flows.notify import notify
from flows.runbook import Decider, flow, gates, name_run, refusable, runbook_context, stepped
from pcdb import failover as real
from pcdb import install
from pcdb.config import Environment, load_environment
from pcdb.steps import table as steps_table


@flow(name="failover", **HOOKS)
@alive
@refusable
def failover(scenario: Literal["zone", "region", "failback"], env: str = "local", spec_path: str | None = None,
             yes: bool = False, outage_began: datetime | None = None, wait_seconds: float = 0) -> dict:
    """A real zone or region failover, or the failback to the primary region.

    Args:
        scenario: zone (force the HA standby up), region (promote the replica and point the
            application at it), failback (back to the primary region, planned).
        yes: give the decision and confirmations by flag (sandbox only).
        outage_began: when the outage began (the recovery time is measured from it; default now).
        wait_seconds: how long to wait for the environment's slot (another mutating runbook).
        env: the environment's name (a spec in deployments/), e.g. local or prod
        spec_path: a spec file to use instead of the named environment's
    """
    spec = load_environment(spec_path or env)
    ctx = runbook_context(spec)
    decider = Decider(spec, yes)
    decide, confirm = gates(spec, ctx, decider, "failover" if scenario != "failback" else "failback")
    with evidence(spec, ctx, "failover") as ev, mutating_slot(spec.name, f"{scenario} failover", wait_seconds):
        ev.decisions = decider.collected
        password = ctx.admin_password()
        with stepped() as step:       # each step a task run; the decisions pause the flow between them
            if scenario == "zone":
                result = real.zone_failover(ctx.target, spec, password, decide, outage_began, step=step)
            elif scenario == "region":
                result = real.region_failover(ctx.target, spec, password, decide, confirm, outage_began, step=step)
            else:
                result = real.failback(ctx.target, spec, password, decide, confirm, step=step,
                                       verify=lambda: install.verification(ctx))
        result.steps = step.as_dicts()
        result.notes = [*decider.notes, *result.notes]
        text = _report(spec, result)
        path = publish_report(spec, f"failover-{scenario}-{spec.name}", text, f"{scenario} failover report")
        result.report = str(path)
        ev.report = str(path)
        ev.figures = {k: v for k, v in result.as_dict().items() if k not in ("timeline", "steps", "notes", "report")}
        name_run(f"{scenario} failover · " + ("nothing to do" if not result.changed else
                 f"recovered in {result.recovery_seconds:.1f} s" if result.recovery_seconds is not None
                 else "NOT recovered") + f" · application → {result.application}")
        get_run_logger().info("%s: recovery %s s (target %s s), application -> %s", scenario,
                              result.recovery_seconds, result.target_rto_seconds, result.application)
        if result.changed:
            notify(spec, "critical", f"pcdb {scenario} failover on {spec.name}: "
                   f"{'RECOVERY TARGET MISSED' if result.met is False else 'done'}",
                   f"the application points at the {result.application}; recovery {result.recovery_seconds}s "
                   f"(target {result.target_rto_seconds:.0f}s). Report: {path}")
        return result.as_dict()


def _report(spec: Environment, r: real.FailoverReport) -> str:
    title = "Failback to the primary region" if r.kind == "failback" else f"Real {r.kind} failover"
    measured = "not measured" if r.recovery_seconds is None else f"{r.recovery_seconds} s"
    verdict = {True: "met", False: "MISSED", None: "-"}[r.met]
    lines = [f"# {title} on `{spec.name}`", "", f"- Outage began: {r.outage_began}",
             f"- Recovery (to the first write the application's path accepted): {measured}; "
             f"target {r.target_rto_seconds:.0f} s: {verdict}",
             f"- The application's name points at: the {r.application}",
             f"- Changed anything: {r.changed}", ledger_link(spec), "", "## Timeline", ""]
    lines += [f"- {at} — {action}" for at, action in r.timeline]
    lines += ["", "## Steps", "", *steps_table(r.steps)]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"
